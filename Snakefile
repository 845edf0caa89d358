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
