"""Ensemble uncertainty, per-image QC scores and the list of images to review.

Uncertainty maps
----------------
From the members' probabilities ``p_1 .. p_M`` of one pixel (:func:`uncertainty_maps`):

``variance``
    ``var(p_1 .. p_M)`` (population variance, ``ddof=0``), the members' disagreement; it
    lies in [0, 0.25] and is 0 for a one-member ensemble.
``entropy``
    the binary entropy in bits of the voted (mean) probability ``p``:
    ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``, in [0, 1]; 1 where ``p = 0.5``.

Both are stored as ``uint8`` labels beside ``prob`` and ``mask`` (:func:`encode_variance`:
``round(1020 * var)``, so 255 is the largest possible variance 0.25; :func:`encode_entropy`:
``round(255 * H)``); the resolution (1/1020 of variance, 1/255 bit) is ample for QC.

Per-image QC score
------------------
:func:`image_qc` summarises an image's maps inside its predicted foreground:

``qc_mean_entropy``
    mean entropy (bits) over the predicted cells' pixels (0 without cells);
``qc_mean_variance``
    mean member variance over the same pixels (NaN when no variance map is given);
``qc_uncertain_border``
    the fraction of the border pixels of the predicted cells (the band of ``border_px``
    pixels on either side of the mask's outline, default 3) whose voted probability lies in
    the ``uncertain_band`` ``[lo, hi]``: a sharp, confident outline has few.  The pixels
    next to the outline straddle the threshold and are in the band for any edge softer
    than a step; a 1 px band saturates at 1 for the demo's soft-edged models, hence 3;
``qc_score``
    the mean of ``qc_mean_entropy`` and ``qc_uncertain_border`` (both in [0, 1]).

An image whose ``qc_score`` exceeds ``qc.review_threshold`` is listed in
``results/qc/review.tsv`` (:func:`review_table`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import ndimage as ndi

VARIANCE_LABEL = "variance"
ENTROPY_LABEL = "entropy"
#: ``uint8`` code of a variance: ``round(VARIANCE_SCALE * var)``; 255 = 0.25, the maximum.
VARIANCE_SCALE = 1020.0
#: ``uint8`` code of an entropy: ``round(ENTROPY_SCALE * H)``; 255 = 1 bit.
ENTROPY_SCALE = 255.0

#: The per-image QC columns added to ``images.parquet`` when ``qc.uncertainty`` is on.
QC_FIELDS = [
    pa.field("qc_mean_entropy", pa.float64()),
    pa.field("qc_mean_variance", pa.float64()),
    pa.field("qc_uncertain_border", pa.float64()),
    pa.field("qc_score", pa.float64()),
    pa.field("store_path", pa.string()),
]
QC_COLUMNS = [f.name for f in QC_FIELDS]


def image_schema(with_qc: bool) -> pa.Schema:
    """``images.parquet``'s schema: :data:`~brightseg.morphometry.IMAGE_SCHEMA`, plus the
    QC columns when ``with_qc``."""
    from .morphometry import IMAGE_SCHEMA

    if not with_qc:
        return IMAGE_SCHEMA
    return pa.schema(list(IMAGE_SCHEMA) + QC_FIELDS)


#: Columns of ``results/qc/review.tsv``.
REVIEW_COLUMNS = [
    "plate",
    "image_id",
    "well",
    "field",
    "timepoint",
    "path",
    "score",
    "reason",
]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, ``-p log2 p - (1-p) log2(1-p)``, with ``0 log 0 = 0``.

    Parameters
    ----------
    p : ndarray
        Probabilities (clipped to [0, 1]).

    Returns
    -------
    ndarray
        float32 in [0, 1].
    """
    p = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(q > 0, q * np.log2(q), 0.0))
    return np.clip(h, 0.0, 1.0).astype(np.float32)


