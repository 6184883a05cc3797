"""Rule skipped_report: every skipped input, with the reason, in one table."""

from brightseg.pipeline import log_to, merge_skipped

with log_to(snakemake.log[0]):
    merge_skipped(list(snakemake.input), snakemake.output[0])
