# Ensemble inference per plate, watershed instance splitting, per-cell morphometrics.


rule predict:
    input:
        store="results/plates/{plate}.ome.zarr",
        ensemble=ENSEMBLE_SOURCE,
        threshold=THRESHOLD_JSON,
        student=STUDENT_INPUT,
    output:
        labels=directory("results/predictions/{plate}.zarr"),
        summary="results/predictions/{plate}.tsv",
    log:
        "logs/predict/{plate}.log",
    benchmark:
        "benchmarks/predict/{plate}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=4 * 60,
    params:
        **QC_PREDICT_PARAMS,
        **PREDICT_QC,
        inference=CFG.inference.as_dict(),
        ensemble_id=ENSEMBLE_ID,
    script:
        "../../scripts/predict.py"


rule split_instances:
    input:
        store="results/plates/{plate}.ome.zarr",
        predictions="results/predictions/{plate}.zarr",
        tuned=INSTANCES_JSON,
    output:
        labels=directory("results/instances/{plate}.zarr"),
        summary="results/instances/{plate}.tsv",
    log:
        "logs/split_instances/{plate}.log",
    benchmark:
        "benchmarks/split_instances/{plate}.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        instances=INSTANCES_PARAMS,
        pixel_size_um=plate_param("pixel_size_um"),
    script:
        "../../scripts/split_instances.py"


rule measure_cells:
    input:
        **QC_MEASURE_INPUT,
        store="results/plates/{plate}.ome.zarr",
        instances="results/instances/{plate}.zarr",
    output:
        cells="results/tables/{plate}/cells.parquet",
        images="results/tables/{plate}/images.parquet",
        overlays=report(
            directory("results/qc/overlays/{plate}"),
            patterns=["{image}.png"],
            caption="../report/qc_overlay.rst",
            category="Quality control",
            subcategory="{plate}",
        ),
        exports=directory("results/tables/{plate}/exports"),
    log:
        "logs/measure_cells/{plate}.log",
    benchmark:
        "benchmarks/measure_cells/{plate}.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        **QC_MEASURE_PARAMS,
        morphometry=CFG.morphometry.as_dict(),
    script:
        "../../scripts/measure_cells.py"


rule aggregate_tables:
    input:
        expand("results/tables/{plate}/images.parquet", plate=PLATE_IDS),
    output:
        report(
            "results/tables/images.parquet",
            caption="../report/images.rst",
            category="Morphometrics",
        ),
    log:
        "logs/aggregate_tables.log",
    conda:
        "../../envs/imaging.yaml"
    script:
        "../../scripts/aggregate_tables.py"


rule explain:
    input:
        store="results/plates/{plate}.ome.zarr",
        ensemble=ENSEMBLE_SOURCE,
    output:
        directory("results/qc/explain/{plate}"),
    log:
        "logs/explain/{plate}.log",
    benchmark:
        "benchmarks/explain/{plate}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        explain=CFG.explain.as_dict(),
    script:
        "../../scripts/explain.py"
