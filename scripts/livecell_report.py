"""Rule livecell_report: paper Tables 3/4 (groups), 5 (summary) and AP per cell line."""

from brightseg.evaluate import livecell_report
from brightseg.pipeline import log_to

with log_to(snakemake.log[0]):
    livecell_report(
        snakemake.input.per_image,
        snakemake.input.ap,
        dict(snakemake.output.items()),
        threshold=float(snakemake.params.threshold),
    )
