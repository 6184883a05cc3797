"""Rule aggregate_tables: every plate's image summaries in one table."""

from brightseg.rules import log_to
from brightseg.rules.inference import aggregate_tables

with log_to(snakemake.log[0]):
    aggregate_tables(list(snakemake.input), snakemake.output[0])
