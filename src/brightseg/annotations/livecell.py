"""LIVECell import and reports.

LIVECell (Edlund et al. 2021, CC BY-NC 4.0) ships phase-contrast images of
eight cell lines (704 x 520 px, 8-bit TIFF) with COCO annotations:

* ``images``: ``id``, ``file_name``, ``width``, ``height``;
* ``annotations``: ``id``, ``image_id``, ``category_id``, polygon
  ``segmentation``, ``area``, ``bbox``, ``iscrowd`` -- a LIST in the
  LIVECell-wide files ``livecell_coco_{train,val,test}.json`` but a DICT keyed
  by the id in the per-cell-type files ``LIVECell_single_cells/<line>/*.json``
  (both are accepted);
* one category ``cell``.

Images live under ``livecell_{train_val,test}_images/<CellType>/`` and are
named ``<CellType>_Phase_<Well>_<Location>_<Timestamp>_<Crop>.tif``.

:func:`import_livecell` writes one ground-truth label image and binary mask
per image, skipping (and listing with the reason) the images on the paper's
exclusion list and any image that cannot be read.  :func:`group_table`,
:func:`summary_table` and :func:`ap_table` build the paper's Tables 3-5 and
the comparison with LIVECell's published mask AP.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import (
    IMAGE_SUFFIXES,
    load_json,
    read_image,
    write_parquet,
    write_png,
    write_text,
    write_tiff,
)
from ..metrics import coco_ap, coco_from_dict, labels_to_coco, labels_to_detections
from ..progress import progress
from .cvat import coco_string_runs

log = logging.getLogger(__name__)

#: LIVECell image size (height, width).
LIVECELL_SHAPE = (520, 704)

#: LIVECell's published per-cell-line mask AP in % (Edlund et al. 2021):
#: ``(anchor_free, anchor_based)``.
LIVECELL_PUBLISHED_AP: dict[str, tuple[float, float]] = {
    "A172": (34.57, 38.02),
    "BT474": (42.60, 43.00),
    "BV2": (45.69, 52.60),
    "Huh7": (45.85, 51.83),
    "MCF7": (37.30, 37.94),
    "SHSY5Y": (23.91, 24.92),
    "SkBr3": (65.85, 65.39),
    "SKOV3": (49.39, 54.12),
    "all": (47.78, 47.89),
}

#: Metrics of the paper's Table 5, in order: (column, label).
SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("ssim", "SSIM"),
    ("accuracy", "Accuracy"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
    ("hausdorff", "Hausdorff"),
)

_NAME_RE = re.compile(
    r"^(?P<cell_line>[A-Za-z0-9-]+)_Phase_(?P<well>[A-Za-z]+\d+)_(?P<location>\d+)"
    r"_(?P<timestamp>\d+d\d+h\d+m)_(?P<crop>\d+)$"
)


# --------------------------------------------------------------------------
# names and files
# --------------------------------------------------------------------------
def _stem(file_name: str) -> str:
    name = Path(str(file_name).strip()).name
    p = Path(name)
    return p.stem if p.suffix.lower() in IMAGE_SUFFIXES else name


def parse_name(file_name: str) -> dict[str, Any]:
    """Split a LIVECell file name into its parts.

    ``A172_Phase_A7_1_00d04h00m_2.tif`` gives ``cell_line`` A172, ``well`` A7,
    ``location`` 1, ``timestamp`` 00d04h00m, ``crop`` 2 and ``group``
    ``A172_Phase_A7`` (one well of one cell line, the unit of the paper's
    Tables 3 and 4).

    Raises
    ------
    InputError
        The name does not follow ``<CellType>_Phase_<Well>_<Location>_<Timestamp>_<Crop>``.
    """
    stem = _stem(file_name)
    m = _NAME_RE.match(stem)
    if m is None:
        raise InputError(
            file_name,
            "not a LIVECell image name (<CellType>_Phase_<Well>_<Location>_<Timestamp>_<Crop>)",
        )
    d = m.groupdict()
    return {
        "cell_line": d["cell_line"],
        "well": d["well"],
        "location": int(d["location"]),
        "timestamp": d["timestamp"],
        "crop": int(d["crop"]),
        "group": f"{d['cell_line']}_Phase_{d['well']}",
    }


def load_excluded(path: str | os.PathLike) -> set[str]:
    """Names of images to exclude, one per line (``#`` comments, blank lines ignored).

    Returns the names WITHOUT their image extension, so both
    ``A172_Phase_A7_1_01d04h00m_3`` and ``A172_Phase_A7_1_01d04h00m_3.tif`` in
    the file (or in an annotation) match; see :func:`is_excluded`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "exclusion list does not exist")
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_stem(line))
    return names


