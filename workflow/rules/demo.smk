# Demo data: synthetic brightfield plates made on the fly (config: demo.synth).


rule synth_plate:
    output:
        images=directory("results/demo/{plate}/images"),
        labels=directory("results/demo/{plate}/labels"),
        cvat="results/demo/{plate}/cvat.xml",
        coco="results/demo/{plate}/coco.json",
    log:
        "logs/synth_plate/{plate}.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        spec=lambda wildcards: SYNTH[wildcards.plate],
        seed=SEED,
        pixel_size_um=plate_param("pixel_size_um"),
    script:
        "../../scripts/synth_plate.py"
