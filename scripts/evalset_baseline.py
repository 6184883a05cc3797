"""Rule evalset_baseline: the classical top-hat + Otsu baseline's masks for an evaluation set."""

from brightseg.byod import otsu_baseline_for_set
from brightseg.pipeline import log_to

with log_to(snakemake.log[0]):
    otsu_baseline_for_set(
        snakemake.params.images, snakemake.output[0], otsu=dict(snakemake.params.otsu)
    )
