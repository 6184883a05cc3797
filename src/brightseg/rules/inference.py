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
from ..config import InferenceConfig, InstancesConfig, MorphometryConfig, QcConfig
from ..ensemble import SEED_LABEL
from ..errors import InputError
from ..focus import display_plane
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
from ..qc import (
    ENTROPY_LABEL,
    VARIANCE_LABEL,
    decode_entropy,
    decode_variance,
    image_qc,
    image_schema,
)
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
    store: str,
    ensemble_tsv: str,
    labels_out: str,
    summary_out: str,
    *,
    inference,
    uncertainty: bool = False,
    student: str | None = None,
    qc_images: int = 2,
) -> pd.DataFrame:
    """Rule ``predict``: every selected checkpoint predicts every image of a plate; votes combined.

    The ``prob`` and ``mask`` labels go to ``labels_out`` (a label store), the per-image
    summary to ``summary_out``.  The job streams into a partial store named after what
    produces the masks (the checkpoints' content hashes, the inference parameters and the
    plate store's identity): a killed job resumes there, image by image, while a job with
    a changed threshold, retrained models or a re-corrected plate starts afresh (stale
    partial stores of this output are removed).  The finished store is renamed into place.

    With ``uncertainty`` (``qc.uncertainty``) the store also holds the ``variance`` and
    ``entropy`` labels (:mod:`brightseg.qc`).

    With ``student`` (``ensemble.distill: true``: the distilled ``student.keras``, or a
    bundle holding one) the student alone predicts every image, thresholded at the
    ensemble's threshold; the ensemble also predicts the first ``qc_images`` images, and
    the summary gains ``predictor`` and, for those images, ``qc_ensemble_dice`` (Dice of
    the student's mask against the ensemble's) and ``qc_ensemble_prob_mae`` (mean absolute
    difference of the probabilities).
    """
    cfg = InferenceConfig.coerce(inference)
    ens = load_ensemble(ensemble_tsv, cfg)
    predictor = ens
    if student:
        from ..distill import load_student

        predictor = load_student(
            student,
            ens.inference,
            threshold=ens.inference.threshold,
            working_pixel_size_um=ens.working_pixel_size_um,
        )
    plate = open_plate(store, mode="r")
    dest = Path(labels_out)
    ident = predictor.key + _store_identity(store) + ("+uncertainty" if uncertainty else "")
    key = hashlib.sha256(ident.encode()).hexdigest()[:20]
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
    df = predictor.predict_plate(labels, desc=f"predict {plate.plate}", uncertainty=uncertainty)
    if student:
        df = _ensemble_qc(df, ens, plate, labels, qc_images)
    write_text(df.to_csv(sep="\t", index=False, lineterminator="\n"), summary_out)
    with atomic_path(dest, is_dir=True) as tmp:
        os.replace(partial, tmp)
    return df


