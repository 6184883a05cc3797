"""Annotations from a folder of masks, and pre-tiled image/mask patch sets.

Many labs have no CVAT export but a folder of images and a folder of masks
with the same file names (optionally with a suffix such as ``_mask``), often
already cut into 256x256 patches, often JPEG and RGB.  This module turns them
into exactly what :func:`brightseg.annotations.cvat.import_cvat` writes
(``<stem>_labels.tif``, ``<stem>_mask.png``, ``manifest.parquet``), so the rest
of the workflow cannot tell the two sources apart, and feeds pre-tiled patch
sets straight to the augmentation stage.

Masks (:func:`read_mask`)
-------------------------
Background must be 0 (black); everything else is interpreted as follows, in
this order.  What was found is reported in the ``info`` dict (``kind``).

* **Channels.**  RGB(A) masks are reduced to one channel: the first channel if
  R, G and B are equal (the alpha channel is used instead when R=G=B is
  constant and alpha is not), otherwise the maximum over R, G and B (a red or
  green mask on black keeps its full value).  Palette PNGs are read as their
  palette indices, 1-bit PNGs as 0/1.
* **Lossy files** (JPEG, also JPEG-compressed TIFF) smear the values around 0
  and 255: ``kind="lossy"``, foreground is ``value > threshold`` (default
  127).  Uint8 masks whose foreground is mostly 255 with a few other values
  (anti-aliased PNG exports) are treated the same way.  Float masks are
  probabilities: foreground is ``> 0.5`` (values in [0, 1]) or
  ``> threshold``.
* **Binary masks**: one non-zero value: ``binary01`` (0/1, detected by
  ``max == 1``), ``binary0255`` (0/255) or ``binary`` (another single value);
  ``empty`` when nothing is foreground.
* **Instance labels**: several non-zero integer values in a lossless
  single-channel file (typically a uint16 TIFF), or an RGB PNG with at least
  two distinct non-black colours (colour-coded instances, one colour per
  cell): ``kind="labels"``; the labels are kept (renumbered 1..n) when
  ``expect`` is ``"auto"`` or ``"labels"``.  With ``expect="binary"`` such a
  file logs a warning and is binarised ``> 0``.
* **Class masks**: several values (or colours) but far more separate objects
  than values (``> 2 n + 2`` 8-connected components for ``n`` values, e.g.
  1 = cell, 2 = debris): ``kind="classes"``, binarised ``> 0`` with a warning.

Instances of a binary mask are its connected components
(``scipy.ndimage.label`` with 8-connectivity, i.e. a 3x3 structuring element
of ones: diagonal neighbours belong to the same cell); touching cells in a
binary mask therefore become one instance.  Label images (like CVAT's) are
``uint16``, ``uint32`` above 65535 cells, numbered 1..n.

Images (:func:`describe_image`)
-------------------------------
Brightfield images saved as RGB are reduced as :func:`brightseg.io.read_image`
does: equal R, G and B (greyscale stored as RGB) become that one channel
exactly; different channels are converted to luminance with the ITU-R 601-2
weights ``0.299 R + 0.587 G + 0.114 B`` (Pillow's ``L`` mode), with a logged
warning.  :func:`describe_image` reports what a file holds (format, dtype,
bits, channels, greyscale-in-RGB) so that callers can record it.

Pre-tiled patch sets
--------------------
:func:`load_patch_set` indexes patches named ``<source>_<row>_<col>`` (the
pattern is configurable; ``source`` is the full-size image the patch was cut
from), :func:`patch_set_pairs` yields them in the form
:func:`brightseg.augment.build_training_store` takes, and
:func:`grouped_patch_split` splits them with
:func:`brightseg.split.grouped_split` grouped by ``source``, so no source image
has patches on both sides.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..errors import InputError, Problems
from ..illumination import correct_illumination, radius_to_px
from ..io import IMAGE_SUFFIXES, image_header, read_image, write_parquet, write_png, write_tiff
from ..progress import progress
from ..sheet import MODALITIES
from ..split import grouped_split, split_summary
from .cvat import MANIFEST_COLUMNS as _CVAT_MANIFEST_COLUMNS

log = logging.getLogger(__name__)

#: Names of patch sets and evaluation sets (they become file names and wildcards).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"

#: Pixel size of a patch set or evaluation set that gives none (um).
DEFAULT_PIXEL_SIZE_UM = 0.65

__all__ = [
    "MANIFEST_COLUMNS",
    "PATCH_COLUMNS",
    "DEFAULT_PATCH_REGEX",
    "read_mask",
    "mask_to_labels",
    "describe_image",
    "match_files",
    "import_mask_folder",
    "load_patch_set",
    "patch_set_pairs",
    "grouped_patch_split",
]

#: Columns of ``manifest.parquet``: the CVAT import's, so downstream cannot tell them apart.
MANIFEST_COLUMNS = _CVAT_MANIFEST_COLUMNS

#: Columns of the table returned by :func:`load_patch_set`.
PATCH_COLUMNS = (
    "image_id",
    "image",
    "mask",
    "source",
    "row",
    "col",
    "foreground_fraction",
    "width",
    "height",
)

#: Default pattern of pre-tiled patch stems ``<source>_<row>_<col>``.
DEFAULT_PATCH_REGEX = r"^(?P<source>.+)_(?P<row>\d+)_(?P<col>\d+)$"

_EXPECT = ("auto", "binary", "labels")
_TIFF = (".tif", ".tiff")
_JPEG = (".jpg", ".jpeg")
#: TIFF compression codes that are lossy (OJPEG, JPEG, WebP, JPEG XL).
_LOSSY_TIFF_COMPRESSION = (6, 7, 50001, 50002)


# --------------------------------------------------------------------------- reading


def _check_threshold(threshold: float) -> float:
    if not 0 <= float(threshold) < 255:
        raise InputError("threshold", f"mask threshold must lie in [0, 255), got {threshold}")
    return float(threshold)


def _read_raw(path: Path) -> tuple[np.ndarray, str, bool]:
    """Decode a file as stored: ``(array (H, W) or (H, W, C), format, lossy)``."""
    suffix = path.suffix.lower()
    fmt = suffix.lstrip(".").upper()
    lossy = suffix in _JPEG
    arr = None
    if path.is_file() and path.stat().st_size > 0:
        image_header(path)  # size limits, before anything is decoded
        try:
            if suffix in _TIFF:
                import tifffile

                fmt = "TIFF"
                with tifffile.TiffFile(path) as tf:
                    if len(tf.pages) == 0:
                        raise InputError(path, "TIFF holds no readable image (corrupt file?)")
                    lossy = int(tf.pages[0].compression) in _LOSSY_TIFF_COMPRESSION
            else:
                from PIL import Image

                with Image.open(path) as im:
                    fmt = str(im.format or fmt)
                    lossy = lossy or fmt in ("JPEG", "MPO", "WEBP")
                    if im.mode in ("LA", "La", "PA", "P"):  # palette indices; grey + alpha: grey
                        im.load()
                        arr = np.asarray(im)
                        arr = arr[..., 0] if arr.ndim == 3 else arr
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - read_image below reports the decoder error
            pass
    if arr is None:
        arr = read_image(path, grey=False)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return np.asarray(arr), fmt, lossy


def _reduce_channels(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """One channel from an RGB(A) mask, and how it was chosen."""
    if arr.ndim == 2:
        return arr, "none"
    rgb = arr[..., :3]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        if arr.shape[-1] == 4 and r.min() == r.max():
            alpha = arr[..., 3]
            if alpha.min() != alpha.max():
                return alpha, "alpha channel (RGB constant)"
        return r, "first channel (R=G=B)"
    return rgb.max(axis=-1), "maximum over channels"


def _colour_labels(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """Label image from a colour-coded RGB mask (black = background), and the colour count."""
    packed = (
        rgb[..., 0].astype(np.uint32) << 16
        | rgb[..., 1].astype(np.uint32) << 8
        | rgb[..., 2].astype(np.uint32)
    )
    colours, inverse = np.unique(packed, return_inverse=True)
    inverse = inverse.reshape(packed.shape)
    if colours[0] != 0:
        inverse = inverse + 1
    return inverse, int(np.count_nonzero(colours))


def _distinct(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (bincount for 8-bit)."""
    if a.dtype == np.uint8:
        return np.flatnonzero(np.bincount(a.ravel(), minlength=256))
    return np.unique(a)


