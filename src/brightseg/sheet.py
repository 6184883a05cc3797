"""The plate sheet: which plates exist, where their images are, how file names map to wells.

The sheet (``config/plates.tsv``) has one row per plate with at least the columns
``plate``, ``images`` (a directory or a glob), ``modality`` (brightfield|phase),
``pixel_size_um``, ``annotations`` (path to a CVAT export, may be empty) and
``use_for_training``.  Image file names map to well / field / timepoint through a
regular expression with named groups (``row``, ``column`` and optionally ``field``,
``timepoint``; or ``well`` such as ``B03``).

Everything here runs when Snakemake parses the workflow, so a broken sheet stops the
run before any job starts, with a message naming the file and the problem.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from .errors import InputError
from .focus import Focus, group_planes, plate_focus
from .io import IMAGE_SUFFIXES, cached_image_header
from .limits import Limits, get_limits

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "plate",
    "images",
    "modality",
    "pixel_size_um",
    "annotations",
    "use_for_training",
)
MODALITIES = ("brightfield", "phase")
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}


def _as_bool(value, path, plate) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE or text == "nan":
        return False
    raise InputError(path, f"plate {plate!r}: use_for_training must be true/false, got {value!r}")


def _sheet_text(path: Path) -> str:
    """The sheet's text without whole-line ``#`` comments and blank lines.

    Only a line whose first non-blank character is ``#`` is a comment: a ``#`` inside a
    value (a plate id, a path) is kept.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"plate sheet is not UTF-8 text ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and "\t" not in lines[0]:
        for sep, name in ((",", "commas"), (";", "semicolons")):
            if sep in lines[0]:
                raise InputError(
                    path,
                    f"plate sheet is not tab-separated: its header {lines[0][:80]!r} is "
                    f"separated by {name}; use tabs between columns (a .tsv file)",
                )
    return "\n".join(lines) + "\n"


def _check_pixel_sizes(df: pd.DataFrame, path: Path, lim: Limits) -> pd.Series:
    raw = df["pixel_size_um"]
    sizes = pd.to_numeric(raw, errors="coerce")
    bad = df.loc[sizes.isna() | ~(sizes > 0), ["plate", "pixel_size_um"]]
    if len(bad):
        values = ", ".join(f"{p}={v!r}" for p, v in bad.itertuples(index=False))
        hint = (
            "; use a decimal point, not a comma (0.65)"
            if bad["pixel_size_um"].str.contains(",").any()
            else ""
        )
        raise InputError(
            path,
            f"plate(s) {bad['plate'].tolist()}: pixel_size_um must be a positive number "
            f"in micrometres, got {values}{hint}",
        )
    lo, hi = lim.min_pixel_size_um, lim.max_pixel_size_um
    out = df.loc[~((sizes >= lo) & (sizes <= hi)), ["plate", "pixel_size_um"]]
    if len(out):
        values = ", ".join(f"{p}={v!r}" for p, v in out.itertuples(index=False))
        raise InputError(
            path,
            f"plate(s) {out['plate'].tolist()}: pixel_size_um must be a positive number "
            f"between {lo:g} and {hi:g} um (limits.min_pixel_size_um, "
            f"limits.max_pixel_size_um), got {values}",
        )
    return sizes.astype(float)


