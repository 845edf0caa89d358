localrules:
    table,
    unavailable,


rule table:
    input:
        rows=table_rows,
        accuracy=accuracy_results,
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
        "python -m yoloforge table --output {output} {input.rows} --accuracy {input.accuracy}"
        " > {log} 2>&1"
