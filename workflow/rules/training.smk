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
        training=CFG.training.subset(CFG.training.AUGMENT_KEYS)
        | AUGMENT_LABELS
        | AUGMENT_SCALE,
        patch_sets=PATCH_SETS,
        seed=SEED,
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
        val_fraction=CFG.training.val_fraction,
        seed=SEED,
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
        seed=SEED,
    script:
        "../../scripts/gallery.py"


rule train:
    input:
        store="results/training/patches.zarr",
        manifest="results/training/manifest.parquet",
    output:
        history="results/models/{model}/{loss}/history.csv",
        card="results/models/{model}/{loss}/card.json",
        checkpoints=directory("results/models/{model}/{loss}/checkpoints"),
        tensorboard=directory("results/models/{model}/{loss}/tensorboard"),
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
        training=CFG.training.train_params(),
        seed=SEED,
        keras_home=CFG["keras_home"],
    script:
        "../../scripts/train.py"


rule select_checkpoints:
    input:
        histories=run_outputs("history.csv"),
        cards=run_outputs("card.json"),
        checkpoints=run_outputs("checkpoints"),
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
        ensemble=CFG.ensemble.subset(CFG.ensemble.SELECT_KEYS),
        tta=MODEL_TTA,
    script:
        "../../scripts/select_checkpoints.py"


rule choose_threshold:
    input:
        ensemble="results/models/ensemble.tsv",
        checkpoints=run_outputs("checkpoints"),
        store="results/training/patches.zarr",
        manifest="results/training/manifest.parquet",
    output:
        "results/models/threshold.json",
    log:
        "logs/choose_threshold.log",
    benchmark:
        "benchmarks/choose_threshold.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    params:
        inference=CFG.inference.subset(
            ("tile", "overlap", "batch_size", "vote", "tta", "threshold")
        ),
    script:
        "../../scripts/choose_threshold.py"


rule choose_instances:
    input:
        ensemble="results/models/ensemble.tsv",
        threshold=THRESHOLD_JSON,
        checkpoints=run_outputs("checkpoints"),
        manifest="results/training/manifest.parquet",
        stores=expand("results/plates/{plate}.ome.zarr", plate=TRAINING),
        annotations=expand(
            "results/annotations/{plate}/manifest.parquet", plate=TRAINING
        ),
    output:
        "results/models/instances.json",
    log:
        "logs/choose_instances.log",
    benchmark:
        "benchmarks/choose_instances.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=2 * 60,
    params:
        stores={p: f"results/plates/{p}.ome.zarr" for p in TRAINING},
        annotations={p: f"results/annotations/{p}/manifest.parquet" for p in TRAINING},
        inference=CFG.inference.as_dict(),
        instances=INSTANCES_PARAMS,
    script:
        "../../scripts/choose_instances.py"


rule distill:
    input:
        ensemble="results/models/ensemble.tsv",
        threshold=THRESHOLD_JSON,
        checkpoints=run_outputs("checkpoints"),
        store="results/training/patches.zarr",
        manifest="results/training/manifest.parquet",
        unlabelled=expand(
            "results/plates/{plate}.ome.zarr", plate=STUDENT.unlabelled_plates
        ),
    output:
        student=f"{STUDENT_DIR}/student.keras",
        card=report(
            f"{STUDENT_DIR}/card.json",
            caption="../report/student.rst",
            category="Models",
        ),
        history=f"{STUDENT_DIR}/history.csv",
        targets=directory(f"{STUDENT_DIR}/soft_targets.zarr"),
    log:
        "logs/distill.log",
    benchmark:
        "benchmarks/distill.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=12 * 60,
    params:
        inference=CFG.inference.subset(
            ("tile", "overlap", "batch_size", "vote", "tta", "threshold")
        ),
        student=STUDENT.subset(STUDENT.DISTILL_KEYS),
        seed=SEED,
        precision=CFG.training.precision,
        deterministic=CFG.training.deterministic,
    script:
        "../../scripts/distill.py"


rule bundle:
    input:
        ensemble="results/models/ensemble.tsv",
        threshold=THRESHOLD_JSON,
        tuned=INSTANCES_JSON,
        student=(
            [f"{STUDENT_DIR}/student.keras", f"{STUDENT_DIR}/card.json"]
            if DISTILL
            else []
        ),
        checkpoints=run_outputs("checkpoints"),
        manifest="results/training/manifest.parquet",
        split_summary="results/training/split_summary.tsv",
    output:
        bundle=directory("results/models/bundle"),
        archive="results/models/bundle.tar",
    log:
        "logs/bundle.log",
    conda:
        "../../envs/tensorflow.yaml"
    params:
        illumination=CFG.illumination.as_dict(),
        inference=CFG.inference.subset(("threshold", "vote", "overlap", "tta")),
        tile=CFG.inference.tile,
        pixel_size_um=TRAINING_PIXEL_SIZE,
        instances=INSTANCES_PARAMS,
        input_planes=MODEL_PLANES,
        training={
            "plates": TRAINING,
            "patch_sets": [s["name"] for s in PATCH_SETS],
            **CFG.training.subset(CFG.training.AUGMENT_KEYS),
            **CFG.training.train_params(),
            **AUGMENT_SCALE,
        },
        seed=SEED,
    script:
        "../../scripts/bundle.py"
