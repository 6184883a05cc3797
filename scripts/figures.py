"""Rule figures: the paper's figures as PNG + SVG + the plotted data."""

from pathlib import Path

from brightseg.rules import log_to
from brightseg.rules.evaluation import figures

with log_to(snakemake.log[0]):
    written = figures(
        {key: value for key, value in snakemake.input.items()},
        str(Path(snakemake.output[0]).parent),
        seed=int(snakemake.params.seed),
    )
    missing = sorted(set(map(str, snakemake.output)) - set(written))
    if missing:
        raise RuntimeError(f"figures not written: {missing}")
