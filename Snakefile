import os
import sys

from snakemake.logging import logger
from snakemake.utils import min_version, validate

# The yoloforge package of the workflow's own checkout, whatever is installed; importing it here
# loads no engine library.
sys.path.insert(0, workflow.basedir)
from yoloforge.config import check_config, load_yaml
from yoloforge.errors import YoloforgeError

min_version("9.0")

# Config errors end the run before any job, in one line naming the key and what is allowed.
# Read first for its YAML errors with their line, which Snakemake's reading does not give.
try:
    if os.path.exists("config.yaml"):
        load_yaml("config.yaml")
except YoloforgeError as error:
    sys.exit(f"yoloforge: error: {error}")


configfile: "config.yaml"


try:
    check_config(
        config,
        os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"),
        [*workflow.configfiles, *workflow.overwrite_configfiles],
        workflow.config_settings.config,
    )
except YoloforgeError as error:
    sys.exit(f"yoloforge: error: {error}")
validate(config, "workflow/schemas/config.schema.yaml")  # fills in the defaults


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
