"""Rule choose_instances: watershed settings chosen on the validation plate images."""

from brightseg.rules import log_to
from brightseg.rules.training import choose_instances

with log_to(snakemake.log[0]):
    choose_instances(
        snakemake.input.ensemble,
        snakemake.input.manifest,
        dict(snakemake.params.stores),
        dict(snakemake.params.annotations),
        snakemake.output[0],
        inference=dict(snakemake.params.inference),
        instances=dict(snakemake.params.instances),
    )
