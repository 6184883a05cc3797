"""Rule synth_evalset: the demo's synthetic held-out evaluation set."""

from brightseg.rules import log_to
from brightseg.rules.demo import synth_evalset

with log_to(snakemake.log[0]):
    synth_evalset(snakemake.output[0], dict(snakemake.params.spec), seed=int(snakemake.params.seed))
