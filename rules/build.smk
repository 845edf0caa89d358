rule build:
    input:
        onnx="results/onnx/{model}-{size}.onnx",
        cfg="resources/models/{model}.cfg",
        weights="resources/weights/{model}.weights",
    output:
        engine="results/engines/{engine}/{model}-{size}-{precision}-b{batch}.engine",
        sidecar="results/engines/{engine}/{model}-{size}-{precision}-b{batch}.engine.json",
    log:
        "logs/build/{engine}/{model}-{size}-{precision}-b{batch}.log",
    conda:
        "../envs/engines.yaml"
    shell:
        "python -m yoloforge build --engine {wildcards.engine} --onnx {input.onnx} --cfg {input.cfg}"
        " --weights {input.weights} --precision {wildcards.precision} --batch {wildcards.batch}"
        " --output {output.engine} > {log} 2>&1"
