# Run on the target itself: the fingerprint is measured where the engines will run. It probes every
# engine, so its env has every engine family, at the versions of each family's own env.
checkpoint device:
    output:
        "results/device/{target}.json",
    log:
        "logs/device/{target}.log",
    conda:
        "../envs/engines.yaml"
    resources:
        **target_resources(),
        gpu=1,
    params:
        engines=" ".join(
            f"--engine {engine}"
            for engine, precisions in config["engines"].items()
            if precisions
        ),
        precisions=" ".join(
            f"--precision {p}"
            for p in sorted({p for ps in config["engines"].values() for p in ps})
        ),
    shell:
        "python -m yoloforge device {params.engines} {params.precisions} --output {output} > {log} 2>&1"


rule build:
    input:
        onnx="results/onnx/{model}-{size}.onnx",
        cfg="resources/models/{model}.cfg",
        weights="resources/weights/{model}.weights",
        calibration="resources/calibration",
        images="resources/images",
    output:
        engine="results/engines/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}-b{batch}.engine",
        sidecar="results/engines/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}-b{batch}.engine.json",
    log:
        "logs/build/{target}/{fingerprint}/{engine}/{model}-{size}-{precision}-b{batch}.log",
    conda:
        engine_env
    # Builds that time kernels on the device (TensorRT tactics, Inductor autotuning) get it alone;
    # cudnn-fused's compile side by side and take the device lock to time.
    resources:
        **target_resources(),
        gpu=build_gpu,
    params:
        options=engine_options,
        strict=STRICT,
    shell:
        "python -m yoloforge build --engine {wildcards.engine} --onnx {input.onnx} --cfg {input.cfg}"
        " --weights {input.weights} --calibration {input.calibration} --precision {wildcards.precision}"
        " --check-images {input.images} --batch {wildcards.batch} --fingerprint {wildcards.fingerprint}"
        " {params.options} {params.strict}"
        " --output {output.engine} > {log} 2>&1"