def is_excluded(file_name: str, excluded: Iterable[str]) -> bool:
    """True if ``file_name`` is on the list, with or without an image extension."""
    return _stem(file_name) in {_stem(e) for e in excluded}


def find_image(images_root: str | os.PathLike, file_name: str) -> Path:
    """Locate a LIVECell image below ``images_root``.

    Looked for, in order, in ``<root>``, ``<root>/images`` and their
    ``livecell_test_images`` / ``livecell_train_val_images`` subfolders, each
    with and without the ``<CellType>`` folder.

    Raises
    ------
    InputError
        The image is in none of these places.
    """
    root = Path(images_root)
    name = Path(file_name).name
    try:
        line = parse_name(name)["cell_line"]
    except InputError:
        line = None
    tried = []
    for base in (root, root / "images"):
        for split in ("", "livecell_test_images", "livecell_train_val_images"):
            folder = base / split if split else base
            for sub in (line, None):
                cand = (folder / sub / name) if sub else (folder / name)
                tried.append(cand)
                if cand.is_file():
                    return cand
    raise InputError(
        root, f"image {name} not found (looked in {len(tried)} places, e.g. {tried[0]})"
    )


# --------------------------------------------------------------------------
# annotations
# --------------------------------------------------------------------------
def read_annotations(path: str | os.PathLike) -> dict:
    """Read a LIVECell COCO file and normalise it for ``pycocotools``.

    ``annotations`` (and ``images``) given as a dict keyed by id are turned
    into lists sorted by id; a missing ``id`` inside a dict entry is taken
    from its key.

    Raises
    ------
    InputError
        Unreadable JSON, missing ``images``/``annotations``/``categories``, or
        entries without the required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "annotation file does not exist")
    data = load_json(path.read_bytes(), path)  # size, depth and digits limited
    if not isinstance(data, dict):
        raise InputError(path, "top level is not a JSON object")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise InputError(path, f"missing keys {missing} (a COCO file needs images, annotations)")
    for key in ("images", "annotations"):
        value = data[key]
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                v = dict(v)
                v.setdefault("id", int(k) if str(k).isdigit() else k)
                items.append(v)
            data[key] = sorted(items, key=lambda a: (str(type(a["id"])), a["id"]))
        elif not isinstance(value, list):
            raise InputError(path, f"'{key}' must be a list or a dict, not {type(value).__name__}")
    required = {
        "images": ("id", "file_name", "width", "height"),
        "annotations": ("id", "image_id", "segmentation"),
    }
    for key, fields in required.items():
        for i, entry in enumerate(data[key]):
            lack = [f for f in fields if f not in entry]
            if lack:
                raise InputError(path, f"{key}[{i}] lacks {lack}")
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", 1)
    return data


def coco_from_annotations(data: dict):
    """``pycocotools.coco.COCO`` from a normalised dataset dict (no printing)."""

    return coco_from_dict(data)


def _rle_counts(counts: bytes | str) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``)."""

    return np.asarray(coco_string_runs(counts), dtype=np.int64)


