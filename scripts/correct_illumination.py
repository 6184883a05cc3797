"""Rule correct_illumination: top-hat correction of a plate into its OME-Zarr store."""

from brightseg.rules import log_to
from brightseg.rules.preprocess import correct_illumination

with log_to(snakemake.log[0]):
    correct_illumination(
        snakemake.params.images,
        snakemake.output.store,
        snakemake.output.skipped,
        plate=snakemake.wildcards.plate,
        regex=snakemake.params.regex,
        modality=snakemake.params.modality,
        pixel_size_um=float(snakemake.params.pixel_size_um),
        illumination=dict(snakemake.params.illumination),
        chunk=int(snakemake.params.chunk),
        on_bad_input=snakemake.params.on_bad_input,
        limits=dict(snakemake.params.limits),
        focus=snakemake.params.focus,
    )
