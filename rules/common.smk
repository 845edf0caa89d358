# Names and paths derived from config; nothing here touches files or devices.
import hashlib
import json
import shlex

# The engines' declared facts (precisions, builds that time kernels, conda env).
from yoloforge import backends
from yoloforge.config import fetch_arguments, option_arguments, repeated_arguments
from yoloforge.device import on_accelerator

# Every rule runs the yoloforge package of the workflow's own checkout, whatever is installed.
# A failing command's one-line error also goes to file descriptor 3, the job's own stderr, which
# Snakemake shows: the reason is on the console, not only in the job's log.
# (Doubled braces: Snakemake formats the prefix as it formats a rule's command.)
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(workflow.basedir).replace("{", "{{").replace("}", "}}")
    + '"${{PYTHONPATH:+:$PYTHONPATH}}"; exec 3>&2; export YOLOFORGE_CONSOLE_FD=3; '
)


wildcard_constraints:
    model="|".join(config["models"]),
    size=r"\d+(x\d+)?",
    engine="|".join(config["engines"]),
    precision="|".join(backends.PRECISIONS),
    batch=r"\d+",
    fingerprint=r"[a-z0-9-]+",
    target="|".join(config["targets"]),
    round=r"\d+",


STRICT = "--strict" if config.get("strict") else ""
# Accuracy is scored on the engine built at the smallest configured batch.
ACCURACY_ENGINE = (
    "results/engines/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}"
    f"-b{min(config['batches'])}"
)


def target_resources():
    """Each target's scheduler settings, as resources of the jobs that must run on it.

    A setting one target has and another lacks is None there, which Snakemake leaves unset.
    """
    names = {
        name
        for target in config["targets"].values()
        for name in target.get("resources", {})
    }
    return {
        name: lambda wc, name=name: config["targets"][wc.target]
        .get("resources", {})
        .get(name)
        for name in sorted(names)
    }


def asset_args(asset):
    """Command-line arguments of `yoloforge fetch` for one asset of the config, quoted."""
    limits = config["download"]
    return fetch_arguments(asset) + (
        f" --timeout {limits['timeout_seconds']} --deadline {limits['deadline_seconds']}"
    )


def engine_options(wildcards):
    """`--option KEY=VALUE` arguments of `yoloforge build` from config's engine_options, quoted."""
    return option_arguments(config.get("engine_options", {}).get(wildcards.engine, {}))


def build_gpu(wildcards):
    """The build's `gpu` resource. Run locally (the default profile limits gpu to 1), builds that
    time kernels from start to end hold it, so they never overlap one another; cudnn-fused's, which
    take the device lock only to run kernels, do not, and run side by side. Submitted to a cluster
    (Slurm), gpu=1 is what gives a job a GPU, so every build of an engine that runs on the
    target's accelerator asks for one.
    """
    options = config.get("engine_options", {}).get(wildcards.engine, {})
    holds = int(backends.build_holds_device(wildcards.engine, options))
    return (
        holds if workflow.local_exec else max(holds, engine_on_accelerator(wildcards))
    )


def engine_env(wildcards):
    """The conda env of the engine's family, for its build, timing and accuracy jobs."""
    return f"../envs/{backends.facts(wildcards.engine).family}.yaml"


def table_rows(wildcards):
    """One timing result per configured row and target; a row a target cannot run is marked unavailable.

    Engine folders are named by each engine's device fingerprint, which the `device` checkpoint
    measures by a job on the target itself.
    """
    return [row for target in config["targets"] for row in target_rows(target)]


def target_probe(target):
    """What the `device` checkpoint found on `target`: per engine, its fingerprint id and, per
    precision, None where it runs or the reason it cannot."""
    with open(checkpoints.device.get(target=target).output[0]) as handle:
        return json.load(handle)["engines"]


def engine_on_accelerator(wildcards):
    """1 where the engine runs on the target's accelerator: its job then holds that one device.
    0 for an engine on the CPU: its job needs no device, and a timing job takes every core anyway.
    """
    # The probe's file itself, not checkpoints.device.get(): the Snakemake of a cluster job holds
    # the checkpoint as incomplete, and then fails to evaluate the resource (Snakemake 9.27).
    # Where the probe has not run yet, no job of this engine exists.
    with open(f"results/device/{wildcards.target}.json") as handle:
        probe = json.load(handle)["engines"]
    fingerprint = probe[wildcards.engine]["fingerprint"] or {}
    return int(on_accelerator(fingerprint))


def target_rows(target):
    probe = target_probe(target)
    rows = []
    for model, spec in config["models"].items():
        for size in spec["sizes"]:
            for engine, precisions in config["engines"].items():
                for precision in precisions:
                    reason = probe[engine]["precisions"][precision]
                    if reason and config.get("strict"):
                        raise ValueError(
                            f"strict: {engine} {precision} cannot run on {target}: {reason}"
                        )
                    folder = (
                        f"results/unavailable/{target}"
                        if reason
                        else f"results/bench/{target}/{probe[engine]['id']}"
                    )
                    rows += [
                        f"{folder}/{model}-{size}/{engine}-{precision}-b{batch}.json"
                        for batch in config["batches"]
                    ]
    return rows


def bench_latencies(wildcards):
    """The per-iteration latency file of every timed row (rows that could not run have none)."""
    return [
        row.removesuffix(".json") + ".parquet"
        for row in table_rows(wildcards)
        if row.startswith("results/bench/")
    ]


def config_sha256():
    """sha256 of the config as this run sees it (after --config overrides), as canonical JSON."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def accuracy_results(wildcards):
    """One accuracy result per target, model size, and engine and precision the target runs."""
    results = []
    for target in config["targets"]:
        probe = target_probe(target)
        results += [
            f"results/accuracy/{target}/{probe[engine]['id']}/{model}-{size}/{engine}-{precision}.json"
            for model, spec in config["models"].items()
            for size in spec["sizes"]
            for engine, precisions in config["engines"].items()
            for precision in precisions
            if not probe[engine]["precisions"][precision]
        ]
    return results
