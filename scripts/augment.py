"""Rule augment: patches and 21 augmented variants of every annotated training image."""

from brightseg.pipeline import build_training_set, log_to

with log_to(snakemake.log[0]):
    build_training_set(
        list(snakemake.input.stores),
        list(snakemake.input.manifests),
        snakemake.output.store,
        snakemake.output.manifest,
        training=dict(snakemake.params.training),
        seed=int(snakemake.params.seed),
    )