def _label_dtype(n: int) -> type:
    return np.uint16 if n <= 65535 else np.uint32


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero labels 1..n in increasing order; uint16 (uint32 above 65535)."""
    values = _distinct(labels)
    nz = values[values != 0]
    dtype = _label_dtype(nz.size)
    if nz.size == 0 or (nz[0] == 1 and nz[-1] == nz.size):
        return labels.astype(dtype, copy=False)
    ranks = np.searchsorted(values, labels)
    if values[0] != 0:
        ranks += 1
    return ranks.astype(dtype)


def mask_to_labels(mask: np.ndarray) -> np.ndarray:
    """Instance labels of a binary mask: 8-connected components.

    Parameters
    ----------
    mask : ndarray
        2-D, non-zero = foreground.

    Returns
    -------
    ndarray
        ``uint16`` labels 1..n (``uint32`` above 65535 components), 0 = background,
        numbered in raster order (``scipy.ndimage.label`` with a 3x3 structure of ones).
    """

    labels, n = ndi.label(np.asarray(mask) != 0, structure=np.ones((3, 3), dtype=bool))
    return labels.astype(_label_dtype(int(n)), copy=False)


def _smeared(a: np.ndarray, values: np.ndarray, threshold: float) -> bool:
    """A binary 8-bit mask with in-between values: anti-aliased edges, a lossy round trip.

    Most of its foreground is bright (``> threshold``), and the bright pixels sit near
    the maximum (within 16 grey levels: JPEG moves 255 down a little); the rest are edge
    ramps and speckle (a halo of 1-31 after a JPEG round trip).  An instance label image
    has one value per cell, spread evenly: its bright pixels are spread over every value
    above the threshold, not piled up at the top, and a label image with at most
    ``threshold`` labels has no bright pixel at all.
    """
    if a.dtype != np.uint8 or values.size < 3 or float(values[-1]) <= threshold:
        return False
    fg = np.count_nonzero(a)
    bright = np.count_nonzero(a > threshold)
    near_max = np.count_nonzero(a >= max(int(values[-1]) - 16, int(threshold) + 1))
    return fg > 0 and bright >= 0.4 * fg and near_max >= 0.5 * bright


def _class_coded(mask: np.ndarray, n_values: int, path: Path) -> bool:
    """True if a multi-valued mask codes classes rather than instances.

    Each instance label is (about) one connected region, so a label image has
    at most about as many 8-connected foreground components as labels
    (touching cells merge).  Far more components than values (``> 2 n + 2``)
    means the values are classes (e.g. 1 = cell, 2 = debris) shared by many
    separate objects.
    """
    n_components = int(mask_to_labels(mask).max())
    if n_components > 2 * n_values + 2:
        log.warning(
            "%s: %d mask values but %d separate objects: values read as classes, not "
            "instances; binarised > 0 (instances from connected components)",
            path,
            n_values,
            n_components,
        )
        return True
    return False


def read_mask(
    path: str | os.PathLike,
    *,
    threshold: float = 127,
    expect: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read a mask file (PNG, TIFF or JPEG) of any common encoding.

    Parameters
    ----------
    path : path-like
        The mask.  Background must be 0 (black).
    threshold : float
        Foreground is ``value > threshold`` for lossy (JPEG) or smeared 8-bit
        masks and for float masks with values above 1.  In [0, 255).
    expect : {"auto", "binary", "labels"}
        The mask mode (``mask_mode`` of a plate's annotations, a patch set or an
        evaluation set).  ``"auto"`` recognises anti-aliased binary masks (most foreground
        near the maximum, the rest a minority of in-between values: read
        ``> threshold``) and keeps instance labels found in the file; ``"labels"``
        always reads several values as labels; ``"binary"`` reads the mask
        ``> threshold`` (``> 0`` when its maximum is not above the threshold, as in a
        0/1 mask) with a logged warning when it holds several values.  A lossy file
        cannot hold labels (warning with ``"labels"``).

    Returns
    -------
    mask : ndarray of uint8
        2-D, 0/1.
    labels : ndarray of uint16/uint32 or None
        Instance labels 1..n when the file holds them and ``expect`` allows,
        else None (use :func:`mask_to_labels`).
    info : dict
        ``kind`` (``binary01``, ``binary0255``, ``binary``, ``empty``,
        ``lossy``, ``labels`` or ``classes``), ``n_values`` (distinct values after channel
        reduction), ``channels`` (in the file), ``reduction`` (how channels
        were reduced), ``format``, ``dtype``, ``lossy``, ``threshold`` (used,
        or None), ``used_as`` (``"binary"`` or ``"labels"``).

    Raises
    ------
    InputError
        Missing, empty or unreadable file; not 2-D; negative values; bad
        ``threshold`` or ``expect``.

    Notes
    -----
    See the module docstring for the rules, in order.
    """
    path = Path(path)
    if expect not in _EXPECT:
        raise InputError("expect", f"must be one of {_EXPECT}, got {expect!r}")
    threshold = _check_threshold(threshold)
    raw, fmt, lossy = _read_raw(path)
    channels = 1 if raw.ndim == 2 else int(raw.shape[-1])
    a, reduction = _reduce_channels(raw)
    info: dict[str, Any] = {
        "kind": "",
        "n_values": 0,
        "channels": channels,
        "reduction": reduction,
        "format": fmt,
        "dtype": str(raw.dtype),
        "lossy": bool(lossy),
        "threshold": None,
        "used_as": "binary",
    }
    labels: np.ndarray | None = None

    if a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        if finite.size and np.all(finite == np.round(finite)) and not lossy:
            a = np.nan_to_num(a, nan=0.0).astype(np.int64)
        else:
            cut = 0.5 if finite.size == 0 or float(finite.max()) <= 1.0 else threshold
            info.update(kind="lossy", n_values=int(np.unique(finite).size), threshold=cut)
            mask = (np.nan_to_num(a, nan=0.0) > cut).astype(np.uint8)
            return mask, None, info
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise InputError(path, f"mask has negative values (min {int(a.min())})")

    values = _distinct(a)
    info["n_values"] = int(values.size)
    nz = values[values != 0]
    if not lossy and expect != "labels" and _smeared(a, values, threshold):
        info["smeared"] = lossy = True
    colour, classes = None, False
    if not lossy and reduction == "maximum over channels" and expect != "binary":
        colour_labels, n_colours = _colour_labels(raw[..., :3])
        if n_colours >= 2:
            classes = _class_coded(a != 0, n_colours, path)
            colour = None if classes else colour_labels
    if lossy:
        if expect == "labels":
            log.warning("%s: a %s mask cannot hold instance labels; binarised", path, fmt)
        info.update(kind="lossy", threshold=threshold)
        mask = (a > threshold).astype(np.uint8)
        if not mask.any() and nz.size:
            cut = float(nz[-1]) / 2.0
            log.warning(
                "%s: no pixel above the threshold %g (max %d): a 0/1 mask saved lossy? "
                "binarised at %g",
                path,
                threshold,
                int(nz[-1]),
                cut,
            )
            info["threshold"] = cut
            mask = (a > cut).astype(np.uint8)
    elif colour is not None:
        info.update(kind="labels", used_as="labels", colour_coded=True)
        labels = _relabel(colour)
        mask = (a != 0).astype(np.uint8)
    elif nz.size == 0:
        info["kind"] = "empty"
        mask = np.zeros(a.shape, dtype=np.uint8)
    elif nz.size == 1:
        info["kind"] = {1: "binary01", 255: "binary0255"}.get(int(nz[0]), "binary")
        info["foreground_value"] = int(nz[0])
        mask = (a != 0).astype(np.uint8)
    else:
        info["kind"] = "labels"
        mask = (a != 0).astype(np.uint8)
        if classes or _class_coded(mask, int(nz.size), path):
            info["kind"] = "classes"
        elif expect == "binary":
            # mask_mode binary: the threshold applies to every binary reading (a 0/1 or
            # low-valued mask is read > 0)
            cut = threshold if float(nz[-1]) > threshold else 0.0
            mask = (a > cut).astype(np.uint8)
            info.update(kind="binary", threshold=cut)
            log.warning(
                "%s: mask_mode binary but %d distinct values (an instance label image?); "
                "binarised > %g",
                path,
                values.size,
                cut,
            )
        else:
            info["used_as"] = "labels"
            labels = _relabel(a)
    if mask.size and np.count_nonzero(mask) > 0.9 * mask.size:
        log.warning(
            "%s: %.0f%% of the mask is foreground; is it inverted (background must be 0)?",
            path,
            100.0 * np.count_nonzero(mask) / mask.size,
        )
    return mask, labels, info


