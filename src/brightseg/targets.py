"""Training targets built from instance labels: border weights and 3-class maps (issue 16).

A binary foreground mask carries no boundary between touching cells, so a model trained on
it cannot learn where one cell ends and the next begins.  Two remedies from the literature,
both computed here from the *instance labels* of a patch (after augmentation, which warps
the labels with nearest interpolation):

``binary`` with a border weight map (U-Net, Ronneberger et al. 2015)
    The pixels where two instances touch are made background (:func:`separate_touching`), so
    touching cells are separated by a gap of two pixels, and each pixel's BCE is weighted by

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))``

    where ``w_c`` is the class weight (the loss's ``bg_weight`` on background, ``fg_weight``
    on foreground: the class-balancing term) and ``d1``, ``d2`` are the distances to the
    nearest and second-nearest cell.  The exponential term applies to background pixels only
    (inside a cell ``d1 = 0`` by definition), as in the U-Net paper's implementation: the
    narrow gaps between cells weigh about ``w_c + w0``, open background ``w_c``
    (:func:`border_weight_map`).
``border3``: background / cell interior / cell border
    The border class is the inner boundary of every instance, :data:`BORDER_PX` pixels wide
    (:func:`border3_classes`); touching cells are then separated by a band of border pixels and
    the interior class gives one seed per cell (:func:`brightseg.instances.split_interior`).
``nucleus3``: background / cytoplasm / nucleus
    From cell labels and a nucleus mask (:func:`nucleus3_classes`); the nucleus probability
    seeds :func:`brightseg.instances.split_log_seeds`.

3-class targets are one-hot ``(H, W, 3)`` in the channel order of :data:`CLASS_NAMES` (channel
0 is background, so the foreground probability is ``1 - p[..., 0]``); a weight map, when
asked for, is appended as the last channel (:func:`make_target`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

__all__ = [
    "BORDER_PX",
    "CLASS_NAMES",
    "SEED_CHANNEL",
    "TARGETS",
    "border3_classes",
    "border_weight_map",
    "foreground_probability",
    "make_target",
    "nucleus3_classes",
    "output_channels",
    "seed_probability",
    "separate_touching",
]

#: Target kinds of ``models[].target``.
TARGETS = ("binary", "border3", "nucleus3")
#: Channel names of the softmax output of each 3-class target.
CLASS_NAMES = {
    "border3": ("background", "interior", "border"),
    "nucleus3": ("background", "cytoplasm", "nucleus"),
}
#: The channel that seeds the instance splitter (interior, nucleus).
SEED_CHANNEL = {"border3": 1, "nucleus3": 2}
#: Width in pixels of the border class of ``border3``.
BORDER_PX = 2


def output_channels(target: str) -> int:
    """Model output channels of a target: 1 (sigmoid) for binary, 3 (softmax) otherwise."""
    check_target(target)
    return 1 if target == "binary" else 3


def check_target(target: str) -> str:
    """Return ``target`` or raise :class:`InputError` naming the valid ones."""
    if target not in TARGETS:
        raise InputError(None, f"unknown target {target!r}; expected one of {list(TARGETS)}")
    return target


def _labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(None, f"instance labels must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise InputError(None, f"instance labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Instance labels with the pixels where two instances touch set to 0.

    A pixel of instance ``a`` whose 3x3 neighbourhood holds another instance ``b != a`` is
    removed, so touching cells end up two pixels apart (one pixel from each side).

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    ndarray, same dtype as ``labels``
    """
    lab = _labels(labels)
    big = int(lab.max()) + 1
    hi = ndi.maximum_filter(lab, size=3, mode="nearest")
    lo = ndi.minimum_filter(np.where(lab == 0, big, lab), size=3, mode="nearest")
    contact = (lab > 0) & ((hi != lab) | (lo != lab))
    out = np.asarray(labels).copy()
    out[contact] = 0
    return out


def border_weight_map(
    labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma_px: float = 5.0,
    class_weights: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """The U-Net weight map ``w_c + w0 exp(-(d1 + d2)^2 / 2 sigma^2)`` of instance labels.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels (0 = background).  Apply :func:`separate_touching` first when touching
        cells should be separated by a weighted gap.
    w0, sigma_px : float
        Amplitude and width (pixels) of the border term.
    class_weights : (float, float)
        ``w_c`` on background and on foreground.

    Returns
    -------
    ndarray of float32, shape (H, W)

    Notes
    -----
    ``d1``, ``d2`` are Euclidean distances from a background pixel to the nearest and
    second-nearest instance.  Each instance's distance is computed in its bounding box grown
    by ``ceil(3.72 sigma) + 1`` pixels: farther away ``d1 + d2 > 3.72 sigma`` and the term is
    below ``1e-3 w0``, so it is taken as 0.  With fewer than two instances in reach the term
    is 0.
    """
    lab = _labels(labels)
    if w0 < 0 or sigma_px <= 0:
        raise InputError(
            None, f"border weight needs w0 >= 0 and sigma_px > 0, got {w0}, {sigma_px}"
        )
    bg_w, fg_w = (float(v) for v in class_weights)
    fg = lab > 0
    wc = np.where(fg, fg_w, bg_w).astype(np.float32)
    if w0 == 0 or not fg.any():
        return wc
    h, w = lab.shape
    margin = int(math.ceil(3.72 * sigma_px)) + 1
    d1 = np.full(lab.shape, np.inf, np.float32)
    d2 = np.full(lab.shape, np.inf, np.float32)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        r0, r1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)
        c0, c1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, w)
        d = ndi.distance_transform_edt(lab[r0:r1, c0:c1] != i).astype(np.float32)
        a, b = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
        closer = d < a
        b[...] = np.where(closer, a, np.minimum(b, d))
        a[...] = np.where(closer, d, a)
    s = d1 + d2
    term = np.where(np.isfinite(s), w0 * np.exp(-(s**2) / (2.0 * sigma_px**2)), 0.0)
    return (wc + np.where(fg, 0.0, term)).astype(np.float32)


