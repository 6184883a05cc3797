"""Rule select_checkpoints: the top-K epoch checkpoints that vote in the ensemble."""

from brightseg.pipeline import log_to, select_ensemble

with log_to(snakemake.log[0]):
    select_ensemble(
        list(snakemake.input),
        snakemake.output[0],
        k=int(snakemake.params.k),
        window=int(snakemake.params.window),
    )
