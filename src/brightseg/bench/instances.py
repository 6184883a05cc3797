"""``brightseg bench instances``: the fast watershed chain vs scikit-image's plain chain.

Both run on the same :func:`touching_disks` mask (touching, overlapping disks with known
instances); the matched F-score of each, and of plain connected components, shows what
the speed costs.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from ..instances import _h_px, _label_dtype, _plain_split, matched_f_score, split_instances
from ..progress import progress

log = logging.getLogger(__name__)


def touching_disks(
    shape: tuple[int, int],
    n: int,
    radius_range: tuple[float, float] = (12.0, 24.0),
    rng: np.random.Generator | int | None = 0,
    overlap: float = 0.3,
    touch: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic touching round cells with known instances (tests and benchmarks).

    Disks (radius uniform in ``radius_range``, pixels) lie entirely inside the
    image.  With probability ``touch`` a new disk is placed against a random
    earlier one, at a centre distance of ``(1 - u) (r_i + r_j)`` with ``u``
    uniform in ``[0.05, overlap]``; otherwise uniformly.  No pair overlaps by
    more than ``overlap``: centre distances are at least ``(1 - overlap)(r_i + r_j)``.

    Ground truth splits the union by the additively weighted Voronoi diagram
    (a pixel belongs to the covering disk it lies deepest in, ``r_i - d_i``;
    nearest centre for equal radii), so each instance is connected.

    Returns
    -------
    mask : uint8 {0, 1}
    labels : uint16 (uint32 for more than 65,535 disks), labels 1..n
    """
    rng = np.random.default_rng(rng)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    rmin, rmax = float(radius_range[0]), float(radius_range[1])
    if not 0 < rmin <= rmax:
        raise ValueError(f"invalid radius_range {radius_range!r}")
    hgt, wid = int(shape[0]), int(shape[1])
    if min(hgt, wid) <= 2 * rmax:
        raise ValueError(f"shape {shape} too small for radius {rmax}")
    cy = np.empty(n)
    cx = np.empty(n)
    rr = np.empty(n)
    k = 0
    tries = 0
    while k < n:
        tries += 1
        if tries > 200 * n + 10000:
            raise ValueError(f"could only place {k} of {n} disks in {shape}; lower n")
        r = rng.uniform(rmin, rmax)
        if k and rng.random() < touch:
            j = rng.integers(k)
            ang = rng.uniform(0, 2 * np.pi)
            d = (r + rr[j]) * (1 - rng.uniform(min(0.05, overlap), overlap))
            y, x = cy[j] + d * np.sin(ang), cx[j] + d * np.cos(ang)
        else:
            y, x = rng.uniform(r, hgt - r), rng.uniform(r, wid - r)
        if not (r <= y <= hgt - 1 - r and r <= x <= wid - 1 - r):
            continue
        if k and np.any(np.hypot(cy[:k] - y, cx[:k] - x) < (1 - overlap) * (rr[:k] + r) - 1e-9):
            continue
        cy[k], cx[k], rr[k] = y, x, r
        k += 1
    depth = np.full((hgt, wid), -np.inf, np.float32)
    labels = np.zeros((hgt, wid), _label_dtype(n))
    for i in range(n):
        y0, y1 = int(np.floor(cy[i] - rr[i])), int(np.ceil(cy[i] + rr[i])) + 1
        x0, x1 = int(np.floor(cx[i] - rr[i])), int(np.ceil(cx[i] + rr[i])) + 1
        yy, xx = np.ogrid[y0:y1, x0:x1]
        dep = (rr[i] - np.hypot(yy - cy[i], xx - cx[i])).astype(np.float32)
        sub = depth[y0:y1, x0:x1]
        win = (dep >= 0) & (dep > sub)
        sub[win] = dep[win]
        labels[y0:y1, x0:x1][win] = i + 1
    return (labels > 0).astype(np.uint8), labels


def _connected_components(mask: np.ndarray) -> np.ndarray:
    return cv2.connectedComponents((mask != 0).astype(np.uint8), connectivity=8)[1]


def bench_instances(
    shape: tuple[int, int] = (1536, 2048),
    n: int = 300,
    seed: int = 0,
    repeats: int = 3,
    *,
    pixel_size_um: float = 1.0,
    h_um: float | None = None,
) -> dict[str, float]:
    """Speed and quality of the fast chain against scikit-image's plain chain.

    Both run on the same :func:`touching_disks` mask.  ``fast`` is the whole
    :func:`split_instances` call (hole filling, filters and relabelling
    included); ``plain`` is only ``distance_transform_edt + h_maxima + label +
    watershed`` with the same ``h``.  Times are the best of ``repeats``.

    Returns
    -------
    dict
        ``fast_mpx_s``, ``plain_mpx_s``, ``ratio`` (fast / plain throughput),
        ``matched_f`` and ``plain_matched_f`` (IoU > 0.5, against the generator's
        instances), ``cc_matched_f`` (connected components), seconds and sizes.
    """
    mask, truth = touching_disks(shape, n, rng=seed)
    h_px = _h_px(h_um, pixel_size_um)
    mpx = mask.size / 1e6

    def best(fn):
        times, result = [], None
        for _ in progress(range(max(1, repeats)), desc="bench"):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return min(times), result

    t_fast, fast = best(
        lambda: split_instances(mask, pixel_size_um=pixel_size_um, h_um=h_um, method="fast")
    )
    t_plain, plain = best(lambda: _plain_split(mask, None, h_px))
    return {
        "shape_y": shape[0],
        "shape_x": shape[1],
        "n_true": n,
        "h_px": h_px,
        "fast_s": t_fast,
        "plain_s": t_plain,
        "fast_mpx_s": mpx / t_fast,
        "plain_mpx_s": mpx / t_plain,
        "ratio": t_plain / t_fast,
        "matched_f": matched_f_score(fast, truth)["f"],
        "plain_matched_f": matched_f_score(plain, truth)["f"],
        "cc_matched_f": matched_f_score(_connected_components(mask), truth)["f"],
    }
