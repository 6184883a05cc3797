"""Rule select_checkpoints: rank every epoch checkpoint, keep the top K for the ensemble."""

from brightseg.rules import log_to
from brightseg.rules.training import select_checkpoints

with log_to(snakemake.log[0]):
    select_checkpoints(
        list(snakemake.input.histories),
        snakemake.output[0],
        ensemble=dict(snakemake.params.ensemble),
        tta=dict(snakemake.params.tta),
    )
