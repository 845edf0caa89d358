rule bench:
    input:
        engine="results/engines/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}-b{batch}.engine",
        sidecar="results/engines/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}-b{batch}.engine.json",
        images="resources/images",
        onnx="results/onnx/{model}-{size}.onnx",
    output:
        summary="results/bench/{target}/{fingerprint}/{model}-{size}/{engine}-{precision}-b{batch}.json",
        latencies="results/bench/{target}/{fingerprint}/{model}-{size}/{engine}-{precision}-b{batch}.parquet",
    log:
        "logs/bench/{target}/{fingerprint}/{model}-{size}/{engine}-{precision}-b{batch}.log",
    group:
        "engine"
    conda:
        "../envs/engines.yaml"
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
        " --rounds {params.timing[rounds]}"
        " --target {wildcards.target} --output {output.summary}"
        " --latencies {output.latencies} > {log} 2>&1"


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
