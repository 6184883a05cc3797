"""Rule livecell_predict: the ensemble on every LIVECell image; metrics and COCO AP."""

from brightseg.rules import instances_for_rule, log_to
from brightseg.rules.evaluation import livecell_predict

with log_to(snakemake.log[0]):
    livecell_predict(
        snakemake.input.ensemble,
        snakemake.input.index,
        snakemake.output.per_image,
        snakemake.output.ap,
        inference=dict(snakemake.params.inference),
        instances=instances_for_rule(snakemake.params.instances, snakemake.input.get("tuned")),
        illumination=dict(snakemake.params.illumination),
        pixel_size_um=float(snakemake.params.pixel_size_um),
    )
