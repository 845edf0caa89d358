rule convert:
    input:
        cfg="resources/models/{model}.cfg",
        weights="resources/weights/{model}.weights",
    output:
        "results/onnx/{model}-{size}.onnx",
    log:
        "logs/convert/{model}-{size}.log",
    conda:
        "../envs/core.yaml"
    shell:
        "python -m yoloforge convert --cfg {input.cfg} --weights {input.weights} --size {wildcards.size}"
        " --output {output} > {log} 2>&1"
