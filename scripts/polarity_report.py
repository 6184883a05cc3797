"""Rule polarity_report: each plate's top-hat polarity (configured, used, statistic, flag)."""

from brightseg.rules import log_to
from brightseg.rules.preprocess import polarity_report

with log_to(snakemake.log[0]):
    polarity_report(list(snakemake.input), snakemake.output[0])
