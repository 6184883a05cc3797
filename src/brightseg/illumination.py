"""Illumination correction by morphological top-hat and percentile normalisation.

Uneven illumination (a gradient across the field, vignetting towards the
corners) is removed with a grey-level top-hat using a large disk (radius
~100 px on 2048x1536 images, i.e. several cell diameters):

* ``mode="white"``: ``image - opening(image)`` keeps objects brighter than the
  background;
* ``mode="black"``: ``closing(image) - image`` keeps objects darker than the
  background (brightfield cells can be either, depending on focus).

Everything is computed in float32 and clipped at zero, so the classic uint16
trap (``bg - img`` wrapping round to ~65535 where the background estimate is
above the image) cannot happen.  The top-hat is then stretched to [0, 1] by
percentiles (:func:`normalize_percentile`).

Methods
-------
``method="exact"``
    ``cv2.morphologyEx`` with OpenCV's elliptic structuring element
    ``getStructuringElement(MORPH_ELLIPSE, (2r+1, 2r+1))``.  OpenCV's cost grows
    with the disk area: about 2 s for r = 100 on a 2048x1536 uint16 image.
    (``skimage.morphology.disk(100)`` with scikit-image takes ~45 min; never use it.)
``method="fast"`` (default)
    Block-extremum downscaling: the image is reduced by an integer ``factor``
    ``s`` taking the *minimum* (white) or *maximum* (black) of every s x s block,
    opened (closed) on the small image with Euclidean disks of radius ``r / s``
    (first step) and ``(r + (s - 1) / 2) / s`` (second step; the half block
    compensates the extent of the blocks, which otherwise biases the background
    low on sloped illumination), and the background is brought back with
    bilinear interpolation; the top-hat is clipped at zero as above.
    Taking the block minimum rather than the block mean (``cv2.INTER_AREA``)
    matters: an opening follows the lower envelope of the noise, and
    averaging the noise away first biases the background upwards by ~3 noise
    sigmas (measured: 3 % of the dynamic range mean error with INTER_AREA,
    0.04 % with the block minimum).  The default factor is
    ``clip(r // 25, 1, 8)`` (4 for r = 100), keeping the small disk >= 25 px.

Speed and error of ``fast`` against ``exact`` (:func:`bench_tophat`: 1536x2048
uint16 image, gradient + vignetting + 300 bright cells (Gaussian, sigma 5-15 px,
5-25 % contrast) + Gaussian noise; r = 100, s = 4; white mode).  Timings were
taken on 2 CPU cores shared with other jobs, so the exact method took 1.9 to
14 s; the speed-up is the ratio measured in the same call (fast: 35-80 ms):

========================  ========  ===================  ==================  =====
noise sigma / background  speed-up  max abs err / range  mean abs err/range  floor
========================  ========  ===================  ==================  =====
0.25 % (bench default)    50-150x   0.76 %               0.039 %             0.63 %
0.5 %                     50-150x   1.34 %               0.042 %             0.92 %
1 %                       50-150x   2.17 %               0.045 %             1.65 %
========================  ========  ===================  ==================  =====

(Black mode with dark cells, 0.5 % noise: 1.51 % max, 0.052 % mean, floor
1.23 %.  s = 8: 1.41 % max, 0.080 % mean; s = 2: 1.20 % max, 0.024 % mean,
~8x slower than s = 4.)

The maximum error is set by the noise, not by the background: an opening with
a flat disk is piecewise constant at the level of individual noise minima, and
its plateau edges jump by a few noise sigmas at single pixels.  Where those
edges fall depends on the exact pixel geometry of the disk, so *any*
approximation, and even another exact digitisation of the same disk, moves
them.  The column "floor" is the maximum difference between the exact
top-hat and the exact top-hat with a Euclidean disk ``x^2 + y^2 <= 100^2``
(176 of 31593 boundary pixels differ from OpenCV's ellipse).  The fast
method's maximum error is ~1.2-1.45x that floor; it stays below 1 % of the
range while the noise sigma is below ~0.3 % of the background, and 99.9 % of
the pixels stay below 0.35 / 0.54 / 0.83 % at the three noise levels.

Known limitations of ``fast``:

* Objects of the *opposite* polarity (dark objects in white mode, bright ones
  in black mode) are followed pixel by pixel by the exact opening, but the
  block grid smears them over ~s pixels, so the fast top-hat shows a ring
  around them.  Mixed-polarity cells (0.5 % noise): 7.3 % max, 0.20 % mean
  error (floor 3.2 %); a sharp dark spot of 100 % contrast on a flat field
  gets a ring of up to ~75 % of the range.  Choose the mode that matches the
  cells, or ``method="exact"`` for images with sharp debris of the other
  polarity.  (Dilating the coarse background removes the ring around sharp
  spots but doubles the error next to smooth dark cells, so it is not done.)
* Within ~s pixels of the image border the exact opening uses truncated disks
  and follows the image closely; the fast one is up to ~2x less accurate there
  (384x512, r = 25, s = 2: 0.99 % max over the image, 0.54 % in the interior).

Considered and not used: a union of axis-aligned rectangles (fast with
OpenCV's separable filters) matches a disk only to first order (notches of
~12 px at r = 100 with 6 rectangles, by geometry); polygon (line) decompositions
need > 10 orientations for 1 px accuracy at r = 100, and even a 1 px change of
the disk outline gives errors of the size of the floor above.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from .errors import InputError
from .io import read_image, write_tiff
from .limits import Limits, get_limits

log = logging.getLogger(__name__)

MODES = ("white", "black")
#: |log ratio| below which :func:`decide_polarity` reports the decision as uncertain
POLARITY_MARGIN = 0.1
METHODS = ("fast", "exact")
UNITS = ("px", "um")

# dtypes OpenCV's morphology handles natively (min/max are exact in any dtype)
_CV_MORPH_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


def _cv2():

    return cv2


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(None, f"expected a 2-D image, got an array of shape {image.shape}")
    if image.size == 0:
        raise InputError(None, "image has no pixels")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if image.dtype.kind not in "uif":
        raise InputError(None, f"unsupported image dtype {image.dtype}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise InputError(None, "image contains NaN or infinite values")
    return image


def _check_radius(radius: int, limits: Limits | None = None) -> int:
    if isinstance(radius, bool) or not float(radius).is_integer() or int(radius) < 1:
        raise InputError(
            None, f"top-hat radius must be a positive integer (pixels), got {radius!r}"
        )
    _check_radius_limit(int(radius), limits)
    return int(radius)


def _check_radius_limit(radius_px: int, limits: Limits | None) -> None:
    """Refuse a radius over ``max_illumination_radius_px`` (its disk would not fit in memory)."""
    lim = get_limits(limits)
    if radius_px > lim.max_illumination_radius_px:
        raise InputError(
            None,
            f"top-hat radius {radius_px:.4g} px is over the limit of "
            f"{lim.max_illumination_radius_px} px (limits.max_illumination_radius_px): the "
            "radius should be about the size of the largest cell (e.g. 50 px)",
        )


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(None, f"top-hat mode must be one of {MODES}, got {mode!r}")
    return mode


def _morph_input(image: np.ndarray) -> np.ndarray:
    """The image in a dtype OpenCV's morphology accepts (no value changes for ints)."""
    if image.dtype.type in _CV_MORPH_DTYPES:
        return np.ascontiguousarray(image)
    return image.astype(np.float32)


