"""Rule qc_export_cvat: the flagged images' predictions as CVAT/COCO task imports."""

from brightseg.rules import log_to
from brightseg.rules.qc import qc_export_cvat

with log_to(snakemake.log[0]):
    qc_export_cvat(
        snakemake.input.review,
        dict(snakemake.params.stores),
        dict(snakemake.params.instances),
        snakemake.output[0],
        qc=dict(snakemake.params.qc),
    )
