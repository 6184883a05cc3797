"""Rule synth_plate: a synthetic demo plate."""

from pathlib import Path

from brightseg.pipeline import log_to, synth_demo_plate

with log_to(snakemake.log[0]):
    synth_demo_plate(
        str(Path(snakemake.output.images).parent),
        snakemake.wildcards.plate,
        snakemake.params.spec,
        seed=snakemake.params.seed,
        pixel_size_um=float(snakemake.params.pixel_size_um),
    )
