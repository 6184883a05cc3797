"""Rule evalset_compare: ensemble, checkpoints and baselines on an evaluation set (Table 2)."""

from brightseg.byod import evaluate_set
from brightseg.pipeline import log_to

with log_to(snakemake.log[0]):
    evaluate_set(
        snakemake.input.ensemble,
        dict(snakemake.params.spec),
        {key: str(snakemake.output[key]) for key in snakemake.output.keys()},
        inference=dict(snakemake.params.inference),
        illumination=dict(snakemake.params.illumination),
        threshold=float(snakemake.params.threshold),
        paired_metrics=list(snakemake.params.paired_metrics),
        seed=int(snakemake.params.seed),
    )