def _ensemble_qc(df: pd.DataFrame, ens, plate, labels, n_images: int) -> pd.DataFrame:
    """The student's masks against the ensemble's on the first ``n_images`` of a plate."""
    import numpy as np

    from ..distill import pooled_dice

    df = df.assign(predictor="student", qc_ensemble_dice=np.nan, qc_ensemble_prob_mae=np.nan)
    for i, image_id in enumerate(df["image_id"].iloc[:n_images]):
        _, prob, mask = ens.predict(plate.read(image_id), pixel_size_um=plate.pixel_size_um)
        student_mask = np.asarray(labels.read_label(image_id, "mask"))
        student_prob = np.asarray(labels.read_label(image_id, "prob"), np.float32) / 255
        df.loc[df.index[i], "qc_ensemble_dice"] = pooled_dice([student_mask], [mask])
        df.loc[df.index[i], "qc_ensemble_prob_mae"] = float(np.abs(student_prob - prob).mean())
    if n_images and len(df):
        log.info(
            "QC: student vs ensemble on %d images: Dice %.4f (lowest %.4f)",
            int(df["qc_ensemble_dice"].notna().sum()),
            df["qc_ensemble_dice"].mean(),
            df["qc_ensemble_dice"].min(),
        )
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
    predictions: str | None = None,
    qc: QcConfig | dict | None = None,
) -> None:
    """Rule ``measure_cells``: per-cell morphometrics and per-image summaries of a plate.

    Also writes contour overlays of the first ``n_overlays`` images (titled with the
    image id, cell label numbers and a scale bar from the plate's pixel size) and, per
    ``morphometry.export``, Cellpose ``_masks.tif`` and ImageJ ROI zips into
    ``exports_dir`` (a declared directory output, empty when both are off).

    With ``qc.uncertainty`` the image table gets the QC columns of
    :func:`brightseg.qc.image_qc` (:data:`brightseg.qc.QC_COLUMNS`), computed from the
    ``prob``, ``variance`` and ``entropy`` labels of ``predictions`` inside the cells.
    """
    cfg = MorphometryConfig.coerce(morphometry)
    qcfg = QcConfig.coerce(qc or {})
    ps = open_labels(instances, store)
    pred = None
    if qcfg.uncertainty:
        if predictions is None:
            raise InputError("qc.uncertainty", "measure_cells needs the predictions store")
        pred = open_labels(predictions, store)
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
            image = display_plane(ps.read(image_id))  # focal planes: the middle one
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
            summary = summarise_image(
                cells, labels, pixel_size_um=ps.pixel_size_um, meta=meta, intensity=image
            )
            if pred is not None:
                summary.update(_image_qc(pred, image_id, labels, qcfg, store))
            summaries.append(summary)
            if i < cfg.n_overlays:
                overlay = contour_overlay(
                    image, labels, pixel_size_um=ps.pixel_size_um, title=image_id
                )
                write_png(overlay, tmp_overlays / f"{image_id}.png")
            if export.get("cellpose"):
                write_cellpose_masks(labels, tmp_exports / f"{image_id}_masks.tif")
            if export.get("imagej_rois"):
                write_imagej_rois(labels, tmp_exports / f"{image_id}_rois.zip")
    write_image_table(summaries, images_out, schema=image_schema(qcfg.uncertainty))


def _image_qc(pred, image_id: str, labels, qcfg: QcConfig, store: str) -> dict:
    """QC columns of one image from the uncertainty labels of its prediction."""
    for name in ("prob", VARIANCE_LABEL, ENTROPY_LABEL):
        if not pred.has_label(image_id, name):
            raise InputError(
                pred.label_path,
                f"image {image_id!r} has no {name!r} label (predict with qc.uncertainty: true)",
            )
    prob = pred.read_label(image_id, "prob").astype("float32") / 255.0
    out = image_qc(
        prob,
        labels,
        entropy=decode_entropy(pred.read_label(image_id, ENTROPY_LABEL)),
        variance=decode_variance(pred.read_label(image_id, VARIANCE_LABEL)),
        uncertain_band=qcfg.uncertain_band,
        border_px=qcfg.border_px,
    )
    out["store_path"] = f"{store}/{pred.field_path(image_id)}"
    return out


def aggregate_tables(paths: list[str], out: str) -> None:
    """Rule ``aggregate_tables``: per-plate image summaries into one table."""
    _aggregate(paths, out)


def explain(store: str, ensemble: str, out_dir: str, *, explain: dict) -> None:
    """Rule ``explain``: Grad-CAM maps of each voting model for a plate's first images.

    Writes ``<image_id>_gradcam_<model>.png`` (image and map overlay, colour bar, scale
    bar) and ``.npy`` (the map) per image and model, and ``explain.tsv`` (one row each:
    the layer, the mask's foreground fraction, the map's share inside the mask) into
    ``out_dir`` (:func:`brightseg.explain.explain_images`).
    """
    from ..config import ExplainConfig
    from ..explain import explain_images, load_voting_models

    cfg = ExplainConfig.coerce(explain)
    ps = open_plate(store, mode="r")
    ids = list(ps.images["image_id"])[: cfg.images]
    names, models, working = load_voting_models(ensemble, with_working=True)
    with atomic_dir(out_dir) as tmp:
        rows = explain_images(
            [ps.read(i) for i in ids],
            ids,
            models,
            names,
            tmp,
            layer=cfg.layer,
            threshold=cfg.threshold,
            pixel_size_um=ps.pixel_size_um,
            working_pixel_size_um=working,
        )
        write_text(pd.DataFrame(rows).to_csv(sep="\t", index=False), tmp / "explain.tsv")
    log.info("explain: %d images x %d models -> %s", len(ids), len(models), out_dir)
