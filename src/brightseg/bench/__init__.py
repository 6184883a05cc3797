"""Benchmarks (``brightseg bench ...``): each prints its figures and ends with one
machine-readable ``key=value`` line, ratios against a baseline measured in the same run.

* :mod:`.tophat` -- exact vs fast top-hat (``brightseg bench tophat``)
* :mod:`.instances` -- fast watershed chain vs scikit-image's plain chain
* :mod:`.ensemble` -- raw forward vs zarr-to-zarr predict vs per-image predict
* :mod:`.train` -- step time fp32/bf16 and input-pipeline throughput
* :mod:`.dag` -- ``snakemake -n`` over many plates
"""
