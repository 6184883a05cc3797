"""Rule augment: patches and 21 augmented variants of every annotated training image."""

from brightseg.rules import log_to
from brightseg.rules.training import augment

with log_to(snakemake.log[0]):
    augment(
        list(snakemake.input.stores),
        list(snakemake.input.manifests),
        snakemake.output.store,
        snakemake.output.manifest,
        training=dict(snakemake.params.training),
        patch_sets=list(snakemake.params.patch_sets),
        seed=int(snakemake.params.seed),
    )
