"""Rule stats_report: the paper's Table 6 (one-sample t-test, Cohen's d, credible interval)."""

from brightseg.rules import log_to
from brightseg.rules.evaluation import stats_report

with log_to(snakemake.log[0]):
    stats_report(
        snakemake.input[0],
        snakemake.output.json,
        snakemake.output.md,
        snakemake.output.tex,
        stats=dict(snakemake.params.stats),
    )