# --------------------------------------------------------------------------- images


def describe_image(path: str | os.PathLike) -> dict[str, Any]:
    """What an image file holds and how the pipeline reduces it to greyscale.

    Parameters
    ----------
    path : path-like
        TIFF, PNG or JPEG image.

    Returns
    -------
    dict
        ``file``, ``format``, ``dtype``, ``bits`` (per sample; 1 for 1-bit
        PNG), ``channels``, ``width``, ``height``, ``lossy``,
        ``greyscale_in_rgb`` (R = G = B exactly), ``reduction`` (``"none"``,
        ``"first channel (R=G=B)"`` or ``"ITU-R 601 luminance"``), ``min`` and
        ``max`` of the stored values.

    Raises
    ------
    InputError
        Missing, empty or unreadable file.
    """
    path = Path(path)
    bits = None
    if path.suffix.lower() not in _TIFF and path.is_file() and path.stat().st_size:
        try:
            from PIL import Image

            with Image.open(path) as im:
                bits = 1 if im.mode == "1" else None
        except Exception:  # noqa: BLE001 - _read_raw reports it
            pass
    raw, fmt, lossy = _read_raw(path)
    channels = 1 if raw.ndim == 2 else int(raw.shape[-1])
    grey_rgb = False
    reduction = "none"
    if channels >= 3:
        rgb = raw[..., :3]
        grey_rgb = bool(
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        )
        reduction = "first channel (R=G=B)" if grey_rgb else "ITU-R 601 luminance"
    return {
        "file": str(path),
        "format": fmt,
        "dtype": str(raw.dtype),
        "bits": int(bits or raw.dtype.itemsize * 8),
        "channels": channels,
        "width": int(raw.shape[1]),
        "height": int(raw.shape[0]),
        "lossy": bool(lossy),
        "greyscale_in_rgb": grey_rgb,
        "reduction": reduction,
        "min": float(raw.min()),
        "max": float(raw.max()),
    }


# --------------------------------------------------------------------------- matching


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def _by_key(files: Sequence[Path], what: str, problems: Problems, key) -> dict[str, Path]:
    """Map key -> file; keys with several files are problems."""
    table: dict[str, list[Path]] = {}
    for p in files:
        table.setdefault(key(p), []).append(p)
    out: dict[str, Path] = {}
    for k, ps in sorted(table.items()):
        if len(ps) > 1:
            listing = ", ".join(p.name for p in ps)
            problems.report(InputError(ps[0], f"several {what} files for {k!r}: {listing}"), ps[0])
            continue
        out[k] = ps[0]
    return out


