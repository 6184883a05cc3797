"""Rule gallery: the augmentation gallery figure."""

from brightseg.pipeline import log_to, make_gallery_figure

with log_to(snakemake.log[0]):
    make_gallery_figure(
        snakemake.input.store,
        snakemake.input.manifest,
        snakemake.output[0],
        seed=int(snakemake.params.seed),
    )
