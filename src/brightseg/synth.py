"""Synthetic brightfield / phase-contrast plates with ground truth.

The generator is the demo's data and the test suite's ground truth.  Every
image is rendered from an explicit :class:`numpy.random.Generator`, so the
same arguments always give the same bytes in every file written.

Image model
-----------
A cell is a smooth star-shaped region (a radius that varies with the angle by
a few random low-order harmonics, stretched along a random axis), drawn as a
*relative* intensity change around 0:

* brightfield: a thin bright halo on the border, a slightly darker, textured
  interior and 1-3 small dark nucleoli.  Rounded cells (about to divide) are
  smaller and have a stronger halo.
* phase contrast: a dark cell body with a wide bright halo just outside
  (the phase halo artefact) and dark nucleoli.

Cells are painted one after the other; a later cell lies on top of the earlier
ones, so the instance label image is the masks painted in that order.
Placement is rejected when a cell would hide more than 40 % of an earlier
one or cut it in two, so every label is one 4-connected region.  Debris (small
bright dots without a nucleolus) lies on the background and is never labelled.

The relative image ``1 + s`` is multiplied by a smooth uneven illumination
(low-order polynomial, a broad Gaussian bump and vignetting), optionally
motion-blurred, and passed through a camera model: counts =
``offset + gain * Poisson(photo-electrons) + Normal(0, read noise)``, with the
background at 20,000-30,000 counts and cell contrast of a few per cent.

Annotations
-----------
Each cell's mask is the rasterisation of a polygon traced on pixel-edge
midpoints (``skimage.measure.find_contours`` at level 0.5).  In the exported
CVAT and COCO files, coordinates use the CVAT/COCO convention: pixel ``(r, c)``
covers ``[c, c+1) x [r, r+1)``, so a vertex ``(x, y)`` is ``(col + 0.5, row +
0.5)`` of the contour.  Rasterising the exported polygon by testing pixel
centres (``skimage.draw.polygon(y - 0.5, x - 0.5)``) gives back the mask
exactly; ``pycocotools`` (corner convention) gives the same masks in practice.
CVAT shapes are the full (amodal) cell shapes; painting them in ``z_order``
reproduces the label image.  COCO annotations are the visible regions (parts
covered by later cells cropped), so they do not overlap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import draw, measure

from .annotations.export import (
    coco_rle_box,
    coco_skeleton,
    cvat_mask,
    cvat_polygon,
    cvat_task_xml,
    format_points,
)
from .errors import InputError
from .io import atomic_path, write_png, write_text, write_tiff
from .progress import progress

log = logging.getLogger(__name__)

MODALITIES = ("brightfield", "phase")
ROW_LETTERS = "ABCDEFGHIJKLMNOP"
#: Columns per row of the simulated plate (a 96-well plate: A01..A12, B01..).
PLATE_COLUMNS = 12
#: Fixed timestamps keep the exports byte-identical between runs.

#: LIVECell cell lines and a rough look for each (mean radius in px at the
#: LIVECell scale, cells per 704x520 image, and shape mix round/elongated/irregular).
LIVECELL_LINES: dict[str, dict] = {
    "A172": {"radius": 15.0, "cells": (30, 45), "mix": (0.15, 0.35, 0.50)},
    "BT474": {"radius": 11.0, "cells": (45, 70), "mix": (0.60, 0.10, 0.30)},
    "BV2": {"radius": 8.0, "cells": (60, 90), "mix": (0.70, 0.10, 0.20)},
    "Huh7": {"radius": 16.0, "cells": (25, 40), "mix": (0.25, 0.25, 0.50)},
    "MCF7": {"radius": 12.0, "cells": (40, 60), "mix": (0.45, 0.15, 0.40)},
    "SHSY5Y": {"radius": 10.0, "cells": (40, 60), "mix": (0.20, 0.40, 0.40)},
    "SkBr3": {"radius": 11.0, "cells": (45, 70), "mix": (0.55, 0.15, 0.30)},
    "SKOV3": {"radius": 17.0, "cells": (25, 40), "mix": (0.10, 0.55, 0.35)},
}
#: File of a synthetic LIVECell fixture naming the images it corrupted on purpose.
EXPECTED_SKIPS = "expected_skips.tsv"

#: An image named in the paper's list of excluded LIVECell test images.
LIVECELL_EXCLUDED_EXAMPLE = "A172_Phase_A7_1_01d04h00m_3"


# --------------------------------------------------------------------------- data classes


@dataclass
class Cell:
    """One painted cell (full, amodal shape).

    Attributes
    ----------
    label : int
        Value in the label image (= paint order, starting at 1).
    box : tuple of int
        ``(r0, c0, r1, c1)``: the half-open bounding box of ``mask`` in the image.
    mask : ndarray of bool
        Full shape inside ``box`` (parts hidden by later cells included).
    polygon : ndarray
        ``(N, 2)`` vertices ``(x, y)`` in CVAT/COCO pixel-corner coordinates;
        rasterising it by pixel centres gives ``mask`` exactly.
    kind : str
        ``"round"``, ``"elongated"`` or ``"irregular"``.
    """

    label: int
    box: tuple[int, int, int, int]
    mask: np.ndarray
    polygon: np.ndarray
    kind: str

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The cell's mask as a full-size boolean image."""
        out = np.zeros(shape, dtype=bool)
        r0, c0, r1, c1 = self.box
        out[r0:r1, c0:c1] = self.mask
        return out


@dataclass
class Debris:
    """A debris particle: a small bright dot, not a cell."""

    center: tuple[float, float]
    radius: float
    box: tuple[int, int, int, int]
    mask: np.ndarray
    polygon: np.ndarray


@dataclass
class Scene:
    """Everything known about one rendered image (used by tests and exports)."""

    image: np.ndarray
    labels: np.ndarray
    cells: list[Cell]
    debris: list[Debris]
    illumination: np.ndarray
    background: float
    modality: str
    blurred: bool

    @property
    def debris_mask(self) -> np.ndarray:
        out = np.zeros(self.labels.shape, dtype=bool)
        for d in self.debris:
            r0, c0, r1, c1 = d.box
            out[r0:r1, c0:c1] |= d.mask
        return out


# --------------------------------------------------------------------------- geometry


