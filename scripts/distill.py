"""Rule distill: the ensemble's soft votes taught to one small student network."""

from brightseg.rules import log_to
from brightseg.rules.training import distill

with log_to(snakemake.log[0]):
    distill(
        snakemake.input.ensemble,
        snakemake.input.store,
        snakemake.input.manifest,
        snakemake.output.student,
        snakemake.output.card,
        snakemake.output.history,
        snakemake.output.targets,
        inference=dict(snakemake.params.inference),
        student=dict(snakemake.params.student),
        unlabelled_stores=list(snakemake.input.unlabelled),
        seed=snakemake.params.seed,
        precision=snakemake.params.precision,
        deterministic=snakemake.params.deterministic,
    )