def read_sheet(path: str | os.PathLike, limits: Limits | None = None) -> pd.DataFrame:
    """Read and check the plate sheet (TSV).

    Parameters
    ----------
    path : path-like
        Tab-separated file with the columns in :data:`REQUIRED_COLUMNS`.  Lines whose
        first non-blank character is ``#`` are comments; a ``#`` inside a value is kept.
    limits : Limits, optional
        The sane range of ``pixel_size_um`` (default
        :data:`~brightseg.limits.DEFAULT_LIMITS`).

    Returns
    -------
    DataFrame
        Indexed by ``plate``; ``pixel_size_um`` float, ``use_for_training`` bool,
        ``annotations`` a string ('' when absent).

    Raises
    ------
    InputError
        Missing columns, duplicate plate ids, a non-numeric, non-positive or out-of-range
        pixel size, an unknown modality, an invalid plate id; a sheet separated by commas
        or semicolons instead of tabs.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "plate sheet does not exist")
    text = _sheet_text(path)
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot parse the plate sheet as TSV ({exc})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {missing}; found {list(df.columns)}")
    if df.empty:  # no plates yet (e.g. training on patch sets only): allowed
        return empty_sheet()
    df = df.apply(lambda col: col.str.strip())
    bad_ids = [p for p in df["plate"] if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", p)]
    if bad_ids:
        raise InputError(
            path, f"invalid plate id(s) {bad_ids}: use letters, digits, '.' and '-' only"
        )
    dup = df["plate"][df["plate"].duplicated()].unique().tolist()
    if dup:
        raise InputError(path, f"duplicate plate id(s): {dup}")
    df["pixel_size_um"] = _check_pixel_sizes(df, path, get_limits(limits))
    bad_mod = df.loc[~df["modality"].isin(MODALITIES), ["plate", "modality"]]
    if len(bad_mod):
        rows = ", ".join(f"{p}={m!r}" for p, m in bad_mod.itertuples(index=False))
        raise InputError(path, f"unknown modality ({rows}); expected one of {MODALITIES}")
    df["use_for_training"] = [
        _as_bool(v, path, p) for p, v in zip(df["plate"], df["use_for_training"], strict=True)
    ]
    trainers = df.loc[df["use_for_training"] & (df["annotations"] == ""), "plate"].tolist()
    if trainers:
        raise InputError(path, f"plate(s) {trainers} have use_for_training but no annotations")
    for _, row in df.iterrows():  # optional z_planes / z_select (multi-focal plates)
        plate_focus(row, sheet=path)
    return df.set_index("plate", drop=False)


def empty_sheet() -> pd.DataFrame:
    """A plate sheet without plates (no ``plates:`` in the config, or a header-only sheet)."""
    df = pd.DataFrame({c: pd.Series(dtype=str) for c in REQUIRED_COLUMNS})
    df["pixel_size_um"] = df["pixel_size_um"].astype(float)
    df["use_for_training"] = df["use_for_training"].astype(bool)
    return df.set_index("plate", drop=False)


def compile_regex(pattern: str) -> re.Pattern:
    """Compile the file-name regex and check its named groups.

    The pattern must define ``row`` and ``column`` groups, or a ``well`` group such as
    ``B03``; ``field`` and ``timepoint`` are optional (default 0).
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise InputError("config:filename_regex", f"invalid regular expression: {exc}") from None
    groups = set(rx.groupindex)
    if not ({"row", "column"} <= groups or "well" in groups):
        raise InputError(
            "config:filename_regex",
            f"needs named groups (?P<row>..) and (?P<column>..), or (?P<well>..); has {sorted(groups)}",
        )
    return rx


def _group_int(g: dict, name: str, value: str | None, digits: int) -> int:
    if value is None or value == "":
        return 0
    if not (value.isascii() and value.isdigit() and len(value) <= digits):
        raise InputError(
            None,
            f"filename_regex group {name!r} captured {value[:20]!r}, not a number of at most "
            f"{digits} digits: make the group match digits only, e.g. (?P<{name}>\\d+)",
        )
    return int(value)


def parse_name(stem: str, rx: re.Pattern) -> dict | None:
    """Map a file stem to row (letter), column (int), field (int), timepoint (int).

    Returns None when the regex does not match.

    Raises
    ------
    InputError
        (Without a path.)  A group that matched something else than its kind of value:
        a row that is not letters, a column, field or timepoint that is not a number.
    """
    m = rx.search(stem)
    if m is None:
        return None
    g = m.groupdict()
    if g.get("row") is not None and g.get("column") is not None:
        row, col = g["row"], g["column"]
    else:
        wm = re.fullmatch(r"([A-Za-z]+)0*(\d+)", g.get("well") or "")
        if wm is None:
            if g.get("well") is None:
                return None
            raise InputError(
                None,
                f"filename_regex group 'well' captured {g['well'][:20]!r}, not a well such as B03",
            )
        row, col = wm.group(1), wm.group(2)
    if not re.fullmatch(r"[A-Za-z]{1,3}", row):
        raise InputError(
            None,
            f"filename_regex group 'row' captured {row[:20]!r}, not 1-3 letters: make the "
            "group match letters only, e.g. (?P<row>[A-P])",
        )
    row = row.upper()
    column = _group_int(g, "column", col, 4)
    return {
        "row": row,
        "column": column,
        "well": f"{row}{column:02d}",
        "field": _group_int(g, "field", g.get("field"), 9),
        "timepoint": _group_int(g, "timepoint", g.get("timepoint"), 9),
    }


