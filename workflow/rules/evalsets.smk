# Bring your own data (issue #8): held-out evaluation sets, predicted by the ensemble and
# compared with other methods' masks (paper Table 2).


wildcard_constraints:
    evalset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


rule synth_evalset:
    output:
        directory("results/demo/evalset"),
    log:
        "logs/synth_evalset.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        spec=DEMO_EVALSET or {},
        seed=SEED,
    script:
        "../../scripts/synth_evalset.py"


rule evalset_baseline:
    input:
        evalset_images_input,
    output:
        directory("results/evalsets/{evalset}/otsu"),
    log:
        "logs/evalset_baseline/{evalset}.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        images=lambda wildcards: _evalset(wildcards)["images"],
        otsu=CFG.comparison.otsu,
    script:
        "../../scripts/evalset_baseline.py"


rule evalset_compare:
    input:
        unpack(evalset_compare_input),
    output:
        per_image=report(
            "results/tables/evalsets/{evalset}/per_image.parquet",
            caption="../report/evalset_per_image.rst",
            category="Evaluation sets",
            subcategory="{evalset}",
        ),
        summary="results/tables/evalsets/{evalset}/summary.parquet",
        table2_md=report(
            "results/tables/evalsets/{evalset}/table2.md",
            caption="../report/evalset_table2.rst",
            category="Evaluation sets",
            subcategory="{evalset}",
        ),
        table2_tex="results/tables/evalsets/{evalset}/table2.tex",
        paired="results/tables/evalsets/{evalset}/paired.parquet",
        paired_md=report(
            "results/tables/evalsets/{evalset}/paired.md",
            caption="../report/evalset_paired.rst",
            category="Evaluation sets",
            subcategory="{evalset}",
        ),
        metrics_png=report(
            "results/figures/evalsets/{evalset}/metrics.png",
            caption="../report/evalset_metrics.rst",
            category="Evaluation sets",
            subcategory="{evalset}",
        ),
        metrics_svg="results/figures/evalsets/{evalset}/metrics.svg",
        metrics_parquet="results/figures/evalsets/{evalset}/metrics.parquet",
        overlays=report(
            directory("results/figures/evalsets/{evalset}/overlays"),
            patterns=["{image}.png"],
            caption="../report/evalset_overlays.rst",
            category="Evaluation sets",
            subcategory="{evalset}",
        ),
        overlay_counts="results/figures/evalsets/{evalset}/overlays.parquet",
        predictions=directory("results/evalsets/{evalset}/ensemble"),
    log:
        "logs/evalset_compare/{evalset}.log",
    benchmark:
        "benchmarks/evalset_compare/{evalset}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=4 * 60,
    params:
        **QC_PREDICT_PARAMS,
        spec=_evalset,
        inference=CFG.inference.as_dict(),
        illumination=CFG.illumination.as_dict(),
        threshold=CFG.annotations.mask_threshold,
        paired_metrics=list(CFG.comparison.paired_metrics),
        seed=SEED,
    script:
        "../../scripts/evalset_compare.py"
