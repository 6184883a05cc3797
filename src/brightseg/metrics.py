"""Segmentation metrics: pixel level, instance level and COCO mask AP.

Conventions
-----------
Binary masks are any arrays whose non-zero pixels are foreground.  Instance
label images hold one positive integer per object, 0 is background.

Pixel metrics (:func:`pixel_metrics`) are computed per image from the
confusion counts TP, FP, FN, TN of the foreground class:

========== ==========================================
dice        2 TP / (2 TP + FP + FN)  (equals ``f1``)
iou         TP / (TP + FP + FN)      (Jaccard index)
accuracy    (TP + TN) / (TP + FP + FN + TN)
precision   TP / (TP + FP)
recall      TP / (TP + FN)
f1          2 precision recall / (precision + recall)
ssim        mean SSIM of the two binary masks as float
hausdorff   symmetric Hausdorff distance of the mask boundaries (pixels)
hd95        95th percentile of the symmetric boundary distances (pixels)
========== ==========================================

Edge cases (a ratio 0/0 can only happen when a mask is empty):

* both masks empty: dice = iou = precision = recall = f1 = 1, hausdorff =
  hd95 = 0 (a perfect prediction of "nothing here").
* exactly one mask empty: every 0/0 ratio is 0, so dice = iou = precision =
  recall = f1 = 0 (this equals scikit-learn's ``zero_division=0``), and
  hausdorff = hd95 = the image diagonal ``sqrt((H-1)**2 + (W-1)**2)``, the
  largest distance two pixels of the image can have.  The diagonal keeps the
  value finite (tables and means stay usable) and is an upper bound of any
  Hausdorff distance between two non-empty masks of that image.

Boundaries: the boundary of a mask is its set of foreground pixels with at
least one 4-connected background neighbour, pixels outside the image counting
as background (``mask & ~binary_erosion(mask)`` with a cross footprint, the
MedPy/MONAI convention).  Distances are Euclidean between pixel centres.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.metrics import structural_similarity

from .progress import progress

log = logging.getLogger(__name__)

PIXEL_METRICS = (
    "dice",
    "iou",
    "ssim",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "hausdorff",
    "hd95",
)

#: LIVECell's size ranges for COCO evaluation (pixels^2): all, small < 18^2,
#: medium 18^2..31^2, large > 31^2 (``code/coco_evaluation.py`` in LIVECell).
LIVECELL_AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 18.0**2),
    "medium": (18.0**2, 31.0**2),
    "large": (31.0**2, 1e5**2),
}
#: Maximum detections per image used by LIVECell's evaluator.
LIVECELL_MAX_DETS = (100, 500, 2000)


# --------------------------------------------------------------------------
# pixel level
# --------------------------------------------------------------------------
def _as_bool_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if pred.ndim != 2:
        raise ValueError(f"expected 2-D masks, got shape {pred.shape}")
    return pred != 0, truth != 0


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Pixel confusion counts of the foreground class.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``tn`` as Python ints.
    """
    p, t = _as_bool_pair(pred, truth)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size - tp - fp - fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def choose_threshold(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    candidates: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float]:
    """Probability threshold that maximises the pooled validation Dice.

    Parameters
    ----------
    probs : sequence of ndarray
        Foreground probability maps (float, 0..1), one per validation image or patch.
    truths : sequence of ndarray
        Ground-truth masks of the same shapes (non-zero = foreground).
    candidates : sequence of float
        Thresholds tried (foreground = probability > threshold); default 0.05, 0.10, ..., 0.95.

    Returns
    -------
    dict
        ``threshold`` (the best candidate; ties go to the candidate closest to 0.5, then the
        smaller one) and ``dice`` (pooled Dice over all pixels at that threshold), plus
        ``dice_at_0.5`` for comparison.

    Raises
    ------
    ValueError
        If the inputs are empty, of different lengths or shapes, or no candidate is in (0, 1).
    """
    if len(probs) == 0 or len(probs) != len(truths):
        raise ValueError("choose_threshold needs equally many (>= 1) probability maps and masks")
    cands = sorted({float(c) for c in candidates if 0.0 < float(c) < 1.0})
    if not cands:
        raise ValueError("choose_threshold: no candidate threshold in (0, 1)")
    edges = np.asarray(cands + [0.5])
    tp = np.zeros(len(edges))
    fp = np.zeros(len(edges))
    n_true = 0
    for prob, truth in zip(probs, truths, strict=True):
        prob = np.asarray(prob, dtype=np.float32)
        truth = np.asarray(truth) != 0
        if prob.shape != truth.shape:
            raise ValueError(f"choose_threshold: shapes {prob.shape} and {truth.shape} differ")
        n_true += int(truth.sum())
        pos, neg = prob[truth], prob[~truth]
        for i, c in enumerate(edges):
            tp[i] += np.count_nonzero(pos > c)
            fp[i] += np.count_nonzero(neg > c)
    fn = n_true - tp
    den = 2 * tp + fp + fn
    dice = np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)
    scores = dice[:-1]
    order = sorted(range(len(cands)), key=lambda i: (-scores[i], abs(cands[i] - 0.5), cands[i]))
    best = order[0]
    return {"threshold": cands[best], "dice": float(scores[best]), "dice_at_0.5": float(dice[-1])}


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-connected background neighbour (image border = background)."""
    mask = np.asarray(mask) != 0
    if not mask.any():
        return mask
    eroded = ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(2, 1), border_value=0)
    return mask & ~eroded


def surface_distances(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances between the two mask boundaries.

    Returns
    -------
    d_pred, d_truth : ndarray
        For each boundary pixel of ``pred`` its Euclidean distance to the
        nearest boundary pixel of ``truth``, and the converse.  Both masks must
        be non-empty.
    """
    p, t = _as_bool_pair(pred, truth)
    bp, bt = mask_boundary(p), mask_boundary(t)
    if not bp.any() or not bt.any():
        raise ValueError("surface distances need two non-empty masks")
    # The nearest boundary pixel always lies inside the bounding box of both
    # boundaries, so the distance transforms can be computed on that crop.
    rows = np.flatnonzero((bp | bt).any(axis=1))
    cols = np.flatnonzero((bp | bt).any(axis=0))
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    bp, bt = bp[crop], bt[crop]
    d_pred = ndi.distance_transform_edt(~bt)[bp]
    d_truth = ndi.distance_transform_edt(~bp)[bt]
    return d_pred, d_truth


