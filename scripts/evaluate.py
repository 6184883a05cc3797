"""Rule evaluate: per-image metrics of every checkpoint and the ensemble on held-out images."""

from pathlib import Path

from brightseg.evaluate import evaluate_heldout
from brightseg.pipeline import log_to

with log_to(snakemake.log[0]):
    evaluate_heldout(
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
        instances=dict(snakemake.params.instances),
    )
