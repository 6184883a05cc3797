"""Rule measure_cells: per-cell morphometrics of one plate."""

from brightseg.rules import log_to
from brightseg.rules.inference import measure_cells

with log_to(snakemake.log[0]):
    measure_cells(
        snakemake.input.store,
        snakemake.input.instances,
        snakemake.output.cells,
        snakemake.output.images,
        snakemake.output.overlays,
        snakemake.output.exports,
        morphometry=dict(snakemake.params.morphometry),
        predictions=snakemake.input.get("predictions"),
        qc=dict(snakemake.params.get("qc") or {}),
    )
