"""OME-Zarr (OME-NGFF HCS) store of one plate's corrected images and labels.

Layout of ``results/plates/{plate}.ome.zarr`` (zarr v3, OME-NGFF 0.5, the
default that ome-zarr 0.18 writes with zarr 3)::

    {plate}.ome.zarr/            ome.plate (rows, columns, wells, acquisitions)
                                 brightseg: pixel size, modality, image index, ...
      B/                         plate row
        3/                       well (column 3): ome.well (fields)
          0/                     field 0: ome.multiscales, axes t, c, y, x
            0                    uint16 array (T, 1, H, W), chunks (1, 1, 256, 256)
            labels/              ome.labels: ["mask", "cells", ...]
              mask/              ome.multiscales + ome.image-label
                0                label array (T, 1, H, W), same chunks
                                 brightseg.complete: image ids fully written

One image is one (well, field, timepoint), addressed by its ``image_id`` (the
source file stem); its timepoint is the index ``t`` of the plate's sorted
timepoints along the first axis of its field's array.  The image arrays hold
``round(x * 65535)`` of the corrected float image ``x`` in [0, 1] and the
multiscales scale carries the pixel size (micrometer) on y and x.  There is a
single resolution level (images are streamed one at a time, so no pyramid).

:func:`write_plate` builds the whole store in a temporary sibling directory and
renames it into place, so a killed job never leaves a store that looks
complete.  Labels are added later, in place, by :class:`PlateStore`; each
label keeps a per-image completion marker written after the data, so an
interrupted writer never leaves a label that :meth:`PlateStore.has_label`
reports as present.  One writer per plate at a time (the markers are a
read-modify-write of the label group's attributes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from .errors import InputError
from .io import atomic_path
from .progress import progress

log = logging.getLogger(__name__)

SCHEMA = 1
NGFF_VERSION = "0.5"
REQUIRED_COLUMNS = ("image_id", "row", "column", "field", "timepoint")
IMAGE_DATASET = "0"
AXES = [
    {"name": "t", "type": "time"},
    {"name": "c", "type": "channel"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]
_LABEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def _zarr():

    return zarr


def _ome_writer():
    """``ome_zarr.writer`` (its import evaluates a deprecated default argument)."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr import writer
    return writer


