"""Rule split_instances: watershed of every predicted mask of a plate into cells."""

from brightseg.rules import instances_for_rule, log_to
from brightseg.rules.inference import split_instances

with log_to(snakemake.log[0]):
    split_instances(
        snakemake.input.store,
        snakemake.input.predictions,
        snakemake.output.labels,
        snakemake.output.summary,
        instances=instances_for_rule(snakemake.params.instances, snakemake.input.get("tuned")),
        pixel_size_um=float(snakemake.params.pixel_size_um),
    )
