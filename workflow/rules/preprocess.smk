# CVAT import, illumination correction and the OME-Zarr plate stores.


rule import_annotations:
    input:
        export=plate_annotations_input,
        images=plate_images_input,
    output:
        manifest="results/annotations/{plate}/manifest.parquet",
        skipped="results/qc/skipped/import_annotations/{plate}.tsv",
    log:
        "logs/import_annotations/{plate}.log",
    benchmark:
        "benchmarks/import_annotations/{plate}.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        images=plate_param("images"),
        annotations=ANNOTATIONS_PARAMS,
        focus=plate_focus,
        on_bad_input=ON_BAD_INPUT,
        limits=CFG["limits"],
    script:
        "../../scripts/import_annotations.py"


rule correct_illumination:
    input:
        images=plate_images_input,
    output:
        store=directory("results/plates/{plate}.ome.zarr"),
        skipped="results/qc/skipped/correct_illumination/{plate}.tsv",
    log:
        "logs/correct_illumination/{plate}.log",
    benchmark:
        "benchmarks/correct_illumination/{plate}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 2
    params:
        images=plate_param("images"),
        regex=lambda wildcards: CFG["filename_regex"],
        modality=plate_param("modality"),
        pixel_size_um=plate_param("pixel_size_um"),
        illumination=plate_illumination,
        focus=plate_focus,
        chunk=CFG["plate_store"]["chunk"],
        on_bad_input=ON_BAD_INPUT,
        limits=CFG["limits"],
    script:
        "../../scripts/correct_illumination.py"


rule polarity_report:
    input:
        expand("results/plates/{plate}.ome.zarr", plate=PLATE_IDS),
    output:
        "results/qc/polarity.tsv",
    log:
        "logs/polarity_report.log",
    conda:
        "../../envs/imaging.yaml"
    script:
        "../../scripts/polarity_report.py"


rule skipped_report:
    input:
        expand("results/qc/skipped/correct_illumination/{plate}.tsv", plate=PLATE_IDS),
        expand("results/qc/skipped/import_annotations/{plate}.tsv", plate=ANNOTATED),
    output:
        "results/qc/skipped.tsv",
    log:
        "logs/skipped_report.log",
    conda:
        "../../envs/imaging.yaml"
    script:
        "../../scripts/skipped_report.py"
