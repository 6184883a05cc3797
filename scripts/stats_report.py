"""Rule stats_report: one-sample t-test, Cohen's d and Beta credible interval (Table 6)."""

from brightseg.evaluate import stats_report
from brightseg.pipeline import log_to

with log_to(snakemake.log[0]):
    stats_report(
        snakemake.input[0],
        snakemake.output.json,
        snakemake.output.md,
        snakemake.output.tex,
        stats=dict(snakemake.params.stats),
    )