def _compressor():
    zarr = _zarr()
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _jsonable(value: Any) -> Any:
    """Plain-Python version of a scalar (numpy/pandas types, NaN -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):  # e.g. the plane files of a multi-focal image
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _scale(pixel_size_um: float) -> list[dict]:
    return [{"type": "scale", "scale": [1.0, 1.0, float(pixel_size_um), float(pixel_size_um)]}]


def _as_int(value: Any, what: str, image_id: str, store: Path) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = np.nan
    if not np.isfinite(f) or not f.is_integer():
        raise InputError(store, f"image {image_id!r}: {what} must be an integer, got {value!r}")
    return int(f)


def _validate_images(images: pd.DataFrame, store: Path) -> pd.DataFrame:
    """Check and normalise the images table; add the time index ``t`` and ``path``."""
    if not isinstance(images, pd.DataFrame):
        raise InputError(store, "images must be a pandas DataFrame")
    missing = [c for c in REQUIRED_COLUMNS if c not in images.columns]
    if missing:
        raise InputError(store, f"images table lacks columns {missing}")
    if len(images) == 0:
        raise InputError(store, "images table is empty")
    df = images.loc[:, list(REQUIRED_COLUMNS)].copy()
    df["_pos"] = np.arange(len(images))
    ids = [str(v) for v in df["image_id"]]
    if any(not i for i in ids):
        raise InputError(store, "empty image_id in images table")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(store, f"duplicate image_id(s): {dup[:5]}")
    df["image_id"] = ids
    rows = []
    for image_id, row in zip(ids, df["row"], strict=True):
        row = str(row).strip()
        if not row.isalnum() or not row.isascii():
            raise InputError(
                store, f"image {image_id!r}: plate row must be alphanumeric, got {row!r}"
            )
        rows.append(row)
    df["row"] = rows
    for col in ("column", "field", "timepoint"):
        df[col] = [_as_int(v, col, i, store) for i, v in zip(ids, df[col], strict=True)]
    bad = df[(df["column"] < 0) | (df["field"] < 0)]
    if len(bad):
        raise InputError(store, f"image {bad['image_id'].iloc[0]!r}: negative column or field")
    key = ["row", "column", "field", "timepoint"]
    dups = df[df.duplicated(key, keep=False)]
    if len(dups):
        raise InputError(
            store,
            "images "
            + ", ".join(repr(i) for i in dups["image_id"].iloc[:4])
            + " share the same row, column, field and timepoint",
        )
    timepoints = sorted(set(df["timepoint"]))
    t_index = {tp: i for i, tp in enumerate(timepoints)}
    df["t"] = [t_index[tp] for tp in df["timepoint"]]
    df["path"] = [
        f"{r}/{c}/{f}" for r, c, f in zip(df["row"], df["column"], df["field"], strict=True)
    ]
    return df.sort_values(["row", "column", "field", "t"], kind="stable").reset_index(drop=True)


def _source_name(original: pd.Series) -> str:
    """The source file of an images-table row if it has one, else its image id."""
    for col in ("source_path", "path"):
        if col in original.index and isinstance(original[col], str | os.PathLike):
            if str(original[col]):
                return str(original[col])
    return str(original["image_id"])


def _check_loaded(img: Any, src: str, channels: int = 1) -> np.ndarray:
    arr = np.asarray(img)
    if channels == 1 and arr.ndim != 2:
        raise InputError(src, f"corrected image must be 2-D, got shape {arr.shape}")
    if channels > 1 and (arr.ndim != 3 or arr.shape[0] != channels):
        raise InputError(
            src, f"corrected image must be ({channels}, H, W) (channels), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise InputError(src, "corrected image has no pixels")
    if arr.dtype.kind != "f":
        raise InputError(src, f"corrected image must be float in [0, 1], got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InputError(src, "corrected image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(src, f"corrected image must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return arr


def _to_uint16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)


def quantise(x: np.ndarray) -> np.ndarray:
    """A corrected image as a plate store gives it back: ``round(x * 65535) / 65535``.

    What a model sees of an image read from a store, for images that never go through
    one (``brightseg segment``).
    """
    return (_to_uint16(x).astype(np.float32) / np.float32(65535.0)).astype(np.float32)


def write_plate(
    store_path: str | os.PathLike,
    plate: str,
    images: pd.DataFrame,
    *,
    load: Callable[[pd.Series], np.ndarray],
    pixel_size_um: float,
    modality: str,
    chunk: int = 256,
    metadata: dict | None = None,
    channels: int = 1,
) -> None:
    """Write one plate's corrected images as an OME-NGFF HCS plate, atomically.

    Parameters
    ----------
    store_path : path-like
        Destination, e.g. ``results/plates/P1.ome.zarr``.  An existing store is
        replaced only once the new one is complete.
    plate : str
        Plate name (stored in the NGFF plate metadata).
    images : DataFrame
        One row per image with columns ``image_id`` (unique, e.g. the source
        file stem), ``row`` (letter(s), e.g. "B"), ``column`` (int), ``field``
        (int), ``timepoint`` (int).  Other columns (e.g. ``path`` of the source
        file) are kept in the store's ``brightseg`` attributes; ``path`` is
        stored as ``source_path``.
    load : callable
        ``load(row)`` returns the corrected float image (2-D, [0, 1]) for one
        row of ``images`` (a Series, as given by the caller); called once per
        image, in store order, so only one image is in memory at a time; with
        ``channels`` > 1, ``(channels, H, W)``.
    pixel_size_um : float
        Pixel size in micrometer (multiscales scale of y and x).
    modality : str
        E.g. "brightfield" or "phase".
    chunk : int
        Chunk size in y and x.
    metadata : dict, optional
        Further JSON-serialisable acquisition metadata kept under
        ``attrs["brightseg"]["metadata"]``.
    channels : int
        Channels per image: the kept focal planes of a multi-focal plate
        (:mod:`brightseg.focus`).  The arrays are then ``(T, C, H, W)`` and
        the store records ``channels`` (a single-channel store is written as
        without it).

    Raises
    ------
    InputError
        Bad images table, pixel size or metadata; an image whose shape differs
        from the first one; a loaded image that is not a finite 2-D float
        image in [0, 1].  When anything fails (also an exception from
        ``load``), ``store_path`` is left as it was (absent, or the previous
        complete store) and no temporary directory remains.

    Notes
    -----
    The time axis of every field has one slot per distinct timepoint of the
    plate (sorted); a field without an image at some timepoint keeps zeros in
    that slot, which the image index does not reference.
    """
    store = Path(store_path)
    try:
        px = float(pixel_size_um)
    except (TypeError, ValueError):
        px = np.nan
    if not np.isfinite(px) or px <= 0:
        raise InputError(store, f"pixel size must be a positive number, got {pixel_size_um!r}")
    if not str(plate):
        raise InputError(store, "plate name is empty")
    if int(chunk) < 1:
        raise InputError(store, f"chunk must be positive, got {chunk!r}")
    chunk = int(chunk)
    n_c = int(channels)
    if n_c < 1:
        raise InputError(store, f"channels must be positive, got {channels!r}")
    meta = dict(metadata or {})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(store, f"metadata is not JSON-serialisable: {exc}") from None
    df = _validate_images(images, store)
    timepoints = sorted(set(df["timepoint"]))
    n_t = len(timepoints)
    extra_cols = [c for c in images.columns if c not in REQUIRED_COLUMNS]

    index: dict[str, dict] = {}
    for _, rec in df.iterrows():
        original = images.iloc[int(rec["_pos"])]
        entry = {
            "row": rec["row"],
            "column": int(rec["column"]),
            "field": int(rec["field"]),
            "timepoint": int(rec["timepoint"]),
            "t": int(rec["t"]),
            "path": rec["path"],
        }
        for c in extra_cols:
            key = "source_path" if c == "path" else str(c)
            if key not in entry:
                entry[key] = _jsonable(original[c])
        index[rec["image_id"]] = entry

    rows = sorted(set(df["row"]), key=lambda r: (len(r), r))
    columns = sorted(set(df["column"]))
    wells = df.groupby(["row", "column"], sort=False)["field"].apply(lambda s: sorted(set(s)))
    max_fields = int(max(len(f) for f in wells))

    writer = _ome_writer()
    write_multiscales_metadata = writer.write_multiscales_metadata
    write_plate_metadata = writer.write_plate_metadata
    write_well_metadata = writer.write_well_metadata

    zarr = _zarr()
    with atomic_path(store, is_dir=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        write_plate_metadata(
            root,
            rows=rows,
            columns=[str(c) for c in columns],
            wells=[f"{r}/{c}" for r in rows for c in columns if (r, c) in wells.index],
            acquisitions=[
                {
                    "id": 0,
                    "name": str(plate),
                    "description": modality,
                    "maximumfieldcount": max_fields,
                }
            ],
            field_count=max_fields,
            name=str(plate),
        )
        for (r, c), fields in wells.items():
            well = root.require_group(f"{r}/{c}")
            write_well_metadata(well, [{"path": str(f), "acquisition": 0} for f in fields])

        shape: tuple[int, int] | None = None
        first_id = ""
        arrays: dict[str, Any] = {}
        for _, rec in progress(df.iterrows(), total=len(df), desc=f"write plate {plate}"):
            original = images.iloc[int(rec["_pos"])]
            img = _check_loaded(load(original), _source_name(original), n_c)
            if shape is None:
                shape, first_id = img.shape[-2:], rec["image_id"]
            elif img.shape[-2:] != shape:
                raise InputError(
                    _source_name(original),
                    f"image {rec['image_id']!r} has shape {img.shape[-2:]}, but the plate's "
                    f"images are {shape} (first image {first_id!r})",
                )
            arr = arrays.get(rec["path"])
            if arr is None:
                group = root.require_group(rec["path"])
                arr = group.create_array(
                    IMAGE_DATASET,
                    shape=(n_t, n_c, *shape),
                    chunks=(1, 1, min(chunk, shape[0]), min(chunk, shape[1])),
                    dtype="uint16",
                    compressors=_compressor(),
                    fill_value=0,
                    dimension_names=[a["name"] for a in AXES],
                )
                write_multiscales_metadata(
                    group,
                    [{"path": IMAGE_DATASET, "coordinateTransformations": _scale(px)}],
                    axes=AXES,
                    name=f"{plate}/{rec['path']}",
                )
                arrays[rec["path"]] = arr
            arr[int(rec["t"])] = _to_uint16(img.reshape(n_c, *shape))

        channels = {"channels": int(n_c)} if n_c > 1 else {}  # single-plane: as before
        root.attrs["brightseg"] = {
            "schema": SCHEMA,
            "plate": str(plate),
            "pixel_size_um": px,
            "modality": str(modality),
            "chunk": chunk,
            "shape": list(shape) if shape else None,
            **channels,
            "timepoints": [int(t) for t in timepoints],
            "images": index,
            "metadata": meta,
            "complete": True,
        }
    log.info("wrote %s: %d images, %d wells", store, len(df), len(wells))


def open_plate(store_path: str | os.PathLike, *, mode: str = "r+") -> PlateStore:
    """Open a plate store written by :func:`write_plate` (``mode="r"`` for read-only)."""
    return PlateStore(store_path, mode=mode)


class PlateStore:
    """Read images and read/write labels of one OME-Zarr plate.

    Attributes
    ----------
    path : Path
    plate : str
    pixel_size_um : float
    modality : str
    metadata : dict
        The acquisition metadata given to :func:`write_plate`.
    channels : int
        Channels of every image: 1, or the kept focal planes of a multi-focal plate.
    images : DataFrame
        ``image_id, row, column, field, timepoint, t, path`` (``path``: the field
        group inside the store, e.g. ``"B/3/0"``; ``t``: index on the time
        axis) plus the extra columns given to :func:`write_plate`.
    """

    def __init__(self, store_path: str | os.PathLike, *, mode: str = "r+"):
        self.path = Path(store_path)
        if mode not in ("r", "r+"):
            raise InputError(self.path, f"mode must be 'r' or 'r+', got {mode!r}")
        if not self.path.is_dir():
            raise InputError(self.path, "plate store does not exist")
        zarr = _zarr()
        try:
            self._root = zarr.open_group(str(self.path), mode=mode)
            attrs = self._root.attrs.asdict()
        except Exception as exc:  # noqa: BLE001 - any zarr failure is a bad store
            raise InputError(
                self.path, f"cannot open zarr store ({type(exc).__name__}: {exc})"
            ) from None
        info = attrs.get("brightseg")
        if not isinstance(info, dict) or not info.get("complete") or "images" not in info:
            raise InputError(self.path, "not a complete brightseg plate store")
        self._info = info
        self.mode = mode
        self.plate: str = info["plate"]
        self.pixel_size_um: float = float(info["pixel_size_um"])
        self.modality: str = info["modality"]
        self.metadata: dict = info.get("metadata", {})
        self.chunk: int = int(info.get("chunk", 256))
        self.channels: int = int(info.get("channels", 1))
        records = [{"image_id": k, **v} for k, v in info["images"].items()]
        cols = ["image_id", "row", "column", "field", "timepoint", "t", "path"]
        df = pd.DataFrame.from_records(records)
        self.images: pd.DataFrame = df[cols + [c for c in df.columns if c not in cols]]
        self._by_id = {r["image_id"]: r for r in records}
        self._lroot = self._root  # where labels live (a LabelStore keeps its own)

    def __repr__(self) -> str:
        return f"PlateStore({str(self.path)!r}, plate={self.plate!r}, images={len(self.images)})"

    # ------------------------------------------------------------- images

    def _entry(self, image_id: str) -> dict:
        try:
            return self._by_id[str(image_id)]
        except KeyError:
            raise InputError(self.path, f"no image {image_id!r} in plate {self.plate!r}") from None

    def field_path(self, image_id: str) -> str:
        """Path of the image's field group inside the store, e.g. ``"B/3/0"``."""
        return self._entry(image_id)["path"]

    def image_array(self, image_id: str) -> tuple[Any, int]:
        """The field's zarr array ``(T, C, H, W)`` and this image's ``t`` index."""
        e = self._entry(image_id)
        return self._root[f"{e['path']}/{IMAGE_DATASET}"], int(e["t"])

    def shape(self, image_id: str) -> tuple[int, int]:
        """``(H, W)`` of an image."""
        arr, _ = self.image_array(image_id)
        return tuple(int(s) for s in arr.shape[-2:])

    def read(self, image_id: str) -> np.ndarray:
        """The corrected image as float32 in [0, 1] (``uint16 / 65535``).

        ``(H, W)``; of a multi-focal plate (``channels`` > 1) ``(H, W, C)``, channels
        last as the models take them.
        """
        arr, t = self.image_array(image_id)
        if self.channels > 1:
            raw = np.moveaxis(np.asarray(arr[t]), 0, -1)
        else:
            raw = np.asarray(arr[t, 0])
        return (raw.astype(np.float32) / np.float32(65535.0)).astype(np.float32)

    # ------------------------------------------------------------- labels

    def _field_of(self, key: str) -> tuple[str, str | None]:
        """(field path, image_id or None) for an image id or a field path."""
        if str(key) in self._by_id:
            return self._by_id[str(key)]["path"], str(key)
        if str(key) in set(self.images["path"]):
            return str(key), None
        raise InputError(self.path, f"no image or field {key!r} in plate {self.plate!r}")

    def _label_group(self, field: str, name: str):
        try:
            return self._lroot[f"{field}/labels/{name}"]
        except KeyError:
            return None

    def _complete(self, group) -> list[str]:
        info = group.attrs.get("brightseg", {}) if group is not None else {}
        return list(info.get("complete", []))

    def _set_complete(self, group, ids: list[str]) -> None:
        info = dict(group.attrs.get("brightseg", {}))
        info["complete"] = sorted(set(ids))
        group.attrs["brightseg"] = info

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise InputError(self.path, "plate store was opened read-only")

    def create_label(
        self, image_id_or_field: str, name: str, dtype: Any, *, overwrite: bool = True
    ):
        """Create (or reuse) the label array ``name`` of a field; return it for writing.

        The array has the image's layout: ``(T, 1, H, W)``, axes t, c, y, x, the
        same chunks and scale, under ``{field}/labels/{name}`` with NGFF
        ``image-label`` metadata.  Write an image's label at ``[t, 0]`` (``t``
        from :meth:`image_array`) and then call :meth:`mark_label_complete`.

        Parameters
        ----------
        image_id_or_field : str
            An image id (its completion marker for ``name`` is cleared, since
            the caller is about to (re)write it) or a field path ``"B/3/0"``.
        name : str
            Label name, e.g. ``"prob"``, ``"mask"``, ``"cells"``.
        dtype : dtype-like
            Integer dtypes are what NGFF labels expect (uint8 masks, uint16/uint32
            instance labels); a float dtype (e.g. probabilities) also works.
        overwrite : bool
            If the label exists with the same shape and dtype it is reused
            (other images' data and markers are kept); with another shape or
            dtype it is recreated.  With ``overwrite=False`` an existing label
            raises :class:`InputError`.
        """
        self._require_writable()
        field, image_id = self._field_of(image_id_or_field)
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise InputError(self.path, f"invalid label name {name!r} (letters, digits, _ and -)")
        dtype = np.dtype(dtype)
        if dtype == np.bool_:
            dtype = np.dtype(np.uint8)
        if dtype.kind not in "uif":
            raise InputError(self.path, f"label {name!r}: unsupported dtype {dtype}")
        image = self._root[f"{field}/{IMAGE_DATASET}"]
        shape = (image.shape[0], 1, *image.shape[2:])  # one label plane whatever the channels
        chunks = (1, 1, *tuple(image.chunks)[2:])
        group = self._label_group(field, name)
        if group is not None:
            if not overwrite:
                raise InputError(self.path, f"label {name!r} already exists for field {field}")
            arr = group.get(IMAGE_DATASET) if hasattr(group, "get") else None
            if arr is not None and tuple(arr.shape) == shape and np.dtype(arr.dtype) == dtype:
                if image_id is not None:
                    self._set_complete(group, [i for i in self._complete(group) if i != image_id])
                return arr
            del self._lroot[f"{field}/labels"][name]

        writer = _ome_writer()
        labels = self._lroot.require_group(f"{field}/labels")
        group = labels.create_group(name)
        group.attrs["brightseg"] = {"complete": []}
        arr = group.create_array(
            IMAGE_DATASET,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=_compressor(),
            fill_value=0,
            dimension_names=[a["name"] for a in AXES],
        )
        writer.write_multiscales_metadata(
            group,
            [{"path": IMAGE_DATASET, "coordinateTransformations": _scale(self.pixel_size_um)}],
            axes=AXES,
            name=name,
        )
        # write_label_metadata appends to the labels list: drop a stale entry first
        ome = dict(labels.attrs.get("ome", {}))
        ome["version"] = NGFF_VERSION
        ome["labels"] = [n for n in ome.get("labels", []) if n != name]
        labels.attrs["ome"] = ome
        writer.write_label_metadata(labels, name, source={"image": self._label_source(field)})
        return arr

    def _label_source(self, field: str) -> str:
        """NGFF ``source.image`` of a label group: the field it labels."""
        return "../../"

    def mark_label_complete(self, image_id: str, name: str) -> None:
        """Record that label ``name`` of ``image_id`` is fully written."""
        self._require_writable()
        field = self.field_path(image_id)
        group = self._label_group(field, name)
        if group is None:
            raise InputError(self.path, f"label {name!r} does not exist for field {field}")
        self._set_complete(group, [*self._complete(group), str(image_id)])

    def write_label(self, image_id: str, name: str, array: np.ndarray) -> None:
        """Write one image's 2-D label ``name`` (rerunnable: overwrites in place).

        The completion marker is cleared before and set after the data, so an
        interrupted write is never reported by :meth:`has_label`.
        """
        array = np.asarray(array)
        h, w = self.shape(image_id)
        if array.shape != (h, w):
            raise InputError(
                self.path,
                f"label {name!r} of image {image_id!r} has shape {array.shape}, expected {(h, w)}",
            )
        arr = self.create_label(image_id, name, array.dtype)
        _, t = self.image_array(image_id)
        if arr.dtype.kind in "ui" and array.dtype.kind in "uib":
            info = np.iinfo(arr.dtype)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise InputError(self.path, f"label {name!r} values do not fit {arr.dtype}")
        arr[t, 0] = array.astype(arr.dtype, copy=False)
        self.mark_label_complete(image_id, name)

    def has_label(self, image_id: str, name: str) -> bool:
        """True only if label ``name`` of ``image_id`` was completely written."""
        field = self.field_path(image_id)
        return str(image_id) in self._complete(self._label_group(field, name))

    def label_array(self, image_id: str, name: str) -> tuple[Any, int]:
        """The label's zarr array ``(T, 1, H, W)`` and the image's ``t`` index."""
        field = self.field_path(image_id)
        group = self._label_group(field, name)
        if group is None:
            raise InputError(self.path, f"label {name!r} does not exist for image {image_id!r}")
        _, t = self.image_array(image_id)
        return group[IMAGE_DATASET], t

    def read_label(self, image_id: str, name: str) -> np.ndarray:
        """One image's label as a 2-D array (raises if missing or incomplete)."""
        if not self.has_label(image_id, name):
            raise InputError(
                self.path, f"label {name!r} of image {image_id!r} is missing or incomplete"
            )
        arr, t = self.label_array(image_id, name)
        return np.asarray(arr[t, 0])

    def label_names(self, image_id: str | None = None) -> list[str]:
        """Label names of one image's field, or of any field of the plate."""
        fields = (
            [self.field_path(image_id)]
            if image_id is not None
            else sorted(set(self.images["path"]))
        )
        names: set[str] = set()
        for field in fields:
            try:
                labels = self._lroot[f"{field}/labels"]
            except KeyError:
                continue
            names.update(labels.attrs.get("ome", {}).get("labels", []))
        return sorted(names)


