"""Rule choose_threshold: the ensemble's vote threshold, chosen on the validation patches."""

from brightseg.rules import log_to
from brightseg.rules.training import choose_threshold

with log_to(snakemake.log[0]):
    choose_threshold(
        snakemake.input.ensemble,
        snakemake.input.store,
        snakemake.input.manifest,
        snakemake.output[0],
        inference=dict(snakemake.params.inference),
    )