def image_diagonal(shape: Sequence[int]) -> float:
    """Largest distance between two pixel centres of an image of ``shape``."""
    return float(math.hypot(shape[0] - 1, shape[1] - 1))


def hausdorff_distance(pred: np.ndarray, truth: np.ndarray, percentile: float = 100.0) -> float:
    """Symmetric Hausdorff distance (or a percentile of it) between mask boundaries.

    Parameters
    ----------
    pred, truth : ndarray
        2-D binary masks.
    percentile : float
        100 gives the Hausdorff distance ``max(max d_pred, max d_truth)``;
        95 gives HD95, the 95th percentile (numpy's linear interpolation) of
        the pooled distances ``concat(d_pred, d_truth)`` (MedPy's ``hd95``).

    Returns
    -------
    float
        0 if both masks are empty, the image diagonal if exactly one is.
    """
    p, t = _as_bool_pair(pred, truth)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return image_diagonal(p.shape)
    d_pred, d_truth = surface_distances(p, t)
    if percentile >= 100:
        return float(max(d_pred.max(), d_truth.max()))
    return float(np.percentile(np.concatenate([d_pred, d_truth]), percentile))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two images in [0, 1] (scikit-image, ``data_range=1``).

    Binary masks are compared as float 0/1 images.  The window is scikit-image's
    default 7x7 (uniform, sample covariance); for images smaller than 7 pixels
    the largest odd size that fits is used, and NaN is returned below 3.
    """

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def pixel_metrics(
    pred: np.ndarray, truth: np.ndarray, prob: np.ndarray | None = None
) -> dict[str, float]:
    """Pixel-level metrics of a binary prediction against a binary truth.

    Parameters
    ----------
    pred, truth : ndarray
        2-D masks of equal shape (non-zero = foreground).
    prob : ndarray, optional
        Probability map in [0, 1] the prediction was thresholded from.  If
        given, ``ssim_prob`` (SSIM of ``prob`` against the truth mask) is added.

    Returns
    -------
    dict
        ``dice, iou, ssim, accuracy, precision, recall, f1, hausdorff, hd95``
        (see the module docstring for definitions and edge cases) and the
        counts ``tp, fp, fn, tn``.  ``ssim`` compares the two binary masks as
        float images.
    """
    p, t = _as_bool_pair(pred, truth)
    c = confusion_counts(p, t)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    both_empty = (tp + fp + fn) == 0
    precision = _ratio(tp, tp + fp, both_empty)
    recall = _ratio(tp, tp + fn, both_empty)
    out: dict[str, float] = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "ssim": ssim(p, t),
        "accuracy": (tp + tn) / p.size,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall, both_empty),
    }
    has_p, has_t = tp + fp > 0, tp + fn > 0
    if has_p and has_t:
        d_pred, d_truth = surface_distances(p, t)
        pooled = np.concatenate([d_pred, d_truth])
        out["hausdorff"] = float(pooled.max())
        out["hd95"] = float(np.percentile(pooled, 95))
    else:
        out["hausdorff"] = out["hd95"] = hausdorff_distance(p, t)
    if prob is not None:
        prob = np.asarray(prob, dtype=np.float64)
        if prob.shape != t.shape:
            raise ValueError(f"probability map shape {prob.shape} differs from {t.shape}")
        out["ssim_prob"] = ssim(np.clip(prob, 0.0, 1.0), t)
    out.update({k: int(v) for k, v in c.items()})
    return out


# --------------------------------------------------------------------------
# instance level
# --------------------------------------------------------------------------
def _overlaps(pred_labels: np.ndarray, true_labels: np.ndarray):
    """Sparse overlap table of two label images.

    Returns ``(true_ids, true_areas, pred_ids, pred_areas, pairs)`` where
    ``pairs`` is an ``(n, 3)`` int64 array of (true index, pred index,
    intersection) for every overlapping pair; indices refer to ``true_ids`` /
    ``pred_ids``.
    """
    pl = np.asarray(pred_labels)
    tl = np.asarray(true_labels)
    if pl.shape != tl.shape:
        raise ValueError(f"prediction shape {pl.shape} differs from truth shape {tl.shape}")
    if pl.dtype.kind not in "iub" or tl.dtype.kind not in "iub":
        raise ValueError("label images must be integer arrays")
    pl = pl.astype(np.int64, copy=False).ravel()
    tl = tl.astype(np.int64, copy=False).ravel()
    true_ids, true_areas = np.unique(tl[tl > 0], return_counts=True)
    pred_ids, pred_areas = np.unique(pl[pl > 0], return_counts=True)
    both = (pl > 0) & (tl > 0)
    if both.any():
        ti = np.searchsorted(true_ids, tl[both])
        pi = np.searchsorted(pred_ids, pl[both])
        code, inter = np.unique(ti * len(pred_ids) + pi, return_counts=True)
        pairs = np.stack([code // len(pred_ids), code % len(pred_ids), inter], axis=1)
    else:
        pairs = np.zeros((0, 3), dtype=np.int64)
    return true_ids, true_areas, pred_ids, pred_areas, pairs


def _match_pairs(ti: np.ndarray, pi: np.ndarray, score: np.ndarray) -> np.ndarray:
    """One-to-one matching of candidate pairs maximising the number of matches.

    Ties in the count are broken by the largest total ``score``.  Returns a
    boolean array over the candidate pairs.
    """

    n = len(ti)
    chosen = np.zeros(n, dtype=bool)
    if n == 0:
        return chosen
    t_count = np.bincount(ti)[ti]
    p_count = np.bincount(pi)[pi]
    simple = (t_count == 1) & (p_count == 1)
    chosen[simple] = True
    rest = np.flatnonzero(~simple)
    if len(rest) == 0:
        return chosen
    # connected components of the remaining bipartite candidate graph
    tu, t_inv = np.unique(ti[rest], return_inverse=True)
    pu, p_inv = np.unique(pi[rest], return_inverse=True)
    nt, npred = len(tu), len(pu)
    graph = coo_matrix(
        (np.ones(len(rest)), (t_inv, nt + p_inv)), shape=(nt + npred, nt + npred)
    ).tocsr()
    _, comp = connected_components(graph, directed=False)
    for c in np.unique(comp[t_inv]):
        sel = np.flatnonzero(comp[t_inv] == c)
        rt, rt_inv = np.unique(t_inv[sel], return_inverse=True)
        rp, rp_inv = np.unique(p_inv[sel], return_inverse=True)
        gain = np.zeros((len(rt), len(rp)))
        # 1 per match dominates the score term (< 1 in total), so the count is maximal
        gain[rt_inv, rp_inv] = 1.0 + score[rest[sel]] / (len(sel) + 1.0)
        rows, cols = linear_sum_assignment(-gain)
        keep = gain[rows, cols] > 0
        lookup = {(r, c2): k for k, (r, c2) in enumerate(zip(rt_inv, rp_inv, strict=True))}
        for r, c2 in zip(rows[keep], cols[keep], strict=True):
            chosen[rest[sel[lookup[(r, c2)]]]] = True
    return chosen


def match_instances(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    thresholds: Sequence[float] = (0.5,),
) -> dict[str, float]:
    """Match predicted to true objects one-to-one at IoU thresholds.

    A predicted and a true object may match if their IoU is >= the threshold
    (and > 0).  Among those candidates a one-to-one matching with the largest
    number of pairs is chosen (ties: largest total IoU); for thresholds >= 0.5
    the candidates are already one-to-one (except exact 0.5 ties).

    Parameters
    ----------
    pred_labels, true_labels : ndarray
        Instance label images of equal shape (0 = background).
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    dict
        ``n_true``, ``n_pred`` and, for each threshold ``t`` (formatted
        ``{t:g}``, e.g. ``0.5``): ``tp@t``, ``fp@t``, ``fn@t``,
        ``precision@t`` = TP/(TP+FP), ``recall@t`` = TP/(TP+FN),
        ``f1@t`` = 2TP/(2TP+FP+FN), ``match_score@t`` = TP/(TP+FP+FN) (the
        "matched F-score" of the DSB 2018 / StarDist "accuracy") and
        ``mean_matched_iou@t``.  If neither image has objects every ratio
        is 1; a 0/0 ratio with objects in only one image is 0.
    """
    true_ids, true_areas, pred_ids, pred_areas, pairs = _overlaps(pred_labels, true_labels)
    n_true, n_pred = len(true_ids), len(pred_ids)
    out: dict[str, float] = {"n_true": n_true, "n_pred": n_pred}
    ti, pi, inter = pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(np.float64)
    iou = inter / (true_areas[ti] + pred_areas[pi] - inter) if len(pairs) else inter
    both_empty = n_true == 0 and n_pred == 0
    for thr in thresholds:
        cand = (iou >= thr) & (iou > 0)
        idx = np.flatnonzero(cand)
        chosen = _match_pairs(ti[idx], pi[idx], iou[idx])
        tp = int(chosen.sum())
        fp, fn = n_pred - tp, n_true - tp
        key = f"{thr:g}"
        out[f"tp@{key}"] = tp
        out[f"fp@{key}"] = fp
        out[f"fn@{key}"] = fn
        out[f"precision@{key}"] = _ratio(tp, tp + fp, both_empty)
        out[f"recall@{key}"] = _ratio(tp, tp + fn, both_empty)
        out[f"f1@{key}"] = _ratio(2 * tp, 2 * tp + fp + fn, both_empty)
        out[f"match_score@{key}"] = _ratio(tp, tp + fp + fn, both_empty)
        out[f"mean_matched_iou@{key}"] = float(iou[idx][chosen].mean()) if tp else float("nan")
    return out


def k_overlap_similarity(pred_labels: np.ndarray, true_labels: np.ndarray, k: float = 0.6) -> float:
    """The k-overlap segmentation similarity SM(R, T).

    For every ground-truth object :math:`T_i` the predicted objects
    :math:`R_j` with :math:`|R_j \\cap T_i| > k\\,|T_i|` are its matches; its
    similarity is the best Jaccard index :math:`|R_j \\cap T_i| / |R_j \\cup
    T_i|` among its matches, or 0 without a match.  SM is the mean over the
    ground-truth objects:

    .. math:: SM(R, T) = \\frac{1}{n_T} \\sum_i \\max_{j: |R_j\\cap T_i| > k|T_i|}
              J(R_j, T_i)

    With ``k = 0.5`` this is the Cell Tracking Challenge SEG measure; with
    ``k >= 0.5`` every true object has at most one match.  False positives do
    not lower SM.  Edge cases: no true and no predicted object gives 1; no
    true object but predicted ones gives 0.
    """
    true_ids, true_areas, pred_ids, pred_areas, pairs = _overlaps(pred_labels, true_labels)
    if len(true_ids) == 0:
        return 1.0 if len(pred_ids) == 0 else 0.0
    best = np.zeros(len(true_ids))
    if len(pairs):
        ti, pi, inter = pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(np.float64)
        ok = inter > k * true_areas[ti]
        jac = inter / (true_areas[ti] + pred_areas[pi] - inter)
        np.maximum.at(best, ti[ok], jac[ok])
    return float(best.mean())


# --------------------------------------------------------------------------
# COCO mask AP
# --------------------------------------------------------------------------
def _rle_from_crop(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> dict:
    """Compressed COCO RLE of a mask given as a crop at (y0, x0) of an image."""

    cx, cy = np.nonzero(crop.T)  # Fortran (column-major) order
    idx = (x0 + cx).astype(np.int64) * height + (y0 + cy)
    total = height * width
    if len(idx) == 0:
        counts = [total]
    else:
        breaks = np.flatnonzero(np.diff(idx) != 1)
        starts = np.concatenate([[idx[0]], idx[breaks + 1]])
        ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
        lengths = ends - starts
        gaps = starts - np.concatenate([[0], ends[:-1]])
        counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
        counts[0:-1:2] = gaps
        counts[1:-1:2] = lengths
        counts[-1] = total - ends[-1]
        counts = counts.tolist()
        if counts[-1] == 0:  # pycocotools' encode() writes no empty last run
            counts.pop()
    rle = mask_util.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def labels_to_rles(labels: np.ndarray) -> list[tuple[int, dict, int, list[float]]]:
    """COCO RLEs of every object of a label image.

    Returns
    -------
    list of (label, rle, area, bbox)
        Sorted by label; ``rle`` has ``counts`` as str (JSON-ready), ``bbox``
        is COCO ``[x, y, width, height]``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError("expected a 2-D integer label image")
    h, w = labels.shape
    out = []
    for lab, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if sl is None:
            continue
        crop = labels[sl] == lab
        y0, x0 = sl[0].start, sl[1].start
        rle = _rle_from_crop(crop, y0, x0, h, w)
        bbox = [float(x0), float(y0), float(sl[1].stop - x0), float(sl[0].stop - y0)]
        out.append((lab, rle, int(crop.sum()), bbox))
    return out


