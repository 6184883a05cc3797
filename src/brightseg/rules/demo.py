"""Rules of the embedded demo: synthetic plates, evaluation set and LIVECell fixture."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd

from ..io import atomic_path
from ..synth import derive_seed, synth_eval_set
from ..synth import synth_livecell as _synth_livecell
from ..synth import synth_plate as _synth_plate

log = logging.getLogger(__name__)


def synth_plate(
    out_dir: str, plate: str, spec: Mapping, *, seed: int, pixel_size_um: float
) -> None:
    """Rule ``synth_plate``: one synthetic plate (images, ground truth, CVAT + COCO exports).

    ``spec`` is one entry of ``demo.synth`` (defaults filled by the config schema).  Each
    plate's seed derives from the config seed and the plate id, so adding a plate leaves
    the others' bytes unchanged.
    """
    optional = (
        {"mean_radius_px": float(spec["mean_radius_px"])} if spec.get("mean_radius_px") else {}
    )
    if spec.get("planes"):  # a multi-focal plate (brightseg.focus)
        optional["planes"] = int(spec["planes"])
        optional["plane_files"] = bool(spec.get("plane_files", False))
    _synth_plate(
        out_dir,
        plate,
        n_images=int(spec["n_images"]),
        shape=tuple(spec["shape"]),
        seed=derive_seed(seed, plate),
        modality=spec["modality"],
        pixel_size_um=pixel_size_um,
        cells_per_image=tuple(spec["cells_per_image"]),
        n_fields=int(spec["n_fields"]),
        n_timepoints=int(spec["n_timepoints"]),
        annotate=True,
        **optional,
    )


def synth_evalset(out_dir: str, spec: Mapping, *, seed: int) -> pd.DataFrame:
    """Rule ``synth_evalset``: the demo's held-out set (``images/``, ``masks/``)."""
    optional: dict = (
        {"mean_radius_px": float(spec["mean_radius_px"])} if spec.get("mean_radius_px") else {}
    )
    if spec.get("difficulty") is not None:
        optional["difficulty"] = tuple(float(v) for v in spec["difficulty"])
    with atomic_path(out_dir, is_dir=True) as tmp:
        df = synth_eval_set(
            tmp,
            n_images=int(spec["n_images"]),
            shape=tuple(spec["shape"]),
            seed=derive_seed(seed, "evalset"),
            modality=str(spec["modality"]),
            cells_per_image=tuple(spec["cells_per_image"]),
            **optional,
        )
    log.info("synthetic evaluation set: %d images in %s", len(df), out_dir)
    return df


def synth_livecell(out_dir: str, *, seed: int, n_per_line: int) -> None:
    """Rule ``synth_livecell``: the LIVECell-format fixture of the demo."""
    _synth_livecell(out_dir, seed=seed, n_per_line=n_per_line)
