"""brightseg: segmentation of unstained live-cell microscopy plates.

All logic of the Snakemake workflow lives in this package; the workflow's
``scripts/`` only unpack ``snakemake.input/output/params`` and call one
function from here.
"""

__version__ = "0.1.0"
