"""Rule explain: Grad-CAM maps of each voting model for a plate's first images."""

from brightseg.rules import log_to
from brightseg.rules.inference import explain

with log_to(snakemake.log[0]):
    explain(
        snakemake.input.store,
        snakemake.input.ensemble,
        snakemake.output[0],
        explain=dict(snakemake.params.explain),
    )
