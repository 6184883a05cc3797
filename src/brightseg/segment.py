"""``brightseg segment``: images in, masks, labels, overlays and a cell table out.

The quick path for a folder of images without a plate sheet, with a model bundle
(:mod:`brightseg.bundle`).  Each image goes through the code of the workflow's rules:
the bundle's top-hat correction (:func:`brightseg.illumination.correct_illumination`),
quantised as the plate store quantises it (:func:`brightseg.platestore.quantise`), the
ensemble (:meth:`brightseg.ensemble.Ensemble.predict`), the watershed
(:func:`brightseg.instances.split_with_config`) and the morphometrics
(:func:`brightseg.morphometry.measure_cells`), so an image segmented here gets the masks
and measurements the workflow gives it.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .bundle import load_ensemble, read_manifest
from .config import IlluminationConfig, InferenceConfig, InstancesConfig
from .errors import InputError
from .illumination import correct_illumination, plate_polarity, radius_to_px
from .instances import split_with_config
from .io import IMAGE_SUFFIXES, read_image, write_parquet, write_png, write_text, write_tiff
from .morphometry import contour_overlay, measure_cells
from .platestore import quantise
from .progress import progress
from .tiling import to_uint8

log = logging.getLogger(__name__)


def expand_images(specs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, directories (their images, sorted) and globs, as one sorted, unique list."""
    found: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found += [q for q in sorted(p.iterdir()) if q.suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_file():
            found.append(p)
        else:
            matches = [
                Path(q)
                for q in sorted(glob.glob(str(spec)))
                if Path(q).is_file() and Path(q).suffix.lower() in IMAGE_SUFFIXES
            ]
            if not matches:
                raise InputError(spec, "no such file or directory, and no image matches it")
            found += matches
    unique = sorted(dict.fromkeys(q.resolve() for q in found))
    stems = pd.Series([q.stem for q in unique])
    dup = stems[stems.duplicated()].tolist()
    if dup:
        raise InputError(specs[0], f"two images with the stem {dup[0]!r}: outputs would collide")
    if not unique:
        raise InputError(specs[0] if specs else "IMAGES", "no images given")
    return unique


def _decide_mode(files: Sequence[Path], ill: IlluminationConfig, radius_px: int) -> str:
    """The top-hat mode for all ``files``: as the workflow decides one plate's (``auto``:
    the polarity statistic over up to 8 evenly spaced images)."""
    if ill.mode != "auto":
        return ill.mode
    mode, stat, flag, n_sampled = plate_polarity(
        len(files),
        lambda i: read_image(files[i]),
        radius_px,
        "auto",
        method=ill.method,
        uncertain_mode=ill.uncertain_mode,
    )
    (log.warning if flag != "ok" else log.info)(
        "polarity statistic %+.3f over %d images -> mode %s%s",
        stat,
        n_sampled,
        mode,
        " (uncertain: illumination.uncertain_mode; check the overlays for inverted cells)"
        if flag != "ok"
        else "",
    )
    return mode


def segment_images(
    images: Sequence[str | os.PathLike],
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    pixel_size_um: float | None = None,
    instances: InstancesConfig | dict | None = None,
    inference: InferenceConfig | dict | None = None,
) -> pd.DataFrame:
    """Segment images with a model bundle; write per-image outputs and one cell table.

    Parameters
    ----------
    images : sequence of path
        Files, directories or globs (:func:`expand_images`).
    model : path
        A bundle directory or ``.tar``.
    out_dir : path
        Gets ``<stem>_labels.tif`` (instances), ``<stem>_mask.png`` (0/255),
        ``<stem>_overlay.png`` (contours on the image, the cells' label numbers, the stem
        as title and a scale bar), ``cells.parquet``/``cells.csv``
        (one row per cell, ``image_id`` its file stem) and ``images.tsv``.
    pixel_size_um : float, optional
        Of the images; default the bundle's training pixel size.
    instances, inference : config block or dict, optional
        Watershed settings (default: the bundle's) and the inference settings a bundle
        does not fix (batch size, precision).

    Returns
    -------
    pandas.DataFrame
        The cell table.
    """
    files = expand_images(images)
    manifest = read_manifest(model)
    pre = manifest["preprocessing"]
    if int(pre.get("input_planes", 1)) > 1:
        raise InputError(
            model,
            f"the bundle's models take {pre['input_planes']} focal planes per image: segment "
            "multi-focal images through the workflow, with a plate sheet that declares their "
            "planes (columns z_planes, z_select)",
        )
    px = pixel_size_um if pixel_size_um is not None else pre.get("pixel_size_um")
    if px is None:
        raise InputError(model, "the bundle records no pixel size: give --pixel-size-um")
    ill = IlluminationConfig.from_dict(pre["illumination"])
    radius_px = radius_to_px(ill.radius, ill.unit, float(px))
    mode = _decide_mode(files, ill, radius_px)
    if isinstance(instances, InstancesConfig):
        instances = instances.as_dict()
    recorded = manifest.get("postprocessing", {}).get("instances", {})
    inst = InstancesConfig.coerce({**recorded, **dict(instances or {})})
    ens = load_ensemble(model, InferenceConfig.coerce(inference))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables, rows = [], []
    for path in progress(files, desc="segment"):
        raw = read_image(path).astype("float32")
        image = quantise(
            correct_illumination(
                raw,
                radius_px,
                mode=mode,
                method=ill.method,
                percentiles=tuple(ill.percentiles),
            )
        )
        seed = None
        if inst.method == "distance":
            _, prob, mask = ens.predict(image, pixel_size_um=float(px))
        else:  # interior / log_seeds: the 3-class ensemble's seed-class maps too
            _, prob, mask, seeds = ens.predict(image, with_seed=True, pixel_size_um=float(px))
            if seeds is not None:
                seed = to_uint8(seeds.mean(0)).astype("float32") / 255.0
        prob_q = to_uint8(prob).astype("float32") / 255.0 if inst.use_prob else None
        labels = split_with_config(mask, float(px), inst, prob=prob_q, seed_prob=seed)
        stem = path.stem
        write_tiff(
            labels.astype(np.uint32 if labels.max() > 65535 else np.uint16),
            out / f"{stem}_labels.tif",
        )
        write_png((mask > 0).astype(np.uint8) * 255, out / f"{stem}_mask.png")
        overlay = contour_overlay(image, labels, pixel_size_um=float(px), title=stem)
        write_png(overlay, out / f"{stem}_overlay.png")
        cells = measure_cells(labels, image, pixel_size_um=float(px), meta={"image_id": path.stem})
        tables.append(cells)
        rows.append(
            {
                "image": path.name,
                "n_cells": int(labels.max()),
                "foreground_fraction": float(np.count_nonzero(mask) / mask.size),
            }
        )
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    write_parquet(cells, out / "cells.parquet")
    write_text(cells.to_csv(index=False, lineterminator="\n"), out / "cells.csv")
    write_text(pd.DataFrame(rows).to_csv(sep="\t", index=False), out / "images.tsv")
    log.info("segment: %d images, %d cells -> %s", len(files), len(cells), out)
    return cells