def euclidean_disk(radius: float) -> np.ndarray:
    """Flat disk ``dy**2 + dx**2 <= radius**2`` as a uint8 kernel (any real radius)."""
    half = int(np.floor(radius))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return (yy * yy + xx * xx <= radius * radius + 1e-9).astype(np.uint8)


def opencv_disk(radius: int) -> np.ndarray:
    """OpenCV's elliptic structuring element of size ``2r+1`` (the exact method's disk)."""
    cv2 = _cv2()
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def default_factor(radius: int) -> int:
    """Downscaling factor of the fast method: ``clip(radius // 25, 1, 8)``."""
    return int(np.clip(radius // 25, 1, 8))


def background(
    image: np.ndarray,
    radius: int,
    *,
    mode: str = "white",
    method: str = "fast",
    factor: int | None = None,
) -> np.ndarray:
    """Background estimate: grey opening (white) or closing (black) with a disk.

    Parameters
    ----------
    image : ndarray
        2-D greyscale image (any integer or float dtype).
    radius : int
        Disk radius in pixels.
    mode : {"white", "black"}
        Opening (background under bright objects) or closing (over dark ones).
    method : {"fast", "exact"}
        See the module docstring.
    factor : int, optional
        Downscaling factor of the fast method; default :func:`default_factor`.
        ``factor=1`` is the exact method.

    Returns
    -------
    ndarray of float32
        Background, same shape as ``image``.
    """
    image = _check_image(image)
    radius = _check_radius(radius)
    mode = _check_mode(mode)
    if method not in METHODS:
        raise InputError(None, f"top-hat method must be one of {METHODS}, got {method!r}")
    cv2 = _cv2()
    op = cv2.MORPH_OPEN if mode == "white" else cv2.MORPH_CLOSE
    src = _morph_input(image)
    if method == "fast":
        s = default_factor(radius) if factor is None else int(factor)
        if s < 1:
            raise InputError(None, f"downscaling factor must be >= 1, got {factor!r}")
    else:
        s = 1
    if s == 1:
        return cv2.morphologyEx(src, op, opencv_disk(radius)).astype(np.float32, copy=False)

    h, w = src.shape
    hs, ws = -(-h // s), -(-w // s)
    # edge padding keeps the minimum (maximum) of a partial border block unchanged
    padded = np.pad(src, ((0, hs * s - h), (0, ws * s - w)), mode="edge")
    blocks = padded.reshape(hs, s, ws, s)
    small = blocks.min(axis=(1, 3)) if mode == "white" else blocks.max(axis=(1, 3))
    # The first step (erosion for white) on block extrema sees each block's whole
    # extent, i.e. a disk ~s/2 px too large, and the second step only block
    # centres; enlarging the second disk by (s - 1) / 2 px cancels the resulting
    # bias on sloped backgrounds (mean signed error -> ~0; max error also lower).
    first, second = (cv2.erode, cv2.dilate) if mode == "white" else (cv2.dilate, cv2.erode)
    small = first(np.ascontiguousarray(small), euclidean_disk(radius / s))
    small = second(small, euclidean_disk((radius + (s - 1) / 2) / s))
    # pixel centres line up: cv2.resize maps output x to input (x + 0.5) / s - 0.5
    big = cv2.resize(small.astype(np.float32), (ws * s, hs * s), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[:h, :w])


def tophat(
    image: np.ndarray,
    radius: int,
    *,
    mode: str = "white",
    method: str = "fast",
    factor: int | None = None,
) -> np.ndarray:
    """White or black top-hat with a disk, in float32, clipped at zero.

    Parameters
    ----------
    image : ndarray
        2-D greyscale image (uint16 plate images; any integer/float dtype works).
    radius : int
        Disk radius in pixels (larger than the cells; ~100 px at 2048x1536).
    mode : {"white", "black"}
        ``"white"``: ``image - opening`` (bright objects);
        ``"black"``: ``closing - image`` (dark objects).
    method : {"fast", "exact"}
        ``"exact"``: OpenCV's elliptic disk at full resolution (~2 s at r = 100
        on 2048x1536).  ``"fast"`` (default): block-min/max downscaling by
        ``factor``, morphology on the small image, bilinear upscaling; 50-150x
        faster at r = 100; mean error ~0.04 % of the dynamic range, maximum
        error ~1.2-1.45x the disagreement between two exact digitisations of
        the disk (0.8-2.2 % of the range for 0.25-1 % noise), larger next to
        sharp objects of the opposite polarity (see the module docstring).
    factor : int, optional
        Downscaling factor for ``method="fast"`` (default ``clip(radius // 25, 1, 8)``).

    Returns
    -------
    ndarray of float32
        Non-negative top-hat, in the units of ``image``.

    Raises
    ------
    InputError
        Not a 2-D finite numeric image; bad radius, mode, method or factor.
    """
    image = _check_image(image)
    bg = background(image, radius, mode=mode, method=method, factor=factor)
    img = image.astype(np.float32)
    out = np.subtract(img, bg, out=bg) if mode == "white" else np.subtract(bg, img, out=bg)
    np.maximum(out, 0.0, out=out)
    return out


def decide_polarity(
    images, radius_px: int, method: str = "fast", margin: float = POLARITY_MARGIN
) -> tuple[str, float, bool]:
    """Decide the top-hat polarity (``"white"`` or ``"black"``) of a set of images.

    For each image the energy of the white and of the black top-hat is the mean of the
    square of a band-pass top-hat: the top-hat at ``radius_px`` less the top-hat at
    ``s = max(2, round(radius_px / 10))`` (clipped at 0), which keeps objects between
    about ``2 s`` and ``2 radius_px`` across and drops thin structures such as the bright
    halos around dark brightfield cells, which otherwise weigh on the wrong side. The
    statistic is the median over images of ``log(E_white / E_black)``; ``mode = "white"``
    if it is > 0, else ``"black"``; the decision is uncertain when ``|statistic| < margin``
    (default :data:`POLARITY_MARGIN` = 0.1).

    Measured (fast method): the demo's synthetic brightfield plates (1024 px, r = 40)
    -0.19 and -0.21, its phase plate -1.43, synthetic 256 px scenes -0.33 (brightfield)
    and -0.89 (phase) (all dark cells: ``black``); inverted copies give the opposite sign;
    flat Gaussian noise -0.05 (uncertain); the Usiigaci phase-contrast images (4 images,
    r = 50) -0.08 (uncertain). Without the band-pass (the plain top-hats) the demo's
    brightfield plates gave -0.06 and -0.08, uncertain.

    Returns
    -------
    (str, float, bool)
        The mode, the statistic and whether it is uncertain.
    """
    small = max(2, int(round(radius_px / 10)))
    stats = []
    for image in images:
        image = _check_image(image)
        energy = {}
        for mode in MODES:
            band = tophat(image, radius_px, mode=mode, method=method)
            band -= tophat(image, small, mode=mode, method=method)
            np.maximum(band, 0.0, out=band)
            energy[mode] = float(np.mean(np.square(band)))
        eps = 1e-12
        stats.append(np.log((energy["white"] + eps) / (energy["black"] + eps)))
    if not stats:
        raise InputError(None, "decide_polarity needs at least one image")
    stat = float(np.median(stats))
    return ("white" if stat > 0 else "black"), stat, bool(abs(stat) < margin)


POLARITY_FLAGS = ("ok", "uncertain", "disagrees")


def choose_polarity(
    configured: str,
    statistic: float,
    *,
    uncertain_mode: str = "black",
    margin: float = POLARITY_MARGIN,
) -> tuple[str, str]:
    """The top-hat mode a plate is corrected with, and whether to flag it for review.

    Parameters
    ----------
    configured : {"auto", "black", "white"}
        The plate's ``illumination.mode`` (config or sheet).
    statistic : float
        :func:`decide_polarity`'s median log ratio of white to black top-hat energy.
    uncertain_mode : {"black", "white"}
        The mode ``auto`` falls back to when ``|statistic| < margin``.
    margin : float
        Half-width of the uncertain band around 0.

    Returns
    -------
    (str, str)
        The mode used and a flag: ``"ok"``; ``"uncertain"`` (``auto`` with ``|statistic| <
        margin``: ``uncertain_mode`` was used); ``"disagrees"`` (a fixed mode that the
        statistic contradicts by more than ``margin``: the cells may be inverted).
    """
    configured = str(configured)
    if configured not in (*MODES, "auto"):
        raise InputError(
            None, f"illumination mode must be white, black or auto, got {configured!r}"
        )
    _check_mode(uncertain_mode)
    uncertain = abs(statistic) < margin
    suggested = "white" if statistic > 0 else "black"
    if configured == "auto":
        return (uncertain_mode, "uncertain") if uncertain else (suggested, "ok")
    if not uncertain and suggested != configured:
        return configured, "disagrees"
    return configured, "ok"


#: Images of a plate that :func:`plate_polarity` samples.
POLARITY_SAMPLE = 8


def plate_polarity(
    n_images: int,
    read,
    radius_px: int,
    configured: str,
    *,
    method: str = "fast",
    uncertain_mode: str = "black",
) -> tuple[str, float, str, int]:
    """The top-hat mode of one plate (or one batch of images), decided as the workflow does.

    :func:`decide_polarity` over up to :data:`POLARITY_SAMPLE` evenly spaced images
    (``read(i)`` returns image ``i``, 2-D), then :func:`choose_polarity`.

    Returns
    -------
    (str, float, str, int)
        The mode used, the statistic, the flag and the number of images sampled.
    """
    k = min(POLARITY_SAMPLE, int(n_images))
    idx = np.unique(np.linspace(0, n_images - 1, k).round().astype(int))
    _, stat, _ = decide_polarity((read(int(i)) for i in idx), radius_px, method=method)
    mode, flag = choose_polarity(configured, stat, uncertain_mode=uncertain_mode)
    return mode, stat, flag, len(idx)


def normalize_percentile(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Stretch ``image`` so that its ``low``/``high`` percentiles map to 0/1, clipped.

    Parameters
    ----------
    image : ndarray
        Any finite numeric array.
    low, high : float
        Percentiles, ``0 <= low < high <= 100``.

    Returns
    -------
    ndarray of float32
        Values in [0, 1].  A constant image (or one whose two percentiles are
        equal) gives zeros rather than dividing by zero.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise InputError(None, "image has no pixels")
    if not (0.0 <= low < high <= 100.0):
        raise InputError(
            None, f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}"
        )
    img = image.astype(np.float32)
    if not np.all(np.isfinite(img)):
        raise InputError(None, "image contains NaN or infinite values")
    lo, hi = np.percentile(img, [low, high])
    if not hi > lo:
        return np.zeros(img.shape, np.float32)
    out = (img - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def correct_illumination(
    image: np.ndarray,
    radius_px: int,
    *,
    mode: str = "white",
    method: str = "fast",
    percentiles: tuple[float, float] = (1.0, 99.8),
    uncertain_mode: str = "black",
) -> np.ndarray:
    """Top-hat background removal followed by percentile normalisation.

    Parameters
    ----------
    image : ndarray
        2-D raw image (uint16).
    radius_px : int
        Top-hat disk radius in pixels (see :func:`radius_to_px`).
    mode, method
        See :func:`tophat`; ``mode="auto"`` decides this one image's polarity with
        :func:`decide_polarity` (the plate rule decides once per plate instead).
    percentiles : (float, float)
        Low/high percentiles of the top-hat mapped to 0 and 1.
    uncertain_mode : {"black", "white"}
        The mode ``"auto"`` uses when the decision is uncertain (:func:`choose_polarity`).

    Returns
    -------
    ndarray of float32
        Corrected image in [0, 1].
    """
    if mode == "auto":
        _, stat, _ = decide_polarity([image], radius_px, method=method)
        mode, flag = choose_polarity("auto", stat, uncertain_mode=uncertain_mode)
        (log.warning if flag != "ok" else log.info)(
            "polarity statistic %+.3f -> mode %s%s",
            stat,
            mode,
            " (uncertain: illumination.uncertain_mode)" if flag != "ok" else "",
        )
    th = tophat(image, radius_px, mode=mode, method=method)
    return normalize_percentile(th, *percentiles)


def radius_to_px(
    radius: float, unit: str, pixel_size_um: float | None, limits: Limits | None = None
) -> int:
    """Convert a top-hat radius from ``unit`` ("px" or "um") to whole pixels.

    Raises
    ------
    InputError
        Unknown unit, non-positive radius or pixel size, a radius below 1 px or over
        ``limits.max_illumination_radius_px``.
    """
    if unit not in UNITS:
        raise InputError(None, f"radius unit must be one of {UNITS}, got {unit!r}")
    try:
        radius = float(radius)
    except (TypeError, ValueError):
        raise InputError(None, f"radius must be a number, got {radius!r}") from None
    if not np.isfinite(radius) or radius <= 0:
        raise InputError(None, f"radius must be positive, got {radius}")
    if unit == "um":
        try:
            px = float(pixel_size_um)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InputError(None, f"pixel size must be a number, got {pixel_size_um!r}") from None
        if not np.isfinite(px) or px <= 0:
            raise InputError(None, f"pixel size must be positive, got {pixel_size_um!r}")
        radius = radius / px
    if not np.isfinite(radius):
        raise InputError(None, f"radius {radius} px is not finite")
    _check_radius_limit(radius, limits)
    out = int(round(radius))
    if out < 1:
        raise InputError(None, f"radius {radius:.3g} px rounds to less than 1 px")
    return out


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint16 ``round(x * 65535)`` (values clipped to [0, 1])."""
    x = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    return np.round(x * 65535.0).astype(np.uint16)


def correct_file(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    radius_px: int,
    mode: str = "white",
    method: str = "fast",
    *,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> None:
    """Correct one image file and write it as a uint16 TIFF (``round(x * 65535)``).

    Bad input files raise :class:`InputError` naming ``in_path``.  The output is
    written atomically.
    """

    image = read_image(in_path)
    try:
        corrected = correct_illumination(
            image, radius_px, mode=mode, method=method, percentiles=percentiles
        )
    except InputError as exc:
        raise InputError(in_path, exc.message) from None
    write_tiff(to_uint16(corrected), out_path)
