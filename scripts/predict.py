"""Rule predict: ensemble inference over one plate's OME-Zarr store."""

from brightseg.rules import log_to
from brightseg.rules.inference import predict

with log_to(snakemake.log[0]):
    predict(
        snakemake.input.store,
        snakemake.input.ensemble,
        snakemake.output.labels,
        snakemake.output.summary,
        inference=dict(snakemake.params.inference),
        uncertainty=bool(snakemake.params.get("uncertainty", False)),
        student=snakemake.input.get("student") or None,
        qc_images=int(snakemake.params.get("qc_images", 2)),
    )