# --------------------------------------------------------------------------- label stores


def create_label_store(path: str | os.PathLike, plate: PlateStore) -> LabelStore:
    """Create an empty label store for ``plate`` at ``path`` (which must not exist).

    A label store holds label arrays (``prob``, ``mask``, ``cells``...) of one plate's
    images with the plate's layout (``{row}/{col}/{field}/labels/{name}/0``, NGFF
    ``image-label`` metadata whose ``source`` points at the plate's field), but in a zarr
    store of its own: it is the declared output of the rule that writes it, while the
    plate store stays that rule's input, never modified after ``correct_illumination``.
    """
    path = Path(path)
    if path.exists():
        raise InputError(path, "label store already exists")
    root = _zarr().open_group(str(path), mode="w")
    root.attrs["brightseg"] = {
        "labels_of": os.path.relpath(plate.path.resolve(), path.resolve().parent),
        "plate": plate.plate,
        "complete": True,
    }
    return LabelStore(path, plate.path, mode="r+")


def open_labels(
    path: str | os.PathLike, plate_path: str | os.PathLike, *, mode: str = "r"
) -> LabelStore:
    """Open a label store made by :func:`create_label_store` over its plate store."""
    return LabelStore(path, plate_path, mode=mode)


class LabelStore(PlateStore):
    """A plate's images (read-only, from the plate store) and labels in a store of their own.

    It has :class:`PlateStore`'s interface: ``images``, ``read``, ``image_array`` read the
    plate; ``create_label``, ``write_label``, ``has_label``, ``read_label`` work on this
    store.  So the streaming predictor and the instance splitter use either.
    """

    def __init__(self, path: str | os.PathLike, plate_path: str | os.PathLike, *, mode="r"):
        super().__init__(plate_path, mode="r")
        self.label_path = Path(path)
        if mode not in ("r", "r+"):
            raise InputError(self.label_path, f"mode must be 'r' or 'r+', got {mode!r}")
        if not self.label_path.is_dir():
            raise InputError(self.label_path, "label store does not exist")
        try:
            self._lroot = _zarr().open_group(str(self.label_path), mode=mode)
            info = self._lroot.attrs.asdict().get("brightseg")
        except Exception as exc:  # noqa: BLE001 - any zarr failure is a bad store
            raise InputError(
                self.label_path, f"cannot open zarr store ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(info, dict) or info.get("plate") != self.plate:
            raise InputError(self.label_path, f"not a label store of plate {self.plate!r}")
        self.mode = mode

    def __repr__(self) -> str:
        return f"LabelStore({str(self.label_path)!r}, plate={self.plate!r})"

    def _label_source(self, field: str) -> str:
        depth = len(Path(field).parts) + 2  # {field}/labels/{name}
        rel = os.path.relpath(self.path.resolve(), self.label_path.resolve())
        return "/".join([".."] * depth + [rel, field]) + "/"
