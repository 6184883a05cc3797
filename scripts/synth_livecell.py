"""Rule synth_livecell: the demo's LIVECell-format fixture."""

from brightseg.rules import log_to
from brightseg.rules.demo import synth_livecell

with log_to(snakemake.log[0]):
    synth_livecell(
        snakemake.output[0],
        n_per_line=int(snakemake.params.n_per_line),
        seed=int(snakemake.params.seed),
    )
