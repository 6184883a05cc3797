"""Rule livecell_report: LIVECell tables (groups, summary, AP against the published values)."""

from brightseg.rules import log_to
from brightseg.rules.evaluation import livecell_report

with log_to(snakemake.log[0]):
    livecell_report(
        snakemake.input.per_image,
        snakemake.input.ap,
        dict(snakemake.output.items()),
        threshold=float(snakemake.params.threshold),
    )
