BENCH = "{target}/{fingerprint}/{model}-{size}/{engine}-{precision}-b{batch}"


rule bench:
    input:
        engine="results/engines/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}-b{batch}.engine",
        sidecar="results/engines/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}-b{batch}.engine.json",
        images="resources/images",
        onnx="results/onnx/{model}-{size}.onnx",
    output:
        summary=f"results/bench/{BENCH}/round-{{round}}.json",
        latencies=f"results/bench/{BENCH}/round-{{round}}.parquet",
    log:
        f"logs/bench/{BENCH}/round-{{round}}.log",
    # Each round is a process of its own, and a later round waits behind every job of an earlier
    # one, so a row's rounds lie minutes apart and its spread holds how the machine drifts.
    priority: lambda wildcards: -int(wildcards.round)
    conda:
        engine_env
    # All cores and the one device: timing never shares the machine with another job.
    threads: workflow.cores
    resources:
        **target_resources(),
        gpu=1,
    params:
        timing=config["timing"],
    shell:
        "YOLOFORGE_THREADS={threads} python -m yoloforge bench --engine {wildcards.engine}"
        " --engine-file {input.engine} --onnx {input.onnx} --fingerprint {wildcards.fingerprint}"
        " --model {wildcards.model} --images {input.images}"
        " --batch {wildcards.batch} --warmup-seconds {params.timing[warmup_seconds]}"
        " --seconds {params.timing[seconds]} --min-iterations {params.timing[min_iterations]}"
        " --rounds {params.timing[rounds]} --round {wildcards.round}"
        " --target {wildcards.target} --output {output.summary} > {log} 2>&1"


rule pool:
    input:
        summaries=expand(
            f"results/bench/{BENCH}/round-{{round}}.json",
            round=range(config["timing"]["rounds"]),
            allow_missing=True,
        ),
        latencies=expand(
            f"results/bench/{BENCH}/round-{{round}}.parquet",
            round=range(config["timing"]["rounds"]),
            allow_missing=True,
        ),
    output:
        summary=f"results/bench/{BENCH}.json",
        latencies=f"results/bench/{BENCH}.parquet",
    log:
        f"logs/pool/{BENCH}.log",
    conda:
        "../envs/core.yaml"
    shell:
        "python -m yoloforge pool --output {output.summary} {input.summaries} > {log} 2>&1"


rule unavailable:
    input:
        device="results/device/{target}.json",
    output:
        "results/unavailable/{target}/{model}-{size}/{engine}-{precision}-b{batch}.json",
    log:
        "logs/unavailable/{target}/{model}-{size}/{engine}-{precision}-b{batch}.log",
    conda:
        "../envs/core.yaml"
    shell:
        "python -m yoloforge unavailable --device {input.device} --model {wildcards.model}"
        " --size {wildcards.size} --engine {wildcards.engine} --precision {wildcards.precision}"
        " --batch {wildcards.batch} --target {wildcards.target} --output {output} > {log} 2>&1"
