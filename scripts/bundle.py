"""Rule bundle: the voting checkpoints as a portable, verified model bundle."""

from brightseg.rules import instances_for_rule, log_to
from brightseg.rules.training import bundle

with log_to(snakemake.log[0]):
    bundle(
        snakemake.input.ensemble,
        snakemake.input.manifest,
        snakemake.input.split_summary,
        snakemake.output.bundle,
        snakemake.output.archive,
        illumination=dict(snakemake.params.illumination),
        inference=dict(snakemake.params.inference),
        tile=snakemake.params.tile,
        pixel_size_um=snakemake.params.pixel_size_um,
        training=dict(snakemake.params.training),
        seed=snakemake.params.seed,
        instances=instances_for_rule(snakemake.params.instances, snakemake.input.get("tuned")),
        input_planes=int(snakemake.params.input_planes),
        student=list(snakemake.input.student),
    )
