"""Multi-focal-plane images: several z-planes of one field become the model's input channels.

A plate whose sheet row sets ``z_planes`` (the number of planes each image has, >= 2)
holds every image either as one multi-page TIFF (page ``k`` = plane ``k``) or as a group
of files ``<stem>_z<k>.<ext>``, one per plane ``k = 0 .. z_planes - 1`` (the file-name
regex is applied to ``<stem>``, after the plane suffix is stripped).  ``z_select`` picks
the planes that are kept, in order (``0,2,4``; empty: all planes).  One plane is a
single-plane plate as before (a z-stack from which the in-focus plane is taken); three
planes are the three input channels the models take (where a single-plane image has its
grey value replicated), which is also what ImageNet encoders expect.  Each kept plane is
illumination-corrected like a single image and the plate store keeps them on its channel
axis.

Every model of the workflow takes three input channels (and the augmentation's colour
transforms, the training store and the ImageNet encoders assume three), so the number of
kept planes must be 1 or 3; training on plates with different plane counts stops with
an error (a model learns either grey-replicated or three-plane inputs, not both).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .io import image_header, read_image, write_parquet
from .limits import Limits

#: The plane suffix of a file stem: ``<stem>_z<k>`` (``k`` a plane number from 0).
PLANE_SUFFIX = re.compile(r"_[zZ](\d{1,3})$")
#: Plane counts the models accept after selection.
MODEL_PLANES = (1, 3)
#: Sheet columns (optional) of the multi-focal settings.
SHEET_COLUMNS = ("z_planes", "z_select")


@dataclass(frozen=True)
class Focus:
    """The focal planes of one plate.

    Attributes
    ----------
    planes : int
        Planes per image in the files (>= 2).
    select : tuple of int
        The planes kept, in channel order (1 or 3 of them, 0-based).
    """

    planes: int
    select: tuple[int, ...]

    @property
    def channels(self) -> int:
        """Channels of the corrected image (``len(select)``)."""
        return len(self.select)

    def as_dict(self) -> dict:
        """``{"planes": n, "select": [...]}`` (JSON-able, e.g. for rule params)."""
        return {"planes": int(self.planes), "select": [int(k) for k in self.select]}

    @classmethod
    def coerce(cls, value: Focus | Mapping | None) -> Focus | None:
        """A :class:`Focus` from itself, its :meth:`as_dict` or None (single-plane)."""
        if value is None or isinstance(value, Focus):
            return value
        if not value:
            return None
        return cls(int(value["planes"]), tuple(int(k) for k in value["select"]))


def _cell(row: Mapping, name: str) -> str:
    value = row.get(name, "")
    text = "" if value is None else str(value).strip()
    return "" if text.lower() == "nan" else text


def plate_focus(row: Mapping, *, sheet: str | os.PathLike = "") -> Focus | None:
    """The multi-focal settings of one sheet row, or None for a single-plane plate.

    Parameters
    ----------
    row : mapping
        A plate sheet row; its optional ``z_planes`` and ``z_select`` cells are read.
    sheet : path-like
        The sheet, named in errors.

    Raises
    ------
    InputError
        ``z_planes`` not an integer >= 2 (or empty); ``z_select`` without ``z_planes``,
        not a comma-separated list of plane numbers below ``z_planes``, or of another
        length than 1 or 3 (``z_select`` empty: ``z_planes`` itself must be 3).
    """
    plate = row.get("plate", "")
    planes_text, select_text = _cell(row, "z_planes"), _cell(row, "z_select")
    if not planes_text:
        if select_text:
            raise InputError(
                sheet,
                f"plate {plate!r}: z_select {select_text!r} needs z_planes (planes per image)",
            )
        return None
    if not (planes_text.isascii() and planes_text.isdigit()) or int(planes_text) < 2:
        raise InputError(
            sheet,
            f"plate {plate!r}: z_planes must be an integer >= 2 (planes per image; empty "
            f"for single-plane images), got {planes_text!r}",
        )
    planes = int(planes_text)
    if select_text:
        parts = [p.strip() for p in select_text.split(",")]
        if not all(p.isascii() and p.isdigit() for p in parts):
            raise InputError(
                sheet,
                f"plate {plate!r}: z_select must list plane numbers separated by commas "
                f"(e.g. 0,2,4), got {select_text!r}",
            )
        select = tuple(int(p) for p in parts)
        bad = [k for k in select if k >= planes]
        if bad:
            raise InputError(
                sheet,
                f"plate {plate!r}: z_select plane(s) {bad} do not exist: planes are numbered "
                f"0 to {planes - 1} (z_planes {planes})",
            )
    else:
        select = tuple(range(planes))
    if len(select) not in MODEL_PLANES:
        raise InputError(
            sheet,
            f"plate {plate!r}: {len(select)} planes selected ({list(select)}); the models take "
            "1 plane or 3 planes as input channels: set z_select to 1 or 3 plane numbers "
            "(e.g. 0,2,4)",
        )
    return Focus(planes, select)


def split_plane_suffix(stem: str) -> tuple[str, int | None]:
    """``("<stem>", k)`` for a stem ``<stem>_z<k>``; ``(stem, None)`` without the suffix."""
    m = PLANE_SUFFIX.search(stem)
    if m is None:
        return stem, None
    return stem[: m.start()], int(m.group(1))


def group_planes(
    files: Sequence[Path], planes: int, skipped: list[tuple[str, str]] | None = None
) -> list[tuple[str, list[Path]]]:
    """Group a plate's files into images of ``planes`` planes.

    Parameters
    ----------
    files : sequence of Path
        The plate's image files.  ``<stem>_z<k>.<ext>`` files are planes ``k`` of image
        ``<stem>``; any other file is one image, a multi-page TIFF of ``planes`` pages.
    planes : int
        Planes per image.
    skipped : list, optional
        Given (``on_bad_input: skip``), an image whose planes are wrong is left out and
        ``(file, reason)`` appended here instead of raising.

    Returns
    -------
    list of (stem, paths)
        Sorted by stem; ``paths`` holds one file (a stack) or ``planes`` files in plane
        order.

    Raises
    ------
    InputError
        A group with a missing plane (naming the missing file), a plane number beyond
        ``planes``, a plane given twice, or a stem given both as a stack and as planes.
    """
    groups: dict[str, dict[int, Path]] = {}
    stacks: dict[str, Path] = {}
    bad: dict[str, InputError] = {}  # stem -> its first problem
    for f in files:
        f = Path(f)
        stem, k = split_plane_suffix(f.stem)
        if k is None:
            stacks[f.stem] = f
            continue
        group = groups.setdefault(stem, {})
        if k >= planes:
            bad.setdefault(
                stem,
                InputError(
                    f, f"plane z{k} beyond the plate's z_planes {planes} (planes 0 to {planes - 1})"
                ),
            )
        elif k in group:
            bad.setdefault(
                stem, InputError(f, f"plane z{k} of image {stem!r} given twice (also {group[k]})")
            )
        else:
            group[k] = f
    out: list[tuple[str, list[Path]]] = []
    for stem, group in groups.items():
        missing = [k for k in range(planes) if k not in group]
        if stem in stacks:
            bad.setdefault(
                stem,
                InputError(
                    stacks[stem], f"image {stem!r} is given both as one file and as _z<k> planes"
                ),
            )
        elif missing and group:
            some = next(iter(group.values()))
            bad.setdefault(
                stem,
                InputError(
                    some.with_name(f"{stem}_z{missing[0]}{some.suffix}"),
                    f"plane file missing: image {stem!r} has planes {sorted(group)} but "
                    f"z_planes is {planes} (missing plane(s) {missing})",
                ),
            )
        if stem not in bad:
            out.append((stem, [group[k] for k in range(planes)]))
    out.extend((stem, [f]) for stem, f in stacks.items() if stem not in bad)
    for _, exc in sorted(bad.items(), key=lambda item: item[0]):
        if skipped is None:
            raise exc
        skipped.append((exc.path, exc.message))
    return sorted(out, key=lambda item: item[0])


def read_stack(path: str | os.PathLike, limits: Limits | None = None) -> np.ndarray:
    """Read every full-size page of a multi-page TIFF as ``(pages, H, W)``.

    Raises
    ------
    InputError
        Not a TIFF, unreadable, over the limits, pages of different sizes, colour pages.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(path, "a multi-plane image in one file must be a multi-page TIFF")
    header = image_header(path, limits)
    if header.samples != 1:
        raise InputError(path, f"planes must be grey, got {header.samples} samples per pixel")
    try:
        with tifffile.TiffFile(path) as tf:
            tf.pages.useframes = False
            arrays = [np.asarray(page.asarray()) for page in tf.pages]
    except Exception as exc:  # noqa: BLE001 - any decoder error is bad input
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise InputError(
            path, f"pages of a multi-plane TIFF must be 2-D and of one size, got {sorted(shapes)}"
        )
    stack = np.stack(arrays)
    if stack.dtype.kind == "f" and not np.all(np.isfinite(stack)):
        raise InputError(path, "image contains NaN or infinite values")
    return stack


