# Names and paths derived from config; nothing here touches files or devices.
import json

# Every rule runs the yoloforge package of the workflow's own checkout, whatever is installed.
# (Doubled braces: Snakemake formats the prefix with each job's wildcards.)
shell.prefix(
    'set -euo pipefail; export PYTHONPATH="'
    + workflow.basedir
    + '${{PYTHONPATH:+:$PYTHONPATH}}"; '
)


wildcard_constraints:
    model="|".join(config["models"]),
    size=r"\d+(x\d+)?",
    engine="|".join(config["engines"]),
    precision="fp32|fp16|bf16|int8",
    batch=r"\d+",
    fingerprint=r"[a-z0-9-]+",


STRICT = "--strict" if config.get("strict") else ""
# Accuracy is scored on the engine built at the smallest configured batch.
ACCURACY_ENGINE = (
    "results/engines/{fingerprint}/{engine}/{model}-{size}-{precision}"
    f"-b{min(config['batches'])}"
)


def asset_args(asset):
    """Command-line arguments of `yoloforge fetch` for one asset of the config."""
    sources = " ".join(f"--source '{source}'" for source in asset["sources"])
    return f"{sources} --sha256 '{asset.get('sha256', '')}'"


def engine_options(wildcards):
    """`--option KEY=VALUE` arguments of `yoloforge build` from config's engine_options."""
    options = config.get("engine_options", {}).get(wildcards.engine, {})
    return " ".join(
        f"--option {key}={str(value).lower()}" for key, value in options.items()
    )


def table_rows(wildcards):
    """One timing result per configured row; a row this machine cannot run is marked unavailable.

    Engine folders are named by each engine's device fingerprint, which the `device` checkpoint
    measures on the machine that runs the jobs.
    """
    with open(checkpoints.device.get().output[0]) as handle:
        probe = json.load(handle)["engines"]
    rows = []
    for model, spec in config["models"].items():
        for size in spec["sizes"]:
            for engine, precisions in config["engines"].items():
                for precision in precisions:
                    reason = probe[engine]["precisions"][precision]
                    if reason and config.get("strict"):
                        raise ValueError(
                            f"strict: {engine} {precision} cannot run here: {reason}"
                        )
                    folder = (
                        "results/unavailable"
                        if reason
                        else f"results/bench/{probe[engine]['id']}"
                    )
                    rows += [
                        f"{folder}/{model}-{size}/{engine}-{precision}-b{batch}.json"
                        for batch in config["batches"]
                    ]
    return rows


def accuracy_results(wildcards):
    """One accuracy result per engine and precision that runs here, per model size."""
    with open(checkpoints.device.get().output[0]) as handle:
        probe = json.load(handle)["engines"]
    return [
        f"results/accuracy/{probe[engine]['id']}/{model}-{size}/{engine}-{precision}.json"
        for model, spec in config["models"].items()
        for size in spec["sizes"]
        for engine, precisions in config["engines"].items()
        for precision in precisions
        if not probe[engine]["precisions"][precision]
    ]
