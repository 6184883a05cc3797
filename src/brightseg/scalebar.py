"""Scale-bar length: a round number of micrometres about a fifth of an image's width.

Shared by the OpenCV QC overlays (:func:`brightseg.morphometry.contour_overlay`) and the
matplotlib image panels (:func:`brightseg.figures.add_scale_bar`); pure arithmetic, so
both stay free of each other's dependencies.
"""

from __future__ import annotations

import math

#: Mantissas of the round lengths a scale bar may have (1, 2, 5 times a power of ten).
ROUND_STEPS = (1.0, 2.0, 5.0)


def scale_bar_length_um(width_px: int, pixel_size_um: float, *, fraction: float = 0.2) -> float:
    """Round length (1, 2 or 5 times a power of ten, in µm) close to ``fraction`` of the width.

    The largest round length not longer than ``fraction * width_px * pixel_size_um``;
    when even the smallest step of that decade is longer (never for ``fraction`` <= 1
    and a width of at least one pixel), that step.

    Parameters
    ----------
    width_px : int
        Image width in pixels.
    pixel_size_um : float
        Pixel size in µm (> 0).
    fraction : float
        Target length as a fraction of the width.

    Returns
    -------
    float
        The bar length in µm.

    Examples
    --------
    >>> scale_bar_length_um(1024, 0.65)  # 666 um wide: a fifth is 133 um
    100.0
    >>> scale_bar_length_um(56, 0.5)  # 28 um wide: a fifth is 5.6 um
    5.0
    """
    if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um!r}")
    if width_px < 1:
        raise ValueError(f"width_px must be >= 1, got {width_px!r}")
    target = fraction * width_px * pixel_size_um
    decade = 10.0 ** math.floor(math.log10(target))
    best = decade * ROUND_STEPS[0]
    for step in ROUND_STEPS:
        if decade * step <= target * (1 + 1e-9):
            best = decade * step
    return float(f"{best:.12g}")


def format_length(length_um: float, unit: str = "µm") -> str:
    """The bar's label: ``"100 µm"``, ``"0.5 µm"`` (no trailing zeros)."""
    return f"{length_um:g} {unit}"
