"""Rule split: grouped, stratified train/validation split."""

from brightseg.pipeline import log_to, split_training_set

with log_to(snakemake.log[0]):
    split_training_set(
        snakemake.input[0],
        snakemake.output.manifest,
        snakemake.output.summary,
        training=dict(snakemake.params.training),
        seed=int(snakemake.params.seed),
    )
