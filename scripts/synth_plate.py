"""Rule synth_plate: one synthetic demo plate with ground truth and CVAT/COCO exports."""

from pathlib import Path

from brightseg.rules import log_to
from brightseg.rules.demo import synth_plate

with log_to(snakemake.log[0]):
    synth_plate(
        str(Path(snakemake.output.images).parent),
        snakemake.wildcards.plate,
        dict(snakemake.params.spec),
        seed=int(snakemake.params.seed),
        pixel_size_um=float(snakemake.params.pixel_size_um),
    )