def list_images(spec: str, *, base: str | os.PathLike = ".") -> list[Path]:
    """List the image files of a plate: ``spec`` is a directory or a glob pattern."""
    spec_path = Path(base) / spec
    if any(ch in spec for ch in "*?["):
        files = [Path(p) for p in glob.glob(str(spec_path))]
    elif spec_path.is_dir():
        files = list(spec_path.iterdir())
    else:
        return []
    return sorted(
        p
        for p in files
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def plate_images(
    plate: str,
    spec: str,
    rx: re.Pattern,
    *,
    sheet_path: str = "config/plates.tsv",
    on_bad_input: str = "error",
    limits: Limits | None = None,
    focus: Focus | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Build the image table of one plate from its directory or glob.

    With ``focus`` (a multi-focal plate, :func:`brightseg.focus.plate_focus`) the files
    are first grouped into images of ``focus.planes`` planes
    (:func:`brightseg.focus.group_planes`: ``<stem>_z<k>`` files, or multi-page TIFFs) and
    the regex is applied to ``<stem>``; the table's ``path`` is the image's first file and
    its ``planes`` column lists all of them in plane order.

    Every image's header is read (not its pixels; cached per file): images whose size
    differs from the plate's most common size are an error, or under ``skip`` are
    skipped, so a plate never fails half-way through its correction job.  A file whose
    header cannot be read is left to the job that reads it (which reports it).

    Returns
    -------
    images : DataFrame
        Columns image_id (file stem), path, row, column, well, field, timepoint; sorted.
    skipped : list of (file, reason)
        Files skipped under ``on_bad_input: skip``.

    Raises
    ------
    InputError
        Missing directory, no images, a regex that matches none of the files, or (unless
        skipping) a file name the regex does not match or whose groups capture something
        else than a row letter and numbers, two images mapping to the same well / field /
        timepoint, images of different sizes.
    """
    if not any(ch in spec for ch in "*?[") and not Path(spec).is_dir():
        raise InputError(spec, f"plate {plate!r}: image directory does not exist ({sheet_path})")
    files = list_images(spec)
    if not files:
        raise InputError(spec, f"plate {plate!r}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    rows, skipped = [], []
    if focus is None:
        images = [(f.stem, [f]) for f in files]
    else:
        try:
            images = group_planes(files, focus.planes, skipped if on_bad_input == "skip" else None)
            images = _check_stack_pages(plate, images, focus, limits, skipped, on_bad_input)
        except InputError as exc:
            raise InputError(exc.path, f"plate {plate!r}: {exc.message}") from None
    for stem, paths in images:
        f = paths[0]
        try:
            meta = parse_name(stem, rx)
        except InputError as exc:
            if on_bad_input != "skip":
                raise InputError(f, f"plate {plate!r}: {exc.message}") from None
            skipped.append((str(f), exc.message))
            continue
        if meta is None:
            skipped.append((str(f), "file name does not match filename_regex"))
            continue
        extra = {} if focus is None else {"planes": [str(p) for p in paths]}
        rows.append({"image_id": stem, "path": str(f), **meta, **extra})
    if not rows:
        raise InputError(
            spec,
            f"plate {plate!r}: filename_regex {rx.pattern!r} matches none of {len(files)} files",
        )
    if skipped and on_bad_input != "skip":
        raise InputError(
            skipped[0][0],
            f"plate {plate!r}: file name does not match filename_regex {rx.pattern!r}",
        )
    df = pd.DataFrame(rows).sort_values(["row", "column", "field", "timepoint", "image_id"])
    key = ["row", "column", "field", "timepoint"]
    dup = df[df.duplicated(key, keep=False)]
    if len(dup):
        if on_bad_input != "skip":
            names = ", ".join(dup["path"].head(4))
            raise InputError(names, f"plate {plate!r}: images map to the same well/field/timepoint")
        first = dup.drop_duplicates(key, keep="first")
        for p in dup.loc[~dup.index.isin(first.index), "path"]:
            skipped.append((p, "another image maps to the same well/field/timepoint"))
        df = df.drop_duplicates(key, keep="first")
    dup_ids = df[df["image_id"].duplicated()]["image_id"].tolist()
    if dup_ids:
        raise InputError(spec, f"plate {plate!r}: duplicate image stems {dup_ids[:4]}")
    df, odd = _drop_odd_sizes(plate, spec, df, on_bad_input, limits)
    skipped.extend(odd)
    return df.reset_index(drop=True), skipped


def _check_stack_pages(
    plate: str,
    images: list[tuple[str, list[Path]]],
    focus: Focus,
    limits: Limits | None,
    skipped: list[tuple[str, str]],
    on_bad_input: str,
) -> list[tuple[str, list[Path]]]:
    """Multi-page TIFFs of a multi-focal plate must have ``focus.planes`` pages (header)."""
    kept = []
    for stem, paths in images:
        pages = focus.planes
        if len(paths) == 1:
            try:
                pages = cached_image_header(paths[0], limits).pages
            except (InputError, OSError):
                pass  # unreadable: the job reading it reports it
        if pages == focus.planes:
            kept.append((stem, paths))
            continue
        exc = InputError(
            paths[0],
            f"{pages} page(s) but z_planes is {focus.planes}: a multi-focal image is one "
            f"TIFF of {focus.planes} pages or {focus.planes} files <stem>_z<k>",
        )
        if on_bad_input != "skip":
            raise exc
        skipped.append((exc.path, exc.message))
    return kept


def _fmt_size(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def _drop_odd_sizes(
    plate: str, spec: str, df: pd.DataFrame, on_bad_input: str, limits: Limits | None
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Images whose header size differs from the plate's most common size."""
    sizes: dict[str, tuple[int, int]] = {}
    for path in df["path"]:
        try:
            sizes[path] = cached_image_header(path, limits).shape
        except (InputError, OSError):
            continue  # unreadable or over a limit: the job reading it reports it
    counts = Counter(sizes.values())
    if len(counts) <= 1:
        return df, []
    first = {}
    for path, size in sizes.items():
        first.setdefault(size, path)
    # Most common size; ties go to the size of the first image in name order.
    order = list(first)
    common = max(order, key=lambda s: (counts[s], -order.index(s)))
    odd = [p for p, s in sizes.items() if s != common]
    if on_bad_input != "skip":
        listing = "; ".join(f"{_fmt_size(s)} ({counts[s]} images, e.g. {first[s]})" for s in order)
        raise InputError(
            odd[0],
            f"plate {plate!r}: images differ in size (width x height): {listing}; every "
            "image of a plate must have the same size (or set on_bad_input: skip to leave "
            "out those not of the most common size)",
        )
    rows = [
        (
            p,
            f"image is {_fmt_size(sizes[p])} (width x height) but most images of plate "
            f"{plate!r} are {_fmt_size(common)}",
        )
        for p in odd
    ]
    return df[~df["path"].isin(odd)], rows


def discover_plates(
    pattern: str,
    *,
    modality: str = "brightfield",
    pixel_size_um: float,
    known: set[str] = frozenset(),
) -> pd.DataFrame:
    """Plates found by globbing directories: dropping a folder in is enough.

    Each directory matching ``pattern`` becomes an unannotated plate whose id is the
    directory name, unless the sheet already lists that id.

    Returns
    -------
    DataFrame
        Rows in the sheet's format (indexed by plate), sorted by plate id.
    """
    if modality not in MODALITIES:
        raise InputError("config:plate_discovery.modality", f"unknown modality {modality!r}")
    rows = []
    for d in sorted(glob.glob(pattern)):
        path = Path(d)
        if not path.is_dir() or path.name in known or path.name.startswith("."):
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", path.name):
            raise InputError(path, "discovered plate directory name is not a valid plate id")
        rows.append(
            {
                "plate": path.name,
                "images": str(path),
                "modality": modality,
                "pixel_size_um": float(pixel_size_um),
                "annotations": "",
                "use_for_training": False,
            }
        )
    df = pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))
    return df.set_index("plate", drop=False)
