"""Rule synth_livecell: a LIVECell-format fixture for the demo."""

from brightseg.pipeline import log_to
from brightseg.synth import synth_livecell

with log_to(snakemake.log[0]):
    synth_livecell(
        snakemake.output[0],
        n_per_line=int(snakemake.params.n_per_line),
        seed=int(snakemake.params.seed),
    )