def border3_classes(labels: np.ndarray, border_px: int = BORDER_PX) -> np.ndarray:
    """Background (0) / interior (1) / border (2) classes of instance labels.

    The border is the inner boundary of each instance (pixels whose 3x3 neighbourhood holds
    another label or background), grown inwards to ``border_px`` pixels.

    Parameters
    ----------
    labels : (H, W) int array
    border_px : int
        Border width in pixels (>= 1).

    Returns
    -------
    ndarray of uint8, shape (H, W)
    """
    lab = _labels(labels)
    if border_px < 1:
        raise InputError(None, f"border_px must be >= 1, got {border_px}")
    out = np.zeros(lab.shape, np.uint8)
    rest = lab.copy()
    fg = lab > 0
    border = np.zeros(lab.shape, bool)
    for _ in range(int(border_px)):
        hi = ndi.maximum_filter(rest, size=3, mode="nearest")
        lo = ndi.minimum_filter(rest, size=3, mode="nearest")
        edge = (rest > 0) & ((hi != rest) | (lo != rest))
        border |= edge
        rest = np.where(edge, 0, rest)
    out[fg] = 1
    out[border] = 2
    return out


def nucleus3_classes(labels: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Background (0) / cytoplasm (1) / nucleus (2) classes.

    Parameters
    ----------
    labels : (H, W) int array
        Cell instance labels (or a binary cell mask).
    nuclei : (H, W) array
        Nucleus mask or labels (non-zero = nucleus); a nucleus pixel is class 2 even where
        the cell mask misses it.

    Returns
    -------
    ndarray of uint8, shape (H, W)
    """
    lab = _labels(labels)
    nuc = np.asarray(nuclei)
    if nuc.shape != lab.shape:
        raise InputError(None, f"nucleus mask shape {nuc.shape} != labels shape {lab.shape}")
    out = (lab > 0).astype(np.uint8)
    out[nuc != 0] = 2
    return out


def make_target(
    target: str,
    labels: np.ndarray,
    *,
    nuclei: np.ndarray | None = None,
    border_weight: dict | None = None,
    class_weights: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """The training target of one patch, ``(H, W, C)`` float32.

    Parameters
    ----------
    target : {"binary", "border3", "nucleus3"}
    labels : (H, W) int array
        Instance labels of the patch.
    nuclei : (H, W) array, optional
        Nucleus mask (``nucleus3`` only).
    border_weight : dict, optional
        ``{"w0": 10, "sigma_px": 5}``: append the weight map of :func:`border_weight_map`
        (computed on :func:`separate_touching` labels) as the last channel.  For ``binary``
        the foreground channel then also loses the pixels where instances touch.
    class_weights : (float, float)
        ``w_c`` (background, foreground) of the weight map; 3-class targets use (1, 1).

    Returns
    -------
    ndarray of float32
        binary: ``(H, W, 1)`` mask; 3-class: ``(H, W, 3)`` one-hot; plus one weight channel
        with ``border_weight``.
    """
    check_target(target)
    lab = _labels(labels)
    sep = separate_touching(lab) if border_weight is not None else None
    if target == "binary":
        fg = (sep if sep is not None else lab) > 0
        chans = [fg.astype(np.float32)]
    else:
        if target == "border3":
            cls = border3_classes(lab)
        else:
            if nuclei is None:
                raise InputError(None, "target nucleus3 needs nucleus labels in the patch store")
            cls = nucleus3_classes(lab, nuclei)
        chans = [(cls == k).astype(np.float32) for k in range(3)]
        class_weights = (1.0, 1.0)
    if border_weight is not None:
        bw = dict(border_weight)
        unknown = set(bw) - {"w0", "sigma_px"}
        if unknown:
            raise InputError(None, f"border_weight: unknown keys {sorted(unknown)} (w0, sigma_px)")
        chans.append(
            border_weight_map(
                sep,
                w0=float(bw.get("w0", 10.0)),
                sigma_px=float(bw.get("sigma_px", 5.0)),
                class_weights=class_weights,
            )
        )
    return np.stack(chans, axis=-1)


def foreground_probability(prob: np.ndarray) -> np.ndarray:
    """Foreground probability of a model output: the map itself, or ``1 - p_background``.

    Parameters
    ----------
    prob : (H, W) or (H, W, 1) or (H, W, 3) float array

    Returns
    -------
    ndarray of float32, shape (H, W)
    """
    prob = np.asarray(prob, np.float32)
    if prob.ndim == 2:
        return prob
    if prob.shape[-1] == 1:
        return prob[..., 0]
    if prob.shape[-1] == 3:
        return np.clip(1.0 - prob[..., 0], 0.0, 1.0)
    raise InputError(None, f"expected 1 or 3 probability channels, got shape {prob.shape}")


def seed_probability(prob: np.ndarray, target: str) -> np.ndarray | None:
    """The seed class probability (interior or nucleus) of a 3-class output; None for binary."""
    check_target(target)
    if target == "binary":
        return None
    prob = np.asarray(prob, np.float32)
    if prob.ndim != 3 or prob.shape[-1] != 3:
        raise InputError(None, f"target {target} needs 3 probability channels, got {prob.shape}")
    return prob[..., SEED_CHANNEL[target]]
