"""Rule train: one (model, loss) training run."""

from brightseg.pipeline import log_to, train_run

with log_to(snakemake.log[0]):
    train_run(
        snakemake.input.store,
        snakemake.input.manifest,
        snakemake.output.history,
        snakemake.output.card,
        model=snakemake.wildcards.model,
        loss=snakemake.wildcards.loss,
        spec=dict(snakemake.params.spec),
        training=dict(snakemake.params.training),
        seed=int(snakemake.params.seed),
        keras_home=snakemake.params.keras_home,
    )
