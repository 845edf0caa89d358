rule convert:
    input:
        cfg=lambda wc: config["models"][wc.model]["cfg"],
        weights=lambda wc: weights_path(wc.model),
    output:
        "results/onnx/{model}-{size}.onnx",
    log:
        "logs/convert/{model}-{size}.log",
    conda:
        "../envs/core.yaml"
    shell:
        "python -m yoloforge convert --cfg {input.cfg} --weights {input.weights} --size {wildcards.size}"
        " --output {output} > {log} 2>&1"
