# Names and paths derived from config; nothing here touches files or devices.

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
    precision="|".join(config["precisions"]),
    batch=r"\d+",


STRICT = "--strict" if config.get("strict") else ""


def asset_args(asset):
    """Command-line arguments of `yoloforge fetch` for one asset of the config."""
    sources = " ".join(f"--source '{source}'" for source in asset["sources"])
    return f"{sources} --sha256 '{asset.get('sha256', '')}'"


def bench_results():
    return [
        f"results/bench/{model}-{size}/{engine}-{precision}-b{batch}.json"
        for model, spec in config["models"].items()
        for size in spec["sizes"]
        for engine in config["engines"]
        for precision in config["precisions"]
        for batch in config["batches"]
    ]