def pair_files(
    image_files: Sequence[Path],
    mask_files: Sequence[Path],
    problems: Problems,
    *,
    mask_suffix: str = "",
    images_without_mask: str = "report",
    images_where: str = "",
    masks_where: str = "",
) -> list[tuple[str, Path, Path]]:
    """Pair image and mask files by stem: the one pairing rule of every mask source.

    Parameters
    ----------
    image_files, mask_files : sequence of Path
        The candidates (a folder's files, or a plate's images from the sheet).  A file in
        both lists is an image.
    problems : Problems
        Where bad items go: a mask whose name lacks ``mask_suffix``, two files for one
        stem, a mask without an image, and (``images_without_mask="report"``) an image
        without a mask.
    mask_suffix : str
        The mask of ``<stem>.<ext>`` is ``<stem><mask_suffix>.<any ext>``.
    images_without_mask : {"report", "ignore"}
        ``"ignore"`` for a plate: its images without a mask are simply not annotated.
    images_where, masks_where : str
        Where the files were looked for, named in the messages.

    Returns
    -------
    list of (stem, image path, mask path)
        Sorted by stem.
    """
    image_set = {Path(p).resolve() for p in image_files}
    masks = []
    for p in mask_files:
        if Path(p).resolve() in image_set:
            continue
        if mask_suffix and not p.stem.endswith(mask_suffix):
            if images_where != masks_where:
                problems.report(
                    InputError(p, f"mask name does not end with the mask suffix {mask_suffix!r}"),
                    p,
                )
            continue
        masks.append(p)
    cut = len(mask_suffix)
    images = _by_key(image_files, "image", problems, key=lambda p: p.stem)
    by_stem = _by_key(masks, "mask", problems, key=lambda p: p.stem[: len(p.stem) - cut])
    pairs: list[tuple[str, Path, Path]] = []
    for stem in sorted(set(images) | set(by_stem)):
        if stem not in by_stem:
            if images_without_mask == "report":
                problems.report(
                    InputError(
                        images[stem],
                        f"no mask for this image in {masks_where} "
                        f"(looked for '{stem}{mask_suffix}' with suffix {'/'.join(IMAGE_SUFFIXES)})",
                    ),
                    images[stem],
                )
        elif stem not in images:
            problems.report(
                InputError(
                    by_stem[stem],
                    f"no image for this mask in {images_where} (looked for '{stem}' with suffix "
                    f"{'/'.join(IMAGE_SUFFIXES)})",
                ),
                by_stem[stem],
            )
        else:
            pairs.append((stem, images[stem], by_stem[stem]))
    return pairs


