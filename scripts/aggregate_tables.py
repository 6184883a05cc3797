"""Rule aggregate_tables: per-image summaries of every plate in one table."""

from brightseg.pipeline import aggregate, log_to

with log_to(snakemake.log[0]):
    aggregate(list(snakemake.input), snakemake.output[0])