def labels_to_coco(
    label_images: Iterable[np.ndarray],
    *,
    image_ids: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
    category: str = "cell",
) -> dict:
    """Build a COCO ground-truth dataset dict from instance label images.

    Parameters
    ----------
    label_images : iterable of ndarray
        One label image per image (0 = background).
    image_ids : sequence of int, optional
        COCO image ids (default 1, 2, ...).
    file_names : sequence of str, optional
        ``file_name`` of each image (default ``image_<id>``).

    Returns
    -------
    dict
        ``images``, ``annotations`` (RLE ``segmentation``, ``area``, ``bbox``,
        ``iscrowd`` 0, ``category_id`` 1) and ``categories``.
    """
    images, anns = [], []
    ann_id = 1
    for i, labels in enumerate(label_images):
        img_id = int(image_ids[i]) if image_ids is not None else i + 1
        name = file_names[i] if file_names is not None else f"image_{img_id}"
        h, w = np.asarray(labels).shape
        images.append({"id": img_id, "file_name": name, "height": h, "width": w})
        for _, rle, area, bbox in labels_to_rles(labels):
            anns.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(area),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": category}],
    }


def labels_to_detections(
    labels: np.ndarray,
    image_id: int,
    *,
    prob: np.ndarray | None = None,
    scores: Mapping[int, float] | None = None,
) -> list[dict]:
    """COCO detection results (RLE + score) from a predicted label image.

    The score of an object is ``scores[label]`` if given, else the mean of
    ``prob`` over the object if given, else 1.0.  No ``bbox`` is stored, so
    pycocotools uses the mask area (as LIVECell's evaluator does).
    """
    objects = labels_to_rles(labels)
    if scores is None and prob is not None and objects:
        labs = [lab for lab, _, _, _ in objects]
        means = ndi.mean(np.asarray(prob, dtype=np.float64), np.asarray(labels), labs)
        scores = dict(zip(labs, np.atleast_1d(means).tolist(), strict=True))
    dets = []
    for lab, rle, _, _ in objects:
        score = 1.0 if scores is None else float(scores[lab])
        dets.append(
            {"image_id": int(image_id), "category_id": 1, "segmentation": rle, "score": score}
        )
    return dets


