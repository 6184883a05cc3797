"""Import CVAT annotation exports as instance-label and binary masks.

Two export formats are read, detected by content rather than extension:

* **CVAT for images 1.1** (XML, task or project export).  ``<polygon>`` and
  ``<mask>`` elements become cells; every other element (``<box>``,
  ``<points>``, ``<polyline>``, ``<skeleton>``, ``<tag>``, ``<ellipse>``,
  ``<cuboid>``) is skipped with one counted warning per kind and file, and
  ``<track>`` elements (video exports) are skipped with a warning.
* **COCO 1.0** (JSON instances file).  Polygons, uncompressed RLE and
  compressed RLE segmentations become cells; annotations without a
  segmentation (box only) are skipped with a counted warning.

Either may also be given as the ``.zip`` that CVAT downloads.

Conventions, as in CVAT's own code:

* An XML ``<mask rle="r0, r1, ..." left top width height>`` holds run lengths
  that alternate background/foreground, start with background, run
  row-major inside the ``width x height`` box and sum to ``width * height``.
* Polygons (XML and COCO alike) are rasterised with pycocotools
  (``frPyObjects`` + ``decode``), so both formats give identical pixels.
  COCO RLE is ``[h, w]`` column-major and is decoded with pycocotools too.
* Shapes are painted in increasing ``z_order``; ties keep document order, so a
  later shape is painted over an earlier one.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from ..errors import InputError, Problems
from ..io import image_header, load_json, write_parquet, write_png, write_tiff
from ..limits import Limits, check_pixels, get_limits
from ..progress import progress

log = logging.getLogger(__name__)

__all__ = [
    "Shape",
    "ImageAnnotations",
    "load_annotations",
    "rasterize",
    "decode_cvat_rle",
    "validate",
    "import_cvat",
    "MANIFEST_COLUMNS",
]

#: Columns of ``manifest.parquet`` written by :func:`import_cvat`.
MANIFEST_COLUMNS = (
    "image",
    "stem",
    "plate",
    "n_cells",
    "foreground_fraction",
    "width",
    "height",
    "source_format",
)

FORMAT_XML = "cvat_xml"
FORMAT_COCO = "coco_json"

#: XML shape elements that carry no cell outline and are skipped.
_SKIPPED_XML_KINDS = ("box", "points", "polyline", "skeleton", "tag", "ellipse", "cuboid")
_DEGENERATE = "degenerate polygon"
_SKIP_REASONS = {
    _DEGENERATE: "fewer than 3 points",
    "box": "boxes are not cell outlines",
}


@dataclass
class Shape:
    """One cell outline of an image.

    Attributes
    ----------
    kind : {"polygon", "mask", "rle"}
        ``polygon``: ``data`` is a list of rings, each a flat ``[x0, y0, x1, y1, ...]``
        list of floats in pixel coordinates (CVAT XML has one ring, COCO may
        have several, which are merged).  ``mask``: a CVAT XML mask, ``data`` is
        ``{"rle": [int, ...], "left", "top", "width", "height"}``.  ``rle``: a
        COCO RLE, ``data`` is ``{"size": [h, w], "counts": list[int] | str}``.
    label : str
        Label (CVAT) or category (COCO) name.
    z_order : int
        Painting order; higher is painted on top.
    data : object
        Geometry, see ``kind``.
    ident : str
        Human-readable description used in error messages.
    """

    kind: str
    label: str
    z_order: int
    data: Any
    ident: str = ""


@dataclass
class ImageAnnotations:
    """All imported shapes of one image of an export.

    Attributes
    ----------
    name : str
        Image file name as written in the export (may contain sub-directories).
    width, height : int
        Image size declared by the export.
    shapes : list of Shape
        Kept shapes (polygons and masks whose label passed the filter), in
        document order.
    skipped : collections.Counter
        Number of shapes skipped, by kind (``"box"``, ``"points"``, ...,
        ``"degenerate polygon"``).
    excluded_labels : collections.Counter
        Number of polygon/mask shapes dropped by the label filter, by label.
    clipped : int
        Number of kept shapes that extend outside the image (they are clipped).
    source : str
        The export file (for error messages).
    source_format : {"cvat_xml", "coco_json"}
        Export format.
    subset : str
        CVAT subset (project exports) or COCO subset, ``""`` if none.
    """

    name: str
    width: int
    height: int
    shapes: list[Shape] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    excluded_labels: Counter = field(default_factory=Counter)
    clipped: int = 0
    source: str = ""
    source_format: str = ""
    subset: str = ""


# --------------------------------------------------------------------------- decoding


def _parse_runs(rle: str | Sequence[int] | np.ndarray) -> np.ndarray:
    """Run lengths from a CVAT ``rle`` string (``"3, 5, 7"``) or a sequence."""
    if isinstance(rle, str):
        parts = [p.strip() for p in rle.split(",")]
        if parts == [""]:
            parts = []
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(None, f"mask rle is not a list of integers: {rle[:60]!r}") from None
    else:
        values = [float(v) for v in rle]
    runs = np.asarray(values, dtype=np.float64)
    if runs.size and (
        not np.all(np.isfinite(runs)) or np.any(runs < 0) or np.any(runs != np.round(runs))
    ):
        raise InputError(None, "mask rle contains negative or non-integer run lengths")
    if runs.size and (runs.max() > _MAX_RUN or runs.sum() > _MAX_RUN):
        raise InputError(None, f"mask rle run lengths are too large (sum over {_MAX_RUN:.3g})")
    return runs.astype(np.int64)


#: Largest sum of CVAT mask runs (exact in float64, no int64 overflow in a cumsum).
_MAX_RUN = 2**53


def _check_box(runs: np.ndarray | Sequence[int], width: int, height: int) -> None:
    """Check that CVAT runs fill their ``width x height`` box exactly."""
    total = int(np.sum(np.asarray(runs, dtype=np.int64))) if len(runs) else 0
    if width <= 0 or height <= 0:
        raise InputError(None, f"mask box has a non-positive size {width}x{height}")
    if total != width * height:
        raise InputError(
            None,
            f"mask rle runs sum to {total}, expected width*height = {width}*{height} "
            f"= {width * height}",
        )


def _decode_box_clipped(
    runs: np.ndarray,
    left: int,
    top: int,
    width: int,
    height: int,
    image_shape: tuple[int, int],
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode the part of a CVAT mask box that lies inside the image.

    Runs alternate background/foreground (background first) and fill the
    ``width x height`` box row by row.  Only the pixels inside the image are decoded
    (in bounded row chunks), so memory is bounded by the image whatever box size the
    export declares.  Returns the clipped box and its (row, column) offset.
    """
    _check_box(runs, width, height)
    h, w = image_shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, h), min(left + width, w)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    ends = np.cumsum(np.asarray(runs, dtype=np.int64))
    out = np.empty((y1 - y0, x1 - x0), dtype=bool)
    cols = np.arange(x0 - left, x1 - left, dtype=np.int64)
    step = max(1, (1 << 20) // cols.size)
    for r0 in range(y0, y1, step):
        r1 = min(y1, r0 + step)
        rows = np.arange(r0 - top, r1 - top, dtype=np.int64)
        idx = rows[:, None] * int(width) + cols[None, :]
        out[r0 - y0 : r1 - y0] = np.searchsorted(ends, idx, side="right") % 2 == 1
    return out, (y0, x0)


def decode_cvat_rle(
    rle: str | list[int],
    left: int,
    top: int,
    width: int,
    height: int,
    image_shape: tuple[int, int],
) -> np.ndarray:
    """Decode a CVAT XML ``<mask>`` into a full-image boolean mask.

    Parameters
    ----------
    rle : str or list of int
        Run lengths, as the ``rle`` attribute (``"3, 5, 7, ..."``) or a list.
        Runs alternate background/foreground, starting with background, and
        fill the box row by row.
    left, top : int
        Position of the box's top-left pixel in the image.
    width, height : int
        Box size (CVAT's API stores ``right - left + 1`` and ``bottom - top + 1``).
    image_shape : tuple of int
        ``(height, width)`` of the image.  Parts of the box outside it are clipped.

    Returns
    -------
    ndarray of bool
        Mask of shape ``image_shape``.

    Raises
    ------
    InputError
        Malformed runs, or runs that do not sum to ``width * height``.
    """
    h, w = (int(v) for v in image_shape[:2])
    out = np.zeros((h, w), dtype=bool)
    part, (y0, x0) = _decode_box_clipped(
        _parse_runs(rle), int(left), int(top), int(width), int(height), (h, w)
    )
    out[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] = part
    return out


def _coco_string_total(counts: str | bytes) -> int:
    """Sum of the run lengths of a compressed COCO RLE string.

    pycocotools decodes the string but does not check that the runs fill the
    image (a short RLE leaves memory uninitialised), so the total is checked
    first.
    """
    return sum(coco_string_runs(counts))


def coco_string_runs(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``).

    Raises
    ------
    InputError
        A string that ends inside a value, has a character outside the alphabet or
        decodes to a negative run.
    """
    s = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise InputError(None, "compressed RLE string ends in the middle of a value")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise InputError(None, "compressed RLE string has an invalid character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise InputError(None, "compressed RLE string decodes to a negative run length")
        runs.append(x)
    return runs


def _decode_cropped(rle: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a pycocotools RLE, cropped to its bounding box, with its (row, col) offset."""

    x, y, bw, bh = (int(v) for v in mask_utils.toBbox(rle))
    if bw == 0 or bh == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    with warnings.catch_warnings():
        # pycocotools 2.0.x under numpy 2 warns about __array__(copy=...) on every decode.
        warnings.simplefilter("ignore", DeprecationWarning)
        full = mask_utils.decode(rle)
    return full[y : y + bh, x : x + bw].view(bool), (y, x)


def _check_finite_rings(rings: Sequence[Sequence[float]]) -> None:
    """Refuse polygon rings with a NaN or infinite coordinate."""
    for k, ring in enumerate(rings):
        xy = np.asarray(ring, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(xy))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                None,
                f"polygon{f' ring {k}' if len(rings) > 1 else ''} has a non-finite "
                f"{'xy'[i % 2]} coordinate ({xy[i]}) at vertex {i // 2}: fix or delete "
                "the shape in CVAT",
            )


