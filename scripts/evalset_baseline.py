"""Rule evalset_baseline: the classical top-hat + Otsu baseline on an evaluation set."""

from brightseg.rules import log_to
from brightseg.rules.evalsets import evalset_baseline

with log_to(snakemake.log[0]):
    evalset_baseline(snakemake.params.images, snakemake.output[0], otsu=dict(snakemake.params.otsu))
