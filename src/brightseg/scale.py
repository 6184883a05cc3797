"""Working pixel size: images resampled so that the network sees cells at a fixed scale.

A model trained at a working pixel size ``w`` um/px sees every image resampled from its own
pixel size ``p`` by the factor ``p / w`` (``< 1``: downsampled, fewer pixels per cell and
fewer FLOPs per field of view); its probabilities are resampled back to the image's own
grid, where they are thresholded, split into cells and measured, so masks and
morphometrics keep the native resolution.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def scale_factor(pixel_size_um: float, working_pixel_size_um: float | None) -> float:
    """Resampling factor from an image's grid to the working grid (1.0: none).

    Parameters
    ----------
    pixel_size_um : float
        The image's pixel size.
    working_pixel_size_um : float or None
        The models' pixel size; ``None`` keeps the image's own.

    Returns
    -------
    float
        ``pixel_size_um / working_pixel_size_um`` (``0.5``: half as many pixels per axis).
    """
    if working_pixel_size_um is None:
        return 1.0
    if not (pixel_size_um > 0 and working_pixel_size_um > 0):
        raise InputError(
            None,
            f"pixel sizes must be positive, got {pixel_size_um} and {working_pixel_size_um}",
        )
    return float(pixel_size_um) / float(working_pixel_size_um)


def working_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """``(H, W)`` of an image of ``shape`` on the working grid (at least 1 px per axis)."""
    h, w = int(shape[0]), int(shape[1])
    return max(1, int(round(h * factor))), max(1, int(round(w * factor)))


def resample_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An image (``(H, W)`` or ``(H, W, C)``, float) on a grid of ``shape``.

    Area averaging when it shrinks (no aliasing of fine texture), bilinear when it grows.

    Examples
    --------
    >>> resample_image(np.ones((4, 6), np.float32), (2, 3)).shape
    (2, 3)
    """
    import cv2

    h, w = image.shape[:2]
    if (h, w) == tuple(shape):
        return image
    shrink = shape[0] * shape[1] < h * w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    arr = np.ascontiguousarray(image, dtype=np.float32)
    out = cv2.resize(arr, (int(shape[1]), int(shape[0])), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel
        out = out[..., None]
    # both interpolations are convex combinations: keep float rounding inside the input range
    return np.clip(out, arr.min(), arr.max(), out=out)


def resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask on a grid of ``shape``: the area fraction of foreground, > 0.5."""
    frac = resample_image(mask.astype(np.float32), shape)
    return (frac > 0.5).astype(np.uint8)


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An instance-label image on a grid of ``shape``: nearest neighbour at pixel centres.

    Cells that vanish (smaller than a working pixel) are dropped; labels are not renumbered.
    """
    h, w = labels.shape[:2]
    if (h, w) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.intp), w - 1)
    return labels[rows[:, None], cols[None, :]]


def pair_to_working(pair: dict, working_pixel_size_um: float | None) -> dict:
    """A training pair (``image``, ``mask``, optional ``labels``/``nuclei``) on the working grid.

    ``pair["pixel_size_um"]`` is the pair's own pixel size (required when
    ``working_pixel_size_um`` is set).  The image is area-averaged, the mask thresholded at
    half coverage and the label images sampled at pixel centres.  Unchanged without a
    working pixel size or when the two sizes agree.
    """
    if working_pixel_size_um is None:
        return pair
    own = pair.get("pixel_size_um")
    if own is None:
        raise InputError(
            str(pair.get("image_id", "training pair")),
            "training.working_pixel_size_um is set but this image has no pixel size",
        )
    factor = scale_factor(float(own), working_pixel_size_um)
    shape = working_shape(pair["image"].shape, factor)
    if shape == tuple(pair["image"].shape[:2]):
        return pair
    out = dict(pair)
    out["image"] = resample_image(pair["image"], shape)
    out["mask"] = resample_mask(pair["mask"], shape)
    for key in ("labels", "nuclei"):
        if pair.get(key) is not None:
            out[key] = resample_labels(pair[key], shape)
    return out
