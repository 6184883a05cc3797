"""Rule train: one (model, loss) training run."""

from brightseg.rules import log_to
from brightseg.rules.training import train

with log_to(snakemake.log[0]):
    train(
        snakemake.input.store,
        snakemake.input.manifest,
        snakemake.output.history,
        snakemake.output.card,
        snakemake.output.checkpoints,
        spec=dict(snakemake.params.spec),
        training=dict(snakemake.params.training),
        seed=int(snakemake.params.seed),
        keras_home=snakemake.params.keras_home,
    )
