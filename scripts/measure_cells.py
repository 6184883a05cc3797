"""Rule measure_cells: per-cell morphometrics of one plate."""

from brightseg.pipeline import log_to, measure_plate

with log_to(snakemake.log[0]):
    measure_plate(
        snakemake.input.store,
        snakemake.input.instances,
        snakemake.output.cells,
        snakemake.output.images,
        snakemake.output.overlays,
        n_overlays=int(snakemake.params.n_overlays),
        export=dict(snakemake.params.export),
    )
