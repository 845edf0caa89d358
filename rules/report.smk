localrules:
    table,


rule table:
    input:
        bench_results(),
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
