"""Rule skipped_report: every skipped input, with the reason, in one table."""

from brightseg.rules import log_to
from brightseg.rules.preprocess import skipped_report

with log_to(snakemake.log[0]):
    skipped_report(list(snakemake.input), snakemake.output[0])
