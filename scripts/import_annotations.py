"""Rule import_annotations: CVAT/COCO export -> instance labels, masks, manifest."""

from brightseg.pipeline import import_annotations, log_to

with log_to(snakemake.log[0]):
    import_annotations(
        snakemake.input.export,
        snakemake.params.images,
        snakemake.output.manifest,
        snakemake.output.skipped,
        plate=snakemake.wildcards.plate,
        labels=snakemake.params.labels,
        on_bad_input=snakemake.params.on_bad_input,
        mask_threshold=float(snakemake.params.mask_threshold),
        mask_suffix=snakemake.params.mask_suffix,
    )
