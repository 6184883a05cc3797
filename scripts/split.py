"""Rule split: grouped, stratified train/validation split."""

from brightseg.rules import log_to
from brightseg.rules.training import split

with log_to(snakemake.log[0]):
    split(
        snakemake.input[0],
        snakemake.output.manifest,
        snakemake.output.summary,
        val_fraction=float(snakemake.params.val_fraction),
        seed=int(snakemake.params.seed),
    )
