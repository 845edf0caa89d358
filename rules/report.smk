localrules:
    table,
    unavailable,


rule table:
    input:
        table_rows,
    output:
        report(
            "results/benchmark.csv",
            caption="../workflow/report/benchmark.rst",
            category="Results",
        ),
    log:
        "logs/table.log",
    conda:
        "../envs/core.yaml"
    shell:
        "python -m yoloforge table --output {output} {input} > {log} 2>&1"
