"""Rule evaluate: held-out metrics of every checkpoint and the ensemble; ablation."""

from pathlib import Path

from brightseg.rules import instances_for_rule, log_to
from brightseg.rules.evaluation import evaluate

with log_to(snakemake.log[0]):
    evaluate(
        snakemake.input.ensemble,
        snakemake.input.training,
        dict(snakemake.params.stores),
        dict(snakemake.params.annotations),
        list(snakemake.params.training_plates),
        snakemake.output.evaluation,
        snakemake.output.ablation,
        snakemake.output.ablation_md,
        str(Path(snakemake.output.overlay).with_suffix("")),
        inference=dict(snakemake.params.inference),
        instances=instances_for_rule(snakemake.params.instances, snakemake.input.get("tuned")),
    )
