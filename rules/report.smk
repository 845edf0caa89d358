localrules:
    pool,
    table,
    unavailable,
    report,


rule table:
    input:
        rows=table_rows,
        accuracy=accuracy_results,
        # Each target's measured compute ceilings, for the roofline.
        device=expand("results/device/{target}.json", target=config["targets"]),
    output:
        csv=report(
            "results/benchmark.csv",
            caption="../workflow/report/benchmark.rst",
            category="Results",
        ),
        parquet="results/benchmark.parquet",
        markdown=report(
            "results/benchmark.md",
            caption="../workflow/report/benchmark-md.rst",
            category="Results",
        ),
    log:
        "logs/table.log",
    conda:
        "../envs/core.yaml"
    params:
        checkout=workflow.basedir,
        config_sha256=config_sha256(),
    shell:
        "python -m yoloforge table --output {output.csv} --parquet {output.parquet}"
        " --markdown {output.markdown} --checkout {params.checkout:q}"
        " --config-sha256 {params.config_sha256} {input.rows}"
        " --accuracy {input.accuracy} --device {input.device} > {log} 2>&1"


rule report:
    input:
        table="results/benchmark.parquet",
        latencies=bench_latencies,
    output:
        html=report(
            "results/report.html",
            caption="../workflow/report/report.rst",
            category="Results",
        ),
        summary=report(
            "results/summary.md",
            caption="../workflow/report/summary.rst",
            category="Results",
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/core.yaml"
    # The summary is the run's answer: printed as the run's last output, too.
    shell:
        "python -m yoloforge report --table {input.table} --output {output.html}"
        " --summary {output.summary} {input.latencies} > {log} 2>&1 && cat {output.summary}"
