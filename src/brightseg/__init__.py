"""brightseg: segmentation of unstained live-cell microscopy plates.

All logic of the Snakemake workflow lives in this package; the workflow's
``scripts/`` only unpack ``snakemake.input/output/params`` and call one
function of :mod:`brightseg.rules`.
"""

import os as _os

# TensorFlow's C++ start-up notices (oneDNN, CPU features, absl) and albumentations'
# update check are noise in a normal run's terminal and logs; set before TensorFlow is
# first imported.  An explicit value in the environment wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from . import _quiet  # noqa: E402

_quiet.install()

__version__ = "0.1.0"
