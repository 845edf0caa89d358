localrules:
    fetch_weights,


rule fetch_weights:
    output:
        "resources/weights/{model}.fetched.weights",
    log:
        "logs/fetch/{model}.log",
    retries: 2
    conda:
        "../envs/core.yaml"
    params:
        source=lambda wc: config["models"][wc.model]["weights"]["source"],
        sha256=lambda wc: config["models"][wc.model]["weights"].get("sha256", ""),
    shell:
        "python -m yoloforge fetch --source '{params.source}' --sha256 '{params.sha256}'"
        " --output {output} --cache-dir resources/cache > {log} 2>&1"


rule synthetic_weights:
    input:
        cfg=lambda wc: config["models"][wc.model]["cfg"],
    output:
        "resources/weights/{model}.synthetic.weights",
    log:
        "logs/synthetic/{model}.log",
    conda:
        "../envs/core.yaml"
    params:
        seed=lambda wc: config["models"][wc.model]["weights"]["synthetic_seed"],
    shell:
        "python -m yoloforge synth-weights --cfg {input.cfg} --seed {params.seed} --output {output} > {log} 2>&1"


rule images:
    output:
        directory("resources/images"),
    log:
        "logs/images.log",
    conda:
        "../envs/core.yaml"
    params:
        image_count=config["images"]["count"],
    shell:
        "python -m yoloforge images --output-dir {output} --count {params.image_count} > {log} 2>&1"
