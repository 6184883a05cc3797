"""Rules of the inference stage: ensemble prediction, instance splitting, morphometrics.

Each rule writes its arrays into a label store of its own (a declared ``directory()``
output: ``results/predictions/{plate}.zarr`` holds ``prob`` and ``mask``,
``results/instances/{plate}.zarr`` holds ``cells``); the plate store stays an input, so
Snakemake sees every file a rule writes, and a rerun replaces them whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from ..bundle import load_ensemble
from ..config import InferenceConfig, InstancesConfig, MorphometryConfig
from ..ensemble import SEED_LABEL
from ..errors import InputError
from ..instances import split_with_config, write_cellpose_masks, write_imagej_rois
from ..io import atomic_path, write_png, write_text
from ..morphometry import (
    CellTableWriter,
    contour_overlay,
    summarise_image,
    write_image_table,
)
from ..morphometry import (
    aggregate_tables as _aggregate,
)
from ..morphometry import (
    measure_cells as _measure,
)
from ..platestore import create_label_store, open_labels, open_plate
from ..progress import progress
from . import atomic_dir

log = logging.getLogger(__name__)

PARTIAL = ".{name}.partial-"


def _store_identity(store: str | os.PathLike) -> str:
    """What a plate store holds: its root metadata (images, illumination) and write time."""
    meta = Path(store) / "zarr.json"
    h = hashlib.sha256(meta.read_bytes())
    h.update(str(meta.stat().st_mtime_ns).encode())
    return h.hexdigest()


def predict(
    store: str, ensemble_tsv: str, labels_out: str, summary_out: str, *, inference
) -> pd.DataFrame:
    """Rule ``predict``: every selected checkpoint predicts every image of a plate; votes combined.

    The ``prob`` and ``mask`` labels go to ``labels_out`` (a label store), the per-image
    summary to ``summary_out``.  The job streams into a partial store named after what
    produces the masks (the checkpoints' content hashes, the inference parameters and the
    plate store's identity): a killed job resumes there, image by image, while a job with
    a changed threshold, retrained models or a re-corrected plate starts afresh (stale
    partial stores of this output are removed).  The finished store is renamed into place.
    """
    cfg = InferenceConfig.coerce(inference)
    ens = load_ensemble(ensemble_tsv, cfg)
    plate = open_plate(store, mode="r")
    dest = Path(labels_out)
    key = hashlib.sha256((ens.key + _store_identity(store)).encode()).hexdigest()[:20]
    prefix = PARTIAL.format(name=dest.name)
    partial = dest.with_name(prefix + key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(prefix + "*"):
        if stale != partial:
            log.info("removing a partial prediction of other models or settings: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    if partial.is_dir():
        log.info("resuming the partial prediction %s", partial)
        labels = open_labels(partial, store, mode="r+")
    else:
        labels = create_label_store(partial, plate)
    df = ens.predict_plate(labels, desc=f"predict {plate.plate}")
    write_text(df.to_csv(sep="\t", index=False, lineterminator="\n"), summary_out)
    with atomic_path(dest, is_dir=True) as tmp:
        os.replace(partial, tmp)
    return df


def split_instances(
    store: str,
    predictions: str,
    labels_out: str,
    summary_out: str,
    *,
    instances: InstancesConfig | dict,
    pixel_size_um: float,
) -> None:
    """Rule ``split_instances``: watershed of every predicted mask into the ``cells`` label."""
    cfg = InstancesConfig.coerce(instances)
    pred = open_labels(predictions, store)
    rows = []
    with atomic_path(labels_out, is_dir=True) as tmp:
        out = create_label_store(tmp, pred)
        for image_id in progress(
            list(pred.images["image_id"]), desc=f"split_instances {pred.plate}"
        ):
            mask = pred.read_label(image_id, "mask")
            prob = (
                pred.read_label(image_id, "prob").astype("float32") / 255.0
                if cfg.use_prob
                else None
            )
            seed = None
            if cfg.method != "distance":
                if not pred.has_label(image_id, SEED_LABEL):
                    raise InputError(
                        predictions,
                        f"instances.method {cfg.method!r} needs the seed-class probability of "
                        f"a 3-class ensemble (label {SEED_LABEL!r}), but {image_id} has none: "
                        "the models are binary",
                    )
                seed = pred.read_label(image_id, SEED_LABEL).astype("float32") / 255.0
            labels = split_with_config(mask, pixel_size_um, cfg, prob=prob, seed_prob=seed)
            out.write_label(image_id, "cells", labels)
            rows.append({"image_id": image_id, "n_cells": int(labels.max())})
    write_text(pd.DataFrame(rows).to_csv(sep="\t", index=False), summary_out)


def measure_cells(
    store: str,
    instances: str,
    cells_out: str,
    images_out: str,
    overlay_dir: str,
    exports_dir: str,
    *,
    morphometry: MorphometryConfig | dict,
) -> None:
    """Rule ``measure_cells``: per-cell morphometrics and per-image summaries of a plate.

    Also writes contour overlays of the first ``n_overlays`` images (titled with the
    image id, cell label numbers and a scale bar from the plate's pixel size) and, per
    ``morphometry.export``, Cellpose ``_masks.tif`` and ImageJ ROI zips into
    ``exports_dir`` (a declared directory output, empty when both are off).
    """
    cfg = MorphometryConfig.coerce(morphometry)
    ps = open_labels(instances, store)
    meta_by_id = ps.images.set_index("image_id")
    summaries = []
    export = dict(cfg.export)
    with (
        atomic_dir(overlay_dir) as tmp_overlays,
        atomic_dir(exports_dir) as tmp_exports,
        CellTableWriter(cells_out) as writer,
    ):
        ids = list(ps.images["image_id"])
        for i, image_id in enumerate(progress(ids, desc=f"measure_cells {ps.plate}")):
            labels = ps.read_label(image_id, "cells")
            image = ps.read(image_id)
            m = meta_by_id.loc[image_id]
            meta = {
                "plate": ps.plate,
                "image_id": image_id,
                "well": f"{m['row']}{int(m['column']):02d}",
                "row": str(m["row"]),
                "column": int(m["column"]),
                "field": int(m["field"]),
                "timepoint": int(m["timepoint"]),
            }
            cells = _measure(labels, image, pixel_size_um=ps.pixel_size_um, meta=meta)
            writer.write(cells)
            summaries.append(
                summarise_image(
                    cells, labels, pixel_size_um=ps.pixel_size_um, meta=meta, intensity=image
                )
            )
            if i < cfg.n_overlays:
                overlay = contour_overlay(
                    image, labels, pixel_size_um=ps.pixel_size_um, title=image_id
                )
                write_png(overlay, tmp_overlays / f"{image_id}.png")
            if export.get("cellpose"):
                write_cellpose_masks(labels, tmp_exports / f"{image_id}_masks.tif")
            if export.get("imagej_rois"):
                write_imagej_rois(labels, tmp_exports / f"{image_id}_rois.zip")
    write_image_table(summaries, images_out)


def aggregate_tables(paths: list[str], out: str) -> None:
    """Rule ``aggregate_tables``: per-plate image summaries into one table."""
    _aggregate(paths, out)
