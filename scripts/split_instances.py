"""Rule split_instances: watershed instance splitting of one plate's masks."""

from brightseg.pipeline import log_to, split_plate_instances

with log_to(snakemake.log[0]):
    split_plate_instances(
        snakemake.input.store,
        snakemake.input.predictions,
        snakemake.output[0],
        instances=dict(snakemake.params.instances),
        pixel_size_um=float(snakemake.params.pixel_size_um),
    )
