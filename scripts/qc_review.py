"""Rule qc_review: images whose QC score exceeds qc.review_threshold, and the score figure."""

from pathlib import Path

from brightseg.rules import log_to
from brightseg.rules.qc import qc_review

with log_to(snakemake.log[0]):
    qc_review(
        snakemake.input[0],
        snakemake.output.review,
        str(Path(snakemake.output.png).with_suffix("")),
        qc=dict(snakemake.params.qc),
    )
