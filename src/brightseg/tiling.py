"""Tiling, blending, test-time augmentation and voting: the pure-numpy maths of inference.

Apart from the streaming plate runtime in :mod:`brightseg.ensemble` (as nnU-Net keeps its
sliding-window maths apart from its predictor, and cellpose keeps ``make_tiles`` and
``average_tiles`` in ``transforms.py``).  Nothing here touches files or models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .errors import InputError

VOTES = ("mean", "majority")
WINDOW_FLOOR = 1e-3

# --------------------------------------------------------------------------- tiling


def _axis_positions(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: evenly spaced, first at 0, last at ``n - tile``."""
    if n <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(n - tile) // stride) + 1  # ceil((n - tile) / stride) + 1
    return [int(p) for p in np.round(np.linspace(0, n - tile, count)).astype(int)]


def _check_tiling(tile: int, overlap: int) -> None:
    if int(tile) != tile or tile < 1:
        raise InputError("tile", f"tile size must be a positive integer, got {tile!r}")
    if int(overlap) != overlap or not 0 <= overlap < tile:
        raise InputError(
            "overlap", f"overlap must be an integer in [0, tile={tile}), got {overlap!r}"
        )


def tile_grid(h: int, w: int, tile: int = 256, overlap: int = 32) -> list[tuple[int, int]]:
    """Top-left corners of the tiles covering an ``h x w`` image.

    Parameters
    ----------
    h, w : int
        Image height and width (any size >= 1).
    tile : int
        Square tile size.
    overlap : int
        Minimum overlap between neighbouring tiles, ``0 <= overlap < tile``.

    Returns
    -------
    list of (int, int)
        ``(y, x)`` corners in row-major order.  Along each axis the tiles are
        evenly spaced from 0 to ``n - tile`` with a stride of at most
        ``tile - overlap``, so every pixel is covered and every tile lies inside
        the image.  An axis shorter than ``tile`` has the single start 0 (the
        image is padded by reflection to the tile size).
    """
    _check_tiling(tile, overlap)
    if h < 1 or w < 1:
        raise ValueError(f"image must have at least one pixel, got {h} x {w}")
    ys = _axis_positions(int(h), int(tile), int(overlap))
    xs = _axis_positions(int(w), int(tile), int(overlap))
    return [(y, x) for y in ys for x in xs]


def blend_window(tile: int = 256, overlap: int = 32, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """Separable raised-cosine blending weights for one tile.

    The 1-D profile is 1 in the middle and ramps as ``sin^2`` over ``overlap``
    pixels at both ends, sampled at pixel centres, so the ramps of two tiles
    that overlap by exactly ``overlap`` pixels sum to one; ``floor`` keeps every
    weight positive (pixels seen by one tile only are still normalised
    exactly).

    Parameters
    ----------
    tile : int
        Tile size.
    overlap : int
        Ramp width in pixels; 0 gives uniform weights.
    floor : float
        Minimum weight.

    Returns
    -------
    ndarray of float32, shape (tile, tile)
    """
    _check_tiling(tile, overlap)
    ramp = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        i = np.arange(tile, dtype=np.float64)
        up = np.sin(0.5 * np.pi * np.minimum((i + 0.5) / overlap, 1.0)) ** 2
        ramp = np.minimum(up, up[::-1])
    ramp = floor + (1.0 - floor) * ramp
    return np.outer(ramp, ramp).astype(np.float32)


# --------------------------------------------------------------------------- TTA


class Transform(NamedTuple):
    """A dihedral transform of the two spatial axes and its exact inverse."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


def _dihedral(k: int, flip: bool, axes: tuple[int, int]) -> Transform:
    def forward(a: np.ndarray) -> np.ndarray:
        if flip:
            a = np.flip(a, axis=axes[1])
        return np.rot90(a, k, axes=axes)

    def inverse(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, -k, axes=axes)
        return np.flip(a, axis=axes[1]) if flip else a

    return Transform(f"{'flip_' if flip else ''}rot{90 * k}", forward, inverse)


def tta_transforms(axes: tuple[int, int] = (0, 1)) -> list[Transform]:
    """The 8 dihedral transforms (identity first) as ``(name, forward, inverse)``.

    ``forward`` mirrors the second axis (for the flipped half) then rotates by
    ``k * 90`` degrees in the plane of ``axes``; ``inverse`` undoes it exactly.
    Both return views (``np.rot90``/``np.flip``); square arrays keep their shape.
    """
    return [_dihedral(k, flip, tuple(axes)) for flip in (False, True) for k in range(4)]


# --------------------------------------------------------------------------- voting


def _check_vote(method: str, threshold: float) -> None:
    if method not in VOTES:
        raise InputError("vote", f"unknown vote {method!r}; expected one of {VOTES}")
    if not 0.0 <= float(threshold) < 1.0:
        raise InputError("threshold", f"threshold must be in [0, 1), got {threshold!r}")


def vote(
    probs: np.ndarray, method: str = "mean", threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-model probabilities into an ensemble probability and mask.

    Parameters
    ----------
    probs : ndarray, shape (M, ...)
        Probabilities of ``M`` models.
    method : {"mean", "majority"}
        ``"mean"``: ``mask = mean(probs) > threshold``.  ``"majority"``:
        ``mask = mean(probs > 0.5) > threshold`` (fraction of models voting
        foreground; with the default threshold a strict majority).
    threshold : float
        Threshold in [0, 1).

    Returns
    -------
    prob : ndarray of float32, shape (...)
        Mean probability (for both methods).
    mask : ndarray of uint8, shape (...)
        0/1 mask.
    """
    _check_vote(method, threshold)
    return _vote(probs, method, threshold)


def vote_map(probs: np.ndarray, method: str, prob: np.ndarray | None = None) -> np.ndarray:
    """The map a vote thresholds: the mean probability (``"mean"``) or the share of models
    above 0.5 (``"majority"``), float32 of shape ``probs.shape[1:]``.

    ``prob``: the mean probability when the caller already has it (``"mean"`` returns it).
    """
    if method == "majority":
        return (np.asarray(probs) > 0.5).mean(axis=0, dtype=np.float32)
    return np.asarray(probs).mean(axis=0, dtype=np.float32) if prob is None else prob


def _vote(probs: np.ndarray, method: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim < 1 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (M, ...) with M >= 1, got {probs.shape}")
    prob = probs.mean(axis=0, dtype=np.float32)
    return prob, (vote_map(probs, method, prob) > threshold).astype(np.uint8)


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """A probability map stored as ``uint8``: ``round(255 * clip(p, 0, 1))``."""
    return np.rint(np.clip(prob, 0.0, 1.0) * np.float32(255)).astype(np.uint8)
