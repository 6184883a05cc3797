"""Rule evalset_compare: ensemble, checkpoints and baselines on an evaluation set (Table 2)."""

from brightseg.rules import log_to
from brightseg.rules.evalsets import evalset_compare

with log_to(snakemake.log[0]):
    evalset_compare(
        snakemake.input.ensemble,
        dict(snakemake.params.spec),
        {key: str(snakemake.output[key]) for key in snakemake.output.keys()},
        inference=dict(snakemake.params.inference),
        illumination=dict(snakemake.params.illumination),
        threshold=float(snakemake.params.threshold),
        paired_metrics=list(snakemake.params.paired_metrics),
        seed=int(snakemake.params.seed),
        uncertainty=bool(snakemake.params.get("uncertainty", False)),
    )
