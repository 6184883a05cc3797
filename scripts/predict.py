"""Rule predict: ensemble inference over one plate's OME-Zarr store."""

from brightseg.pipeline import log_to, predict_plate

with log_to(snakemake.log[0]):
    predict_plate(
        snakemake.input.store,
        snakemake.input.ensemble,
        snakemake.output[0],
        inference=dict(snakemake.params.inference),
    )
