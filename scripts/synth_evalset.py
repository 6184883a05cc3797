"""Rule synth_evalset: the demo's synthetic held-out evaluation set (images/, masks/)."""

from brightseg.byod import synth_demo_evalset
from brightseg.pipeline import log_to

with log_to(snakemake.log[0]):
    synth_demo_evalset(
        snakemake.output[0], dict(snakemake.params.spec), seed=int(snakemake.params.seed)
    )