def uncertainty_maps(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Member variance and vote entropy of per-member probabilities.

    Parameters
    ----------
    probs : ndarray
        ``(M, ...)`` probabilities of the ``M`` ensemble members.

    Returns
    -------
    variance, entropy : ndarray
        float32 of shape ``probs.shape[1:]``: ``var`` over the members (``ddof=0``) and
        :func:`binary_entropy` of their mean.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim < 1 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (M, ...) with M >= 1, got {probs.shape}")
    mean = probs.mean(axis=0, dtype=np.float32)
    variance = probs.var(axis=0, dtype=np.float32)
    return variance.astype(np.float32), binary_entropy(mean)


def encode_variance(variance: np.ndarray) -> np.ndarray:
    """``uint8`` of a variance map: ``round(1020 * clip(var, 0, 0.25))``."""
    v = np.clip(np.asarray(variance, dtype=np.float32), 0.0, 0.25)
    return np.rint(v * np.float32(VARIANCE_SCALE)).astype(np.uint8)


def decode_variance(code: np.ndarray) -> np.ndarray:
    """float32 variance of :func:`encode_variance`'s code."""
    return np.asarray(code, dtype=np.float32) / np.float32(VARIANCE_SCALE)


def encode_entropy(entropy: np.ndarray) -> np.ndarray:
    """``uint8`` of an entropy map in bits: ``round(255 * clip(H, 0, 1))``."""
    h = np.clip(np.asarray(entropy, dtype=np.float32), 0.0, 1.0)
    return np.rint(h * np.float32(ENTROPY_SCALE)).astype(np.uint8)


def decode_entropy(code: np.ndarray) -> np.ndarray:
    """float32 entropy (bits) of :func:`encode_entropy`'s code."""
    return np.asarray(code, dtype=np.float32) / np.float32(ENTROPY_SCALE)


def border_band(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within ``width`` pixels of the outline of ``mask``, on either side.

    Parameters
    ----------
    mask : ndarray
        Foreground (non-zero).
    width : int
        Half-width of the band in pixels (4-connected steps).

    Returns
    -------
    ndarray of bool
        ``dilate(mask, width) & ~erode(mask, width)``; the image edge is not an outline.
    """
    fg = np.asarray(mask) > 0
    if not fg.any():
        return np.zeros(fg.shape, dtype=bool)
    width = max(1, int(width))
    outer = ndi.binary_dilation(fg, iterations=width)
    inner = ndi.binary_erosion(fg, iterations=width, border_value=1)
    return outer & ~inner


def image_qc(
    prob: np.ndarray,
    mask: np.ndarray,
    *,
    entropy: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    uncertain_band: Sequence[float] = (0.2, 0.8),
    border_px: int = 3,
) -> dict[str, float]:
    """The QC numbers of one image (see the module docstring).

    Parameters
    ----------
    prob : ndarray
        The voted probability (float in [0, 1]).
    mask : ndarray
        The predicted foreground (non-zero), or the instance labels.
    entropy : ndarray, optional
        Entropy map in bits; default :func:`binary_entropy` of ``prob``.
    variance : ndarray, optional
        Member variance map; without it ``qc_mean_variance`` is NaN.
    uncertain_band : (float, float)
        Voted probabilities in ``[lo, hi]`` count as uncertain.
    border_px : int
        Half-width of the border band (:func:`border_band`).

    Returns
    -------
    dict
        ``qc_mean_entropy``, ``qc_mean_variance``, ``qc_uncertain_border``, ``qc_score``.
    """
    prob = np.asarray(prob, dtype=np.float32)
    fg = np.asarray(mask) > 0
    if fg.shape != prob.shape:
        raise ValueError(f"mask {fg.shape} and probability {prob.shape} differ in shape")
    h = binary_entropy(prob) if entropy is None else np.asarray(entropy, dtype=np.float32)
    n_fg = int(np.count_nonzero(fg))
    mean_h = float(h[fg].mean(dtype=np.float64)) if n_fg else 0.0
    if variance is None:
        mean_v = math.nan
    else:
        mean_v = float(np.asarray(variance)[fg].mean(dtype=np.float64)) if n_fg else 0.0
    lo, hi = (float(v) for v in uncertain_band)
    band = border_band(fg, border_px)
    n_band = int(np.count_nonzero(band))
    pb = prob[band]
    border = float(np.count_nonzero((pb >= lo) & (pb <= hi))) / n_band if n_band else 0.0
    return {
        "qc_mean_entropy": mean_h,
        "qc_mean_variance": mean_v,
        "qc_uncertain_border": border,
        "qc_score": 0.5 * (mean_h + border),
    }


def review_reason(row: Mapping[str, Any], threshold: float) -> str:
    """Why an image is listed: its score and the larger of the score's two parts."""
    h = float(row["qc_mean_entropy"])
    b = float(row["qc_uncertain_border"])
    part = (
        f"uncertain borders ({b:.2f} of border pixels)"
        if b >= h
        else f"uncertain cell interiors (mean entropy {h:.2f} bit)"
    )
    return f"qc_score {float(row['qc_score']):.3f} > {threshold:g}: {part}"


def review_table(images: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The images to review: ``qc_score > threshold``, worst first.

    Parameters
    ----------
    images : DataFrame
        ``images.parquet`` rows with the QC columns (:data:`QC_COLUMNS`).
    threshold : float
        ``qc.review_threshold``.

    Returns
    -------
    DataFrame
        Columns :data:`REVIEW_COLUMNS` (``path``: the image's field group in its plate
        store, ``timepoint`` the acquisition's timepoint), sorted by decreasing score,
        then plate and image id.
    """
    missing = [c for c in ("qc_score", "qc_mean_entropy", "qc_uncertain_border") if c not in images]
    if missing:
        raise ValueError(f"image table lacks the QC columns {missing} (set qc.uncertainty: true)")
    flagged = images[images["qc_score"].to_numpy(float) > float(threshold)]
    out = pd.DataFrame(
        {
            "plate": flagged["plate"].astype(str),
            "image_id": flagged["image_id"].astype(str),
            "well": flagged["well"].astype(str),
            "field": flagged["field"].astype("int64"),
            "timepoint": flagged["timepoint"].astype("int64"),
            "path": flagged["store_path"].astype(str),
            "score": flagged["qc_score"].astype(float).round(6),
            "reason": [review_reason(r, threshold) for r in flagged.to_dict("records")],
        },
        columns=REVIEW_COLUMNS,
    )
    out = out.sort_values(["score", "plate", "image_id"], ascending=[False, True, True])
    return out.reset_index(drop=True)


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman's rank correlation of the finite pairs of ``x`` and ``y``.

    Returns
    -------
    dict
        ``rho``, two-sided ``p_value`` and ``n`` (pairs used); ``rho`` is NaN with fewer
        than 3 pairs or a constant variable.
    """
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return {"rho": math.nan, "p_value": math.nan, "n": n}
    res = stats.spearmanr(x[ok], y[ok])
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": n}
