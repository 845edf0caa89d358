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


rule all:
    input:
        "results/benchmark.csv",
        "results/report.html",
        # Asked for here as well, so that every target's probe starts at once.
        expand("results/device/{target}.json", target=config["targets"]),
