"""Rule evalset_qc: per-image QC score of the ensemble against its Dice on an evaluation set."""

from pathlib import Path

from brightseg.rules import log_to
from brightseg.rules.qc import evalset_qc

with log_to(snakemake.log[0]):
    evalset_qc(
        snakemake.input.predictions,
        snakemake.input.per_image,
        snakemake.output.table,
        snakemake.output.json,
        str(Path(snakemake.output.png).with_suffix("")),
        qc=dict(snakemake.params.qc),
        name=snakemake.wildcards.evalset,
    )
