"""Acquisition artefacts burned into a raw image: a dark frame, a scale bar, JPEG.

Lab images often carry a dark frame around the field of view (vignetting masked by the
camera software or a crop), a burned-in scale bar with its label, and the blocks of a lossy
JPEG export.  :func:`add_artefacts` puts all three on a raw image so that a model's
robustness to them can be measured on images whose ground truth is known
(``brightseg cv --test-artefacts``): cells hidden under the frame leave the ground truth,
since no annotator could draw them.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["add_artefacts"]


def _to_uint8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (image.astype(np.float64) - lo) / max(hi - lo, 1e-12)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def add_artefacts(
    image: np.ndarray,
    *,
    frame_fraction: float = 0.04,
    bar_fraction: float = 0.15,
    jpeg_quality: int | None = 60,
) -> tuple[np.ndarray, np.ndarray]:
    """A raw grey image with a dark frame, a scale bar and a JPEG round trip.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Raw grey image (any integer or float dtype).
    frame_fraction : float
        Width of the dark frame on every side, as a fraction of the shorter side (0: none).
        The frame takes the image's 0.1st percentile divided by 4 (near black).
    bar_fraction : float
        Length of the scale bar as a fraction of the width (0: no bar).  The bar (height
        1.2 % of the shorter side, at least 3 px) and a label above it take the image's
        maximum, in the bottom-right corner inside the frame.
    jpeg_quality : int or None
        Quality (1-100) of a JPEG round trip of the 8-bit version (between the image's
        minimum and maximum), mapped back to the input's range and dtype; None: none.

    Returns
    -------
    image : ndarray
        Same shape and dtype as the input.
    hidden : ndarray of bool, shape (H, W)
        True under the frame: what the frame hides (ground truth there is background).
    """
    if image.ndim != 2:
        raise ValueError(f"add_artefacts expects a 2-D grey image, got shape {image.shape}")
    h, w = image.shape
    lo, hi = float(image.min()), float(image.max())
    work = image.astype(np.float64)
    hidden = np.zeros((h, w), bool)
    side = min(h, w)
    f = int(round(frame_fraction * side))
    if f > 0:
        hidden[:f] = hidden[-f:] = True
        hidden[:, :f] = hidden[:, -f:] = True
        work[hidden] = float(np.percentile(image, 0.1)) / 4.0
    if bar_fraction > 0:
        bar_h = max(3, int(round(0.012 * side)))
        bar_w = max(4, int(round(bar_fraction * w)))
        margin = f + max(4, int(round(0.03 * side)))
        y1, x1 = h - margin, w - margin
        y0, x0 = y1 - bar_h, x1 - bar_w
        work[max(0, y0) : y1, max(0, x0) : x1] = hi
        label = np.zeros((h, w), np.uint8)
        scale = side / 700.0
        cv2.putText(
            label,
            "100 um",
            (max(0, x0), max(0, y0 - int(6 * scale))),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            255,
            max(1, int(round(2 * scale))),
            cv2.LINE_AA,
        )
        work = np.where(label > 0, lo + (hi - lo) * label / 255.0, work)
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(
            ".jpg", _to_uint8(work, lo, hi), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        )
        if not ok:  # pragma: no cover - OpenCV always encodes a 2-D uint8 array
            raise RuntimeError("JPEG encoding failed")
        work = lo + cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float64) / 255.0 * (hi - lo)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(work), info.min, info.max).astype(image.dtype), hidden
    return work.astype(image.dtype), hidden
