import os

from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/fetch.smk"
include: "rules/convert.smk"
include: "rules/build.smk"
include: "rules/bench.smk"
include: "rules/accuracy.smk"
include: "rules/report.smk"


# Builds, timing and accuracy are planned from each target's device probe (a checkpoint): until the
# probe exists, a dry run lists only the jobs up to it.
if not all(
    os.path.exists(f"results/device/{target}.json") for target in config["targets"]
):
    logger.info(
        "yoloforge: jobs after the device probe are planned once it has run; to see the whole"
        " plan: snakemake --cores 1 "
        + " ".join(f"results/device/{target}.json" for target in config["targets"])
        + " && snakemake -n"
    )


rule all:
    input:
        "results/benchmark.csv",
        "results/report.html",
        # Asked for here as well, so that every target's probe starts at once.
        expand("results/device/{target}.json", target=config["targets"]),
