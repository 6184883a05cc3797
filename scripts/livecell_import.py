"""Rule livecell_import: LIVECell COCO annotations -> label images, masks, index, QC."""

from brightseg.evaluate import livecell_import
from brightseg.pipeline import log_to

with log_to(snakemake.log[0]):
    livecell_import(
        list(snakemake.params.annotations),
        snakemake.params.images,
        snakemake.output.index,
        snakemake.output.qc,
        exclude=snakemake.input.exclude,
    )
