# Uncertainty-based quality control (qc block): the images to review, their predictions
# as CVAT/COCO task imports for correction, and the QC score against Dice on the
# evaluation sets. all_targets() asks for them only with qc.uncertainty: true.


rule qc_review:
    input:
        "results/tables/images.parquet",
    output:
        review=report(
            "results/qc/review.tsv",
            caption="../report/qc_review.rst",
            category="Quality control",
        ),
        png="results/figures/qc_scores.png",
        svg="results/figures/qc_scores.svg",
        data="results/figures/qc_scores.parquet",
    log:
        "logs/qc_review.log",
    conda:
        "../../envs/stats.yaml"
    params:
        qc=QC.as_dict(),
    script:
        "../../scripts/qc_review.py"


rule qc_export_cvat:
    input:
        review="results/qc/review.tsv",
        stores=expand("results/plates/{plate}.ome.zarr", plate=PLATE_IDS),
        instances=expand("results/instances/{plate}.zarr", plate=PLATE_IDS),
    output:
        directory("results/qc/review"),
    log:
        "logs/qc_export_cvat.log",
    conda:
        "../../envs/stats.yaml"
    params:
        stores={p: f"results/plates/{p}.ome.zarr" for p in PLATE_IDS},
        instances={p: f"results/instances/{p}.zarr" for p in PLATE_IDS},
        qc=QC.subset(["export_shapes", "tolerance_px", "min_iou"]),
    script:
        "../../scripts/qc_export_cvat.py"


rule evalset_qc:
    input:
        predictions="results/evalsets/{evalset}/ensemble",
        per_image="results/tables/evalsets/{evalset}/per_image.parquet",
    output:
        table="results/tables/evalsets/{evalset}/qc.parquet",
        json="results/tables/evalsets/{evalset}/qc.json",
        png=report(
            "results/figures/evalsets/{evalset}/qc_vs_dice.png",
            caption="../report/evalset_qc.rst",
            category="Evaluation sets",
            subcategory="{evalset}",
        ),
        svg="results/figures/evalsets/{evalset}/qc_vs_dice.svg",
        data="results/figures/evalsets/{evalset}/qc_vs_dice.parquet",
    log:
        "logs/evalset_qc/{evalset}.log",
    conda:
        "../../envs/stats.yaml"
    params:
        qc=QC.subset(["uncertain_band", "border_px", "review_threshold"]),
    script:
        "../../scripts/evalset_qc.py"