def match_files(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    *,
    mask_suffix: str = "",
    on_bad_input: str = "error",
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> tuple[list[tuple[str, Path, Path]], pd.DataFrame]:
    """Pair the image and mask files of two folders by stem (:func:`pair_files`).

    Parameters
    ----------
    images_dir, masks_dir : path-like
        Folders (not searched recursively; hidden files are ignored).  They may
        be the same folder when ``mask_suffix`` is given.
    mask_suffix : str
        The mask of ``<stem>.<ext>`` is ``<stem><mask_suffix>.<any ext>``.
    on_bad_input : {"error", "skip"}
        An image without a mask, a mask without an image, or two files with
        the same stem: raise :class:`InputError`, or leave them out and list
        them in ``skipped``.
    suffixes : sequence of str
        File suffixes considered (case-insensitive).

    Returns
    -------
    pairs : list of (stem, image path, mask path)
        Sorted by stem.
    skipped : pandas.DataFrame
        Columns ``file`` and ``reason``.
    """
    problems = Problems(on_bad_input)
    pairs = _match(Path(images_dir), Path(masks_dir), mask_suffix, suffixes, problems)
    return pairs, problems.frame()


def _match(
    images_dir: Path,
    masks_dir: Path,
    mask_suffix: str,
    suffixes: Sequence[str],
    problems: Problems,
) -> list[tuple[str, Path, Path]]:
    """:func:`match_files` reporting to ``problems``."""
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise InputError(folder, f"{what} folder does not exist")
    same = images_dir.resolve() == masks_dir.resolve()
    if same and not mask_suffix:
        raise InputError(
            masks_dir, "images and masks are in the same folder: set mask_suffix (e.g. '_mask')"
        )
    mask_files = _files(masks_dir, suffixes)
    image_files = _files(images_dir, suffixes)
    if same:
        image_files = [p for p in image_files if not p.stem.endswith(mask_suffix)]
    return pair_files(
        image_files,
        mask_files,
        problems,
        mask_suffix=mask_suffix,
        images_where=str(images_dir),
        masks_where=str(masks_dir),
    )


def _check_pair(image: Path, mask_path: Path, threshold: float, expect: str):
    """Read both files (full decode) and check their sizes; returns (image, mask, labels, info)."""
    img = read_image(image, grey=True)
    mask, labels, info = read_mask(mask_path, threshold=threshold, expect=expect)
    if mask.shape != img.shape[:2]:
        raise InputError(
            mask_path,
            f"mask is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image {image} "
            f"is {img.shape[1]}x{img.shape[0]}",
        )
    return img, mask, labels, info


# --------------------------------------------------------------------------- import


def import_mask_folder(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    plate: str = "",
    threshold: float = 127,
    expect: str = "auto",
    on_bad_input: str = "error",
    mask_suffix: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import a folder of masks as instance-label and binary masks (like ``import_cvat``).

    Pairs the two folders' files (:func:`match_files`) and imports the pairs
    (:func:`import_mask_pairs`).  An image without a mask is bad input here.

    Returns
    -------
    manifest, skipped : pandas.DataFrame
        As :func:`import_mask_pairs`.
    """
    problems = Problems(on_bad_input)
    Path(out_dir, "manifest.parquet").unlink(missing_ok=True)
    pairs = _match(Path(images_dir), Path(masks_dir), mask_suffix, IMAGE_SUFFIXES, problems)
    manifest = import_mask_pairs(
        pairs, out_dir, problems, plate=plate, threshold=threshold, expect=expect, where=masks_dir
    )
    return manifest, problems.frame()


def import_mask_annotations(
    masks_dir: str | os.PathLike,
    image_files: Sequence[Path],
    out_dir: str | os.PathLike,
    *,
    plate: str = "",
    images_where: str = "",
    threshold: float = 127,
    mask_suffix: str = "",
    on_bad_input: str = "error",
    mask_mode: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import a plate's annotations given as a folder of masks.

    Every mask ``<stem><mask_suffix>.<png|tif|tiff|jpg|jpeg>`` in ``masks_dir`` belongs
    to the plate image with that stem (:func:`pair_files`); plate images without a mask
    are not annotated (not an error).  A mask without an image, two files for one stem,
    an unreadable mask or one whose size differs from its image's is bad input.

    Parameters
    ----------
    masks_dir : path-like
        The folder of masks.
    image_files : sequence of Path
        The plate's images (:func:`brightseg.sheet.list_images` of the sheet's ``images``).
    out_dir : path-like
        ``results/annotations/<plate>``.
    plate : str
        Plate name stored in the manifest.
    images_where : str
        The sheet's ``images`` entry, named in messages.
    threshold, mask_suffix, on_bad_input
        As :func:`import_mask_folder`.
    mask_mode : {"auto", "binary", "labels"}
        How each mask is read (``expect`` of :func:`read_mask`).

    Returns
    -------
    manifest, skipped : pandas.DataFrame
        As :func:`import_mask_pairs`.
    """
    problems = Problems(on_bad_input)
    masks_dir, out_dir = Path(masks_dir), Path(out_dir)
    if not masks_dir.is_dir():
        raise InputError(masks_dir, f"plate {plate!r}: annotation mask folder does not exist")
    if not image_files:
        raise InputError(images_where, f"plate {plate!r}: no images ({', '.join(IMAGE_SUFFIXES)})")
    (out_dir / "manifest.parquet").unlink(missing_ok=True)
    pairs = pair_files(
        [Path(p) for p in image_files],
        _files(masks_dir, IMAGE_SUFFIXES),
        problems,
        mask_suffix=mask_suffix,
        images_without_mask="ignore",
        images_where=f"plate {plate!r} ({images_where})",
        masks_where=str(masks_dir),
    )
    if not pairs:
        hint = ""
        if Path(images_where).is_dir() and Path(images_where).resolve() == masks_dir.resolve():
            hint = " (the masks are in the image folder: every file there is read as an image; "
            hint += "use a glob for the images, or a folder of their own for the masks)"
        raise InputError(
            masks_dir, f"plate {plate!r}: no mask matches an image of {images_where}{hint}"
        )
    log.info(
        "plate %s: %d masks in %s match images; %d images have no mask (not annotated)",
        plate,
        len(pairs),
        masks_dir,
        len(image_files) - len(pairs),
    )
    manifest = import_mask_pairs(
        pairs,
        out_dir,
        problems,
        plate=plate,
        threshold=threshold,
        expect=mask_mode,
        where=masks_dir,
    )
    return manifest, problems.frame()


def import_mask_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    out_dir: str | os.PathLike,
    problems: Problems,
    *,
    plate: str = "",
    threshold: float = 127,
    expect: str = "auto",
    where: str | os.PathLike = "",
) -> pd.DataFrame:
    """Import ``(stem, image, mask)`` pairs as instance-label and binary masks.

    For every pair writes ``<out_dir>/<stem>_labels.tif`` (uint16 instance labels,
    uint32 above 65535 cells, zlib) and ``<out_dir>/<stem>_mask.png`` (0/255), then
    ``<out_dir>/manifest.parquet`` last, with the columns of
    :func:`brightseg.annotations.cvat.import_cvat`'s manifest (:data:`MANIFEST_COLUMNS`;
    ``source_format`` is ``"mask_<kind>"``, e.g. ``mask_binary0255``, ``mask_lossy``,
    ``mask_labels``).

    Parameters
    ----------
    pairs : sequence of (stem, image path, mask path)
        From :func:`pair_files`.
    out_dir : path-like
        Output folder (created).
    problems : Problems
        A mask whose size differs from its image's, an unreadable image or mask: raised
        or skipped and recorded.
    plate : str
        Plate name stored in the manifest.
    threshold, expect
        See :func:`read_mask`.  Instances are the labels of a label mask, else the
        8-connected components of the binary mask.
    where : path-like
        Named when nothing could be imported.

    Returns
    -------
    manifest : pandas.DataFrame
        One row per imported image, sorted by stem.

    Raises
    ------
    InputError
        Bad input under ``on_bad_input="error"``; no image imported.  Every pair is read
        and checked before anything is written, and the manifest is written last.
    """
    threshold = _check_threshold(threshold)
    if expect not in _EXPECT:
        raise InputError("expect", f"must be one of {_EXPECT}, got {expect!r}")
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.parquet"
    manifest_path.unlink(missing_ok=True)

    # Pass 1: decode and check everything before writing anything.
    jobs = []
    formats: dict[str, int] = {}
    for stem, image, mask_path in progress(pairs, desc="check masks"):
        try:
            img, _, _, info = _check_pair(image, mask_path, threshold, expect)
        except InputError as exc:
            problems.report(exc, mask_path if exc.path == str(mask_path) else image)
            continue
        formats[info["kind"]] = formats.get(info["kind"], 0) + 1
        jobs.append((stem, image, mask_path, img.shape[:2]))
    log.info(
        "%s: mask_mode %s, masks read as %s",
        where,
        expect,
        ", ".join(f"{k}: {n}" for k, n in sorted(formats.items())),
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    # Pass 2: labels + binary mask of each image (both files or neither).
    rows = []
    for stem, image, mask_path, (h, w) in progress(jobs, desc="mask import"):
        mask, labels, info = read_mask(mask_path, threshold=threshold, expect=expect)
        lab = labels if labels is not None else mask_to_labels(mask)
        lab_path = out_dir / f"{stem}_labels.tif"
        png_path = out_dir / f"{stem}_mask.png"
        try:
            write_tiff(lab, lab_path, compression="zlib")
            write_png(np.where(lab > 0, np.uint8(255), np.uint8(0)), png_path)
        except BaseException:
            lab_path.unlink(missing_ok=True)
            raise
        rows.append(
            {
                "image": str(image),
                "stem": stem,
                "plate": plate,
                "n_cells": int(lab.max()) if lab.size else 0,
                "foreground_fraction": float(np.count_nonzero(lab)) / lab.size,
                "width": int(w),
                "height": int(h),
                "source_format": f"mask_{info['kind']}",
            }
        )
    if not rows:
        raise InputError(where, "no image could be imported (see the skipped list in the log)")
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.sort_values("stem", kind="stable").reset_index(drop=True)
    manifest = manifest.astype({"n_cells": "int64", "width": "int64", "height": "int64"})
    write_parquet(manifest, manifest_path)
    log.info(
        "imported %d images (%d cells) from %s into %s; %d skipped so far",
        len(manifest),
        int(manifest["n_cells"].sum()),
        where,
        out_dir,
        len(problems.items),
    )
    return manifest


# --------------------------------------------------------------------------- patch sets


def _compile_patch_regex(regex: str) -> re.Pattern:
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise InputError("name_regex", f"invalid regular expression {regex!r}: {exc}") from None
    if "source" not in pattern.groupindex:
        raise InputError("name_regex", f"{regex!r} has no named group (?P<source>...)")
    return pattern


def load_patch_set(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    *,
    name_regex: str = DEFAULT_PATCH_REGEX,
    threshold: float = 127,
    mask_suffix: str = "",
    on_bad_input: str = "error",
) -> pd.DataFrame:
    """Index a pre-tiled patch set (images and masks cut into tiles beforehand).

    Parameters
    ----------
    images_dir, masks_dir : path-like
        Patch images and masks, matched by stem (see :func:`match_files`).
    name_regex : str
        Pattern matched (``re.search``) against each image stem, with a named
        group ``source`` (the full-size image the patch was cut from) and
        optionally ``row`` and ``col`` (its position; -1 when absent).
    threshold : float
        See :func:`read_mask`.
    mask_suffix, on_bad_input
        See :func:`import_mask_folder`; a name that does not match
        ``name_regex`` is bad input too.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PATCH_COLUMNS`: ``image_id`` (stem), ``image`` and
        ``mask`` (paths), ``source``, ``row``, ``col``, ``foreground_fraction``,
        ``width``, ``height``; sorted by ``image_id``.  Every file is decoded
        once to check it.
    """
    threshold = _check_threshold(threshold)
    pattern = _compile_patch_regex(name_regex)
    problems = Problems(on_bad_input)
    pairs = _match(Path(images_dir), Path(masks_dir), mask_suffix, IMAGE_SUFFIXES, problems)
    rows = []
    for stem, image, mask_path in progress(pairs, desc="patch set"):
        try:
            match = pattern.search(stem)
            if match is None or not match.group("source"):
                raise InputError(image, f"patch name does not match {name_regex!r}")
            _, mask, _, _ = _check_pair(image, mask_path, threshold, "auto")
        except InputError as exc:
            problems.report(exc, image)
            continue
        groups = match.groupdict()
        rows.append(
            {
                "image_id": stem,
                "image": str(image),
                "mask": str(mask_path),
                "source": match.group("source"),
                "row": int(groups["row"]) if groups.get("row") else -1,
                "col": int(groups["col"]) if groups.get("col") else -1,
                "foreground_fraction": float(mask.mean()),
                "width": int(mask.shape[1]),
                "height": int(mask.shape[0]),
            }
        )
    if not rows:
        raise InputError(images_dir, "no usable image/mask patch pair")
    df = pd.DataFrame(rows, columns=list(PATCH_COLUMNS))
    df = df.astype({"row": "int64", "col": "int64", "width": "int64", "height": "int64"})
    skipped = problems.frame()
    if len(skipped):
        log.warning("patch set %s: %d files skipped", images_dir, len(skipped))
    log.info("patch set %s: %d patches of %d sources", images_dir, len(df), df["source"].nunique())
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def _to_unit(image: np.ndarray, name: str) -> np.ndarray:
    """Float32 image in [0, 1] by the range of its dtype (floats outside [0, 1]: min-max)."""
    if image.dtype == bool:
        return image.astype(np.float32)
    if image.dtype.kind in "ui":
        info = np.iinfo(image.dtype)
        lo = 0 if info.min == 0 else info.min
        return ((image.astype(np.float64) - lo) / (info.max - lo)).astype(np.float32)
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if lo >= 0.0 and hi <= 1.0:
        return img
    log.warning("%s: float image outside [0, 1] (%g..%g) min-max scaled", name, lo, hi)
    return ((img - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(img)


def patch_offsets(df: pd.DataFrame) -> pd.DataFrame | None:
    """Pixel offsets ``y0, x0`` of each patch in its source image, from ``row``/``col``.

    The names give either grid indices (``<source>_0_0``, ``<source>_0_1``, ...: the
    values of each axis are 0, 1, ..., n - 1 and smaller than the patch size; offset =
    index x patch size) or pixel offsets (anything else, e.g. ``_0_0``, ``_0_256`` or a
    stride of 128: offset = the value).

    Parameters
    ----------
    df : pandas.DataFrame
        Table of :func:`load_patch_set` (``source``, ``row``, ``col``, ``width``, ``height``).

    Returns
    -------
    pandas.DataFrame or None
        ``df`` with ``y0``, ``x0`` and ``positions`` (``grid`` or ``pixels``, per source);
        None when a patch has no position (-1) or the patches of a source differ in size.
    """
    if df.empty or (df["row"] < 0).any() or (df["col"] < 0).any():
        return None
    parts = []
    for _, g in df.groupby("source", sort=False):
        h, w = int(g["height"].iloc[0]), int(g["width"].iloc[0])
        if (g["height"] != h).any() or (g["width"] != w).any():
            return None
        rows, cols = np.unique(g["row"]), np.unique(g["col"])
        grid = (
            np.array_equal(rows, np.arange(rows.size))
            and np.array_equal(cols, np.arange(cols.size))
            and rows.size < h
            and cols.size < w
        )
        parts.append(
            g.assign(
                y0=g["row"] * (h if grid else 1),
                x0=g["col"] * (w if grid else 1),
                positions="grid" if grid else "pixels",
            )
        )
    return pd.concat(parts).loc[df.index]


def correct_field_of_view(
    patches: Sequence[np.ndarray],
    offsets: Sequence[tuple[int, int]],
    correct: Callable[[np.ndarray], np.ndarray],
) -> list[np.ndarray]:
    """Correct pre-tiled patches as windows of their source image, not one by one.

    The patches are put back at their offsets into the source's field of view (a later
    patch overwrites an overlap; a place no patch covers is filled with the median of the
    covered pixels), the whole field is corrected, and each patch's window is cut out.
    Where the patches tile the source completely, every result equals the same window of
    ``correct(source image)`` exactly: training sees what full-image inference sees.

    Parameters
    ----------
    patches : sequence of (h, w) arrays
        The raw patches of one source, all of one size.
    offsets : sequence of (y0, x0)
        Their pixel offsets in the source.
    correct : callable
        Raw 2-D image -> corrected float image (e.g. top-hat + percentile normalisation).

    Returns
    -------
    list of (h, w) float32 arrays
    """
    h, w = np.asarray(patches[0]).shape
    height = max(int(y) for y, _ in offsets) + h
    width = max(int(x) for _, x in offsets) + w
    canvas = np.zeros((height, width), np.float32)
    covered = np.zeros((height, width), bool)
    for patch, (y, x) in zip(patches, offsets, strict=True):
        canvas[y : y + h, x : x + w] = np.asarray(patch, np.float32)
        covered[y : y + h, x : x + w] = True
    if not covered.all():
        canvas[~covered] = np.median(canvas[covered])
    corrected = np.asarray(correct(canvas), np.float32)
    return [corrected[y : y + h, x : x + w].copy() for y, x in offsets]


def patch_set_pairs(
    df: pd.DataFrame,
    *,
    threshold: float = 127,
    plate: str = "",
    modality: str = "brightfield",
    correct: Callable[[np.ndarray], np.ndarray] | None = None,
    mask_mode: str = "auto",
) -> Iterator[dict[str, Any]]:
    """Yield the patches of :func:`load_patch_set` for the augmentation stage.

    ``mask_mode`` is how each mask is read (``expect`` of :func:`read_mask`).

    Parameters
    ----------
    df : pandas.DataFrame
        Table of :func:`load_patch_set` (columns ``image_id``, ``image``,
        ``mask``, ``source``; ``plate``/``modality`` columns override the
        arguments per row).
    threshold : float
        See :func:`read_mask` (only the binary mask is used).
    plate, modality : str
        Stored with every pair.
    correct : callable, optional
        Maps a raw greyscale image to float32 in [0, 1] (e.g. a partial of
        :func:`brightseg.illumination.correct_illumination`, to match the
        plates' correction).  Where the names give every patch's position
        (:func:`patch_offsets`), it is applied to each source's reassembled field
        of view and the patches are its windows (:func:`correct_field_of_view`);
        otherwise to each patch alone, with a warning.  Default: no correction,
        scale by the dtype's range (uint8 / 255, uint16 / 65535; floats in [0, 1]
        as they are, others min-max).

    Yields
    ------
    dict
        ``image_id``, ``source``, ``row``, ``col``, ``plate``, ``modality``,
        ``image`` (float32 2-D in [0, 1]) and ``mask`` (uint8 2-D, 0/1): the
        fields :func:`brightseg.augment.build_training_store` takes.  With
        patches the size of its ``patch_size`` each pair is one tile, so no
        further tiling happens.
    """
    missing = [c for c in ("image_id", "image", "mask", "source") if c not in df.columns]
    if missing:
        raise InputError(None, f"patch table lacks columns {missing} (has {list(df.columns)})")
    placed = None
    if correct is not None and {"row", "col", "width", "height"} <= set(df.columns):
        placed = patch_offsets(df)
    if placed is not None:
        # whole fields of view, source after source (see correct_field_of_view)
        df = placed.sort_values(["source", "image_id"], kind="stable")
        log.info(
            "patch set %s: corrected as fields of view (positions from the names: %s)",
            plate,
            ", ".join(sorted(set(df["positions"]))),
        )
    elif correct is not None:
        log.warning(
            "patch set %s: the patch names give no positions (row/col groups of name_regex), "
            "so each patch is corrected on its own: its top-hat and normalisation differ "
            "from full-image inference",
            plate,
        )
    fov: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}
    current = None
    kinds: dict[str, int] = {}
    for i, row in enumerate(df.to_dict("records")):
        if placed is not None and row["source"] != current:
            current = row["source"]
            group = df[df["source"] == current]
            raw = {
                i: read_image(path, grey=True)
                for i, path in zip(group["image_id"], group["image"], strict=True)
            }
            offsets = list(zip(group["y0"], group["x0"], strict=True))
            fov = dict(
                zip(raw, correct_field_of_view(list(raw.values()), offsets, correct), strict=True)
            )
        # each patch is decoded once (the field of view of its source already read it)
        image = (
            raw.pop(row["image_id"]) if placed is not None else read_image(row["image"], grey=True)
        )
        mask, _, info = read_mask(row["mask"], threshold=threshold, expect=mask_mode)
        kinds[info["kind"]] = kinds.get(info["kind"], 0) + 1
        if i + 1 == len(df):  # the decision per set, with counts (before the last yield)
            log.info(
                "patch set %s: mask_mode %s, masks read as %s",
                plate,
                mask_mode,
                ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())),
            )
        if mask.shape != image.shape:
            raise InputError(
                row["mask"], f"mask shape {mask.shape} differs from image shape {image.shape}"
            )
        if placed is not None:
            unit = np.clip(fov[row["image_id"]], 0.0, 1.0)
        elif correct is None:
            unit = _to_unit(image, row["image"])
        else:
            unit = np.clip(np.asarray(correct(image), dtype=np.float32), 0.0, 1.0)
        yield {
            "image_id": str(row["image_id"]),
            "source": str(row["source"]),
            "row": int(row.get("row", -1)),
            "col": int(row.get("col", -1)),
            "plate": str(row.get("plate", plate)),
            "modality": str(row.get("modality", modality)),
            "image": unit,
            "mask": mask,
        }


def grouped_patch_split(
    df: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/validation split of a patch set, grouped by source image.

    Parameters
    ----------
    df : pandas.DataFrame
        Table of :func:`load_patch_set` (needs ``source``; a ``modality``
        column, if present, stratifies).
    val_fraction, seed
        See :func:`brightseg.split.grouped_split`.

    Returns
    -------
    split_df : pandas.DataFrame
        A copy of ``df`` with a ``split`` column (``"train"``/``"val"``); all
        patches of one source share a side.
    summary : pandas.DataFrame
        :func:`brightseg.split.split_summary` grouped by ``source``: columns
        ``split``, ``modality``, ``groups`` (source images), ``patches``,
        ``samples``.
    """

    strata = "modality" if "modality" in df.columns else None
    out = df.copy()
    out["split"] = grouped_split(
        out, group_col="source", strata_col=strata, val_fraction=val_fraction, seed=seed
    ).to_numpy()
    summary = split_summary(out, group_col="source")
    log.info("patch split:\n%s", summary.to_string(index=False))
    return out, summary


# --------------------------------------------------------------------------- patch-set config


def _check_name(name: Any, where: str) -> str:
    name = str(name or "")
    if not re.fullmatch(NAME_PATTERN, name):
        raise InputError(where, f"name {name!r} must match {NAME_PATTERN}")
    return name


def resolve_patch_sets(
    specs: Sequence[Mapping[str, Any]] | None,
    *,
    illumination: Mapping[str, Any] | None = None,
    mask_threshold: float = 127,
    on_bad_input: str = "error",
    check: bool = True,
    mask_mode: str = "auto",
) -> list[dict[str, Any]]:
    """Check ``training.patch_sets`` and fill in the defaults.

    Parameters
    ----------
    specs : list of mapping
        Each ``{images, masks}`` with optional ``name`` (default ``patches<i>``),
        ``name_regex`` (named group ``source``; default
        :data:`brightseg.annotations.maskfolder.DEFAULT_PATCH_REGEX`, ``<source>_<row>_<col>``),
        ``modality`` (``brightfield``), ``plate`` (default the name), ``mask_suffix``,
        ``pixel_size_um`` (0.65) and ``correct_illumination`` (true: the plates' top-hat
        correction is applied to each raw patch; false: patches are scaled by their dtype).
        Already resolved specs pass through unchanged (their ``illumination``,
        ``mask_threshold`` and ``on_bad_input`` are kept).
    illumination : mapping, optional
        The ``illumination`` config, stored in each set whose ``correct_illumination`` is
        true.
    mask_threshold : float
        Threshold of lossy masks (``annotations.mask_threshold``).
    on_bad_input : {"error", "skip"}
        What a bad patch does (see :func:`brightseg.annotations.maskfolder.load_patch_set`).
    check : bool
        Check that the folders exist.

    Returns
    -------
    list of dict
        Complete specs; ``illumination`` is the config to apply to each patch, or None.
    """

    out: list[dict[str, Any]] = []
    for i, spec in enumerate(specs or []):
        where = f"training.patch_sets[{i}]"
        if not isinstance(spec, Mapping):
            raise InputError(where, f"must be a mapping, got {spec!r}")
        name = _check_name(spec.get("name") or f"patches{i + 1}", f"{where}.name")
        regex = str(spec.get("name_regex") or DEFAULT_PATCH_REGEX)
        try:
            if "source" not in re.compile(regex).groupindex:
                raise InputError(f"{where}.name_regex", f"{regex!r} has no (?P<source>...) group")
        except re.error as exc:
            raise InputError(f"{where}.name_regex", f"invalid regex {regex!r}: {exc}") from None
        modality = str(spec.get("modality") or "brightfield")
        if modality not in MODALITIES:
            raise InputError(f"{where}.modality", f"must be one of {MODALITIES}, got {modality!r}")
        resolved = {
            "name": name,
            "images": str(spec.get("images") or ""),
            "masks": str(spec.get("masks") or ""),
            "name_regex": regex,
            "modality": modality,
            "plate": str(spec.get("plate") or name),
            "mask_suffix": str(spec.get("mask_suffix") or ""),
            "pixel_size_um": float(spec.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM),
            "illumination": (
                spec.get("illumination", illumination)
                if spec.get("correct_illumination", True)
                else None
            ),
            "mask_threshold": float(spec.get("mask_threshold", mask_threshold)),
            "mask_mode": str(spec.get("mask_mode") or mask_mode),
            "on_bad_input": str(spec.get("on_bad_input", on_bad_input)),
        }
        if resolved["illumination"] is not None:
            resolved["illumination"] = dict(resolved["illumination"])
        for key in ("images", "masks"):
            if not resolved[key]:
                raise InputError(f"{where}.{key}", "missing folder")
            if check and not Path(resolved[key]).is_dir():
                raise InputError(resolved[key], f"{where}.{key}: folder does not exist")
        out.append(resolved)
    names = [s["name"] for s in out]
    if len(set(names)) != len(names):
        raise InputError("training.patch_sets", f"patch set names must be unique: {names}")
    return out


def _corrector(illumination: Mapping[str, Any] | None, pixel_size_um: float):
    if not illumination:
        return None
    radius = radius_to_px(illumination["radius"], illumination.get("unit", "px"), pixel_size_um)

    def correct(image: np.ndarray) -> np.ndarray:
        return correct_illumination(
            image.astype(np.float32),
            radius,
            mode=illumination.get("mode", "white"),
            method=illumination.get("method", "fast"),
            percentiles=tuple(illumination.get("percentiles", (1.0, 99.8))),
            uncertain_mode=illumination.get("uncertain_mode", "black"),
        )

    return correct


def patch_set_training_pairs(
    patch_sets: Sequence[Mapping[str, Any]], *, groups: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the patches of every patch set in the form ``build_training_store`` takes.

    Parameters
    ----------
    patch_sets : list of mapping
        Output of :func:`resolve_patch_sets` (its ``mask_threshold`` and ``on_bad_input``
        apply, see :func:`brightseg.annotations.maskfolder.load_patch_set`).
    groups : dict, optional
        Filled with ``image_id -> source`` for :func:`group_by_source`.

    Yields
    ------
    dict
        ``image_id`` (``<set name>:<patch stem>``, unique across sets and plates),
        ``plate``, ``modality``, ``image`` (float32 in [0, 1]) and ``mask`` (uint8 0/1).
    """
    for spec in patch_sets:
        threshold = float(spec.get("mask_threshold", 127))
        df = load_patch_set(
            spec["images"],
            spec["masks"],
            name_regex=spec["name_regex"],
            threshold=threshold,
            mask_suffix=spec.get("mask_suffix", ""),
            on_bad_input=str(spec.get("on_bad_input", "error")),
        )
        log.info(
            "patch set %s: %d patches of %d source images (%s)",
            spec["name"],
            len(df),
            df["source"].nunique(),
            "illumination-corrected" if spec.get("illumination") else "scaled by dtype",
        )
        df = df.assign(image_id=[f"{spec['name']}:{s}" for s in df["image_id"]])
        correct = _corrector(spec.get("illumination"), float(spec.get("pixel_size_um", 0.65)))
        for pair in patch_set_pairs(
            df,
            threshold=threshold,
            plate=spec["plate"],
            modality=spec["modality"],
            correct=correct,
            mask_mode=spec.get("mask_mode", "auto"),
        ):
            if groups is not None:
                groups[pair["image_id"]] = pair["source"]
            yield {**pair, "pixel_size_um": float(spec.get("pixel_size_um", 0.65))}


def group_by_source(manifest: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Set ``source_image`` of pre-tiled patches to the image they were cut from.

    :func:`brightseg.augment.build_training_store` records each pair's ``image_id`` as
    ``source_image``, the column the grouped split groups by; for a patch that is the
    patch itself.  Here it becomes the patch's ``source`` (the ``name_regex`` group), so
    all patches of one source image (and their variants) land on one side of the split.
    A source named like a plate image joins that image's group.
    """
    out = manifest.copy()
    src = out["source_image"].astype(str)
    out["source_image"] = [groups.get(s, s) for s in src]
    return out