def read_planes(
    paths: Sequence[str | os.PathLike],
    focus: Focus,
    limits: Limits | None = None,
) -> np.ndarray:
    """The selected planes of one image as ``(len(focus.select), H, W)``.

    Parameters
    ----------
    paths : sequence of path-like
        One multi-page TIFF with ``focus.planes`` pages, or ``focus.planes`` files (one
        plane each, in plane order).
    focus : Focus
        Planes per image and the planes kept.
    limits : Limits, optional
        Size limits (see :func:`brightseg.io.read_image`).

    Raises
    ------
    InputError
        Naming the file: a stack with another number of pages than ``focus.planes``, a
        plane file whose size differs from plane 0's, anything
        :func:`brightseg.io.read_image` refuses.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        stack = read_stack(paths[0], limits)
        if stack.shape[0] != focus.planes:
            raise InputError(
                paths[0],
                f"multi-page TIFF has {stack.shape[0]} page(s) but z_planes is {focus.planes}",
            )
        return stack[list(focus.select)]
    if len(paths) != focus.planes:
        raise InputError(paths[0], f"{len(paths)} plane files given, z_planes is {focus.planes}")
    ref = image_header(paths[0], limits).shape
    for k, path in enumerate(paths[1:], start=1):  # every plane of the group, from headers
        shape = image_header(path, limits).shape
        if shape != ref:
            raise InputError(
                path,
                f"plane z{k} is {shape[1]}x{shape[0]} (width x height) but plane z0 is "
                f"{ref[1]}x{ref[0]}",
            )
    planes = {k: read_image(paths[k], limits=limits) for k in sorted(set(focus.select))}
    return np.stack([planes[k] for k in focus.select])


def check_training_channels(
    channels: Mapping[str, int], *, patch_sets: int = 0, where: str | os.PathLike | None = None
) -> int:
    """The input channels shared by every training source, or an error naming them.

    Parameters
    ----------
    channels : mapping
        Training plate -> kept planes (1 for a single-plane plate).
    patch_sets : int
        Number of pre-tiled patch sets (single-plane) trained on as well.
    where : path-like, optional
        Named in the error (the sheet).

    Returns
    -------
    int
        1 or 3 (1 when there is nothing to train on).

    Raises
    ------
    InputError
        Training sources with different plane counts: one model takes one kind of input.
    """
    kinds: dict[int, list[str]] = {}
    for plate, n in channels.items():
        kinds.setdefault(int(n), []).append(str(plate))
    if patch_sets:
        kinds.setdefault(1, []).append(f"{patch_sets} patch set(s)")
    if len(kinds) > 1:
        listing = "; ".join(
            f"{n} plane(s): {', '.join(names)}" for n, names in sorted(kinds.items())
        )
        raise InputError(
            where,
            f"training data mix images of different focal plane counts ({listing}): the "
            "models take one kind of input; train on plates with the same z_planes/z_select "
            "(set use_for_training false for the others, or train them in a separate run)",
        )
    return next(iter(kinds), 1)


def annotations_to_images(manifest: str | os.PathLike) -> pd.DataFrame:
    """Re-key an annotation import of a multi-focal plate from plane files to images.

    An annotation drawn on plane file ``<stem>_z<k>`` is the mask of image ``<stem>``: its
    ``<stem>_z<k>_labels.tif`` and ``_mask.png`` (written by the import beside
    ``manifest``) become ``<stem>_labels.tif`` and ``<stem>_mask.png`` and the manifest's
    ``stem`` becomes ``<stem>``, the image id of the plate store.  The manifest is
    rewritten (atomically) last.

    Returns
    -------
    DataFrame
        The rewritten manifest.

    Raises
    ------
    InputError
        Two planes of one image annotated (one mask per multi-focal image).
    """
    manifest = Path(manifest)
    df = pd.read_parquet(manifest)
    bases = [split_plane_suffix(s)[0] for s in df["stem"]]
    seen: dict[str, str] = {}
    for stem, base in zip(df["stem"], bases, strict=True):
        if base in seen:
            raise InputError(
                manifest,
                f"image {base!r} is annotated twice ({seen[base]!r} and {stem!r}): a "
                "multi-focal image has one mask, drawn on one of its planes",
            )
        seen[base] = stem
    out_dir = manifest.parent
    for stem, base in zip(df["stem"], bases, strict=True):
        if stem != base:
            for suffix in ("_labels.tif", "_mask.png"):
                os.replace(out_dir / f"{stem}{suffix}", out_dir / f"{base}{suffix}")
    df["stem"] = bases
    df = df.sort_values("stem", kind="stable").reset_index(drop=True)
    write_parquet(df, manifest)
    return df


def display_plane(image: np.ndarray) -> np.ndarray:
    """The 2-D image to show and measure intensities on: the middle channel of planes."""
    image = np.asarray(image)
    return image if image.ndim == 2 else image[..., image.shape[-1] // 2]
