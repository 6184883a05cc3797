"""Atomic writes and defensive image reading shared by every stage.

Outputs are written to a temporary name in the destination directory and
renamed into place, so a killed job never leaves a file (or a zarr store) that
looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .errors import InputError
from .limits import Limits, check_pixels, get_limits

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False):
    """Yield a temporary path that is renamed to ``path`` on success.

    Parameters
    ----------
    path : path-like
        Final destination (a file, or a directory such as a zarr store).
    is_dir : bool
        If True the temporary path is a (not yet existing) directory name.

    Notes
    -----
    The temporary path lives in the same directory as ``path`` so the final
    ``os.replace`` is atomic.  An existing destination is replaced.  On an
    exception the temporary path is removed and the destination is untouched.

    The temporary name is ``.<name>.tmp-<host>-<pid>-<random><suffix>``.  A job killed
    with SIGKILL cannot clean up, so before starting, the temporaries of the same
    ``path`` left by processes of this host that no longer run are removed (see
    :func:`remove_stale_temporaries`).
    """
    path = Path(path)
    if not is_dir and path.is_dir():
        raise InputError(path, "output path is an existing directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(path, "cannot create the output's folder: a file is in the way") from None
    except PermissionError:
        raise InputError(path, "cannot create the output's folder: permission denied") from None
    suffix = "".join(path.suffixes)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    if is_dir:
        tmp.unlink()
    try:
        yield tmp
        _default_permissions(tmp)
        if is_dir:
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname() or "host")[:64]


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{_host_tag()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


#: Per directory, the temporaries (of any output) found by this process's first scan.
_TEMPORARIES: dict[str, list[str]] = {}


def _temporaries_in(directory: Path) -> list[str]:
    """Names of ``.*.tmp-*`` entries of ``directory``, scanned once per process.

    A directory that receives many outputs (one per image) is listed once, not once per
    output.  Temporaries made after the scan belong to processes that were running.
    """
    key = os.path.abspath(directory)
    if key not in _TEMPORARIES:
        try:
            with os.scandir(directory) as it:
                _TEMPORARIES[key] = [
                    e.name for e in it if e.name.startswith(".") and ".tmp-" in e.name
                ]
        except OSError:
            return []
    return _TEMPORARIES[key]


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``path`` left by killed processes (of :func:`atomic_path`).

    A temporary ``.<name>.tmp-<host>-<pid>-...`` is removed when ``<host>`` is this
    host and no process ``<pid>`` runs; those of live processes and of other hosts
    (which cannot be checked from here) are kept.  The directory is listed once per
    process (see :func:`_temporaries_in`).

    Returns
    -------
    list of Path
        The removed temporaries.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}.tmp-"
    names = _temporaries_in(path.parent)
    mine = [n for n in names if n.startswith(prefix)]
    if not mine:
        return []
    rx = re.compile(re.escape(prefix) + r"(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[^/]*$")
    host = _host_tag()
    removed = []
    for name in mine:
        m = rx.match(name)
        if m is None or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        entry = path.parent / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        names.remove(name)
        log.warning("removed %s, left by a killed process (pid %d)", entry, pid)
        removed.append(entry)
    return removed


def _default_permissions(path: Path) -> None:
    """Give a finished output the permissions a plain ``open()`` would (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    if path.is_dir():
        os.chmod(path, 0o777 & ~umask)
    elif path.exists():
        os.chmod(path, 0o666 & ~umask)


def write_parquet(df, path: str | os.PathLike, **kwargs) -> None:
    """Write a pandas DataFrame to parquet atomically (pyarrow, no index)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, engine="pyarrow", index=False, **kwargs)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write text atomically (UTF-8, ``\\n`` line endings)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)


def write_tiff(array: np.ndarray, path: str | os.PathLike, **kwargs) -> None:
    """Write a TIFF atomically with tifffile (deterministic: no datetime tag)."""

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, metadata=None, **kwargs)


def write_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write an 8/16-bit greyscale or RGB PNG atomically."""

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


@dataclass(frozen=True)
class ImageHeader:
    """What an image file declares, read from its header without decoding pixels.

    Attributes
    ----------
    height, width : int
        Size of the image :func:`read_image` decodes (for a TIFF: of ``page``).
    samples : int
        Samples (channels) per pixel as stored (1 grey, 2 grey + alpha, 3 RGB, ...).
    dtype : str
        Sample dtype (``"uint8"``, ``"uint16"``, ...), ``""`` if unknown.
    pages : int
        Number of pages (TIFF) or frames; 1 for PNG/JPEG.
    page : int
        Index of the page :func:`read_image` decodes (the largest of a TIFF whose pages
        differ in size, e.g. a thumbnail and the full image).
    stack : bool
        True for a TIFF of several full-size pages (a z-stack or time series).
    format : str
        ``"TIFF"``, ``"PNG"``, ``"JPEG"``, ...
    mode : str
        Pillow mode (``"L"``, ``"P"``, ``"CMYK"``, ...) or TIFF photometric name.
    """

    height: int
    width: int
    samples: int = 1
    dtype: str = ""
    pages: int = 1
    page: int = 0
    stack: bool = False
    format: str = ""
    mode: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)


