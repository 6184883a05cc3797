"""Tiling of corrected images and their masks into fixed-size training patches.

The training set is built from square patches (256 px in the paper).  Tiles
cover the whole image: they start every ``stride`` pixels and the last tile of
each row/column is placed flush with the image edge, so no pixel is lost and no
tile hangs over the border.  Images smaller than the patch size are padded by
reflection at the bottom/right, so tile coordinates stay image coordinates.

Patch images are stored as uint8 with the grey channel replicated three times
(the ImageNet encoders expect RGB input); masks stay uint8 in {0, 1}.

Preprocessing parity (issue 12): a patch must see exactly the preprocessing of the full
image it is predicted in.  :func:`patches_from_raw` therefore corrects the whole field of
view first (top-hat and percentile statistics over the full image, the same call as the
workflow's ``correct_illumination`` and the evaluation code) and only then cuts; a patch is
bit-identical to the same window of the corrected full image.  Correcting a cut patch on its
own is *not* equivalent: the top-hat's disk is clipped at the patch border and the percentiles
come from one patch, so on a real Usiigaci phase image (radius 50 px, 256 px patches) the
per-patch result differs from the full-image one by 0.043 on average (cell pixels 0.374 vs
0.342 of the [0, 1] range).  Border handling: the top-hat pads the full image as
:func:`brightseg.illumination.tophat` documents; tiles never hang over the image edge (see
above).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

Patch = tuple[int, int, np.ndarray, np.ndarray]


def _axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis, the last one flush with the edge."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def tile_positions(
    height: int, width: int, size: int, stride: int | None = None
) -> list[tuple[int, int]]:
    """Top-left corners of the tiles that cover an image.

    Parameters
    ----------
    height, width : int
        Image shape in pixels.
    size : int
        Square tile size.
    stride : int, optional
        Distance between tile starts; defaults to ``size`` (no overlap).

    Returns
    -------
    list of (int, int)
        ``(row, col)`` corners in row-major order.  Along each axis tiles start
        at ``0, stride, 2*stride, ...`` and the last tile ends exactly at the
        image edge (it may overlap its neighbour).  An axis shorter than
        ``size`` has a single tile at 0 (the image is then padded).

    Examples
    --------
    >>> tile_positions(600, 256, 256)
    [(0, 0), (256, 0), (344, 0)]
    """
    if stride is None:
        stride = size
    for name, value in (("height", height), ("width", width), ("size", size), ("stride", stride)):
        if int(value) != value or value < 1:
            raise InputError(
                None, f"tile_positions: {name} must be a positive integer, got {value}"
            )
    rows = _axis_starts(int(height), int(size), int(stride))
    cols = _axis_starts(int(width), int(size), int(stride))
    return [(r, c) for r in rows for c in cols]


def _check_pair(
    image: np.ndarray, mask: np.ndarray, name: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an image/mask pair and return (float32 image, uint8 {0,1} mask)."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2 and not (image.ndim == 3 and image.shape[2] == 3):
        raise InputError(
            name,
            f"expected a 2-D greyscale image (or (H, W, 3) focal planes), got shape {image.shape}",
        )
    if mask.shape != image.shape[:2]:
        raise InputError(name, f"mask shape {mask.shape} differs from image shape {image.shape}")
    if image.size == 0:
        raise InputError(name, "image has no pixels")
    if image.dtype.kind != "f":
        raise InputError(name, f"expected a float image in [0, 1], got dtype {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise InputError(name, "image contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(name, f"image values must lie in [0, 1], found [{lo:g}, {hi:g}]")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    values = np.unique(mask)
    if np.all(np.isin(values, (0, 1))):
        mask = mask.astype(np.uint8, copy=False)
    elif np.all(np.isin(values, (0, 255))):
        mask = (mask > 0).astype(np.uint8)
    else:
        shown = ", ".join(f"{v:g}" for v in values[:6])
        raise InputError(name, f"mask must be binary (0/1 or 0/255), found values {shown}")
    return image.astype(np.float32, copy=False), mask


def make_patches(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    size: int = 256,
    stride: int | None = None,
    min_foreground: float = 0.0,
    name: str | None = None,
) -> list[Patch]:
    """Cut an image and its mask into square patches.

    Parameters
    ----------
    image : ndarray of float, shape (H, W) or (H, W, 3)
        Illumination-corrected image in [0, 1] (``(H, W, 3)``: three focal planes,
        :mod:`brightseg.focus`).
    mask : ndarray of uint8 or bool, shape (H, W)
        Binary foreground mask (0/1; 0/255 is accepted and converted).
    size : int
        Patch side length.
    stride : int, optional
        Tile stride (default ``size``); see :func:`tile_positions`.
    min_foreground : float
        Patches whose mask foreground fraction is below this are dropped.
    name : str, optional
        Name of the source, used in error messages.

    Returns
    -------
    list of (row, col, img_patch, mask_patch)
        ``img_patch`` is float32 ``(size, size[, 3])``, ``mask_patch`` uint8
        ``(size, size)`` in {0, 1}; ``row, col`` is the tile corner in the
        (unpadded) image.

    Raises
    ------
    InputError
        Non-2-D or mismatched arrays, values outside [0, 1], non-binary mask.
    """
    image, mask = _check_pair(image, mask, name)
    if not 0.0 <= min_foreground <= 1.0:
        raise InputError(name, f"min_foreground must lie in [0, 1], got {min_foreground}")
    h, w = image.shape[:2]
    positions = tile_positions(h, w, size, stride)
    pad = ((0, max(0, size - h)), (0, max(0, size - w)))
    if pad[0][1] or pad[1][1]:
        log.debug("%s: padding %dx%d image by reflection to %d px", name, h, w, size)
        image = np.pad(image, pad + ((0, 0),) * (image.ndim - 2), mode="reflect")
        mask = np.pad(mask, pad, mode="reflect")
    out: list[Patch] = []
    for r, c in positions:
        m = mask[r : r + size, c : c + size]
        if float(m.mean()) < min_foreground:
            continue
        out.append((r, c, np.ascontiguousarray(image[r : r + size, c : c + size]), m.copy()))
    return out


def patches_from_raw(
    raw: np.ndarray,
    mask: np.ndarray,
    *,
    radius_px: int,
    mode: str = "black",
    method: str = "fast",
    percentiles: tuple[float, float] = (1.0, 99.8),
    size: int = 256,
    stride: int | None = None,
    min_foreground: float = 0.0,
    name: str | None = None,
) -> tuple[np.ndarray, list[Patch]]:
    """Correct a raw full image, then cut it into patches (preprocessing parity).

    Parameters
    ----------
    raw : ndarray, shape (H, W)
        Raw full field of view (e.g. uint16).
    mask : ndarray, shape (H, W)
        Binary foreground mask.
    radius_px, mode, method, percentiles
        See :func:`brightseg.illumination.correct_illumination`.
    size, stride, min_foreground, name
        See :func:`make_patches`.

    Returns
    -------
    corrected : ndarray of float32, shape (H, W)
        The corrected full image (what inference sees).
    patches : list of (row, col, img_patch, mask_patch)
        Windows of ``corrected`` and ``mask``, as :func:`make_patches` returns them.
    """
    from .illumination import correct_illumination

    corrected = correct_illumination(
        raw, radius_px, mode=mode, method=method, percentiles=tuple(percentiles)
    )
    patches = make_patches(
        corrected, mask, size=size, stride=stride, min_foreground=min_foreground, name=name
    )
    return corrected, patches


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a [0, 1] float greyscale image to uint8 with 3 equal channels.

    Parameters
    ----------
    image : ndarray of float, shape (H, W) or (H, W, 3)
        ``(H, W, 3)``: three focal planes (:mod:`brightseg.focus`), kept as the channels.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        ``round(clip(x, 0, 1) * 255)``, a grey image replicated into three channels.
    """
    image = np.asarray(image)
    if image.ndim != 2 and not (image.ndim == 3 and image.shape[2] == 3):
        raise InputError(None, f"expected a 2-D greyscale image, got shape {image.shape}")
    grey = np.rint(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)


def stack_patches(patches: Sequence[Patch]) -> tuple[np.ndarray, np.ndarray]:
    """Stack patches into training arrays.

    Parameters
    ----------
    patches : sequence of (row, col, img_patch, mask_patch)
        Output of :func:`make_patches`.

    Returns
    -------
    images : ndarray of uint8, shape (N, H, W, 3)
        Grey replicated into 3 channels, ``round(x * 255)``.
    masks : ndarray of uint8, shape (N, H, W)
        Values in {0, 1}.
    """
    if not patches:
        raise InputError(None, "no patches to stack")
    images = np.stack([to_rgb_uint8(p[2]) for p in patches])
    masks = np.stack([(np.asarray(p[3]) > 0).astype(np.uint8) for p in patches])
    return images, masks