def _clip_half(pts: np.ndarray, axis: int, bound: float, keep_ge: bool) -> np.ndarray:
    """Sutherland-Hodgman: clip a closed polygon ``(N, 2)`` to one half-plane."""
    if len(pts) == 0:
        return pts
    q = np.roll(pts, -1, axis=0)
    a, b = pts[:, axis], q[:, axis]
    ina = a >= bound if keep_ge else a <= bound
    inb = b >= bound if keep_ge else b <= bound
    cross = ina != inb
    # Halved terms: no overflow even for coordinates near the float64 maximum.
    den = b / 2 - a / 2
    t = np.divide(bound / 2 - a / 2, den, out=np.zeros_like(a), where=cross & (den != 0))
    t = np.clip(t, 0.0, 1.0)[:, None]
    inter = pts * (1 - t) + q * t
    inter[:, axis] = bound
    slots = np.stack([inter, q], axis=1)
    return slots[np.stack([cross, inb], axis=1)]


def sanitize_polygon(rings: Sequence[Sequence[float]], h: int, w: int) -> list[list[float]]:
    """The polygon rings to hand to pycocotools: finite, within a margin of the image.

    One sanitiser for CVAT XML points and COCO polygons.  pycocotools allocates memory
    in proportion to a polygon's perimeter and crashes on non-finite or huge
    coordinates, so a ring reaching beyond ``[-w, 2w] x [-h, 2h]`` is clipped exactly
    to that box (Sutherland-Hodgman; the pixels inside the image are unchanged), and a
    ring that keeps fewer than 3 vertices is dropped.  Rings inside the box are
    returned unchanged.

    Raises
    ------
    InputError
        A NaN or infinite coordinate (without a path; the caller adds it).
    """
    _check_finite_rings(rings)
    out = []
    for ring in rings:
        xy = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        if x.min() >= -w and x.max() <= 2 * w and y.min() >= -h and y.max() <= 2 * h:
            out.append([float(v) for v in ring])
            continue
        for axis, bound, keep_ge in (
            (0, -float(w), True),
            (0, 2.0 * w, False),
            (1, -float(h), True),
            (1, 2.0 * h, False),
        ):
            xy = _clip_half(xy, axis, bound, keep_ge)
        if len(xy) >= 3:
            out.append(xy.ravel().tolist())
    return out


