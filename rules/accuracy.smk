# Every engine's detections scored on the same first images: against COCO annotations where the
# image set has them, and always against the reference implementation's detections.


rule reference:
    input:
        onnx="results/onnx/{model}-{size}.onnx",
        cfg="resources/models/{model}.cfg",
        weights="resources/weights/{model}.weights",
        images="resources/images",
    output:
        "results/reference/{model}-{size}.json",
    log:
        "logs/reference/{model}-{size}.log",
    conda:
        "../envs/engines.yaml"
    params:
        images=config["accuracy"]["images"],
    shell:
        "python -m yoloforge reference --onnx {input.onnx} --cfg {input.cfg} --weights {input.weights}"
        " --images {input.images} --count {params.images} --output {output} > {log} 2>&1"


rule accuracy:
    input:
        engine=f"{ACCURACY_ENGINE}.engine",
        sidecar=f"{ACCURACY_ENGINE}.engine.json",
        images="resources/images",
        reference="results/reference/{model}-{size}.json",
    output:
        result="results/accuracy/{target}/{fingerprint}/{model}-{size}/{engine}-{precision}.json",
        coco="results/accuracy/{target}/{fingerprint}/{model}-{size}/{engine}-{precision}.coco.json",
        drawn=directory(
            "results/detections/{target}/{fingerprint}/{model}-{size}/{engine}-{precision}"
        ),
    log:
        "logs/accuracy/{target}/{fingerprint}/{model}-{size}/{engine}-{precision}.log",
    conda:
        engine_env
    # On a cluster, on the target whose engine it scores; on the device, if the engine runs on one.
    resources:
        **target_resources(),
        gpu=engine_on_accelerator,
    params:
        gate=config["accuracy"],
    shell:
        "python -m yoloforge accuracy --engine {wildcards.engine} --engine-file {input.engine}"
        " --model {wildcards.model} --images {input.images} --reference {input.reference}"
        " --max-map-drop {params.gate[max_map_drop]} --draw {params.gate[draw]}"
        " --draw-dir {output.drawn} --coco-output {output.coco} --target {wildcards.target}"
        " --output {output.result} > {log} 2>&1"