def _trace(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Outer contour of the largest 4-connected component of a local mask.

    Returns ``(polygon_rc, filled)`` where ``polygon_rc`` holds ``(row, col)``
    vertices in pixel-centre coordinates of ``mask`` (collinear points removed)
    and ``filled`` is the polygon rasterised by pixel centres, or None if the
    mask is empty.

    Notes
    -----
    Marching squares at level 0.5 with 8-connected background
    (``fully_connected="low"``) puts every foreground pixel centre inside the
    outer contour and every background centre outside, except background
    components that are 8-enclosed (holes).  So the rasterised polygon equals
    the component with its 8-connected holes filled, computed here directly
    (``skimage.draw.polygon`` is 5x slower); the tests check the equality.
    """
    lab, n = ndi.label(mask)
    if n == 0:
        return None
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        mask = lab == int(np.argmax(sizes))
    padded = np.pad(mask, 1).astype(np.float32)
    contours = measure.find_contours(padded, 0.5, fully_connected="low")
    contour = max(contours, key=len) - 1.0
    if np.allclose(contour[0], contour[-1]):
        contour = contour[:-1]
    contour = _drop_collinear(contour)
    filled = ndi.binary_fill_holes(mask, structure=np.ones((3, 3), bool))
    return contour, filled


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    """Remove vertices lying on the straight line through their neighbours."""
    prev = np.roll(pts, 1, axis=0)
    nxt = np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (
        nxt[:, 0] - pts[:, 0]
    )
    keep = np.abs(cross) > 1e-9
    return pts[keep] if keep.sum() >= 3 else pts


def _to_xy(contour_rc: np.ndarray, r0: int, c0: int) -> np.ndarray:
    """Local pixel-centre (row, col) -> image pixel-corner (x, y)."""
    return np.stack([contour_rc[:, 1] + c0 + 0.5, contour_rc[:, 0] + r0 + 0.5], axis=1)


def rasterize_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon given in pixel-corner ``(x, y)`` coordinates.

    A pixel belongs to the polygon when its centre ``(c + 0.5, r + 0.5)`` lies
    inside.  This is the inverse of the tracing used for the exports.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    rr, cc = draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
    out = np.zeros(shape, dtype=bool)
    out[rr, cc] = True
    return out


def _shape_field(
    rng: np.random.Generator, radius: float, kind: str
) -> tuple[float, float, float, np.ndarray, np.ndarray, np.ndarray]:
    """Random shape parameters: aspect, angle, extent and radial harmonics."""
    if kind == "round":
        aspect = rng.uniform(1.0, 1.15)
        ks = np.arange(2, 5)
        amps = rng.uniform(0.0, 0.04, ks.size)
    elif kind == "elongated":
        aspect = rng.uniform(1.7, 3.2)
        ks = np.arange(2, 6)
        amps = rng.uniform(0.0, 0.08, ks.size) / np.sqrt(ks - 1)
    else:  # irregular / star-like
        aspect = rng.uniform(1.0, 1.7)
        ks = np.arange(2, 8)
        amps = rng.uniform(0.0, 0.30, ks.size) / np.sqrt(ks - 1)
        star = rng.integers(3, 7)
        amps[ks == star] += rng.uniform(0.1, 0.25)
        total = amps.sum()
        if total > 0.55:
            amps *= 0.55 / total
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    angle = rng.uniform(0, np.pi)
    extent = radius * math.sqrt(aspect) * (1.0 + float(amps.sum()))
    return aspect, angle, extent, ks, amps, phases


def _cell_mask(
    shape: tuple[int, int],
    center: tuple[float, float],
    radius: float,
    params: tuple,
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Rasterise one cell shape in its (image-clipped) local box."""
    aspect, angle, extent, ks, amps, phases = params
    cy, cx = center
    h, w = shape
    half = int(math.ceil(extent)) + 1
    r0, r1 = max(0, int(cy) - half), min(h, int(cy) + half + 2)
    c0, c1 = max(0, int(cx) - half), min(w, int(cx) + half + 2)
    if r1 - r0 < 3 or c1 - c0 < 3:
        return None
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    yy -= cy
    xx -= cx
    ca, sa = math.cos(angle), math.sin(angle)
    u = (xx * ca + yy * sa) / math.sqrt(aspect)
    v = (-xx * sa + yy * ca) * math.sqrt(aspect)
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    rad = np.ones_like(theta)
    for k, a, p in zip(ks, amps, phases, strict=True):
        rad += a * np.cos(k * theta + p)
    return (r0, c0, r1, c1), rho < radius * rad


# --------------------------------------------------------------------------- texture


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed white noise."""
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    sd = float(n.std())
    return n / sd if sd > 0 else n


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth multiplicative field: polynomial + Gaussian bump + vignetting.

    Returns a float32 field with values around 1 (corners darker by 8-20 %).
    """
    h, w = shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    c = rng.uniform(-0.04, 0.04, 5).astype(np.float32)
    poly = c[0] * x + c[1] * y + c[2] * x * x + c[3] * x * y + c[4] * y * y
    by, bx = rng.uniform(-0.6, 0.6, 2)
    bs = rng.uniform(0.4, 0.8)
    bump = rng.uniform(-0.05, 0.05) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * bs * bs))
    vig = rng.uniform(0.08, 0.20)
    r2 = (x * x + y * y) / 2.0
    field = (1.0 + poly + bump) * (1.0 - vig * r2)
    return field.astype(np.float32)


def _motion_kernel(rng: np.random.Generator) -> np.ndarray:
    """Normalised line kernel of random length (3-9 px) and direction."""
    length = int(rng.integers(3, 10))
    angle = rng.uniform(0, np.pi)
    size = length + 2 + (length % 2 == 0)
    k = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = math.cos(angle) * (length - 1) / 2, math.sin(angle) * (length - 1) / 2
    cv2.line(
        k,
        (round(c - dx), round(c - dy)),
        (round(c + dx), round(c + dy)),
        1.0,
        thickness=1,
        lineType=cv2.LINE_AA,
    )
    return k / k.sum()


# --------------------------------------------------------------------------- rendering