def _polygon_rle(rings: list[list[float]], h: int, w: int) -> dict | None:
    """pycocotools RLE of polygon rings (merged) at image size ``(h, w)``; None if empty."""

    rings = sanitize_polygon(rings, h, w)
    if not rings:
        return None
    rles = mask_utils.frPyObjects(rings, h, w)
    return mask_utils.merge(rles) if len(rles) > 1 else rles[0]


def _check_shape(shape: Shape, h: int, w: int) -> None:
    """Cheap validation of a shape's geometry (raises InputError without a path)."""
    if shape.kind == "mask":
        d = shape.data
        _check_box(d["rle"], d["width"], d["height"])
    elif shape.kind == "polygon":
        _check_finite_rings(shape.data)
    elif shape.kind == "rle":
        size = [int(v) for v in shape.data["size"]]
        if size != [h, w]:
            raise InputError(
                None, f"RLE size [h, w] = {size} differs from the image size [{h}, {w}]"
            )
        counts = shape.data["counts"]
        total = sum(counts) if isinstance(counts, list) else _coco_string_total(counts)
        if total != h * w:
            raise InputError(None, f"RLE runs sum to {total}, expected h*w = {h}*{w} = {h * w}")


def _shape_mask(shape: Shape, h: int, w: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Boolean mask of a shape, cropped, with its (row, col) offset in the image."""
    if shape.kind == "mask":
        d = shape.data
        runs = np.asarray(d["rle"], dtype=np.int64)
        return _decode_box_clipped(runs, d["left"], d["top"], d["width"], d["height"], (h, w))
    if shape.kind == "polygon":
        rle = _polygon_rle(shape.data, h, w)
        if rle is None:
            return np.zeros((0, 0), dtype=bool), (0, 0)
        return _decode_cropped(rle)
    if shape.kind == "rle":
        from pycocotools import mask as mask_utils

        counts = shape.data["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        else:
            raw = counts if isinstance(counts, bytes) else counts.encode("ascii")
            rle = {"size": [h, w], "counts": raw}
        return _decode_cropped(rle)
    raise InputError(None, f"unknown shape kind {shape.kind!r}")


def _context_error(ann: ImageAnnotations, shape: Shape, exc: Exception) -> InputError:
    msg = exc.message if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
    return InputError(ann.source or None, f"image {ann.name!r}, {shape.ident}: {msg}")


def validate(
    ann: ImageAnnotations, shape: tuple[int, int] | None = None, limits: Limits | None = None
) -> None:
    """Check every shape's geometry without rasterising.

    Raises
    ------
    InputError
        Naming the export, the image and the shape: RLE runs that do not fill
        their box/image, an RLE whose size differs from the image, a polygon with a
        non-finite coordinate; an image size over ``limits.max_image_pixels``.
    """
    h, w = shape if shape is not None else (ann.height, ann.width)
    check_pixels(h, w, f"image {ann.name!r}", ann.source or None, limits)
    for s in ann.shapes:
        try:
            _check_shape(s, h, w)
        except (InputError, ValueError, TypeError) as exc:
            raise _context_error(ann, s, exc) from None


def rasterize(
    ann: ImageAnnotations, shape: tuple[int, int] | None = None, limits: Limits | None = None
) -> np.ndarray:
    """Paint an image's shapes into an instance-label image.

    Parameters
    ----------
    ann : ImageAnnotations
        Shapes of one image.
    shape : tuple of int, optional
        ``(height, width)`` of the output; default the size in the export.

    Returns
    -------
    ndarray
        Labels (0 = background, cells numbered 1..n consecutively in document
        order of the shapes that remain visible), ``uint16``, or ``uint32`` when
        there are more than 65535 cells.  Shapes are painted in increasing
        ``z_order``, ties in document order (later on top); a shape completely
        hidden by others does not get a number.

    Raises
    ------
    InputError
        A shape that cannot be decoded (names the export, image and shape).
    """
    h, w = (int(v) for v in (shape if shape is not None else (ann.height, ann.width)))
    validate(ann, (h, w), limits)
    n = len(ann.shapes)
    work = np.zeros((h, w), dtype=np.uint16 if n <= 65535 else np.uint32)
    order = sorted(range(n), key=lambda i: (ann.shapes[i].z_order, i))
    for i in order:
        s = ann.shapes[i]
        try:
            part, (y0, x0) = _shape_mask(s, h, w)
        except (InputError, ValueError, TypeError) as exc:
            raise _context_error(ann, s, exc) from None
        if part.size:
            work[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]][part] = i + 1
    present = np.flatnonzero(np.bincount(work.ravel(), minlength=n + 1)[1:]) + 1
    if present.size < n:
        log.debug("%s: %d shapes are empty or hidden", ann.name, n - present.size)
        lut = np.zeros(n + 1, dtype=np.uint32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.uint32)
        work = lut[work]
    dtype = np.uint16 if present.size <= 65535 else np.uint32
    return work.astype(dtype, copy=False)


# --------------------------------------------------------------------------- parsing


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(None, f"{what} are not numbers: {text[:60]!r}") from None


def _int_attr(el: ET.Element, name: str, src: str, where: str, default: int | None = None) -> int:
    raw = el.get(name)
    if raw is None:
        if default is not None:
            return default
        raise InputError(src, f"{where}: missing attribute {name!r}")
    try:
        val = float(raw)
    except ValueError:
        raise InputError(src, f"{where}: attribute {name}={raw!r} is not a number") from None
    if not np.isfinite(val) or val != round(val):
        raise InputError(src, f"{where}: attribute {name}={raw!r} is not an integer")
    return int(val)


def _outside(flat: Sequence[float], w: int, h: int) -> bool:
    xs, ys = flat[0::2], flat[1::2]
    return min(xs) < 0 or min(ys) < 0 or max(xs) > w or max(ys) > h


def _unique_keys(entries: list[tuple[str, str, str]]) -> list[str]:
    """Keys for (name, subset, id) entries: the name, disambiguated on repeats."""
    counts = Counter(name for name, _, _ in entries)
    keys: list[str] = []
    used: set[str] = set()
    for name, subset, ident in entries:
        key = name
        if counts[name] > 1:
            key = f"{subset}/{name}" if subset else name
            if key in used or key == name:
                key = f"{key}#{ident}"
            n = 2
            base = key
            while key in used:
                key = f"{base}.{n}"
                n += 1
        used.add(key)
        keys.append(key)
    return keys


def _parse_cvat_xml(
    data: bytes, src: str, labels: set[str] | None, lim: Limits
) -> tuple[dict[str, ImageAnnotations], Counter]:
    # Tolerate a byte-order mark and blank lines before the XML declaration.
    body = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    skipped_lines = data[: len(data) - len(body)].count(b"\n")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        line, col = exc.position
        line += skipped_lines
        raise InputError(
            src, f"XML is not well-formed at line {line}, column {col + 1}: {exc}"
        ) from None
    if root.tag != "annotations":
        raise InputError(
            src,
            f"XML root element is <{root.tag}>, expected <annotations> "
            "(export the task as 'CVAT for images 1.1')",
        )
    version = (root.findtext("version") or "").strip()
    if version and version != "1.1":
        log.warning("%s: CVAT XML version %s, expected 1.1; reading it anyway", src, version)
    other = Counter()
    n_tracks = len(root.findall("track"))
    if n_tracks:
        other["track"] = n_tracks
    entries, anns = [], []
    n_shapes = sum(len(img) for img in root.iter("image"))
    if n_shapes > lim.max_annotations:
        raise InputError(
            src,
            f"export has {n_shapes:,} shapes, over the limit of {lim.max_annotations:,} "
            "(limits.max_annotations); split the task or raise the limit",
        )
    for k, img in enumerate(root.findall("image")):
        name = img.get("name")
        where = f"<image> #{k}" + (f" {name!r}" if name else "")
        if not name:
            raise InputError(src, f"{where}: missing attribute 'name'")
        width = _int_attr(img, "width", src, where)
        height = _int_attr(img, "height", src, where)
        if width <= 0 or height <= 0:
            raise InputError(src, f"{where}: image size {width}x{height} is not positive")
        ann = ImageAnnotations(
            name=name,
            width=width,
            height=height,
            source=src,
            source_format=FORMAT_XML,
            subset=img.get("subset", ""),
        )
        for j, el in enumerate(img):
            kind = el.tag
            if kind not in ("polygon", "mask"):
                ann.skipped[kind] += 1
                continue
            label = el.get("label", "")
            z = _int_attr(el, "z_order", src, f"{where} <{kind}> #{j}", default=0)
            if labels is not None and label not in labels:
                ann.excluded_labels[label] += 1
                continue
            if kind == "polygon":
                try:
                    flat = _floats(el.get("points", ""), "polygon points")
                except InputError as exc:
                    raise InputError(src, f"{where} <polygon> #{j}: {exc.message}") from None
                if len(flat) % 2:
                    raise InputError(
                        src, f"{where} <polygon> #{j}: odd number of coordinates ({len(flat)})"
                    )
                if len(flat) < 6:
                    ann.skipped[_DEGENERATE] += 1
                    continue
                if _outside(flat, width, height):
                    ann.clipped += 1
                shape = Shape("polygon", label, z, [flat], f"<polygon> #{j} (label {label!r})")
            else:
                mwhere = f"{where} <mask> #{j}"
                left = _int_attr(el, "left", src, mwhere)
                top = _int_attr(el, "top", src, mwhere)
                bw = _int_attr(el, "width", src, mwhere)
                bh = _int_attr(el, "height", src, mwhere)
                try:
                    runs = _parse_runs(el.get("rle", ""))
                except InputError as exc:
                    raise InputError(src, f"{mwhere}: {exc.message}") from None
                if left < 0 or top < 0 or left + bw > width or top + bh > height:
                    ann.clipped += 1
                shape = Shape(
                    "mask",
                    label,
                    z,
                    {"rle": runs.tolist(), "left": left, "top": top, "width": bw, "height": bh},
                    f"<mask> #{j} (label {label!r}, box left={left} top={top} "
                    f"width={bw} height={bh})",
                )
            ann.shapes.append(shape)
        entries.append((name, ann.subset, img.get("id", str(k))))
        anns.append(ann)
    return dict(zip(_unique_keys(entries), anns, strict=True)), other


def _is_coco_id(value: Any) -> bool:
    """A COCO id must be a (hashable) integer or string; bools and floats are not ids."""
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _coco_id(value: Any, src: str, where: str) -> int | str:
    if not _is_coco_id(value):
        raise InputError(src, f"{where} must be an integer or a string, got {_short(value)}")
    return value


def _parse_coco(
    doc: dict,
    src: str,
    labels: set[str] | None,
    problems: Problems,
    subset: str = "",
    lim: Limits | None = None,
) -> tuple[dict[str, ImageAnnotations], Counter]:
    lim = get_limits(lim)
    images, annotations = doc.get("images"), doc.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise InputError(src, "COCO file needs 'images' and 'annotations' lists")
    if len(annotations) > lim.max_annotations:
        raise InputError(
            src,
            f"export has {len(annotations):,} annotations, over the limit of "
            f"{lim.max_annotations:,} (limits.max_annotations); split it or raise the limit",
        )
    categories = doc.get("categories") or []
    if not isinstance(categories, list):
        raise InputError(src, "COCO 'categories' is not a list")
    cats: dict[Any, str] = {}
    for k, c in enumerate(categories):
        if isinstance(c, dict) and "id" in c:
            cid = _coco_id(c["id"], src, f"categories[{k}].id")
            cats[cid] = str(c.get("name", cid))
    by_id: dict[Any, ImageAnnotations] = {}
    entries = []
    for k, im in enumerate(images):
        where = f"images[{k}]"
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            raise InputError(src, f"{where}: needs 'id' and 'file_name'")
        if not isinstance(im["file_name"], str):
            raise InputError(src, f"{where}: file_name must be a string, got {im['file_name']!r}")
        im_id = _coco_id(im["id"], src, f"{where}.id ({im['file_name']!r})")
        try:
            width, height = int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InputError(
                src, f"{where} ({im['file_name']!r}): bad or missing width/height"
            ) from None
        if width <= 0 or height <= 0:
            raise InputError(src, f"{where}: image size {width}x{height} is not positive")
        if im_id in by_id:
            raise InputError(src, f"{where}: duplicate image id {im['id']!r}")
        by_id[im_id] = ImageAnnotations(
            name=str(im["file_name"]),
            width=width,
            height=height,
            source=src,
            source_format=FORMAT_COCO,
            subset=subset,
        )
        entries.append((str(im["file_name"]), subset, str(im["id"])))
    for k, a in enumerate(annotations):
        if not isinstance(a, dict):
            raise InputError(src, f"annotations[{k}] is not an object")
        aid = a.get("id", f"#{k}")
        if not _is_coco_id(aid):
            aid = f"#{k}"
        image_id = a.get("image_id")
        if not _is_coco_id(image_id):
            problems.report(
                InputError(
                    src,
                    f"annotation id {aid}: image_id must be an integer or a string, got "
                    f"{_short(image_id)}",
                ),
                f"{src} annotation id {aid}",
            )
            continue
        ann = by_id.get(image_id)
        if ann is None:
            problems.report(
                InputError(
                    src,
                    f"annotation id {aid} refers to image id {a.get('image_id')!r}, "
                    "which is not in 'images'",
                ),
                f"{src} annotation id {aid}",
            )
            continue
        cid = a.get("category_id")
        if not _is_coco_id(cid):
            problems.report(
                InputError(
                    src,
                    f"annotation id {aid}: category_id must be an integer or a string, got "
                    f"{_short(cid)}",
                ),
                f"{src} annotation id {aid}",
            )
            continue
        if cid not in cats:
            raise InputError(src, f"annotation id {aid}: unknown category_id {cid!r}")
        label = cats[cid]
        seg = a.get("segmentation")
        if not seg:
            ann.skipped["box"] += 1
            continue
        if labels is not None and label not in labels:
            ann.excluded_labels[label] += 1
            continue
        ident = f"annotation id {aid} (category {label!r})"
        if isinstance(seg, dict):
            counts, size = seg.get("counts"), seg.get("size")
            if not isinstance(size, list) or len(size) != 2 or not isinstance(counts, (list, str)):
                raise InputError(src, f"{ident}: RLE needs 'size' [h, w] and 'counts'")
            if isinstance(counts, list) and not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
            ):
                raise InputError(src, f"{ident}: RLE counts must be non-negative integers")
            shape = Shape("rle", label, 0, {"size": list(size), "counts": counts}, ident)
        elif isinstance(seg, list):
            rings = []
            for ring in seg:
                if not isinstance(ring, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in ring
                ):
                    raise InputError(src, f"{ident}: polygon is not a list of numbers")
                if len(ring) % 2:
                    raise InputError(src, f"{ident}: odd number of coordinates ({len(ring)})")
                if len(ring) >= 6:
                    rings.append([float(v) for v in ring])
            if not rings:
                ann.skipped[_DEGENERATE] += 1
                continue
            if any(_outside(r, ann.width, ann.height) for r in rings):
                ann.clipped += 1
            shape = Shape("polygon", label, 0, rings, ident)
        else:
            raise InputError(src, f"{ident}: segmentation is neither a polygon list nor RLE")
        ann.shapes.append(shape)
    keys = _unique_keys(entries)
    return dict(zip(keys, by_id.values(), strict=True)), Counter()


def _sniff(data: bytes) -> str:
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return "xml"
    if head.startswith(b"{"):
        return "json"
    return "unknown"


def _parse_bytes(
    data: bytes,
    src: str,
    labels: set[str] | None,
    problems: Problems,
    subset: str = "",
    lim: Limits | None = None,
) -> tuple[dict[str, ImageAnnotations], Counter]:
    lim = get_limits(lim)
    kind = _sniff(data)
    if kind == "xml":
        return _parse_cvat_xml(data, src, labels, lim)
    if kind == "json":
        doc = load_json(data, src, lim)
        if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
            return _parse_coco(doc, src, labels, problems, subset, lim)
        raise InputError(
            src,
            "JSON file is not a COCO instances file (no 'images' and 'annotations'); "
            "export the annotations as 'COCO 1.0' or 'CVAT for images 1.1'",
        )
    raise InputError(
        src,
        "unknown annotation format: neither CVAT XML nor COCO JSON "
        "(export as 'CVAT for images 1.1' or 'COCO 1.0')",
    )


def _zip_members(path: Path) -> list[tuple[str, str]]:
    """(member, subset) pairs of the annotation files inside a CVAT export zip."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    xml = [n for n in names if PurePosixPath(n).name == "annotations.xml"]
    if xml:
        return [(n, "") for n in sorted(xml)]
    coco = sorted(
        n
        for n in names
        if n.lower().endswith(".json") and re.match(r"instances_.*\.json$", PurePosixPath(n).name)
    )
    if not coco:
        coco = sorted(n for n in names if n.lower().endswith(".json"))
    if not coco:
        raise InputError(path, "zip archive holds no annotations.xml or COCO .json file")
    return [(n, re.sub(r"^instances_|\.json$", "", PurePosixPath(n).name)) for n in coco]


def _too_big(what: str, size: int, lim: Limits) -> str:
    return (
        f"{what} {size:,} bytes, over the limit of {lim.max_export_bytes:,} "
        "(limits.max_export_bytes); split the export or raise the limit"
    )


def _read_members(path: Path, members: list[tuple[str, str]], lim: Limits):
    """Read zip members, refusing any (or a total) over ``max_export_bytes``.

    The declared uncompressed size is checked before reading, and reading stops one
    byte past the limit, so a member that lies about its size cannot expand further.
    """
    blobs = []
    total = 0
    with zipfile.ZipFile(path) as zf:
        for member, subset in members:
            declared = zf.getinfo(member).file_size
            if total + declared > lim.max_export_bytes:
                raise InputError(
                    f"{path}!{member}", _too_big("decompresses (as declared) to", declared, lim)
                )
            with zf.open(member) as fh:
                data = fh.read(lim.max_export_bytes - total + 1)
            if total + len(data) > lim.max_export_bytes:
                raise InputError(
                    f"{path}!{member}", _too_big("decompresses to more than", len(data), lim)
                )
            total += len(data)
            blobs.append((member, subset, data))
    return blobs


def _load(
    path: str | os.PathLike,
    labels: Iterable[str] | str | None,
    problems: Problems,
    limits: Limits | None = None,
) -> dict[str, ImageAnnotations]:
    lim = get_limits(limits)
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "annotation export does not exist")
    if path.stat().st_size == 0:
        raise InputError(path, "annotation export is empty (0 bytes)")
    if path.stat().st_size > lim.max_export_bytes:
        raise InputError(path, _too_big("annotation export has", path.stat().st_size, lim))
    label_set = None if labels is None else ({labels} if isinstance(labels, str) else set(labels))
    with open(path, "rb") as fh:
        magic = fh.read(4)
    result: dict[str, ImageAnnotations] = {}
    other: Counter = Counter()
    if magic == b"PK\x03\x04":
        try:
            members = _zip_members(path)
            blobs = _read_members(path, members, lim)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            raise InputError(path, f"cannot read zip archive ({exc})") from None
        except NotImplementedError as exc:  # e.g. an unsupported compression method
            raise InputError(path, f"cannot read zip archive ({exc})") from None
        for member, subset, data in blobs:
            anns, oth = _parse_bytes(data, f"{path}!{member}", label_set, problems, subset, lim)
            other += oth
            for key, ann in anns.items():
                if key in result:
                    key = f"{subset or member}/{key}"
                result[key] = ann
    else:
        result, other = _parse_bytes(path.read_bytes(), str(path), label_set, problems, lim=lim)
    _log_summary(path, result, other, label_set)
    return result


