# Downloads run on the submitting machine (localrules) and are shared between checkouts through
# Snakemake's between-workflow cache (--cache).


localrules:
    fetch_cfg,
    fetch_weights,
    images,


rule fetch_cfg:
    output:
        "resources/models/{model}.cfg",
    log:
        "logs/fetch/{model}-cfg.log",
    cache: "omit-software"
    retries: 2
    conda:
        "../envs/core.yaml"
    params:
        asset=lambda wc: asset_args(config["models"][wc.model]["cfg"]),
        strict=STRICT,
    shell:
        "python -m yoloforge fetch {params.asset} {params.strict} --output {output} > {log} 2>&1"


rule fetch_weights:
    input:
        cfg="resources/models/{model}.cfg",
    output:
        "resources/weights/{model}.weights",
    log:
        "logs/fetch/{model}-weights.log",
    cache: "omit-software"
    retries: 2
    conda:
        "../envs/core.yaml"
    params:
        asset=lambda wc: asset_args(config["models"][wc.model]["weights"]),
        seed=lambda wc: config["models"][wc.model]["weights"].get("synthetic_seed", 0),
        strict=STRICT,
    shell:
        "python -m yoloforge fetch {params.asset} --binary --cfg {input.cfg} --seed {params.seed}"
        " {params.strict} --output {output} > {log} 2>&1"


rule images:
    output:
        evaluation=directory("resources/images"),
        calibration=directory("resources/calibration"),
    log:
        "logs/images.log",
    conda:
        "../envs/core.yaml"
    params:
        counts=f"--eval-count {config['images']['count']}"
        f" --calibration-count {config['images'].get('calibration_count', 32)}",
        # A function: Snakemake would read braces in a string parameter as wildcards.
        coco=lambda wildcards: repeated_arguments(
            "--coco-annotations", config["images"].get("coco_annotations", [])
        )
        + " "
        + repeated_arguments("--coco-images", config["images"].get("coco_images", [])),
        strict=STRICT,
    shell:
        "python -m yoloforge images --eval-dir {output.evaluation}"
        " --calibration-dir {output.calibration} {params.counts} {params.coco} {params.strict}"
        " --cache-dir resources/cache > {log} 2>&1"