def _cell_signal(
    rng: np.random.Generator,
    mask: np.ndarray,
    kind: str,
    modality: str,
    pad: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Relative intensity change and opacity of one cell on a padded local box."""
    m = np.pad(mask, pad).astype(np.uint8)
    d_in = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5)
    sd = d_in - d_out  # > 0 inside, ~0.5-1 at the border pixels
    inside = m.astype(bool)
    dmax = float(d_in.max()) or 1.0
    tex = _smooth_noise(rng, m.shape, rng.uniform(1.0, 2.0))
    if modality == "brightfield":
        halo_amp = rng.uniform(0.025, 0.05) * (1.6 if kind == "round" else 1.0)
        halo_w = rng.uniform(0.9, 1.5)
        body = -rng.uniform(0.008, 0.025) * (0.4 if kind == "round" else 1.0)
        tex_amp = rng.uniform(0.004, 0.010)
        nuc_amp = -rng.uniform(0.025, 0.05)
        halo = halo_amp * np.exp(-(((sd - 0.3) / halo_w) ** 2))
    else:
        halo_amp = rng.uniform(0.06, 0.12) * (1.4 if kind == "round" else 1.0)
        halo_w = rng.uniform(1.5, 2.5)
        body = -rng.uniform(0.04, 0.08) * (0.5 if kind == "round" else 1.0)
        tex_amp = rng.uniform(0.008, 0.02)
        nuc_amp = -rng.uniform(0.04, 0.08)
        halo = halo_amp * np.exp(-(((sd + 1.5) / halo_w) ** 2))
    ramp = np.clip(sd / 3.0, 0.0, 1.0)
    sig = halo + inside * (body * ramp + tex_amp * tex * ramp)
    # 1-3 nucleoli inside the central part of the cell.
    core = np.argwhere(d_in >= max(2.0, 0.45 * dmax))
    n_nuc = int(rng.integers(1, 4)) if core.size else 0
    if n_nuc:
        yy, xx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
        for _ in range(n_nuc):
            py, px = core[int(rng.integers(len(core)))]
            s = rng.uniform(1.0, 2.0) * min(1.0, dmax / 6.0) + 0.4
            sig += nuc_amp * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * s * s))
    alpha = np.clip(sd + 0.5, 0.0, 1.0)
    return sig.astype(np.float32), alpha.astype(np.float32)


def render_scene(
    shape: tuple[int, int],
    n_cells: int,
    rng: np.random.Generator,
    *,
    modality: str = "brightfield",
    mean_radius_px: float = 18.0,
    debris: int = 5,
    blur_prob: float = 0.3,
    shape_mix: tuple[float, float, float] = (0.2, 0.35, 0.45),
    touch_prob: float = 0.35,
    background: tuple[float, float] = (20000.0, 30000.0),
    dtype: type = np.uint16,
    gain: tuple[float, float] = (1.0, 2.0),
    read_noise: tuple[float, float] = (3.0, 8.0),
    offset: float = 100.0,
    contrast: float = 1.0,
) -> Scene:
    """Render one synthetic image with full ground truth.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` in pixels.
    n_cells : int
        Number of cells to place (fewer if no valid place is found).
    rng : numpy.random.Generator
        Source of all randomness.
    modality : {"brightfield", "phase"}
        Brightfield (bright border halo, slightly dark textured interior) or
        phase contrast (dark cells with a wide bright halo).
    mean_radius_px : float
        Mean cell radius in pixels (area-equivalent).
    debris : int
        Number of debris particles on the background.
    blur_prob : float
        Probability of a slight motion blur.
    shape_mix : tuple of float
        Probabilities of round, elongated and irregular (star-like) cells.
    touch_prob : float
        Probability that a cell is placed touching/overlapping an earlier one.
    background : tuple of float
        Range of the background level in counts.
    dtype : numpy dtype
        Output image dtype (uint16 or uint8).
    gain, read_noise : tuple of float
        Ranges of the camera gain (counts per photo-electron) and read noise (counts).
    offset : float
        Camera offset (counts), included in ``background``.
    contrast : float
        Factor on all relative intensity changes (cells, halos, debris).

    Returns
    -------
    Scene
    """
    if modality not in MODALITIES:
        raise InputError(None, f"modality must be one of {MODALITIES}, got {modality!r}")
    h, w = (int(shape[0]), int(shape[1]))
    if h < 16 or w < 16:
        raise InputError(None, f"image shape must be at least 16x16, got {shape}")
    if mean_radius_px <= 1:
        raise InputError(None, f"mean_radius_px must be > 1, got {mean_radius_px}")
    labels = np.zeros((h, w), dtype=np.uint16)
    signal = np.zeros((h, w), dtype=np.float32)
    cells: list[Cell] = []
    kinds = ("round", "elongated", "irregular")
    mix = np.asarray(shape_mix, dtype=np.float64)
    mix = mix / mix.sum()
    max_tries = 30
    for _ in range(int(n_cells)):
        kind = kinds[int(rng.choice(3, p=mix))]
        radius = mean_radius_px * math.exp(rng.normal(0.0, 0.18))
        if kind == "round":
            radius *= 0.8
        params = _shape_field(rng, radius, kind)
        placed = None
        for _try in range(max_tries):
            if cells and rng.random() < touch_prob:
                ref = cells[int(rng.integers(len(cells)))]
                r0, c0, r1, c1 = ref.box
                ry, rx = (r0 + r1) / 2, (c0 + c1) / 2
                ref_r = math.sqrt(ref.area / math.pi)
                dist = (ref_r + radius) * rng.uniform(0.75, 1.05)
                a = rng.uniform(0, 2 * np.pi)
                cy, cx = ry + dist * math.sin(a), rx + dist * math.cos(a)
            else:
                m = 0.3 * radius
                cy, cx = rng.uniform(-m, h + m), rng.uniform(-m, w + m)
            placed = _try_place(labels, cells, (cy, cx), radius, params, kind)
            if placed is not None:
                break
        if placed is None:
            continue
        cell = placed
        r0, c0, r1, c1 = cell.box
        pad = 6 if modality == "phase" else 4
        sig, alpha = _cell_signal(rng, cell.mask, kind, modality, pad)
        _composite(signal, sig, alpha, r0 - pad, c0 - pad)
        cells.append(cell)

    # Debris on the background only.
    debris_list: list[Debris] = []
    occupied = ndi.binary_dilation(labels > 0, iterations=3)
    for _ in range(int(debris)):
        for _try in range(max_tries):
            rad = rng.uniform(1.5, 4.0)
            cy, cx = rng.uniform(rad + 1, h - rad - 1), rng.uniform(rad + 1, w - rad - 1)
            half = int(math.ceil(rad)) + 1
            r0, r1 = int(cy) - half, int(cy) + half + 2
            c0, c1 = int(cx) - half, int(cx) + half + 2
            if r0 < 0 or c0 < 0 or r1 > h or c1 > w:
                continue
            yy, xx = np.mgrid[r0:r1, c0:c1]
            dm = (yy - cy) ** 2 + (xx - cx) ** 2 < rad * rad
            if not dm.any() or occupied[r0:r1, c0:c1][dm].any():
                continue
            traced = _trace(dm)
            if traced is None:
                continue
            contour, dm = traced
            occupied[max(0, r0 - 3) : r1 + 3, max(0, c0 - 3) : c1 + 3] = True
            debris_list.append(Debris((cy, cx), rad, (r0, c0, r1, c1), dm, _to_xy(contour, r0, c0)))
            # Bright dot with a Gaussian profile, slightly wider than its mask.
            pr0, pr1 = max(0, r0 - 4), min(h, r1 + 4)
            pc0, pc1 = max(0, c0 - 4), min(w, c1 + 4)
            yy, xx = np.mgrid[pr0:pr1, pc0:pc1]
            amp = rng.uniform(0.03, 0.07) * (1.5 if modality == "phase" else 1.0)
            s = rad / 1.3
            signal[pr0:pr1, pc0:pc1] += amp * np.exp(
                -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)
            )
            break

    # Faint background texture, illumination, optics, camera.
    coarse = (max(2, h // 32), max(2, w // 32))
    bg_tex = cv2.resize(
        rng.standard_normal(coarse).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    rel = 1.0 + float(contrast) * signal + 0.003 * bg_tex
    illum = _illumination(rng, (h, w))
    img = rel * illum
    img = cv2.GaussianBlur(img, (0, 0), 0.6, borderType=cv2.BORDER_REFLECT)
    blurred = bool(rng.random() < blur_prob)
    if blurred:
        img = cv2.filter2D(img, -1, _motion_kernel(rng), borderType=cv2.BORDER_REFLECT)
    bg = float(rng.uniform(*background))
    g = float(rng.uniform(*gain))
    rn = float(rng.uniform(*read_noise))
    electrons = np.clip((img * bg - offset) / g, 0, None)
    counts = offset + g * rng.poisson(electrons).astype(np.float32)
    counts += rng.normal(0.0, rn, counts.shape).astype(np.float32)
    info = np.iinfo(dtype)
    image = np.clip(np.rint(counts), info.min, info.max).astype(dtype)
    return Scene(
        image=image,
        labels=labels,
        cells=cells,
        debris=debris_list,
        illumination=illum,
        background=bg,
        modality=modality,
        blurred=blurred,
    )


def _composite(signal: np.ndarray, sig: np.ndarray, alpha: np.ndarray, r0: int, c0: int) -> None:
    """Paint a local cell signal over ``signal`` (cell on top), clipping at the edges."""
    h, w = signal.shape
    sr0, sc0 = max(0, -r0), max(0, -c0)
    dr0, dc0 = max(0, r0), max(0, c0)
    dr1, dc1 = min(h, r0 + sig.shape[0]), min(w, c0 + sig.shape[1])
    if dr1 <= dr0 or dc1 <= dc0:
        return
    s = sig[sr0 : sr0 + dr1 - dr0, sc0 : sc0 + dc1 - dc0]
    a = alpha[sr0 : sr0 + dr1 - dr0, sc0 : sc0 + dc1 - dc0]
    view = signal[dr0:dr1, dc0:dc1]
    view *= 1.0 - a
    view += s


def _try_place(
    labels: np.ndarray,
    cells: list[Cell],
    center: tuple[float, float],
    radius: float,
    params: tuple,
    kind: str,
    *,
    max_new_overlap: float = 0.3,
    min_visible: float = 0.6,
) -> Cell | None:
    """Paint a new cell if the result keeps every label valid, else leave ``labels`` as is."""
    shape = labels.shape
    res = _cell_mask(shape, center, radius, params)
    if res is None:
        return None
    (r0, c0, r1, c1), raw = res
    nominal = math.pi * radius * radius
    traced = _trace(raw)
    if traced is None:
        return None
    contour, mask = traced
    area = int(mask.sum())
    if area < max(12, 0.4 * nominal):
        return None
    # Tighten the box to the mask.
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    contour = contour - [rows[0], cols[0]]
    r0, c0 = r0 + int(rows[0]), c0 + int(cols[0])
    r1, c1 = r0 + mask.shape[0], c0 + mask.shape[1]
    view = labels[r0:r1, c0:c1]
    under = view[mask]
    hit = np.unique(under[under > 0])
    if hit.size:
        if (under > 0).sum() > max_new_overlap * area:
            return None
        backup = view.copy()
        view[mask] = len(cells) + 1
        for lab in hit:
            old = cells[int(lab) - 1]
            orr0, occ0, orr1, occ1 = old.box
            vis = labels[orr0:orr1, occ0:occ1] == lab
            n_vis = int(vis.sum())
            if n_vis < min_visible * old.area or ndi.label(vis)[1] != 1:
                view[...] = backup
                return None
    else:
        view[mask] = len(cells) + 1
    polygon = _to_xy(contour, r0, c0)
    return Cell(len(cells) + 1, (r0, c0, r1, c1), mask, polygon, kind)


def render_cells(
    shape: tuple[int, int],
    n_cells: int,
    rng: np.random.Generator,
    *,
    modality: str = "brightfield",
    mean_radius_px: float = 18.0,
    debris: int = 5,
    blur_prob: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic live-cell image and its instance labels.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)``.
    n_cells : int
        Number of cells to place (a few fewer if the image is crowded).
    rng : numpy.random.Generator
        Source of all randomness (the function is otherwise pure).
    modality : {"brightfield", "phase"}
        Imaging modality.
    mean_radius_px : float
        Mean cell radius in pixels.
    debris : int
        Number of unlabelled debris particles.
    blur_prob : float
        Probability of slight motion blur.

    Returns
    -------
    image : ndarray of uint16
        Raw camera counts (background ~20,000-30,000, uneven illumination).
    labels : ndarray of uint16
        Instance labels, 0 = background, values 1..n in paint order (a higher
        label lies on top of a lower one).

    Examples
    --------
    >>> img, lab = render_cells((128, 128), 5, np.random.default_rng(0))
    >>> img.dtype, lab.dtype, img.shape
    (dtype('uint16'), dtype('uint16'), (128, 128))
    """
    scene = render_scene(
        shape,
        n_cells,
        rng,
        modality=modality,
        mean_radius_px=mean_radius_px,
        debris=debris,
        blur_prob=blur_prob,
    )
    return scene.image, scene.labels


# --------------------------------------------------------------------------- encodings


def well_name(index: int, columns: int = PLATE_COLUMNS) -> str:
    """Well name for a 0-based index, row-major: 0 -> A01, 11 -> A12, 12 -> B01."""
    row, col = divmod(int(index), columns)
    if row >= len(ROW_LETTERS):
        raise InputError(None, f"well index {index} is beyond a {len(ROW_LETTERS)}-row plate")
    return f"{ROW_LETTERS[row]}{col + 1:02d}"


# --------------------------------------------------------------------------- CVAT / COCO


def _scene_cvat_shapes(scene: Scene, *, n_debris_shapes: int = 2) -> list[str]:
    """CVAT shapes of one scene: cells alternate polygon / mask, plus distractors."""
    shapes = []
    for cell in scene.cells:
        z = cell.label
        if (cell.label - 1) % 2 == 0:
            shapes.append(cvat_polygon("cell", cell.polygon, z))
        else:
            r0, c0, _, _ = cell.box
            shapes.append(cvat_mask("cell", cell.mask, c0, r0, z))
    top = len(scene.cells) + 1
    for k, d in enumerate(scene.debris[:n_debris_shapes]):
        shapes.append(cvat_polygon("debris", d.polygon, top + k))
    # Shapes an importer of instance masks must skip: a box and points labelled "cell".
    h, w = scene.labels.shape
    if scene.cells:
        r0, c0, r1, c1 = scene.cells[0].box
        xtl, ytl, xbr, ybr = float(c0), float(r0), float(c1), float(r1)
        pts = np.array([[p[0], p[1]] for p in scene.cells[0].polygon[:3]])
    else:
        xtl, ytl, xbr, ybr = 0.0, 0.0, w / 4, h / 4
        pts = np.array([[w / 2, h / 2]])
    shapes.append(
        f'    <box label="cell" source="manual" occluded="0" xtl="{xtl:.2f}" ytl="{ytl:.2f}" '
        f'xbr="{xbr:.2f}" ybr="{ybr:.2f}" z_order="0">\n    </box>'
    )
    shapes.append(
        f'    <points label="cell" source="manual" occluded="0" points="{format_points(pts)}" '
        f'z_order="0">\n    </points>'
    )
    return shapes


def _coco_annotations(
    scene: Scene, image_id: int, first_id: int, *, rle_every: int = 4
) -> list[dict]:
    """COCO annotations of one scene, one per cell in paint order.

    Each annotation is the cell's *visible* region (``labels == label``; the
    parts covered by later cells cropped, as Datumaro's COCO export does with
    ``crop_covered``), so annotations do not overlap and their order does not
    matter.  Every ``rle_every``-th cell is an uncompressed RLE (``iscrowd:
    1``), the others polygons in pixel-corner coordinates.
    """
    anns = []
    shape = scene.labels.shape
    for k, cell in enumerate(scene.cells):
        r0, c0, r1, c1 = cell.box
        visible = scene.labels[r0:r1, c0:c1] == cell.label
        rows = np.flatnonzero(visible.any(axis=1))
        cols = np.flatnonzero(visible.any(axis=0))
        vr0, vr1 = r0 + int(rows[0]), r0 + int(rows[-1]) + 1
        vc0, vc1 = c0 + int(cols[0]), c0 + int(cols[-1]) + 1
        visible = visible[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        ann = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": None,
            "area": float(visible.sum()),
            "bbox": [float(vc0), float(vr0), float(vc1 - vc0), float(vr1 - vr0)],
            "iscrowd": 0,
            "attributes": {"occluded": False},
        }
        traced = None if k % rle_every == rle_every - 1 else _trace(visible)
        if traced is not None and np.array_equal(traced[1], visible):
            xy = _to_xy(traced[0], vr0, vc0)
            ann["segmentation"] = [[round(float(v), 2) for v in xy.ravel()]]
        else:
            ann["segmentation"] = coco_rle_box(visible, (vr0, vc0, vr1, vc1), shape)
            ann["iscrowd"] = 1
        anns.append(ann)
    return anns


# --------------------------------------------------------------------------- plates


def _image_rng(seed: int, *keys: str | int) -> np.random.Generator:
    ints = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(shape[0]), int(shape[1]))
    except (TypeError, ValueError, IndexError):
        raise InputError(None, f"shape must be (height, width), got {shape!r}") from None
    if len(shape) != 2 or h < 16 or w < 16:
        raise InputError(None, f"shape must be (height, width) with both >= 16, got {shape!r}")
    return h, w


def _tiff_resolution(pixel_size_um: float) -> dict:
    """TIFF resolution tags for a pixel size (pixels per centimetre)."""
    ppcm = 1e4 / float(pixel_size_um)
    return {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}


def derive_seed(seed: int, *keys: object) -> int:
    """A 32-bit seed for one item (a plate, the evaluation set) from the config seed.

    Derived by hashing, so adding a plate leaves every other plate's bytes unchanged.
    """
    text = ":".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def focal_stack(
    image: np.ndarray,
    planes: int,
    rng: np.random.Generator,
    *,
    sigma_per_plane: float = 1.5,
    fade: float = 0.75,
    read_noise: float = 4.0,
) -> np.ndarray:
    """A synthetic focal series around an in-focus brightfield image.

    The middle plane (``planes // 2``) is ``image`` itself; plane ``k`` at ``d = k - mid``
    planes from focus keeps the image's background (a wide Gaussian of it) and blurs its
    detail by a Gaussian of ``sigma_per_plane * |d|`` px, scaled by ``fade ** |d|`` and
    with its sign inverted below focus (``d < 0``): brightfield contrast reverses through
    focus (dark cells with bright halos on one side, bright cells on the other).

    Parameters
    ----------
    image : ndarray of uint16, shape (H, W)
        The in-focus raw image.
    planes : int
        Planes of the series (>= 2).
    rng : numpy.random.Generator
        Read noise of the defocused planes.
    sigma_per_plane, fade, read_noise : float
        Blur per plane of defocus (px), contrast kept per plane, Gaussian noise (counts).

    Returns
    -------
    ndarray of uint16, shape (planes, H, W)
    """
    if int(planes) < 2:
        raise InputError(None, f"a focal series needs >= 2 planes, got {planes}")
    img = np.asarray(image, dtype=np.float64)
    background = ndi.gaussian_filter(img, 16.0, mode="reflect")
    detail = img - background
    mid = int(planes) // 2
    out = np.empty((int(planes), *img.shape), dtype=np.uint16)
    for k in range(int(planes)):
        d = k - mid
        if d == 0:
            out[k] = image
            continue
        blurred = ndi.gaussian_filter(detail, sigma_per_plane * abs(d), mode="reflect")
        plane = background + np.sign(d) * fade ** abs(d) * blurred
        plane += rng.normal(0.0, read_noise, img.shape)
        out[k] = np.clip(np.rint(plane), 0, 65535).astype(np.uint16)
    return out


def synth_plate(
    out_dir: str | os.PathLike,
    plate: str,
    *,
    n_images: int = 4,
    shape: tuple[int, int] = (512, 512),
    seed: int = 0,
    modality: str = "brightfield",
    pixel_size_um: float = 0.65,
    cells_per_image: tuple[int, int] = (15, 30),
    n_timepoints: int = 1,
    n_fields: int = 1,
    annotate: bool = True,
    mean_radius_px: float = 18.0,
    debris: tuple[int, int] = (3, 8),
    blur_prob: float = 0.3,
    planes: int = 1,
    plane_files: bool = False,
) -> pd.DataFrame:
    """Write a synthetic plate: raw images, ground-truth labels and annotation exports.

    Parameters
    ----------
    out_dir : path-like
        Output folder (one per plate).
    plate : str
        Plate name, used in file names.
    n_images : int
        Number of images, spread over wells (A01, A02, ..., A12, B01, ...), then
        fields, then timepoints: image ``i`` is timepoint ``i % n_timepoints``,
        field ``(i // n_timepoints) % n_fields`` of well ``i // (n_fields * n_timepoints)``.
        Fields and timepoints are numbered from 0.
    shape : tuple of int
        Image ``(height, width)``; ``(1536, 2048)`` is the paper's camera size.
    seed : int
        Random seed; the same arguments always write the same bytes.
    modality : {"brightfield", "phase"}
        Imaging modality.
    pixel_size_um : float
        Pixel size (written to the manifest and the TIFF resolution tags).
    cells_per_image : tuple of int
        Inclusive range of cells per image.
    n_timepoints, n_fields : int
        Timepoints and fields per well.
    annotate : bool
        Write ``cvat.xml`` and ``coco.json``.
    mean_radius_px : float
        Mean cell radius in pixels.
    debris : tuple of int
        Inclusive range of debris particles per image (the last image of the
        plate has none when there are two or more images).
    blur_prob : float
        Probability of slight motion blur per image.
    planes : int
        Focal planes per image (:func:`focal_stack`; the ground truth is that of the
        in-focus middle plane).  1: one plane, as before (the same bytes).
    plane_files : bool
        With ``planes > 1``: one file per plane, ``{stem}_z{k}.tif``, annotated on the
        in-focus plane's file; otherwise one multi-page TIFF ``{stem}.tif``.

    Returns
    -------
    pandas.DataFrame
        Manifest, one row per image: image, stem, plate, well, row, column,
        field, timepoint, n_cells, foreground_fraction, modality, pixel_size_um.

    Notes
    -----
    Files written::

        out_dir/images/{plate}_{well}_f{field:02d}_t{tp:02d}.tif   uint16 raw
        out_dir/labels/{stem}_labels.tif                          uint16 instance labels
        out_dir/cvat.xml                                          CVAT for images 1.1 task
        out_dir/coco.json                                         COCO 1.0 instances

    In ``cvat.xml`` cells alternate ``<polygon>`` (even paint order) and
    ``<mask>`` (odd), with ``z_order`` = label value; up to two debris per image
    are annotated with label ``debris``; each image also has one ``<box>`` and
    one ``<points>`` labelled ``cell`` that an importer must skip.  Shapes in
    ``cvat.xml`` are the full (amodal) cells: painting them by ``z_order``
    gives the label image.  ``coco.json`` holds each cell's visible region
    (covered parts cropped, so no overlaps), in paint order; every fourth cell
    is an uncompressed RLE (``iscrowd: 1``), the rest are polygons.
    """
    h, w = _check_shape(shape)
    if modality not in MODALITIES:
        raise InputError(None, f"modality must be one of {MODALITIES}, got {modality!r}")
    if int(n_images) < 1 or int(n_fields) < 1 or int(n_timepoints) < 1:
        raise InputError(None, "n_images, n_fields and n_timepoints must be >= 1")
    lo, hi = (int(cells_per_image[0]), int(cells_per_image[1]))
    if lo < 0 or hi < lo:
        raise InputError(None, f"cells_per_image must be (min, max), got {cells_per_image!r}")
    if pixel_size_um <= 0:
        raise InputError(None, f"pixel_size_um must be > 0, got {pixel_size_um}")
    out_dir = Path(out_dir)
    per_well = int(n_fields) * int(n_timepoints)
    rows = []
    cvat_images = []
    coco = coco_skeleton()
    ann_id = 1
    for i in progress(range(int(n_images)), total=int(n_images), desc=f"synth {plate}"):
        well = well_name(i // per_well)
        fld = (i // int(n_timepoints)) % int(n_fields)
        tp = i % int(n_timepoints)
        stem = f"{plate}_{well}_f{fld:02d}_t{tp:02d}"
        rng = _image_rng(seed, plate, i)
        n_cells = int(rng.integers(lo, hi + 1))
        n_debris = (
            0
            if (n_images > 1 and i == n_images - 1)
            else int(rng.integers(debris[0], debris[1] + 1))
        )
        scene = render_scene(
            (h, w),
            n_cells,
            rng,
            modality=modality,
            mean_radius_px=mean_radius_px,
            debris=n_debris,
            blur_prob=blur_prob,
        )
        name = f"{stem}.tif"
        if int(planes) > 1:
            stack = focal_stack(scene.image, int(planes), _image_rng(seed, plate, i, "planes"))
            if plane_files:
                for k, plane in enumerate(stack):
                    path = out_dir / "images" / f"{stem}_z{k}.tif"
                    write_tiff(plane, path, **_tiff_resolution(pixel_size_um))
                name = f"{stem}_z{int(planes) // 2}.tif"  # annotated on the in-focus plane
            else:
                write_tiff(
                    stack,
                    out_dir / "images" / name,
                    photometric="minisblack",
                    **_tiff_resolution(pixel_size_um),
                )
        else:
            write_tiff(scene.image, out_dir / "images" / name, **_tiff_resolution(pixel_size_um))
        write_tiff(scene.labels, out_dir / "labels" / f"{stem}_labels.tif")
        if annotate:
            cvat_images.append(
                {"name": name, "width": w, "height": h, "shapes": _scene_cvat_shapes(scene)}
            )
            coco["images"].append(
                {
                    "id": i + 1,
                    "width": w,
                    "height": h,
                    "file_name": name,
                    "license": 0,
                    "flickr_url": "",
                    "coco_url": "",
                    "date_captured": 0,
                }
            )
            anns = _coco_annotations(scene, i + 1, ann_id)
            ann_id += len(anns)
            coco["annotations"].extend(anns)
        rows.append(
            {
                "image": name,
                "stem": stem,
                "plate": plate,
                "well": well,
                "row": well[0],
                "column": int(well[1:]),
                "field": fld,
                "timepoint": tp,
                "n_cells": len(scene.cells),
                "foreground_fraction": float((scene.labels > 0).mean()),
                "modality": modality,
                "pixel_size_um": float(pixel_size_um),
            }
        )
    if annotate:
        write_text(cvat_task_xml(plate, cvat_images), out_dir / "cvat.xml")
        write_text(json.dumps(coco, separators=(",", ":")) + "\n", out_dir / "coco.json")
    log.info("synth_plate %s: %d images written to %s", plate, len(rows), out_dir)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- LIVECell


def synth_livecell(
    out_dir: str | os.PathLike,
    *,
    n_per_line: int = 2,
    shape: tuple[int, int] = (520, 704),
    seed: int = 0,
    truncate_one: bool = True,
    cell_lines: tuple[str, ...] | list[str] = ("A172", "BT474", "SKOV3"),
) -> dict:
    """Write a small LIVECell-format test fixture (phase contrast, 8-bit).

    Parameters
    ----------
    out_dir : path-like
        Root of the fixture (the layout below mirrors the LIVECell download).
    n_per_line : int
        Images per cell line.
    shape : tuple of int
        ``(height, width)``; LIVECell images are 520x704.
    seed : int
        Random seed.
    truncate_one : bool
        Write one image (the last of the second cell line, or of the only one)
        with half its bytes, as a corrupt download.
    cell_lines : sequence of str
        LIVECell cell-line names (keys of :data:`LIVECELL_LINES`).

    Returns
    -------
    dict
        ``root``, ``images_dir`` (``images/livecell_test_images``), ``images``
        (list of paths), ``annotations`` (``annotations/livecell_coco_test.json``),
        ``single_cells`` ({line lower-case: per-cell-type ``test.json``}),
        ``excluded`` (the image named in the paper's exclusion list, or None),
        ``truncated`` (the truncated image, or None).

    Notes
    -----
    The first A172 image is ``A172_Phase_A7_1_01d04h00m_3.tif``, a name on the
    paper's list of excluded images.  In ``livecell_coco_test.json``
    ``annotations`` is a list; in the per-cell-type files
    ``annotations/LIVECell_single_cells/<line>/test.json`` it is a dict keyed by
    the annotation id as a string, as in the real files.
    """
    h, w = _check_shape(shape)
    unknown = [c for c in cell_lines if c not in LIVECELL_LINES]
    if unknown:
        raise InputError(
            None, f"unknown LIVECell cell lines {unknown}; known: {list(LIVECELL_LINES)}"
        )
    if int(n_per_line) < 1:
        raise InputError(None, "n_per_line must be >= 1")
    out_dir = Path(out_dir)
    img_root = out_dir / "images" / "livecell_test_images"
    ann_dir = out_dir / "annotations"
    categories = [{"supercategory": "cell", "id": 1, "name": "cell"}]
    full = {
        "info": {
            "description": "Synthetic LIVECell-format fixture (brightseg)",
            "version": "1.0",
            "year": 2021,
        },
        "licenses": [],
        "categories": categories,
        "images": [],
        "annotations": [],
    }
    per_line: dict[str, dict] = {}
    paths: list[Path] = []
    excluded = None
    truncated = None
    trunc_line = cell_lines[1] if len(cell_lines) > 1 else cell_lines[0]
    image_id = 1000
    ann_id = 1
    for line in cell_lines:
        preset = LIVECELL_LINES[line]
        per_line[line] = {
            "info": full["info"],
            "licenses": [],
            "categories": categories,
            "images": [],
            "annotations": {},
        }
        for j in range(int(n_per_line)):
            rng = _image_rng(seed, "livecell", line, j)
            if line == "A172" and j == 0:
                stem = LIVECELL_EXCLUDED_EXAMPLE
            else:
                well = f"{'ABCD'[int(rng.integers(4))]}{int(rng.integers(1, 13))}"
                loc = int(rng.integers(1, 5))
                ts = f"{int(rng.integers(0, 5)):02d}d{4 * int(rng.integers(0, 6)):02d}h00m"
                crop = int(rng.integers(1, 5))
                stem = f"{line}_Phase_{well}_{loc}_{ts}_{crop}"
                if stem == LIVECELL_EXCLUDED_EXAMPLE:
                    stem = f"{line}_Phase_{well}_{loc}_{ts}_{crop % 4 + 1}"
            n_cells = int(rng.integers(preset["cells"][0], preset["cells"][1] + 1))
            scene = render_scene(
                (h, w),
                n_cells,
                rng,
                modality="phase",
                mean_radius_px=preset["radius"],
                debris=int(rng.integers(2, 6)),
                blur_prob=0.0,
                shape_mix=preset["mix"],
                touch_prob=0.5,
                background=(118.0, 135.0),
                dtype=np.uint8,
                gain=(0.02, 0.04),
                read_noise=(1.5, 3.0),
                offset=0.0,
                contrast=3.0,
            )
            name = f"{stem}.tif"
            path = img_root / line / name
            write_tiff(scene.image, path)
            if truncate_one and truncated is None and line == trunc_line and j == n_per_line - 1:
                data = path.read_bytes()
                with atomic_path(path) as tmp:
                    Path(tmp).write_bytes(data[: len(data) // 2])
                truncated = path
            if stem == LIVECELL_EXCLUDED_EXAMPLE:
                excluded = path
            paths.append(path)
            img_entry = {"id": image_id, "width": w, "height": h, "file_name": name}
            full["images"].append(img_entry)
            per_line[line]["images"].append(img_entry)
            for cell in scene.cells:
                r0, c0, r1, c1 = cell.box
                ann = {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": [[round(float(v), 2) for v in cell.polygon.ravel()]],
                    "area": float(cell.area),
                    "bbox": [float(c0), float(r0), float(c1 - c0), float(r1 - r0)],
                    "iscrowd": 0,
                }
                full["annotations"].append(ann)
                per_line[line]["annotations"][str(ann_id)] = ann
                ann_id += 1
            image_id += 1
    full_path = ann_dir / "livecell_coco_test.json"
    write_text(json.dumps(full) + "\n", full_path)
    single = {}
    for line, data in per_line.items():
        p = ann_dir / "LIVECell_single_cells" / line.lower() / "test.json"
        write_text(json.dumps(data) + "\n", p)
        single[line.lower()] = p
    if truncated is not None:  # what the import will skip on purpose (logged as expected)
        write_text(
            "file\treason\n"
            f"{Path(truncated).name}\ttruncated on purpose by the demo: a corrupt download that "
            "is not on the exclude list, which the import must detect and skip\n",
            Path(out_dir) / EXPECTED_SKIPS,
        )
    log.info("synth_livecell: %d images written to %s", len(paths), out_dir)
    return {
        "root": out_dir,
        "images_dir": img_root,
        "images": paths,
        "annotations": full_path,
        "single_cells": single,
        "excluded": excluded,
        "truncated": truncated,
    }


# --------------------------------------------------------------------------- evaluation set


def synth_eval_set(
    out_dir: str | os.PathLike,
    *,
    n_images: int = 3,
    shape: tuple[int, int] = (512, 512),
    seed: int = 0,
    modality: str = "brightfield",
    cells_per_image: tuple[int, int] = (15, 30),
    mean_radius_px: float = 18.0,
    difficulty: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Write a held-out evaluation set: raw images and binary ground-truth masks.

    Files: ``out_dir/images/{stem}.tif`` (uint16 raw) and ``out_dir/masks/{stem}.png``
    (uint8, 0 background / 255 cell), with stems ``eval_000``, ``eval_001``, ...

    Parameters
    ----------
    difficulty : (lo, hi), optional
        Image ``i`` of ``n`` gets the level ``d = lo + (hi - lo) i / (n - 1)`` (see
        :func:`degrade_scene_params` and :func:`defocus_and_noise`): contrast times
        ``1 - 0.6 d``, touching probability ``0.35 + 0.45 d``, a Gaussian defocus of
        ``2.5 d`` px and extra read noise; ``None``: every image at the defaults.

    Returns
    -------
    pandas.DataFrame
        stem, image, mask (paths relative to ``out_dir``), n_cells,
        foreground_fraction, modality, difficulty (NaN without ``difficulty``).
    """
    h, w = _check_shape(shape)
    if int(n_images) < 1:
        raise InputError(None, "n_images must be >= 1")
    if difficulty is not None:
        lo, hi = (float(v) for v in difficulty)
        if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
            raise InputError(None, f"difficulty levels must be in [0, 1], got {difficulty}")
    out_dir = Path(out_dir)
    rows = []
    for i in range(int(n_images)):
        stem = f"eval_{i:03d}"
        rng = _image_rng(seed, "eval", i)
        n_cells = int(rng.integers(cells_per_image[0], cells_per_image[1] + 1))
        level = float("nan")
        extra: dict = {}
        if difficulty is not None:
            level = lo + (hi - lo) * (i / (int(n_images) - 1) if int(n_images) > 1 else 0.0)
            extra = degrade_scene_params(level)
        scene = render_scene(
            (h, w),
            n_cells,
            rng,
            modality=modality,
            mean_radius_px=mean_radius_px,
            debris=int(rng.integers(3, 9)),
            **extra,
        )
        image = scene.image
        if difficulty is not None:
            image = defocus_and_noise(image, level, _image_rng(seed, "eval-degrade", i))
        write_tiff(image, out_dir / "images" / f"{stem}.tif")
        write_png(((scene.labels > 0) * 255).astype(np.uint8), out_dir / "masks" / f"{stem}.png")
        rows.append(
            {
                "stem": stem,
                "image": f"images/{stem}.tif",
                "mask": f"masks/{stem}.png",
                "n_cells": len(scene.cells),
                "foreground_fraction": float((scene.labels > 0).mean()),
                "modality": modality,
                "difficulty": level,
            }
        )
    return pd.DataFrame(rows)


def degrade_scene_params(level: float) -> dict:
    """:func:`render_scene` keywords of an image at difficulty ``level`` in [0, 1].

    Lower contrast (``contrast = 1 - 0.6 level``) and more crowding (``touch_prob =
    0.35 + 0.45 level``); level 0 gives the defaults.

    Examples
    --------
    >>> degrade_scene_params(0.0)
    {'contrast': 1.0, 'touch_prob': 0.35}
    """
    level = float(np.clip(level, 0.0, 1.0))
    return {"contrast": 1.0 - 0.6 * level, "touch_prob": 0.35 + 0.45 * level}


def defocus_and_noise(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """A raw image defocused (Gaussian, sigma ``2.5 level`` px) with added read noise.

    The noise has a standard deviation of ``level`` times 1 % of the image's median level,
    drawn from ``rng``; the result keeps ``image``'s dtype (clipped to its range).
    """
    from scipy import ndimage as ndi

    level = float(np.clip(level, 0.0, 1.0))
    if level == 0.0:
        return image
    out = ndi.gaussian_filter(image.astype(np.float64), 2.5 * level)
    out += rng.normal(0.0, 0.01 * level * float(np.median(image)), size=out.shape)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype)