def _log_summary(
    path: Path, anns: dict[str, ImageAnnotations], other: Counter, labels: set[str] | None
) -> None:
    skipped: Counter = Counter()
    excluded: Counter = Counter()
    clipped = 0
    for ann in anns.values():
        skipped += ann.skipped
        excluded += ann.excluded_labels
        clipped += ann.clipped
    for kind, n in sorted(skipped.items()):
        reason = _SKIP_REASONS.get(kind, "only polygons and masks become cells")
        log.warning("%d %s shapes skipped in %s (%s)", n, kind, path, reason)
    if other.get("track"):
        log.warning(
            "%d <track> elements skipped in %s (video annotations are not imported; "
            "export the task as 'CVAT for images 1.1')",
            other["track"],
            path,
        )
    if clipped:
        log.warning("%d shapes in %s extend outside their image and are clipped", clipped, path)
    if excluded:
        kept = sum(len(a.shapes) for a in anns.values())
        found = ", ".join(f"{lab!r}: {n}" for lab, n in sorted(excluded.items()))
        (log.warning if kept == 0 else log.info)(
            "%s: %d shapes with labels other than %s ignored (%s)",
            path,
            sum(excluded.values()),
            sorted(labels or ()),
            found,
        )


def load_annotations(
    path: str | os.PathLike,
    *,
    labels: list[str] | None = None,
    on_bad_input: str = "error",
    limits: Limits | None = None,
) -> dict[str, ImageAnnotations]:
    """Read a CVAT export ("CVAT for images 1.1" XML or "COCO 1.0" JSON).

    Parameters
    ----------
    path : path-like
        The export: an XML or JSON file (detected by content), or the zip that
        CVAT downloads.
    labels : list of str, optional
        Keep only shapes with these label names; None keeps all.
    on_bad_input : {"error", "skip"}
        For a COCO annotation whose image id is not listed: raise, or log and
        drop it.
    limits : Limits, optional
        Export size, JSON depth and digits, annotation count (default
        :data:`~brightseg.limits.DEFAULT_LIMITS`).

    Returns
    -------
    dict of str to ImageAnnotations
        Keyed by image file name as written in the export, in document order;
        a name repeated in a project export is keyed ``"<subset>/<name>"``.
        Images without annotations are included (they have no cells).

    Raises
    ------
    InputError
        Missing/empty file, XML that is not well-formed (with line and column),
        invalid JSON, an unknown format, malformed attributes.
    """
    return _load(path, labels, Problems(on_bad_input), limits)