def coco_from_dict(dataset: dict):
    """A ``pycocotools.coco.COCO`` built from a dataset dict, without printing."""

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_ap(
    gt: dict,
    dt: list[dict],
    *,
    max_dets: Sequence[int] = LIVECELL_MAX_DETS,
    area_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """COCO mask AP as LIVECell evaluates it.

    Runs pycocotools' ``COCOeval`` (``iouType="segm"``, ``useCats=0``,
    ``maxDets=[100, 500, 2000]``, LIVECell's area ranges) and reads the
    results from ``eval["precision"]`` / ``eval["recall"]`` at the LARGEST
    ``maxDets`` for every number, like LIVECell's patched ``summarize``
    (pycocotools' own ``summarize`` would read AP@[.5:.95] at maxDets=100).

    Parameters
    ----------
    gt : dict
        COCO ground-truth dataset (see :func:`labels_to_coco`).
    dt : list of dict
        Detections: ``image_id``, ``category_id``, RLE ``segmentation``,
        ``score`` (see :func:`labels_to_detections`).

    Returns
    -------
    dict
        ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and
        ``AR`` as fractions in [0, 1]; NaN where undefined (no ground truth).
        With no detection at all every AP is 0 (NaN without ground truth).
    """

    area_ranges = dict(area_ranges or LIVECELL_AREA_RANGES)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR")
    n_gt = len(gt.get("annotations", []))
    if not dt:
        return {k: (0.0 if n_gt else float("nan")) for k in keys}
    # pycocotools adds keys to the annotation dicts: work on copies
    coco_gt = coco_from_dict({**gt, "annotations": [dict(a) for a in gt["annotations"]]})
    dt = [{k: v for k, v in d.items() if k != "bbox"} for d in dt]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dt)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.useCats = 0
        ev.params.maxDets = sorted(int(m) for m in max_dets)
        ev.params.areaRng = [list(v) for v in area_ranges.values()]
        ev.params.areaRngLbl = list(area_ranges)
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    rec = ev.eval["recall"]  # [T, K, A, M]
    thr = ev.params.iouThrs
    lbl = list(area_ranges)

    def _mean(s: np.ndarray) -> float:
        s = s[s > -1]
        return float(s.mean()) if s.size else float("nan")

    a_all = lbl.index("all")
    out = {
        "AP": _mean(prec[:, :, :, a_all, -1]),
        "AP50": _mean(prec[np.isclose(thr, 0.5), :, :, a_all, -1]),
        "AP75": _mean(prec[np.isclose(thr, 0.75), :, :, a_all, -1]),
        "AR": _mean(rec[:, :, a_all, -1]),
    }
    for key, name in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
        out[key] = _mean(prec[:, :, :, lbl.index(name), -1]) if name in lbl else float("nan")
    return {k: out[k] for k in keys}


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------
def evaluate_pairs(
    items: Iterable[Mapping[str, Any]],
    *,
    thresholds: Sequence[float] = (0.5,),
    k: float = 0.6,
    total: int | None = None,
):
    """Per-image metrics table.

    Parameters
    ----------
    items : iterable of mapping
        One mapping per (image, model) with keys ``image`` (str), ``model``
        (str, e.g. a checkpoint name or ``"ensemble"``), ``pred`` and
        ``truth`` (binary masks), optionally ``prob`` (probability map),
        ``pred_labels`` and ``true_labels`` (instance labels: adds the
        instance metrics).  Any other scalar entries (``cell_line``,
        ``group``, ...) are copied into the row.
    thresholds : sequence of float
        IoU thresholds of :func:`match_instances`.
    k : float
        Overlap fraction of :func:`k_overlap_similarity`.

    Returns
    -------
    pandas.DataFrame
        One row per item: ``image``, ``model``, the extra columns, the pixel
        metrics of :func:`pixel_metrics` and, with labels, ``n_true``,
        ``n_pred``, ``inst_<metric>@<t>`` and ``sm``.  Rows are sorted by
        ``model`` then ``image``.
    """

    rows = []
    for item in progress(items, total=total, desc="evaluate"):
        row: dict[str, Any] = {"image": str(item["image"]), "model": str(item["model"])}
        arrays = {"pred", "truth", "prob", "pred_labels", "true_labels"}
        for key, value in item.items():
            if key not in arrays and key not in row and np.ndim(value) == 0:
                row[key] = value
        row.update(pixel_metrics(item["pred"], item["truth"], item.get("prob")))
        if item.get("pred_labels") is not None and item.get("true_labels") is not None:
            inst = match_instances(item["pred_labels"], item["true_labels"], thresholds)
            row["n_true"] = inst.pop("n_true")
            row["n_pred"] = inst.pop("n_pred")
            row.update({f"inst_{key}": value for key, value in inst.items()})
            row["sm"] = k_overlap_similarity(item["pred_labels"], item["true_labels"], k)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["model", "image"], kind="mergesort").reset_index(drop=True)
    return df


def ablation_table(
    df,
    *,
    metrics: Sequence[str] = ("f1", "precision", "recall", "accuracy"),
    ensemble: str = "ensemble",
):
    """Mean metrics per model, the ensemble last (the paper's section 4.3).

    Parameters
    ----------
    df : pandas.DataFrame
        Per-image table of :func:`evaluate_pairs` (columns ``model``, ``image``
        and ``metrics``).

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``n_images`` and the mean of each metric; rows are
        the single models sorted by name, then ``ensemble`` if present.
    """

    missing = [c for c in ("model", *metrics) if c not in df.columns]
    if missing:
        raise ValueError(f"per-image table lacks columns {missing}; has {list(df.columns)}")
    g = df.groupby("model", sort=True)
    out = g[list(metrics)].mean()
    out.insert(0, "n_images", g.size())
    out = out.reset_index()
    order = sorted(m for m in out["model"] if m != ensemble) + (
        [ensemble] if ensemble in set(out["model"]) else []
    )
    out = out.set_index("model").loc[order].reset_index()
    out["n_images"] = out["n_images"].astype("int64")
    return pd.DataFrame(out)
