"""Held-out evaluation sets and the comparison with other methods (paper Table 2).

An evaluation set is configured as::

    evaluation_sets:
      - name: heldout
        images: data/heldout/images         # full-size images
        masks: data/heldout/masks           # ground truth, same stems
        mask_suffix: ""                     # optional, as in brightseg.annotations.maskfolder
        baselines:                          # optional: other methods' predicted masks
          cellpose: data/heldout/cellpose   # <stem>.<png|tif|jpg>, any mask encoding
          stardist: data/heldout/stardist

Masks of every kind :func:`brightseg.annotations.maskfolder.read_mask` understands are
accepted (0/1, 0/255, RGB, JPEG, instance labels); they are compared as binary
masks (non-zero = foreground).

The per-image table is long (``image, method, metric, value``; plus ``set``
when it comes from :func:`compare_methods`), with the pixel metrics of
:func:`brightseg.metrics.pixel_metrics`: Dice, IoU, SSIM, accuracy,
precision, recall, F1, Hausdorff and HD95 (pixels).  :func:`summary_table`
gives mean and standard deviation per method and metric,
:func:`table2_layout` the paper's layout (methods x metrics, ``mean ± std``),
and :func:`paired_comparison_table` tests our method against each baseline on
the same images: paired t-test (:func:`scipy.stats.ttest_rel`), Wilcoxon
signed-rank test (:func:`scipy.stats.wilcoxon`, zero differences dropped,
scipy's default) and Cohen's ``d_z = mean(diff) / std(diff, ddof=1)``, with
``diff = ours - baseline`` per image.

:func:`otsu_baseline` is a simple classical method (top-hat, Gaussian
smoothing, Otsu threshold, small-object removal, hole filling) that the demo
uses to have a second method to compare with.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import stats
from skimage.filters import threshold_otsu

from .annotations.maskfolder import (
    DEFAULT_PIXEL_SIZE_UM,
    NAME_PATTERN,
    _check_name,
    match_files,
    read_mask,
)
from .errors import InputError
from .io import IMAGE_SUFFIXES, image_header, read_image, write_png
from .metrics import pixel_metrics
from .progress import progress

log = logging.getLogger(__name__)

__all__ = [
    "BASELINE_PREFIX",
    "METRICS",
    "load_eval_set",
    "baseline_methods",
    "otsu_baseline",
    "write_otsu_baseline",
    "per_image_table",
    "wide_table",
    "summary_table",
    "table2_layout",
    "paired_comparison_table",
    "compare_methods",
    "compare_from_dirs",
]

#: Column prefix of the baseline mask paths in :func:`load_eval_set`'s table.
BASELINE_PREFIX = "baseline_"

#: Method name of the ensemble in the evaluation-set tables.
ENSEMBLE = "ensemble"

#: Metrics of the paired comparison (ensemble - baseline per image) by default.
PAIRED_METRICS = ("f1", "dice", "iou", "hd95")

#: Metrics of the per-image table, in Table 2's order (brightseg.metrics.PIXEL_METRICS).
METRICS = ("dice", "iou", "ssim", "accuracy", "precision", "recall", "f1", "hausdorff", "hd95")

_RESERVED = ("set", "image_id", "image", "mask")


def _metric_names() -> tuple[str, ...]:
    try:
        from .metrics import PIXEL_METRICS
    except ImportError:  # pragma: no cover - metrics is part of the package
        return METRICS
    return tuple(PIXEL_METRICS)


# --------------------------------------------------------------------------- evaluation sets


def _spec_dir(spec: Mapping, key: str, where: str, base: Path | None) -> Path:
    value = spec.get(key)
    if not value or not isinstance(value, str | os.PathLike):
        raise InputError(f"{where}.{key}", "missing or not a path")
    path = Path(value)
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_dir():
        raise InputError(path, f"{where}.{key}: folder does not exist")
    return path


def _index_by_stem(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
            out.setdefault(p.stem, []).append(p)
    return out


def _image_shape(path: Path) -> tuple[int, int]:
    """(height, width) from the header of an image file (:func:`brightseg.io.image_header`)."""
    return image_header(path).shape


def load_eval_set(
    spec: Mapping[str, Any],
    *,
    threshold: float = 127,
    base: str | os.PathLike | None = None,
    check: bool = True,
) -> pd.DataFrame:
    """Index one held-out evaluation set and its baseline predictions.

    Parameters
    ----------
    spec : mapping
        ``{"name", "images", "masks"}`` and optionally ``"mask_suffix"`` and
        ``"baselines": {method: folder}`` (see the module docstring).
    threshold : float
        Threshold for lossy masks (see :func:`brightseg.annotations.maskfolder.read_mask`).
    base : path-like, optional
        Folder that relative paths of ``spec`` are relative to.
    check : bool
        Decode every ground-truth and baseline mask and check its size against
        the image's (clear errors now rather than mid-evaluation).

    Returns
    -------
    pandas.DataFrame
        ``set``, ``image_id`` (stem), ``image``, ``mask`` and one column
        ``baseline_<method>`` per baseline with its mask path; sorted by
        ``image_id``.

    Raises
    ------
    InputError
        A missing key or folder; an image without a mask or a mask without an
        image; a baseline without a mask for an image (naming both); an
        unreadable file; a size mismatch.
    """

    if not isinstance(spec, Mapping):
        raise InputError("evaluation_sets", f"each entry must be a mapping, got {spec!r}")
    name = str(spec.get("name") or "")
    if not name:
        raise InputError("evaluation_sets", f"entry without a name: {dict(spec)}")
    where = f"evaluation_sets[{name}]"
    base_dir = None if base is None else Path(base)
    images_dir = _spec_dir(spec, "images", where, base_dir)
    masks_dir = _spec_dir(spec, "masks", where, base_dir)
    suffix = str(spec.get("mask_suffix") or "")
    pairs, _ = match_files(images_dir, masks_dir, mask_suffix=suffix, on_bad_input="error")
    if not pairs:
        raise InputError(images_dir, f"{where}: no images")
    baselines = spec.get("baselines") or {}
    if not isinstance(baselines, Mapping):
        raise InputError(f"{where}.baselines", "must map method names to folders")
    rows = [
        {"set": name, "image_id": stem, "image": str(img), "mask": str(msk)}
        for stem, img, msk in pairs
    ]
    for method in baselines:
        if not str(method) or str(method) in _RESERVED:
            raise InputError(f"{where}.baselines", f"invalid method name {method!r}")
        folder = _spec_dir(baselines, method, f"{where}.baselines", base_dir)
        index = _index_by_stem(folder)
        for row, (stem, img, _) in zip(rows, pairs, strict=True):
            hits = index.get(stem) or (index.get(stem + suffix) if suffix else None) or []
            if len(hits) != 1:
                what = "several masks" if hits else "no mask"
                raise InputError(
                    folder / stem,
                    f"baseline {method!r} has {what} for image {img} (looked for '{stem}' with "
                    f"suffix {'/'.join(IMAGE_SUFFIXES)} in {folder})",
                )
            row[f"{BASELINE_PREFIX}{method}"] = str(hits[0])
    if check:
        for row in progress(rows, desc=f"check {name}"):
            shape = _image_shape(Path(row["image"]))
            for key in [k for k in row if k == "mask" or k.startswith(BASELINE_PREFIX)]:
                mode = spec.get("mask_mode", "auto") if key == "mask" else "auto"
                mask, _, _ = read_mask(row[key], threshold=threshold, expect=mode)
                if mask.shape != shape:
                    raise InputError(
                        row[key],
                        f"mask is {mask.shape[1]}x{mask.shape[0]} (width x height) but image "
                        f"{row['image']} is {shape[1]}x{shape[0]}",
                    )
    return pd.DataFrame(rows).sort_values("image_id", kind="stable").reset_index(drop=True)


def baseline_methods(eval_df: pd.DataFrame) -> list[str]:
    """Baseline method names of a :func:`load_eval_set` table, in column order."""
    return [c[len(BASELINE_PREFIX) :] for c in eval_df.columns if c.startswith(BASELINE_PREFIX)]


# --------------------------------------------------------------------------- Otsu baseline


def _tophat(image: np.ndarray, radius_px: int, mode: str, method: str) -> np.ndarray:
    """White/black top-hat (brightseg.illumination if available, else OpenCV)."""
    try:
        from .illumination import tophat
    except ImportError:
        tophat = None
    if tophat is not None:
        return tophat(image, radius_px, mode=mode, method=method)

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    op = cv2.MORPH_TOPHAT if mode == "white" else cv2.MORPH_BLACKHAT
    return cv2.morphologyEx(image.astype(np.float32), op, k)


def otsu_baseline(
    image: np.ndarray,
    *,
    radius_px: int = 50,
    mode: str = "black",
    method: str = "fast",
    sigma: float = 1.0,
    min_size: int = 30,
    fill_holes: bool = True,
) -> np.ndarray:
    """Classical segmentation: top-hat, Otsu threshold, clean-up.

    Parameters
    ----------
    image : ndarray
        2-D greyscale image (any numeric dtype; raw or corrected).
    radius_px : int
        Top-hat disk radius in pixels (larger than the cells).
    mode : {"black", "white", "both"}
        ``"black"``: dark objects (``closing - image``); ``"white"``: bright
        objects (``image - opening``); ``"both"``: the sum of the two (cells
        with a bright halo and a dark body, as in brightfield near focus).
    method : {"fast", "exact"}
        Top-hat method of :func:`brightseg.illumination.tophat` (with
        OpenCV's exact top-hat when that module is missing).
    sigma : float
        Gaussian smoothing of the top-hat before thresholding (0: none).
    min_size : int
        Objects (8-connected) smaller than this many pixels are removed.
    fill_holes : bool
        Fill holes of the objects (:func:`scipy.ndimage.binary_fill_holes`).

    Returns
    -------
    ndarray of uint8
        0/1 mask; all zero for a constant image.
    """

    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise InputError(None, f"otsu_baseline needs a 2-D image, got shape {image.shape}")
    if mode not in ("black", "white", "both"):
        raise InputError("mode", f"must be 'black', 'white' or 'both', got {mode!r}")
    radius_px = int(radius_px)
    if radius_px < 1:
        raise InputError("radius_px", f"must be >= 1, got {radius_px}")
    img = np.nan_to_num(image.astype(np.float32))
    modes = ("white", "black") if mode == "both" else (mode,)
    th = sum(_tophat(img, radius_px, m, method) for m in modes)
    if sigma > 0:
        th = ndi.gaussian_filter(th, float(sigma))
    if float(th.max()) <= float(th.min()):
        return np.zeros(img.shape, dtype=np.uint8)
    fg = th > threshold_otsu(th)
    if min_size > 1:
        lab, n = ndi.label(fg, structure=np.ones((3, 3), dtype=bool))
        if n:
            sizes = np.bincount(lab.ravel())
            keep = sizes >= int(min_size)
            keep[0] = False
            fg = keep[lab]
    if fill_holes:
        fg = ndi.binary_fill_holes(fg)
    return fg.astype(np.uint8)


def write_otsu_baseline(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    radius_px: int = 50,
    mode: str = "black",
    method: str = "fast",
    sigma: float = 1.0,
    min_size: int = 30,
    fill_holes: bool = True,
    on_bad_input: str = "error",
) -> pd.DataFrame:
    """Run :func:`otsu_baseline` on every image of a folder.

    Writes ``<out_dir>/<stem>.png`` (uint8 0/255), each atomically.

    Parameters
    ----------
    images_dir, out_dir : path-like
        Input images (TIFF/PNG/JPEG; RGB reduced as
        :func:`brightseg.io.read_image` does) and output folder.
    radius_px, mode, method, sigma, min_size, fill_holes
        See :func:`otsu_baseline`.
    on_bad_input : {"error", "skip"}
        An unreadable image: raise, or log and leave it out.

    Returns
    -------
    pandas.DataFrame
        ``image_id``, ``image``, ``mask``, ``foreground_fraction``.
    """
    if on_bad_input not in ("error", "skip"):
        raise InputError("on_bad_input", f"must be 'error' or 'skip', got {on_bad_input!r}")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise InputError(images_dir, "images folder does not exist")
    index = _index_by_stem(images_dir)
    rows = []
    for stem, files in progress(sorted(index.items()), desc="otsu baseline"):
        try:
            if len(files) > 1:
                listing = ", ".join(p.name for p in files)
                raise InputError(files[0], f"several images with stem {stem!r}: {listing}")
            image = read_image(files[0])
        except InputError as exc:
            if on_bad_input == "error":
                raise
            log.warning("skipped %s: %s", files[0], exc)
            continue
        mask = otsu_baseline(
            image,
            radius_px=radius_px,
            mode=mode,
            method=method,
            sigma=sigma,
            min_size=min_size,
            fill_holes=fill_holes,
        )
        out = out_dir / f"{stem}.png"
        write_png((mask * np.uint8(255)).astype(np.uint8), out)
        rows.append(
            {
                "image_id": stem,
                "image": str(files[0]),
                "mask": str(out),
                "foreground_fraction": float(mask.mean()),
            }
        )
    if not rows:
        raise InputError(images_dir, "no image to segment")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tables


def per_image_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Long per-image metrics table (paper Table 2's raw data).

    Parameters
    ----------
    rows : iterable of mapping
        One per (image, method): ``image`` (id), ``method``, ``pred`` and
        ``truth`` (2-D masks, non-zero = foreground); any other scalar entries
        (``set``, ...) are copied to every metric row.  Consumed one at a
        time (a generator keeps memory to one image).

    Returns
    -------
    pandas.DataFrame
        Columns: the extra keys (in first-seen order), ``image``, ``method``,
        ``metric`` and ``value``; one row per metric of
        :func:`brightseg.metrics.pixel_metrics` (:data:`METRICS`) in that
        order.
    """

    names = _metric_names()
    records: list[dict[str, Any]] = []
    extras: list[str] = []
    for item in rows:
        for key in ("image", "method", "pred", "truth"):
            if key not in item:
                raise InputError(None, f"per-image row lacks {key!r} (has {list(item)})")
        extra = {
            k: v
            for k, v in item.items()
            if k not in ("image", "method", "pred", "truth") and np.ndim(v) == 0
        }
        extras.extend(k for k in extra if k not in extras)
        try:
            values = pixel_metrics(item["pred"], item["truth"])
        except ValueError as exc:
            raise InputError(
                None, f"image {item['image']!r}, method {item['method']!r}: {exc}"
            ) from None
        base = {**extra, "image": str(item["image"]), "method": str(item["method"])}
        records.extend({**base, "metric": m, "value": float(values[m])} for m in names)
    columns = [*extras, "image", "method", "metric", "value"]
    df = pd.DataFrame(records, columns=columns)
    df["value"] = df["value"].astype("float64")
    return df


def _keys(long_df: pd.DataFrame) -> list[str]:
    return ["set", "image"] if "set" in long_df.columns else ["image"]


def _check_long(long_df: pd.DataFrame) -> None:
    missing = [c for c in ("image", "method", "metric", "value") if c not in long_df.columns]
    if missing:
        raise InputError(None, f"per-image table lacks columns {missing}")


def _metric_order(present: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(present))
    names = _metric_names()
    return [m for m in names if m in present] + sorted(m for m in present if m not in names)


def wide_table(long_df: pd.DataFrame) -> pd.DataFrame:
    """Pivot the long per-image table: one row per (set,) image and method, one column per metric."""
    _check_long(long_df)
    index = [*_keys(long_df), "method"]
    wide = long_df.pivot_table(index=index, columns="metric", values="value", aggfunc="first")
    wide = wide[_metric_order(long_df["metric"])]
    wide.columns.name = None
    return wide.reset_index()


def summary_table(long_df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1) per (set,) method and metric.

    Returns
    -------
    pandas.DataFrame
        Columns ``[set,] method, metric, n, mean, std``; metrics in
        :data:`METRICS` order.  NaN values (e.g. SSIM of a tiny image) are
        left out of ``n``, ``mean`` and ``std``.
    """
    _check_long(long_df)
    by = (["set"] if "set" in long_df.columns else []) + ["method", "metric"]
    g = long_df.groupby(by, sort=True)["value"]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "std": g.std(ddof=1)}).reset_index()
    order = {m: i for i, m in enumerate(_metric_order(long_df["metric"]))}
    out["_o"] = out["metric"].map(order)
    out = out.sort_values([*by[:-1], "_o"], kind="stable").drop(columns="_o")
    out["n"] = out["n"].astype("int64")
    return out.reset_index(drop=True)


def table2_layout(
    summary: pd.DataFrame,
    *,
    metrics: Iterable[str] | None = None,
    floatfmt: str = ".3f",
    ours: str | None = None,
) -> pd.DataFrame:
    """The paper's Table 2: methods as rows, metrics as columns, ``mean ± std``.

    Parameters
    ----------
    summary : pandas.DataFrame
        Output of :func:`summary_table`.
    metrics : iterable of str, optional
        Columns to show (default all, in :data:`METRICS` order).
    floatfmt : str
        Format of mean and std.
    ours : str, optional
        Method listed last (our model), the others sorted by name.

    Returns
    -------
    pandas.DataFrame
        Columns ``[set,] method`` and one string column per metric.
    """
    names = list(metrics) if metrics is not None else _metric_order(summary["metric"])
    cell = summary.assign(
        text=[
            f"{m:{floatfmt}} ± {s:{floatfmt}}" if np.isfinite(s) else f"{m:{floatfmt}}"
            for m, s in zip(summary["mean"], summary["std"], strict=True)
        ]
    )
    index = (["set"] if "set" in summary.columns else []) + ["method"]
    wide = cell.pivot_table(index=index, columns="metric", values="text", aggfunc="first")
    wide = wide.reindex(columns=names)
    wide.columns.name = None
    wide = wide.reset_index()
    if ours is not None:
        wide["_last"] = wide["method"] == ours
        wide = wide.sort_values([*index[:-1], "_last", "method"], kind="stable")
        wide = wide.drop(columns="_last").reset_index(drop=True)
    return wide


def _paired_stats(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Paired t-test, Wilcoxon and d_z of ``a - b`` with NaN and a note where undefined."""

    diff = a - b
    n = int(diff.size)
    out: dict[str, Any] = {
        "n": n,
        "mean_ours": float(a.mean()) if n else math.nan,
        "mean_baseline": float(b.mean()) if n else math.nan,
        "mean_diff": float(diff.mean()) if n else math.nan,
        "std_diff": float(diff.std(ddof=1)) if n > 1 else math.nan,
        "t": math.nan,
        "p_value": math.nan,
        "wilcoxon_statistic": math.nan,
        "wilcoxon_p_value": math.nan,
        "cohens_dz": math.nan,
    }
    notes: list[str] = []
    if n < 2:
        notes.append(f"{n} paired image(s): tests need at least 2")
        return {**out, "note": "; ".join(notes)}
    if not np.any(diff != 0):
        notes.append("all differences are zero: no test")
        return {**out, "note": "; ".join(notes)}
    sd = out["std_diff"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        tt = stats.ttest_rel(a, b)
        try:
            w = stats.wilcoxon(a, b)
            out["wilcoxon_statistic"] = float(w.statistic)
            out["wilcoxon_p_value"] = float(w.pvalue)
        except ValueError as exc:
            notes.append(f"wilcoxon: {exc}")
    if sd > 0:
        out["t"] = float(tt.statistic)
        out["p_value"] = float(tt.pvalue)
        out["cohens_dz"] = out["mean_diff"] / sd
    else:
        notes.append("differences are constant: t and d_z undefined")
    n_zero = int(np.count_nonzero(diff == 0))
    if n_zero:
        notes.append(f"{n_zero} zero difference(s) dropped by wilcoxon")
    return {**out, "note": "; ".join(notes)}


def paired_comparison_table(
    long_df: pd.DataFrame, ours: str = "ensemble", metric: str = "f1"
) -> pd.DataFrame:
    """Our method against every other method on the same images.

    Parameters
    ----------
    long_df : pandas.DataFrame
        Long per-image table (:func:`per_image_table`).  Images are paired on
        ``(set, image)`` (or ``image``); images missing for one of the two
        methods or with a non-finite value are left out (and counted in
        ``note``).
    ours : str
        Our method's name.
    metric : str
        Metric compared.

    Returns
    -------
    pandas.DataFrame
        One row per baseline method (sorted): ``ours``, ``baseline``,
        ``metric``, ``n`` (paired images), ``mean_ours``, ``mean_baseline``,
        ``mean_diff`` (ours - baseline), ``std_diff`` (ddof 1), ``t`` and
        ``p_value`` (two-sided paired t-test, ``scipy.stats.ttest_rel``),
        ``wilcoxon_statistic`` and ``wilcoxon_p_value`` (two-sided,
        ``scipy.stats.wilcoxon`` with its defaults), ``cohens_dz``
        (``mean_diff / std_diff``) and ``note``.  Undefined values are NaN
        with the reason in ``note``: fewer than 2 pairs, all differences
        zero, constant differences.
    """
    _check_long(long_df)
    keys = _keys(long_df)
    sub = long_df[long_df["metric"] == metric]
    methods = sorted(set(sub["method"].astype(str)))
    if ours not in methods:
        raise InputError(
            None, f"method {ours!r} has no {metric!r} values (methods: {methods or 'none'})"
        )
    if sub.duplicated([*keys, "method"]).any():
        raise InputError(None, f"per-image table has repeated {keys + ['method']} rows")
    mine = sub[sub["method"] == ours][[*keys, "value"]]
    records = []
    for other in (m for m in methods if m != ours):
        theirs = sub[sub["method"] == other][[*keys, "value"]]
        both = mine.merge(theirs, on=keys, how="outer", suffixes=("_a", "_b"))
        unpaired = int(both[["value_a", "value_b"]].isna().any(axis=1).sum())
        both = both.dropna(subset=["value_a", "value_b"])
        finite = np.isfinite(both["value_a"]) & np.isfinite(both["value_b"])
        nonfinite = int((~finite).sum())
        both = both[finite].sort_values(keys, kind="stable")
        stats_ = _paired_stats(
            both["value_a"].to_numpy(np.float64), both["value_b"].to_numpy(np.float64)
        )
        extra = []
        if unpaired:
            extra.append(f"{unpaired} image(s) not scored by both methods left out")
        if nonfinite:
            extra.append(f"{nonfinite} non-finite value(s) left out")
        note = "; ".join([*extra, stats_.pop("note")] if stats_["note"] else extra)
        records.append({"ours": ours, "baseline": other, "metric": metric, **stats_, "note": note})
    columns = [
        "ours",
        "baseline",
        "metric",
        "n",
        "mean_ours",
        "mean_baseline",
        "mean_diff",
        "std_diff",
        "t",
        "p_value",
        "wilcoxon_statistic",
        "wilcoxon_p_value",
        "cohens_dz",
        "note",
    ]
    out = pd.DataFrame(records, columns=columns)
    out["n"] = out["n"].astype("int64")
    return out


# --------------------------------------------------------------------------- orchestration


def _as_mask(value: Any, threshold: float, what: str) -> np.ndarray:
    """A prediction given as a path (read with read_mask) or an array (floats: > 0.5)."""

    if isinstance(value, str | os.PathLike):
        mask, _, _ = read_mask(value, threshold=threshold, expect="auto")
        return mask
    if callable(value):
        value = value()
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(None, f"{what}: expected a 2-D mask, got shape {arr.shape}")
    return (arr > 0.5 if arr.dtype.kind == "f" else arr != 0).astype(np.uint8)


def _predictions_for(source: Any, method: str) -> Mapping[str, Any]:
    """A method's predictions: a mapping image_id -> mask/path, or a folder of ``<stem>.*``."""
    if isinstance(source, str | os.PathLike):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(folder, f"prediction folder of method {method!r} does not exist")
        index = _index_by_stem(folder)
        dup = {k: v for k, v in index.items() if len(v) > 1}
        if dup:
            k, v = next(iter(dup.items()))
            raise InputError(folder, f"method {method!r}: several masks for {k!r}: {v}")
        return {k: v[0] for k, v in index.items()}
    if not isinstance(source, Mapping):
        raise InputError(None, f"predictions of {method!r} must be a mapping or a folder")
    return source


def compare_methods(
    eval_df: pd.DataFrame,
    predictions: Mapping[str, Mapping[str, Any] | str | os.PathLike],
    truth_loader: Callable[[Mapping[str, Any]], np.ndarray] | None = None,
    *,
    threshold: float = 127,
) -> pd.DataFrame:
    """Score every method on every image of an evaluation set.

    Parameters
    ----------
    eval_df : pandas.DataFrame
        Table of :func:`load_eval_set`.  Its ``baseline_<method>`` columns are
        scored as methods too.
    predictions : mapping
        ``method -> {image_id: mask}`` where a mask is a 2-D array (non-zero
        = foreground; float arrays are probabilities cut at 0.5), a path, or
        a zero-argument callable returning an array (loaded lazily); or
        ``method -> folder`` of ``<image_id>.<png|tif|jpg>`` masks.
    truth_loader : callable, optional
        ``row -> mask`` for a row of ``eval_df`` (as a dict); default reads
        ``row["mask"]`` with :func:`brightseg.annotations.maskfolder.read_mask`.
    threshold : float
        Threshold for lossy mask files.

    Returns
    -------
    pandas.DataFrame
        The long table of :func:`per_image_table` with a ``set`` column
        (when ``eval_df`` has one).

    Raises
    ------
    InputError
        A method without a prediction for an image (naming both), a
        prediction whose shape differs from the truth, a method given both
        as a prediction and as a baseline column.
    """

    for col in ("image_id", "mask"):
        if col not in eval_df.columns:
            raise InputError(None, f"evaluation table lacks column {col!r}")
    sources: dict[str, Mapping[str, Any]] = {
        str(m): _predictions_for(src, str(m)) for m, src in predictions.items()
    }
    for method in baseline_methods(eval_df):
        if method in sources:
            raise InputError(None, f"method {method!r} given as prediction and as baseline")
        col = f"{BASELINE_PREFIX}{method}"
        sources[method] = dict(zip(eval_df["image_id"].astype(str), eval_df[col], strict=True))
    if not sources:
        raise InputError(None, "no method to evaluate (no predictions and no baselines)")
    for method, preds in sources.items():
        missing = [i for i in eval_df["image_id"].astype(str) if i not in preds]
        if missing:
            raise InputError(
                None,
                f"method {method!r} has no prediction for image {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            )

    def load_truth(row: Mapping[str, Any]) -> np.ndarray:
        if truth_loader is not None:
            return np.asarray(truth_loader(row)) != 0
        return read_mask(row["mask"], threshold=threshold, expect="auto")[0]

    def items() -> Iterator[dict[str, Any]]:
        for row in progress(eval_df.to_dict("records"), desc="compare methods"):
            image_id = str(row["image_id"])
            truth = load_truth(row)
            for method in sorted(sources):
                what = f"method {method!r}, image {image_id!r}"
                pred = _as_mask(sources[method][image_id], threshold, what)
                if pred.shape != truth.shape:
                    raise InputError(
                        None,
                        f"{what}: prediction shape {pred.shape} differs from the truth "
                        f"{truth.shape}",
                    )
                extra = {"set": row["set"]} if "set" in row else {}
                yield {**extra, "image": image_id, "method": method, "pred": pred, "truth": truth}

    return per_image_table(items())


def compare_from_dirs(
    spec: Mapping[str, Any],
    prediction_dirs: Mapping[str, str | os.PathLike],
    *,
    threshold: float = 127,
    base: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """:func:`load_eval_set` + :func:`compare_methods` for predictions saved as mask folders.

    Parameters
    ----------
    spec : mapping
        One entry of ``evaluation_sets``.
    prediction_dirs : mapping
        ``method -> folder`` of ``<stem>.png`` masks (e.g. ``{"ensemble": ...}``).

    Returns
    -------
    pandas.DataFrame
        Long per-image table of all methods (predictions and baselines).
    """
    eval_df = load_eval_set(spec, threshold=threshold, base=base)
    return compare_methods(eval_df, dict(prediction_dirs), threshold=threshold)


# --------------------------------------------------------------------------- config and tables


def _norm(path: Any) -> str:
    return os.path.normpath(str(path)) if path else ""


def resolve_evaluation_sets(
    specs: Sequence[Mapping[str, Any]] | None,
    *,
    synth_dir: str = "results/demo/evalset",
    produced: Sequence[str] = (),
    check: bool = True,
) -> dict[str, dict[str, Any]]:
    """Check ``evaluation_sets`` and fill in the defaults.

    Parameters
    ----------
    specs : list of mapping
        Each ``{name, images, masks}`` with optional ``mask_suffix``, ``pixel_size_um``
        (0.65), ``baselines`` (``{method: folder of its masks}``) and ``synth`` (true: the
        demo's synthetic set, made by the workflow in ``synth_dir``; images and masks
        default to its ``images``/``masks`` folders).
    synth_dir : str
        Output folder of the synthetic set.
    produced : sequence of str
        Folders the workflow makes (e.g. ``results/evalsets/<name>/otsu``): baselines there
        need not exist yet.
    check : bool
        Check that the folders exist.

    Returns
    -------
    dict
        ``name -> spec`` in config order.
    """
    out: dict[str, dict[str, Any]] = {}
    made = {_norm(f) for f in produced}
    for i, spec in enumerate(specs or []):
        where = f"evaluation_sets[{i}]"
        if not isinstance(spec, Mapping):
            raise InputError(where, f"must be a mapping, got {spec!r}")
        name = _check_name(spec.get("name"), f"{where}.name")
        if name in out:
            raise InputError(f"{where}.name", f"evaluation set {name!r} is listed twice")
        synth = bool(spec.get("synth", False))
        baselines = spec.get("baselines") or {}
        if not isinstance(baselines, Mapping):
            raise InputError(f"{where}.baselines", "must map method names to mask folders")
        resolved = {
            "name": name,
            "synth": synth,
            "images": _norm(spec.get("images") or (f"{synth_dir}/images" if synth else "")),
            "masks": _norm(spec.get("masks") or (f"{synth_dir}/masks" if synth else "")),
            "mask_suffix": str(spec.get("mask_suffix") or ""),
            "mask_mode": str(spec.get("mask_mode") or "auto"),
            "pixel_size_um": float(spec.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM),
            "baselines": {str(k): _norm(v) for k, v in baselines.items()},
        }
        for key in ("images", "masks"):
            if not resolved[key]:
                raise InputError(f"{where}.{key}", "missing folder")
            if check and not synth and not Path(resolved[key]).is_dir():
                raise InputError(resolved[key], f"{where}.{key}: folder does not exist")
        for method, folder in resolved["baselines"].items():
            if not re.fullmatch(NAME_PATTERN, method) or method == ENSEMBLE:
                raise InputError(
                    f"{where}.baselines", f"method name {method!r} (reserved or not a name)"
                )
            if check and folder not in made and not Path(folder).is_dir():
                raise InputError(folder, f"{where}.baselines.{method}: folder does not exist")
        out[name] = resolved
    return out


def comparison_tables(
    long_df: pd.DataFrame,
    *,
    baselines: Sequence[str],
    ours: str = ENSEMBLE,
    paired_metrics: Sequence[str] = PAIRED_METRICS,
) -> dict[str, pd.DataFrame]:
    """Summary, Table 2 layout and paired tests of a long per-image table.

    Returns
    -------
    dict
        ``summary`` (:func:`brightseg.evalsets.summary_table`), ``table2``
        (:func:`brightseg.evalsets.table2_layout`, ``ours`` last) and ``paired``
        (:func:`brightseg.evalsets.paired_comparison_table` of ``ours`` against every
        baseline, one block of rows per metric of ``paired_metrics``; empty without
        baselines).
    """

    summary = summary_table(long_df)
    table2 = table2_layout(summary, ours=ours)
    sub = long_df[long_df["method"].isin([ours, *baselines])]
    frames = [
        paired_comparison_table(sub, ours=ours, metric=m)
        for m in paired_metrics
        if baselines and m in set(sub["metric"])
    ]
    if frames:
        paired = pd.concat(frames, ignore_index=True)
    else:
        paired = paired_comparison_table(
            long_df[long_df["method"] == ours], ours=ours, metric=paired_metrics[0]
        )
    return {"summary": summary, "table2": table2, "paired": paired}