# --------------------------------------------------------------------------- import


def _image_size(path: Path, limits: Limits | None = None) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only (:func:`image_header`)."""
    header = image_header(path, limits)
    return header.width, header.height


class _ImageIndex:
    """Finds the file of an export image name in ``images_dir``."""

    def __init__(self, images_dir: Path, suffixes: Sequence[str]):
        self.dir = images_dir
        self.suffixes = tuple(s.lower() for s in suffixes)
        files = (
            sorted(p for p in images_dir.iterdir() if p.is_file()) if images_dir.is_dir() else []
        )
        files = [p for p in files if p.suffix.lower() in self.suffixes]
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for p in files:
            self.by_name.setdefault(p.name, []).append(p)
            self.by_stem.setdefault(p.stem, []).append(p)

    def find(self, name: str, src: str) -> Path:
        rel = PurePosixPath(name.replace("\\", "/"))
        direct = self.dir.joinpath(*[p for p in rel.parts if p not in ("/", "..")])
        if direct.is_file():
            return direct
        for table, key in ((self.by_name, rel.name), (self.by_stem, rel.stem)):
            hits = table.get(key, [])
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                listing = ", ".join(p.name for p in hits)
                raise InputError(
                    self.dir, f"image {name!r} of {src} matches several files: {listing}"
                )
        raise InputError(
            self.dir / rel.name,
            f"image {name!r} listed in {src} is missing from {self.dir} "
            f"(looked for {rel.name!r} and '{rel.stem}' with suffix {'/'.join(self.suffixes)})",
        )


def import_cvat(
    export: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    plate: str = "",
    labels: list[str] | None = ("cell",),
    on_bad_input: str = "error",
    image_suffixes: Sequence[str] = (".tif", ".tiff", ".png", ".jpg", ".jpeg"),
    limits: Limits | None = None,
    nucleus_labels: Sequence[str] | None = None,
):
    """Turn a CVAT export into instance-label and binary masks.

    For every image of the export writes ``<out_dir>/<stem>_labels.tif``
    (``uint16``/``uint32`` instance labels) and ``<out_dir>/<stem>_mask.png``
    (0/255), then ``<out_dir>/manifest.parquet`` last.

    Parameters
    ----------
    export : path-like
        "CVAT for images 1.1" XML or "COCO 1.0" JSON (or CVAT's zip of either).
    images_dir : path-like
        Folder with the annotated images.  An export name is matched as a
        relative path, then by base name, then by stem with any of
        ``image_suffixes``.
    out_dir : path-like
        Output folder (created).
    plate : str
        Plate name stored in the manifest.
    labels : list of str or None
        Label names that are cells; None takes every polygon and mask.
    on_bad_input : {"error", "skip"}
        On a missing image, a size mismatch, a bad shape or an annotation
        pointing to an unknown image: raise :class:`InputError`, or log it,
        leave that item out and list it in ``skipped``.
    image_suffixes : sequence of str
        Image file suffixes considered when matching by stem.
    limits : Limits, optional
        See :func:`load_annotations`; image sizes are checked against
        ``max_image_pixels``.
    nucleus_labels : list of str, optional
        Label names of nucleus outlines: their polygons and masks also become
        ``<out_dir>/<stem>_nuclei.tif`` (nucleus instance labels, written for every
        imported image, empty where it has none), the nuclei a ``nucleus3`` model learns.
        ``labels`` must then name the cell labels (and not these).

    Returns
    -------
    manifest : pandas.DataFrame
        One row per written image, columns :data:`MANIFEST_COLUMNS`, sorted by stem.
    skipped : pandas.DataFrame
        Columns ``file`` and ``reason``, one row per skipped item.

    Raises
    ------
    InputError
        Bad input under ``on_bad_input="error"``; an export whose cell shapes
        all carry other labels; no image imported.  On an error no output of
        the failing image and no manifest is written (an existing manifest is
        removed first).

    Notes
    -----
    All images are located and checked (file present, size equal to the
    export's, every shape decodable) before anything is written.
    """

    export = Path(export)
    images_dir = Path(images_dir)
    out_dir = Path(out_dir)
    if isinstance(labels, str):
        labels = [labels]
    if isinstance(nucleus_labels, str):
        nucleus_labels = [nucleus_labels]
    if nucleus_labels:
        if labels is None or set(labels) & set(nucleus_labels):
            raise InputError(
                "annotations.nucleus_labels",
                f"nucleus labels {sorted(nucleus_labels)} need annotations.labels to name the "
                f"cell labels, and no label can be both (labels: {labels})",
            )
    problems = Problems(on_bad_input)
    anns = _load(export, labels, problems, limits)
    nuclei = _load(export, nucleus_labels, Problems(on_bad_input), limits) if nucleus_labels else {}
    if not anns:
        raise InputError(export, "the export lists no images")
    if labels is not None and not any(a.shapes for a in anns.values()):
        excluded: Counter = Counter()
        for a in anns.values():
            excluded += a.excluded_labels
        if excluded:
            raise InputError(
                export,
                f"no polygon or mask has a label in {sorted(labels)}; labels found: "
                f"{sorted(excluded)} (set the labels to import)",
            )
    if not images_dir.is_dir():
        raise InputError(images_dir, "images folder does not exist")
    index = _ImageIndex(images_dir, image_suffixes)

    # Pass 1: locate and check everything before writing anything.
    jobs: list[tuple[ImageAnnotations, Path, str]] = []
    stems: dict[str, str] = {}
    for key, ann in anns.items():
        try:
            img = index.find(ann.name, str(export))
            w, h = _image_size(img, limits)
            if (w, h) != (ann.width, ann.height):
                raise InputError(
                    img,
                    f"image is {w}x{h} (width x height) but {export} says {ann.width}x"
                    f"{ann.height} for {ann.name!r}",
                )
            if img.stem in stems:
                raise InputError(
                    img,
                    f"export images {stems[img.stem]!r} and {key!r} both resolve to stem "
                    f"{img.stem!r}; outputs would collide",
                )
            validate(ann, limits=limits)
            if key in nuclei:
                validate(nuclei[key], limits=limits)
        except InputError as exc:
            problems.report(exc, ann.name)
            continue
        stems[img.stem] = key
        jobs.append((ann, img, img.stem))

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.parquet"
    manifest_path.unlink(missing_ok=True)

    # Pass 2: rasterise and write each image (both files or neither).
    rows = []
    key_of = {id(ann): key for key, ann in anns.items()}
    n_nuclei = 0
    for ann, img, stem in progress(jobs, desc="cvat import"):
        try:
            lab = rasterize(ann)  # validated against the limits in pass 1
            nuc = None
            if nucleus_labels:
                nuc_ann = nuclei.get(key_of[id(ann)])
                nuc = (
                    rasterize(nuc_ann)
                    if nuc_ann is not None and nuc_ann.shapes
                    else np.zeros(lab.shape, np.uint16)
                )
                n_nuclei += int(nuc.max())
        except InputError as exc:
            problems.report(exc, ann.name)
            continue
        mask = np.where(lab > 0, np.uint8(255), np.uint8(0))
        lab_path = out_dir / f"{stem}_labels.tif"
        mask_path = out_dir / f"{stem}_mask.png"
        nuc_path = out_dir / f"{stem}_nuclei.tif"
        try:
            write_tiff(lab, lab_path, compression="zlib")
            if nuc is not None:
                write_tiff(nuc, nuc_path, compression="zlib")
            write_png(mask, mask_path)
        except BaseException:
            lab_path.unlink(missing_ok=True)
            nuc_path.unlink(missing_ok=True)
            raise
        n_cells = int(lab.max()) if lab.size else 0
        rows.append(
            {
                "image": str(img),
                "stem": stem,
                "plate": plate,
                "n_cells": n_cells,
                "foreground_fraction": float(np.count_nonzero(lab)) / lab.size,
                "width": ann.width,
                "height": ann.height,
                "source_format": ann.source_format,
            }
        )
    if not rows:
        raise InputError(export, "no image could be imported (see the skipped list in the log)")
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest = manifest.sort_values("stem", kind="stable").reset_index(drop=True)
    manifest = manifest.astype({"n_cells": "int64", "width": "int64", "height": "int64"})
    skipped = pd.DataFrame(problems.items, columns=["file", "reason"])
    write_parquet(manifest, manifest_path)
    if nucleus_labels:
        log.info("nuclei (labels %s): %d in %d images", sorted(nucleus_labels), n_nuclei, len(rows))
    log.info(
        "imported %d images (%d cells) from %s into %s; %d skipped",
        len(manifest),
        int(manifest["n_cells"].sum()),
        export,
        out_dir,
        len(skipped),
    )
    return manifest, skipped
