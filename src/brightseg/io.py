"""Atomic writes and defensive image reading shared by every stage.

Outputs are written to a temporary name in the destination directory and
renamed into place, so a killed job never leaves a file (or a zarr store) that
looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError

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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
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
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, metadata=None, **kwargs)


def write_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write an 8/16-bit greyscale or RGB PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def read_image(path: str | os.PathLike, *, grey: bool = True) -> np.ndarray:
    """Read a 2-D microscopy image, failing with a clear :class:`InputError`.

    Parameters
    ----------
    path : path-like
        TIFF, PNG or JPEG file.
    grey : bool
        If True, an RGB(A) image whose channels are equal is reduced to one
        channel; an RGB image with different channels is converted to
        luminance (ITU-R 601-2, as Pillow's ``L`` mode) with a logged warning.

    Returns
    -------
    ndarray
        2-D array (or ``(H, W, C)`` if ``grey`` is False) in the file's dtype.

    Raises
    ------
    InputError
        Missing, empty, truncated or unreadable file; a stack with more than
        one plane; non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                if len(tf.pages) == 0:
                    raise InputError(
                        path, "cannot read image (TIFF holds no image: truncated or corrupt file)"
                    )
                _check_tiff_page(tf.pages[0], path)
                arr = tf.asarray()
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im)
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
