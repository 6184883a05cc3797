# Training set (patches + 21 augmented variants, split) and one training job per (model, loss).


rule augment:
    input:
        stores=expand("results/plates/{plate}.ome.zarr", plate=TRAINING),
        manifests=expand("results/annotations/{plate}/manifest.parquet", plate=TRAINING),
        patch_images=[s["images"] for s in PATCH_SETS],
        patch_masks=[s["masks"] for s in PATCH_SETS],
    output:
        store=directory("results/training/patches.zarr"),
        manifest="results/training/manifest_unsplit.parquet",
    log:
        "logs/augment.log",
    benchmark:
        "benchmarks/augment.tsv"
    conda:
        "../../envs/augment.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=2 * 60,
    params:
        training=augment_training_params(),
        seed=config.get("seed", 0),
    script:
        "../../scripts/augment.py"


rule split:
    input:
        "results/training/manifest_unsplit.parquet",
    output:
        manifest="results/training/manifest.parquet",
        summary=report(
            "results/training/split_summary.tsv",
            caption="../report/split.rst",
            category="Training data",
        ),
    log:
        "logs/split.log",
    conda:
        "../../envs/augment.yaml"
    params:
        training=config["training"],
        seed=config.get("seed", 0),
    script:
        "../../scripts/split.py"


rule gallery:
    input:
        store="results/training/patches.zarr",
        manifest="results/training/manifest.parquet",
    output:
        report(
            "results/training/gallery.png",
            caption="../report/gallery.rst",
            category="Training data",
        ),
    log:
        "logs/gallery.log",
    conda:
        "../../envs/augment.yaml"
    params:
        seed=config.get("seed", 0),
    script:
        "../../scripts/gallery.py"


rule train:
    input:
        store="results/training/patches.zarr",
        manifest="results/training/manifest.parquet",
    output:
        history="results/models/{model}/{loss}/history.csv",
        card="results/models/{model}/{loss}/card.json",
    log:
        "logs/train/{model}/{loss}.log",
    benchmark:
        "benchmarks/train/{model}/{loss}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=24 * 60,
    params:
        spec=model_spec,
        training=config["training"],
        seed=config.get("seed", 0),
        keras_home=config.get("keras_home", "results/keras"),
    script:
        "../../scripts/train.py"


rule select_checkpoints:
    input:
        expand(
            "results/models/{run.model}/{run.loss}/history.csv",
            run=MODEL_RUNS.itertuples(),
        ),
    output:
        report(
            "results/models/ensemble.tsv",
            caption="../report/ensemble.rst",
            category="Models",
        ),
    log:
        "logs/select_checkpoints.log",
    conda:
        "../../envs/tensorflow.yaml"
    params:
        k=config["ensemble"]["top_k"],
        window=config["ensemble"].get("stability_window", 1),
    script:
        "../../scripts/select_checkpoints.py"
