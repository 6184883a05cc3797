"""Explicit limits on what an input file may ask for.

Every reader that allocates memory in proportion to a number read from a file, or that
hands the file's content to native code, checks that number against a limit first and
refuses the file (an :class:`~brightseg.errors.InputError` naming the file, the item and
the limit) instead of allocating.  The limits live in one frozen dataclass,
:class:`Limits`; :data:`DEFAULT_LIMITS` holds the documented defaults (README, "Limits
and bad input").  Functions that need a limit take ``limits: Limits | None = None``
(None: the defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import InputError

__all__ = ["Limits", "DEFAULT_LIMITS", "get_limits"]


@dataclass(frozen=True)
class Limits:
    """Limits on input files and parameters.

    Attributes
    ----------
    max_image_pixels : int
        Most pixels (height x width) of one image or mask, in every format (TIFF, PNG,
        JPEG), and of an image size declared in an annotation export.  Default
        268,435,456 (16384 x 16384).
    max_image_pages : int
        Most pages (IFDs) of a TIFF file.  Default 10,000.
    max_export_bytes : int
        Most bytes of an annotation export (XML or JSON), as a file or decompressed from
        a zip member (declared and actual size).  Default 1 GiB.
    max_annotations : int
        Most annotations (COCO ``annotations`` entries, CVAT shapes) of one export.
        Default 2,000,000.
    max_json_depth : int
        Deepest nesting of arrays/objects in a JSON file.  Default 64.
    max_int_digits : int
        Most digits of one integer in a JSON file.  Default 30.
    max_illumination_radius_px : int
        Largest top-hat radius, in pixels.  Default 4096.
    max_pixel_size_um : float
        Largest pixel size in micrometres (plate sheet, command line).  Default 1000.
    min_pixel_size_um : float
        Smallest pixel size in micrometres.  Default 0.001.
    """

    max_image_pixels: int = 16384 * 16384
    max_image_pages: int = 10_000
    max_export_bytes: int = 1 << 30
    max_annotations: int = 2_000_000
    max_json_depth: int = 64
    max_int_digits: int = 30
    max_illumination_radius_px: int = 4096
    max_pixel_size_um: float = 1000.0
    min_pixel_size_um: float = 0.001

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InputError(f"limits.{f.name}", f"must be a positive number, got {value!r}")
        if self.min_pixel_size_um >= self.max_pixel_size_um:
            raise InputError(
                "limits.min_pixel_size_um",
                f"must be below limits.max_pixel_size_um ({self.max_pixel_size_um})",
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> Limits:
        """Limits from a config mapping (the ``limits:`` block); missing keys keep defaults.

        Raises
        ------
        InputError
            An unknown key or a value that is not a positive number.
        """
        if not config:
            return DEFAULT_LIMITS
        names = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise InputError("config:limits", f"unknown key(s) {unknown}; known: {sorted(names)}")
        values = {}
        for key, value in config.items():
            default = getattr(DEFAULT_LIMITS, key)
            try:
                if isinstance(value, bool):
                    raise TypeError
                number = float(value)  # YAML reads 1e9 as the string '1e9'
                if isinstance(default, int):
                    if not number.is_integer():
                        raise ValueError
                    number = int(number)
                values[key] = number
            except (TypeError, ValueError, OverflowError):
                raise InputError(
                    f"config:limits.{key}",
                    f"must be a {'whole ' if isinstance(default, int) else ''}number, "
                    f"got {value!r}",
                ) from None
        return replace(DEFAULT_LIMITS, **values)


#: The documented defaults.
DEFAULT_LIMITS = Limits()


def get_limits(limits: Limits | None) -> Limits:
    """``limits``, or :data:`DEFAULT_LIMITS` when None."""
    return DEFAULT_LIMITS if limits is None else limits


def check_pixels(height: int, width: int, what: str, path, limits: Limits | None = None) -> None:
    """Refuse an image size over ``max_image_pixels`` (raises :class:`InputError`)."""
    lim = get_limits(limits)
    if int(height) * int(width) > lim.max_image_pixels:
        raise InputError(
            path,
            f"{what} is {int(width)}x{int(height)} px (width x height), "
            f"{int(width) * int(height):,} pixels, over the limit of "
            f"{lim.max_image_pixels:,} (limits.max_image_pixels); split or downscale it, "
            "or raise the limit",
        )
