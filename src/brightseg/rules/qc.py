"""Rules of quality control: the review list, its CVAT/COCO export, QC on evaluation sets."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..annotations.export import review_exports
from ..config import QcConfig
from ..errors import InputError
from ..figures import qc_score_distribution, qc_vs_metric, save_figure
from ..io import read_image, write_parquet, write_png, write_text
from ..platestore import open_labels
from ..qc import (
    QC_COLUMNS,
    REVIEW_COLUMNS,
    decode_entropy,
    decode_variance,
    image_qc,
    review_table,
    spearman,
)
from ..tiling import to_uint8
from . import atomic_dir

log = logging.getLogger(__name__)

#: The QC parts correlated with the evaluation metric in ``qc.json``.
QC_PARTS = ("qc_score", "qc_mean_entropy", "qc_mean_variance", "qc_uncertain_border")


def qc_review(
    images: str, review_out: str, figure_stem: str, *, qc: QcConfig | Mapping
) -> pd.DataFrame:
    """Rule ``qc_review``: images with ``qc_score > qc.review_threshold`` into ``review.tsv``.

    Also draws the distribution of the QC score over all images with the threshold
    (``figure_stem``.png/.svg/.parquet).
    """
    cfg = QcConfig.coerce(qc)
    df = pd.read_parquet(images)
    review = review_table(df, cfg.review_threshold)
    write_text(review.to_csv(sep="\t", index=False, lineterminator="\n"), review_out)
    cols = ["plate", "image_id", *[c for c in QC_COLUMNS if c != "store_path"]]
    data = df[cols].assign(flagged=df["qc_score"].to_numpy(float) > cfg.review_threshold)
    fig = qc_score_distribution(data, threshold=cfg.review_threshold)
    save_figure(fig, data, figure_stem)
    log.info(
        "qc review: %d of %d images have qc_score > %g", len(review), len(df), cfg.review_threshold
    )
    return review


def export_review(
    items: list[dict],
    out_dir: str | os.PathLike,
    *,
    qc: QcConfig | Mapping,
    task_name: str = "brightseg review",
) -> pd.DataFrame:
    """Write ``images/<name>``, ``cvat.xml`` and ``coco.json`` of label images into a folder.

    Parameters
    ----------
    items : list of dict
        ``name`` (file name in the task, e.g. ``<image_id>.png``), ``labels`` (instance
        labels) and optionally ``image`` (float in [0, 1] or integer image: written as an
        8-bit PNG ``images/<name>`` for the CVAT task).
    out_dir : path-like
        Created; its files are replaced.
    qc : QcConfig or mapping
        ``export_shapes``, ``tolerance_px``, ``min_iou``.

    Returns
    -------
    DataFrame
        ``name, n_cells, polygons, masks`` per image.
    """
    cfg = QcConfig.coerce(qc)
    out = Path(out_dir)
    rows = []
    for it in items:
        _, _, counts = review_exports(
            [it], shapes=cfg.export_shapes, tolerance_px=cfg.tolerance_px, min_iou=cfg.min_iou
        )
        rows.append({"name": it["name"], "n_cells": sum(counts.values()), **counts})
        if it.get("image") is not None:
            img = np.asarray(it["image"])
            if img.dtype.kind == "f":
                img = to_uint8(img)
            elif img.dtype != np.uint8:
                lo, hi = float(img.min()), float(img.max())
                img = to_uint8((img.astype(np.float32) - lo) / max(hi - lo, 1e-9))
            write_png(img, out / "images" / it["name"])
    xml, coco, _ = review_exports(
        items,
        task_name=task_name,
        shapes=cfg.export_shapes,
        tolerance_px=cfg.tolerance_px,
        min_iou=cfg.min_iou,
    )
    write_text(xml, out / "cvat.xml")
    write_text(json.dumps(coco, indent=1) + "\n", out / "coco.json")
    return pd.DataFrame(rows, columns=["name", "n_cells", "polygons", "masks"])


def qc_export_cvat(
    review: str,
    stores: Mapping[str, str],
    instances: Mapping[str, str],
    out_dir: str,
    *,
    qc: QcConfig | Mapping,
) -> pd.DataFrame:
    """Rule ``qc_export_cvat``: the flagged images' predicted cells as CVAT/COCO task imports.

    For each plate with flagged images, ``out_dir/<plate>/`` gets ``images/<image_id>.png``
    (the illumination-corrected image, 8 bit), ``cvat.xml`` ("CVAT for images 1.1") and
    ``coco.json`` ("COCO 1.0") of the ``cells`` labels; ``out_dir/manifest.tsv`` lists
    ``plate, image_id, name, n_cells, polygons, masks``.  An image name's stem is its
    image id, the stem of its source file, so a corrected export imports against the
    plate's own images folder as well (plate sheet ``annotations``).
    """
    cfg = QcConfig.coerce(qc)
    table = pd.read_csv(review, sep="\t", dtype={"plate": str, "image_id": str})
    missing = [c for c in REVIEW_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(review, f"review table lacks columns {missing}")
    frames = []
    with atomic_dir(out_dir) as tmp:
        for plate, group in table.groupby("plate", sort=True):
            if plate not in instances:
                raise InputError(review, f"plate {plate!r} is not in this workflow's plates")
            labels = open_labels(instances[plate], stores[plate])
            items = [
                {
                    "name": f"{image_id}.png",
                    "labels": labels.read_label(image_id, "cells"),
                    "image": labels.read(image_id),
                }
                for image_id in sorted(group["image_id"])
            ]
            df = export_review(items, Path(tmp) / plate, qc=cfg, task_name=f"{plate} review")
            df.insert(0, "image_id", [Path(n).stem for n in df["name"]])
            df.insert(0, "plate", plate)
            frames.append(df)
        cols = ["plate", "image_id", "name", "n_cells", "polygons", "masks"]
        manifest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
        write_text(
            manifest[cols].to_csv(sep="\t", index=False, lineterminator="\n"),
            Path(tmp) / "manifest.tsv",
        )
    log.info("exported %d flagged images of %d plates", len(manifest), len(frames))
    return manifest


def evalset_qc(
    predictions: str,
    per_image: str,
    table_out: str,
    json_out: str,
    figure_stem: str,
    *,
    qc: QcConfig | Mapping,
    name: str,
    metric: str = "dice",
) -> dict:
    """Rule ``evalset_qc``: per-image QC of the ensemble on an evaluation set vs its Dice.

    Reads the ensemble's ``<image>_prob.png``, ``_mask.png``, ``_variance.png`` and
    ``_entropy.png`` written by ``evalset_compare`` (with ``qc.uncertainty``), computes
    :func:`brightseg.qc.image_qc` inside the predicted mask, and correlates each QC part
    with the ensemble's per-image ``metric`` (Spearman).

    Returns
    -------
    dict
        What ``json_out`` holds: ``set``, ``metric``, ``n_images``, ``spearman`` (per QC
        part: ``rho``, ``p_value``, ``n``) and ``review_threshold``.
    """
    cfg = QcConfig.coerce(qc)
    long_df = pd.read_parquet(per_image)
    ens = long_df[(long_df["method"] == "ensemble") & (long_df["metric"] == metric)]
    if ens.empty:
        raise InputError(per_image, f"no ensemble {metric!r} rows")
    pred = Path(predictions)
    rows = []
    for image, value in zip(ens["image"].astype(str), ens["value"].astype(float), strict=True):
        paths = {k: pred / f"{image}_{k}.png" for k in ("prob", "mask", "variance", "entropy")}
        for k, p in paths.items():
            if not p.is_file():
                raise InputError(p, f"missing (evalset_compare writes it with qc.uncertainty: {k})")
        prob = read_image(paths["prob"]).astype(np.float32) / 255.0
        mask = read_image(paths["mask"]) > 0
        scores = image_qc(
            prob,
            mask,
            entropy=decode_entropy(read_image(paths["entropy"])),
            variance=decode_variance(read_image(paths["variance"])),
            uncertain_band=cfg.uncertain_band,
            border_px=cfg.border_px,
        )
        rows.append({"set": name, "image": image, **scores, metric: value})
    table = pd.DataFrame(rows)
    write_parquet(table, table_out)
    result = {
        "set": name,
        "metric": metric,
        "n_images": len(table),
        "review_threshold": cfg.review_threshold,
        "n_flagged": int((table["qc_score"] > cfg.review_threshold).sum()),
        "spearman": {part: spearman(table[part], table[metric]) for part in QC_PARTS},
    }
    write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", json_out)
    rho = result["spearman"]["qc_score"]["rho"]
    fig = qc_vs_metric(table, metric=metric, rho=rho, threshold=cfg.review_threshold, title=name)
    save_figure(fig, table, figure_stem)
    log.info("evaluation set %s: Spearman rho(qc_score, %s) = %.3f", name, metric, rho)
    return result
