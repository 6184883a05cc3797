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

            arr = tifffile.imread(path)
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
    elif arr.ndim != 2:
        raise InputError(path, f"expected a 2-D image, got an array of shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(path, "image contains NaN or infinite values")
    if arr.size == 0:
        raise InputError(path, "image has no pixels")
    return arr
