"""Rule import_annotations: CVAT/COCO export or mask folder -> instance labels, masks, manifest."""

from brightseg.rules import log_to
from brightseg.rules.preprocess import import_annotations

with log_to(snakemake.log[0]):
    import_annotations(
        snakemake.input.export,
        snakemake.params.images,
        snakemake.output.manifest,
        snakemake.output.skipped,
        plate=snakemake.wildcards.plate,
        annotations=dict(snakemake.params.annotations),
        on_bad_input=snakemake.params.on_bad_input,
        limits=dict(snakemake.params.limits),
        focus=snakemake.params.focus,
    )