def _rle_foreground(rle: dict) -> np.ndarray:
    """Fortran-order linear indices of the foreground pixels of an RLE."""
    counts = rle["counts"]
    counts = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else _rle_counts(counts)
    ends = np.cumsum(counts)
    starts = ends - counts
    fg_start, fg_len = starts[1::2], counts[1::2]
    total = int(fg_len.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(fg_start - np.concatenate([[0], np.cumsum(fg_len)[:-1]]), fg_len)
    return offsets + np.arange(total, dtype=np.int64)


def annotations_to_labels(coco, image_id: int) -> tuple[np.ndarray, dict[str, int]]:
    """Instance label image of one image from its COCO annotations.

    Annotations are rasterised with pycocotools (``annToRLE``) and painted in
    annotation-id order; where annotations overlap, the pixel keeps the label
    of the first (lower id) annotation.  Labels are 1..n in that order;
    annotations left without a pixel are dropped.

    Returns
    -------
    labels : ndarray of uint16 (or uint32 beyond 65535 objects)
    info : dict
        ``n_annotations``, ``n_cells`` (labels in the image),
        ``n_empty`` (annotations without a pixel), ``n_invalid`` (annotations
        pycocotools cannot rasterise), ``overlap_pixels``.
    """
    img = coco.imgs[image_id]
    h, w = int(img["height"]), int(img["width"])
    anns = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
    dtype = np.uint16 if len(anns) < 65535 else np.uint32
    flat = np.zeros(h * w, dtype=dtype)  # Fortran order: index = x * h + y
    info = {"n_annotations": len(anns), "n_cells": 0, "n_empty": 0, "n_invalid": 0}
    overlap = 0
    for ann in anns:
        try:
            idx = _rle_foreground(coco.annToRLE(ann))
        except Exception as exc:  # noqa: BLE001 - a malformed polygon is bad input
            log.warning(
                "image %s: annotation %s cannot be rasterised (%s)", image_id, ann["id"], exc
            )
            info["n_invalid"] += 1
            continue
        idx = idx[(idx >= 0) & (idx < h * w)]
        free = idx[flat[idx] == 0]
        overlap += len(idx) - len(free)
        if len(free) == 0:
            info["n_empty"] += 1
            continue
        info["n_cells"] += 1
        flat[free] = info["n_cells"]
    info["overlap_pixels"] = int(overlap)
    return flat.reshape(w, h).T.copy(), info


# --------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------
def import_livecell(
    annotation_paths: Sequence[str | os.PathLike] | str | os.PathLike,
    images_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    exclude: Iterable[str] | str | os.PathLike | None = None,
    expected: Mapping[str, str] | None = None,
):
    """Write LIVECell ground truth as label images and masks, with an index.

    Parameters
    ----------
    annotation_paths : path-like or sequence of path-like
        LIVECell COCO files (LIVECell-wide or per cell type).  An image listed
        in several files is imported once (from the first file).
    images_root : path-like
        Folder holding the images (see :func:`find_image`).
    out_dir : path-like
        Output folder: ``labels/<stem>_labels.tif`` (uint16), ``masks/<stem>_mask.png``
        (0/255), ``index.parquet`` and ``qc.tsv``.
    exclude : path-like or iterable of str, optional
        The path of an exclusion list (see :func:`load_excluded`), or the
        names to skip (with or without extension).
    expected : mapping of str to str, optional
        Files known to be bad (name -> why, e.g. the demo's deliberately truncated image):
        still checked, skipped and listed in ``qc.tsv``, but logged as expected, not as a
        warning.

    Returns
    -------
    images_df : pandas.DataFrame
        One row per imported image: ``image`` (stem), ``file_name``,
        ``image_path``, ``labels_path``, ``mask_path`` (relative to
        ``out_dir``), ``annotation_file``, ``image_id``, ``cell_line``,
        ``well``, ``location``, ``timestamp``, ``crop``, ``group``,
        ``height``, ``width``, ``n_annotations``, ``n_cells``, ``n_empty``,
        ``n_invalid``, ``overlap_pixels``; sorted by ``image``.
    qc_df : pandas.DataFrame
        ``file``, ``annotation_file`` and ``reason`` for every image skipped:
        on the exclusion list, not found, unreadable or truncated (the
        :class:`InputError` message of :func:`brightseg.io.read_image`), size
        different from the annotation, unparseable name.
    """

    if isinstance(annotation_paths, str | os.PathLike):
        annotation_paths = [annotation_paths]
    if exclude is None:
        excluded: set[str] = set()
    elif isinstance(exclude, str | os.PathLike):
        excluded = load_excluded(exclude)
    else:
        excluded = {_stem(e) for e in exclude}
    out_dir = Path(out_dir)
    known = {_stem(k): v for k, v in (expected or {}).items()}
    rows: list[dict] = []
    qc: list[dict] = []
    seen: set[str] = set()
    for ann_path in annotation_paths:
        ann_path = Path(ann_path)
        data = read_annotations(ann_path)
        coco = coco_from_annotations(data)
        images = sorted(data["images"], key=lambda im: str(im["file_name"]))
        log.info("%s: %d images, %d annotations", ann_path, len(images), len(data["annotations"]))
        for img in progress(images, desc=f"livecell import {ann_path.name}"):
            file_name = Path(str(img["file_name"])).name
            stem = _stem(file_name)
            if stem in seen:
                continue
            seen.add(stem)

            def skip(
                reason: str, file_name: str = file_name, ann: Path = ann_path, expected=False
            ) -> None:
                qc.append({"file": file_name, "annotation_file": str(ann), "reason": reason})
                if expected:  # on the exclude list: what the paper did, not a problem
                    log.info("expected: %s excluded (%s)", file_name, reason)
                elif _stem(file_name) in known:
                    log.info(
                        "expected: %s skipped (%s): %s", file_name, known[_stem(file_name)], reason
                    )
                else:
                    log.warning("skipping %s: %s", file_name, reason)

            if stem in excluded:
                skip("excluded: on the list of corrupt images", expected=True)
                continue
            try:
                parts = parse_name(file_name)
            except InputError as exc:
                skip(exc.message)
                continue
            try:
                path = find_image(images_root, file_name)
                arr = read_image(path)
            except InputError as exc:
                skip(str(exc))
                continue
            h, w = int(img["height"]), int(img["width"])
            if arr.shape != (h, w):
                skip(f"image is {arr.shape[0]}x{arr.shape[1]} but annotated as {h}x{w}")
                continue
            labels, info = annotations_to_labels(coco, img["id"])
            labels_rel = Path("labels") / f"{stem}_labels.tif"
            mask_rel = Path("masks") / f"{stem}_mask.png"
            write_tiff(labels, out_dir / labels_rel, compression="zlib")
            write_png(((labels > 0) * 255).astype(np.uint8), out_dir / mask_rel)
            rows.append(
                {
                    "image": stem,
                    "file_name": file_name,
                    "image_path": str(path),
                    "labels_path": labels_rel.as_posix(),
                    "mask_path": mask_rel.as_posix(),
                    "annotation_file": str(ann_path),
                    "image_id": int(img["id"]),
                    **parts,
                    "height": h,
                    "width": w,
                    **info,
                }
            )
    images_df = pd.DataFrame(
        rows,
        columns=[
            "image",
            "file_name",
            "image_path",
            "labels_path",
            "mask_path",
            "annotation_file",
            "image_id",
            "cell_line",
            "well",
            "location",
            "timestamp",
            "crop",
            "group",
            "height",
            "width",
            "n_annotations",
            "n_cells",
            "n_empty",
            "n_invalid",
            "overlap_pixels",
        ],
    )
    images_df = images_df.sort_values("image", kind="mergesort").reset_index(drop=True)
    qc_df = pd.DataFrame(qc, columns=["file", "annotation_file", "reason"])
    qc_df = qc_df.sort_values("file", kind="mergesort").reset_index(drop=True)
    write_text(qc_df.to_csv(sep="\t", index=False, lineterminator="\n"), out_dir / "qc.tsv")
    write_parquet(images_df, out_dir / "index.parquet")
    n_excluded = int(qc_df["reason"].str.startswith("excluded:").sum()) if len(qc_df) else 0
    n_known = sum(
        1
        for f, r in zip(qc_df["file"], qc_df["reason"], strict=True)
        if _stem(f) in known and not r.startswith("excluded:")
    )
    log.info(
        "LIVECell import: %d images imported; expected: %d files on the exclude list (%s) "
        "excluded%s; %d other files skipped (see qc.tsv)",
        len(images_df),
        n_excluded,
        exclude if isinstance(exclude, str | os.PathLike) else "as given",
        f", {n_known} known bad files skipped" if n_known else "",
        len(qc_df) - n_excluded - n_known,
    )
    return images_df, qc_df


# --------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------
def _with_names(per_image, column: str):
    """Add ``group``/``cell_line`` parsed from ``column`` if they are missing."""
    need = [c for c in ("group", "cell_line") if c not in per_image.columns]
    if not need:
        return per_image
    if column not in per_image.columns:
        raise ValueError(f"table lacks {need} and an '{column}' column to parse them from")
    parsed = [parse_name(str(n)) for n in per_image[column]]
    out = per_image.copy()
    for c in need:
        out[c] = [p[c] for p in parsed]
    return out


def group_table(
    per_image,
    threshold: float = 0.888,
    *,
    score: str = "f1",
    by: str = "group",
    image_column: str = "image",
):
    """Per-group count, mean and std of a score, split at a threshold (Tables 3, 4).

    Parameters
    ----------
    per_image : pandas.DataFrame
        Per-image scores with ``score`` and ``group`` (or image names in
        ``image_column`` to parse the group from).
    threshold : float
        Groups with mean >= threshold are ``above`` (Table 3), the others
        ``below`` (Table 4).

    Returns
    -------
    pandas.DataFrame
        ``group``, ``cell_line``, ``n``, ``mean``, ``std`` (ddof 1; NaN for a
        single image), ``side`` (``above``/``below``); ``above`` rows first,
        each side by decreasing mean, then by group.
    """

    df = _with_names(per_image, image_column)
    if score not in df.columns:
        raise ValueError(f"table lacks the score column {score!r}; has {list(df.columns)}")
    g = df.groupby(by, sort=True)
    out = pd.DataFrame(
        {
            "cell_line": g["cell_line"].first(),
            "n": g[score].count().astype("int64"),
            "mean": g[score].mean(),
            "std": g[score].std(ddof=1),
        }
    ).reset_index()
    out["side"] = np.where(out["mean"] >= threshold, "above", "below")
    out["_o"] = (out["side"] == "below").astype(int)
    out = out.sort_values(["_o", "mean", by], ascending=[True, False, True], kind="mergesort")
    return out.drop(columns="_o").reset_index(drop=True)


def summary_table(per_image, *, metrics: Sequence[tuple[str, str]] = SUMMARY_METRICS):
    """Mean and std of every metric over the images (Table 5).

    Non-finite values (e.g. an infinite Hausdorff distance) are left out of
    the metric's mean and std; ``n`` counts the values used.

    Returns
    -------
    pandas.DataFrame
        ``metric`` (label), ``mean``, ``std`` (ddof 1), ``n``, in the order of
        ``metrics``; metrics missing from the table are skipped.
    """

    rows = []
    for col, label in metrics:
        if col not in per_image.columns:
            continue
        v = pd.to_numeric(per_image[col], errors="coerce").to_numpy(float)
        v = v[np.isfinite(v)]
        rows.append(
            {
                "metric": label,
                "mean": float(v.mean()) if v.size else math.nan,
                "std": float(v.std(ddof=1)) if v.size > 1 else math.nan,
                "n": int(v.size),
            }
        )
    if not rows:
        raise ValueError(f"table has none of the metrics {[c for c, _ in metrics]}")
    return pd.DataFrame(rows)


def _canonical_line(name: str) -> str:
    lookup = {k.lower(): k for k in LIVECELL_PUBLISHED_AP}
    return lookup.get(str(name).lower(), str(name))


def ap_table(per_line_ap, *, column: str = "AP", scale: float = 100.0):
    """Our mask AP per cell line next to LIVECell's published numbers.

    Parameters
    ----------
    per_line_ap : mapping or pandas.DataFrame
        ``{cell_line: AP}`` or a table with ``cell_line`` and ``column``
        (e.g. :func:`ap_per_cell_line` output); AP as a fraction.
    scale : float
        Factor to express our AP in % like the published values (100).

    Returns
    -------
    pandas.DataFrame
        ``cell_line``, ``ap`` (ours, %), ``anchor_free``, ``anchor_based``
        (published, %), ``diff_anchor_free``, ``diff_anchor_based`` (ours
        minus published); published cell lines first in their order, ``all``
        last, other names in between.
    """

    if isinstance(per_line_ap, Mapping):
        items = {str(k): float(v) for k, v in per_line_ap.items()}
    else:
        if "cell_line" not in per_line_ap.columns or column not in per_line_ap.columns:
            raise ValueError(
                f"table needs 'cell_line' and {column!r}; has {list(per_line_ap.columns)}"
            )
        items = {
            str(a): float(b)
            for a, b in zip(per_line_ap["cell_line"], per_line_ap[column], strict=True)
        }
    ours = {_canonical_line(k): v * scale for k, v in items.items()}
    order = [k for k in LIVECELL_PUBLISHED_AP if k != "all" and k in ours]
    order += sorted(k for k in ours if k not in LIVECELL_PUBLISHED_AP)
    order += ["all"] if "all" in ours else []
    rows = []
    for line in order:
        free, based = LIVECELL_PUBLISHED_AP.get(line, (math.nan, math.nan))
        rows.append(
            {
                "cell_line": line,
                "ap": ours[line],
                "anchor_free": free,
                "anchor_based": based,
                "diff_anchor_free": ours[line] - free,
                "diff_anchor_based": ours[line] - based,
            }
        )
    return pd.DataFrame(rows)


def ap_per_cell_line(items: Iterable[Mapping[str, Any]], *, total: int | None = None):
    """COCO mask AP per cell line and over all images (LIVECell's evaluator settings).

    Parameters
    ----------
    items : iterable of mapping
        Per image: ``cell_line``, ``true_labels``, ``pred_labels`` and
        optionally ``prob`` (object scores = mean probability; else 1).
        Consumed lazily: only the compact RLEs are kept.

    Returns
    -------
    pandas.DataFrame
        ``cell_line`` (sorted, then ``all``), ``n_images``, ``AP``, ``AP50``,
        ``AP75``, ``APs``, ``APm``, ``APl``, ``AR`` (fractions).

    Notes
    -----
    The ground truth is the imported label images (overlaps resolved), not the
    original polygons, so numbers can differ slightly from an evaluation on
    LIVECell's JSON.
    """

    gts: dict[str, dict] = {}
    dts: dict[str, list] = {}
    image_id = 0
    for item in progress(items, total=total, desc="livecell AP"):
        image_id += 1
        line = str(item["cell_line"])
        gt = labels_to_coco([item["true_labels"]], image_ids=[image_id])
        d = gts.setdefault(line, {"images": [], "annotations": [], "categories": gt["categories"]})
        d["images"] += gt["images"]
        d["annotations"] += gt["annotations"]
        dts.setdefault(line, []).extend(
            labels_to_detections(item["pred_labels"], image_id, prob=item.get("prob"))
        )
    rows = []
    everything = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    all_dt: list = []
    for line in sorted(gts):
        gt = gts[line]
        for i, ann in enumerate(gt["annotations"], start=1):
            ann["id"] = i
        rows.append({"cell_line": line, "n_images": len(gt["images"]), **coco_ap(gt, dts[line])})
        everything["images"] += gt["images"]
        everything["annotations"] += [dict(a) for a in gt["annotations"]]
        all_dt += dts[line]
    for i, ann in enumerate(everything["annotations"], start=1):
        ann["id"] = i
    if gts:
        rows.append(
            {
                "cell_line": "all",
                "n_images": len(everything["images"]),
                **coco_ap(everything, all_dt),
            }
        )
    return pd.DataFrame(rows)