@contextlib.contextmanager
def _pillow_limit(lim: Limits):
    """Let Pillow open up to our pixel limit (we check it ourselves, from the header)."""

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(lim.max_image_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield Image
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _tiff_header(tf, path: Path, lim: Limits) -> ImageHeader:
    pages = tf.pages
    n = len(pages)
    if n == 0:
        raise InputError(path, "cannot read image (TIFF holds no image: truncated or corrupt file)")
    if n > lim.max_image_pages:
        raise InputError(
            path,
            f"TIFF has {n} pages, over the limit of {lim.max_image_pages} (limits.max_image_pages)",
        )
    pages.useframes = False
    sizes = []
    for i in range(n):
        p = pages[i]
        depth = int(getattr(p, "imagedepth", 1) or 1)
        if depth > 1:
            raise InputError(
                path, f"expected a 2-D image, got a 3-D TIFF page of depth {depth} (page {i})"
            )
        sizes.append((int(p.imagelength), int(p.imagewidth)))
    areas = [h * w for h, w in sizes]
    best = max(range(n), key=lambda i: (areas[i], -i))
    stack = n > 1 and areas.count(areas[best]) > 1
    page = pages[best]
    h, w = sizes[best]
    check_pixels(h, w, "image", path, lim)
    dtype = page.dtype
    return ImageHeader(
        height=h,
        width=w,
        samples=int(page.samplesperpixel),
        dtype="" if dtype is None else str(np.dtype(dtype)),
        pages=n,
        page=best,
        stack=stack,
        format="TIFF",
        mode=str(getattr(page.photometric, "name", page.photometric)),
    )


def image_header(path: str | os.PathLike, limits: Limits | None = None) -> ImageHeader:
    """Read an image file's header (size, samples, dtype, pages) without decoding pixels.

    Parameters
    ----------
    path : path-like
        TIFF (tifffile), PNG or JPEG (Pillow) file.
    limits : Limits, optional
        ``max_image_pixels`` and ``max_image_pages`` are enforced (default
        :data:`~brightseg.limits.DEFAULT_LIMITS`).

    Returns
    -------
    ImageHeader

    Raises
    ------
    InputError
        Missing, empty or unreadable file; a size over the limits.
    """
    lim = get_limits(limits)
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                return _tiff_header(tf, path, lim)
        with _pillow_limit(lim) as Image:
            try:
                im = Image.open(path)
            except Image.DecompressionBombError:
                raise InputError(
                    path,
                    f"image is over twice the limit of {lim.max_image_pixels:,} pixels "
                    "(limits.max_image_pixels); split or downscale it, or raise the limit",
                ) from None
            with im:
                w, h = (int(v) for v in im.size)
                check_pixels(h, w, "image", path, lim)
                return ImageHeader(
                    height=h,
                    width=w,
                    samples=len(im.getbands()),
                    dtype="",
                    pages=int(getattr(im, "n_frames", 1) or 1),
                    format=str(im.format or path.suffix.lstrip(".").upper()),
                    mode=str(im.mode),
                )
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is bad input
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None


@functools.lru_cache(maxsize=65536)
def _cached_header(path: str, mtime_ns: int, size: int, limits: Limits) -> ImageHeader:
    return image_header(path, limits)


def cached_image_header(path: str | os.PathLike, limits: Limits | None = None) -> ImageHeader:
    """:func:`image_header`, cached per (path, modification time, size) in this process."""
    st = os.stat(path)
    return _cached_header(os.fspath(path), st.st_mtime_ns, st.st_size, get_limits(limits))


def _tiff_display(page, arr: np.ndarray, path: Path) -> np.ndarray:
    """A decoded TIFF page as displayed: samples last, palette/CMYK/min-is-white resolved."""
    photometric = int(page.photometric)
    samples = int(page.samplesperpixel)
    if samples > 1 and int(page.planarconfig) == 2 and arr.ndim == 3 and arr.shape[0] == samples:
        arr = np.moveaxis(arr, 0, -1)  # planar (S, H, W) -> (H, W, S)
    if photometric == 3 and page.colormap is not None and arr.ndim == 2:  # palette
        cmap = np.asarray(page.colormap)
        if arr.dtype.kind not in "ui" or int(arr.max()) >= cmap.shape[-1]:
            raise InputError(path, "palette TIFF has indices outside its colour map")
        arr = np.moveaxis(cmap[:, arr], 0, -1)
        if np.all(cmap % 257 == 0):
            arr = (arr // 257).astype(np.uint8)
    elif photometric == 0 and arr.ndim == 2 and arr.dtype.kind in "ui":  # min-is-white
        arr = np.iinfo(arr.dtype).max - arr
    elif photometric == 5 and arr.ndim == 3 and arr.shape[-1] >= 4 and arr.dtype.kind == "u":
        top = float(np.iinfo(arr.dtype).max)  # separated (CMYK) -> RGB
        cmy, k = arr[..., :3].astype(np.float64), arr[..., 3:4].astype(np.float64)
        arr = np.round((top - cmy) * (top - k) / top).astype(arr.dtype)
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha (or one extra sample)
        if not len(page.extrasamples):
            log.warning("%s: 2-sample TIFF read as its first sample (grey + alpha?)", path)
        arr = arr[..., 0]
    return arr


def read_image(
    path: str | os.PathLike, *, grey: bool = True, limits: Limits | None = None
) -> np.ndarray:
    """Read a 2-D microscopy image, failing with a clear :class:`InputError`.

    Parameters
    ----------
    path : path-like
        TIFF, PNG or JPEG file.
    grey : bool
        If True, an RGB(A) image whose channels are equal is reduced to one
        channel; an RGB image with different channels is converted to
        luminance (ITU-R 601-2, as Pillow's ``L`` mode) with a logged warning.
    limits : Limits, optional
        Pixel and page limits, checked from the header before decoding (default
        :data:`~brightseg.limits.DEFAULT_LIMITS`).

    Returns
    -------
    ndarray
        2-D array (or ``(H, W, C)`` if ``grey`` is False) in the file's dtype.
        Images are returned as displayed: a palette image as its colours, a CMYK
        JPEG/TIFF as RGB, a min-is-white TIFF inverted, planar RGB as ``(H, W, 3)``;
        the alpha channel of grey + alpha is dropped (of RGBA too when ``grey``).  Of a TIFF whose pages differ in size (a
        thumbnail or a pyramid) the largest page is read, with a logged warning.

    Raises
    ------
    InputError
        Missing, empty, truncated or unreadable file; a size over the limits; a stack
        with more than one full-size plane; non-finite values.
    """
    path = Path(path)
    header = image_header(path, limits)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            if header.stack:
                raise InputError(
                    path,
                    "expected a 2-D image, got an array of shape "
                    f"{(header.pages, header.height, header.width)}"
                    + ("" if header.samples == 1 else f" x {header.samples} samples")
                    + " (a multi-page TIFF of equal-size pages: a z-stack or time series; "
                    "save one plane per file)",
                )
            with tifffile.TiffFile(path) as tf:
                tf.pages.useframes = False
                page = tf.pages[header.page]
                _check_tiff_page(page, path)
                if header.pages > 1:
                    log.warning(
                        "%s: TIFF has %d pages of different sizes (thumbnail or pyramid); "
                        "reading the largest, page %d (%dx%d)",
                        path,
                        header.pages,
                        header.page,
                        header.width,
                        header.height,
                    )
                arr = _tiff_display(page, np.asarray(page.asarray()), path)
        else:
            with _pillow_limit(get_limits(limits)) as Image:
                with Image.open(path) as im:
                    im.load()
                    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                        im = im.convert("RGB")  # displayed colours (alpha dropped)
                    arr = np.asarray(im)
                    if im.mode in ("LA", "La"):
                        arr = arr[..., 0]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is bad input
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    arr = np.squeeze(arr) if arr.ndim > 2 and 1 in arr.shape[:-1] else arr
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if grey:
            rgb = arr[..., :3]
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
                rgb[..., 0], rgb[..., 2]
            ):
                arr = rgb[..., 0]
            else:
                log.warning("%s: RGB image converted to luminance", path)
                lum = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
                arr = np.round(lum).astype(rgb.dtype)
    if arr.size == 0:
        raise InputError(path, "image has no pixels")
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[-1] in (3, 4) and not grey):
        raise InputError(path, f"expected a 2-D image, got an array of shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(path, "image contains NaN or infinite values")
    return arr


# --------------------------------------------------------------------------- JSON


class _TooManyDigits(Exception):
    pass


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in JSON text (brackets in strings ignored).

    Counted without recursion and in bounded memory (16 MB chunks), so a hostile file
    nested 200,000 levels deep is measured, not parsed.
    """
    raw = _JSON_STRING.sub('""', text).encode("utf-8", "replace")
    depth = deepest = 0
    chunk = 1 << 24
    for i in range(0, len(raw), chunk):
        a = np.frombuffer(raw, dtype=np.uint8, count=min(chunk, len(raw) - i), offset=i)
        step = (a == 91).astype(np.int32) + (a == 123) - (a == 93) - (a == 125)
        run = np.cumsum(step, dtype=np.int64) + depth
        if run.size:
            deepest = max(deepest, int(run.max()))
            depth = int(run[-1])
    return deepest


def load_json(
    data: bytes | str, src: str | os.PathLike | None, limits: Limits | None = None
) -> object:
    """Parse JSON from an untrusted file: size, nesting depth and integer digits limited.

    Parameters
    ----------
    data : bytes or str
        The file's content (UTF-8, a byte-order mark is allowed).
    src : path-like or str
        Named in error messages.
    limits : Limits, optional
        ``max_export_bytes``, ``max_json_depth``, ``max_int_digits``.

    Returns
    -------
    object
        The parsed document.

    Raises
    ------
    InputError
        Not UTF-8, not valid JSON (line and column), too large, nested too deep, an
        integer with too many digits.
    """
    lim = get_limits(limits)
    if len(data) > lim.max_export_bytes:
        raise InputError(
            src,
            f"JSON file has {len(data):,} bytes, over the limit of {lim.max_export_bytes:,} "
            "(limits.max_export_bytes)",
        )
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(src, f"JSON is not UTF-8 ({exc})") from None
    else:
        text = data.lstrip("\ufeff")
    depth = json_depth(text)
    if depth > lim.max_json_depth:
        raise InputError(
            src,
            f"JSON is nested {depth} levels deep, over the limit of {lim.max_json_depth} "
            "(limits.max_json_depth); this is not an annotation export",
        )

    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > lim.max_int_digits:
            raise _TooManyDigits(s)
        return int(s)

    try:
        return json.loads(text, parse_int=parse_int)
    except _TooManyDigits as exc:
        digits = len(str(exc).lstrip("-"))
        raise InputError(
            src,
            f"JSON has an integer of {digits} digits ({str(exc)[:20]}...), over the limit of "
            f"{lim.max_int_digits} (limits.max_int_digits)",
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            src, f"JSON is not valid at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise InputError(src, "JSON is nested too deeply to parse") from None


def _check_tiff_page(page, path: Path) -> None:
    """Check that a TIFF page's pixel data lies in the file and fills the image.

    tifffile reads uncompressed strips by the size the header implies, so a file
    whose header says 16-bit but whose strips hold 8-bit data (followed by other
    bytes) would otherwise decode silently into garbage.
    """
    offsets = [int(o) for o in page.dataoffsets]
    counts = [int(c) for c in page.databytecounts]
    if not counts:
        return
    size = path.stat().st_size
    end = max(o + c for o, c in zip(offsets, counts, strict=True))
    if end > size:
        raise InputError(
            path,
            f"cannot read image (file is truncated: the TIFF header places pixel data up "
            f"to byte {end}, but the file has {size} bytes)",
        )
    bits = int(page.bitspersample)
    if int(page.compression) != 1 or bits % 8 or page.dtype is None:
        return
    expected = int(np.prod(page.shape)) * (bits // 8)
    if sum(counts) < expected:
        h, w = int(page.imagelength), int(page.imagewidth)
        raise InputError(
            path,
            f"cannot read image (TIFF header says {bits}-bit {w}x{h} x "
            f"{int(page.samplesperpixel)} sample(s), {expected} bytes of pixel data, but its "
            f"strips hold {sum(counts)} bytes: the header does not match the data, e.g. "
            f"8-bit data tagged as {bits}-bit)",
        )


def warn_low_bit_depth(image: np.ndarray, path: str | os.PathLike) -> bool:
    """Warn when a 16-bit image holds only 8-bit values (all pixels in 0..255).

    Such a file (8-bit data saved in a 16-bit container) is readable and is used
    as it is: the top-hat correction normalises by percentiles, so the scale of
    the raw values does not matter, but 8 bits of depth may be all the camera
    delivered, which the user should know.

    Parameters
    ----------
    image : ndarray
        The raw image, as :func:`read_image` returns it.
    path : path-like
        Its file, named in the warning.

    Returns
    -------
    bool
        True when the warning was logged.
    """
    if image.dtype not in (np.uint16, np.int16) or image.size == 0:
        return False
    lo, hi = int(image.min()), int(image.max())
    if lo < 0 or hi > 255:
        return False
    log.warning(
        "%s: 16-bit image holds only 8-bit values (%d..%d); used as is "
        "(8-bit data saved as 16-bit?)",
        path,
        lo,
        hi,
    )
    return True
