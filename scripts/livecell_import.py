"""Rule livecell_import: LIVECell COCO JSON -> label images, index, QC table."""

from brightseg.rules import log_to
from brightseg.rules.evaluation import livecell_import

with log_to(snakemake.log[0]):
    livecell_import(
        list(snakemake.params.annotations),
        snakemake.params.images,
        snakemake.output.index,
        snakemake.output.qc,
        exclude=snakemake.input.exclude,
        expected=snakemake.params.expected,
    )
