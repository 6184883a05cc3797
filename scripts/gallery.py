"""Rule gallery: the augmentation gallery (paper Fig. 2)."""

from brightseg.rules import log_to
from brightseg.rules.training import gallery

with log_to(snakemake.log[0]):
    gallery(
        snakemake.input.store,
        snakemake.input.manifest,
        snakemake.output[0],
        seed=int(snakemake.params.seed),
    )
