"""Watershed settings chosen on validation images, as the threshold is.

The threshold that turns the ensemble's probability into a mask is chosen on validation data
(:func:`brightseg.metrics.choose_threshold`); the watershed that splits the mask into cells has
settings of its own (``instances.h_um``, the h-maxima depth of the markers, and
``instances.min_area_um2``, the smallest object kept) whose best values depend on the cells'
shape and the model's masks. :func:`choose_instance_settings` tries a small grid of them on
validation images with instance labels and keeps the one with the highest mean instance F1 at
IoU 0.5. ``brightseg cv`` uses it per fold (on the fold's validation images, never its test
images) and reports the choice, to be copied into a config's ``instances:`` block.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import match_instances

log = logging.getLogger(__name__)

#: The grid tried by default: ``None`` keeps the config's value.
DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "h_um": (None, 1.0, 2.0, 3.0, 5.0),
    "min_area_um2": (None, 100.0, 300.0, 600.0, 1000.0),
}


def choose_instance_settings(
    masks: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    split: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray],
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """The watershed settings with the best mean instance F1@0.5 on validation images.

    Parameters
    ----------
    masks : sequence of (H, W) arrays
        Predicted foreground masks of the validation images.
    truths : sequence of (H, W) int arrays
        Their true instance labels (0 = background).
    split : callable
        Called as ``split(i, settings)`` with the index of an image and a dict of the grid's
        keys (``None`` values left out: "the config's value"); returns the instance labels of
        ``masks[i]`` split with those settings.
    grid : mapping of str to sequence, optional
        Values tried per key (default :data:`DEFAULT_GRID`). ``None`` in a list stands for
        the config's own value and is tried first, so that ties keep the config.

    Returns
    -------
    dict
        ``settings`` (the best, ``None`` values dropped), ``f1_50`` (its mean F1@0.5),
        ``f1_50_config`` (the config's own: all ``None``) and ``table`` (one row per setting
        tried: the settings and ``f1_50``).

    Raises
    ------
    ValueError
        For no images, unequal counts or an empty grid.
    """
    if len(masks) == 0 or len(masks) != len(truths):
        raise ValueError("choose_instance_settings needs equally many (>= 1) masks and labels")
    grid = dict(DEFAULT_GRID if grid is None else grid)
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError(f"choose_instance_settings: empty grid {grid}")
    keys = list(grid)
    # the config's own value first (None), then the others in the given order
    values = [sorted(grid[k], key=lambda v: v is not None) for k in keys]
    table = []
    best: dict[str, Any] | None = None
    for combo in itertools.product(*values):
        settings = {k: v for k, v in zip(keys, combo, strict=True) if v is not None}
        f1 = float(
            np.mean(
                [
                    match_instances(split(i, settings), truths[i], thresholds=(0.5,))["f1@0.5"]
                    for i in range(len(masks))
                ]
            )
        )
        table.append({**{k: v for k, v in zip(keys, combo, strict=True)}, "f1_50": f1})
        if best is None or f1 > best["f1_50"] + 1e-12:
            best = {"settings": settings, "f1_50": f1}
    assert best is not None
    config_row = next(r for r in table if all(r[k] is None for k in keys))
    log.info(
        "watershed settings chosen on %d validation images: %s (F1@0.5 %.3f; config's own %.3f)",
        len(masks),
        best["settings"] or "the config's",
        best["f1_50"],
        config_row["f1_50"],
    )
    return {**best, "f1_50_config": config_row["f1_50"], "table": table}


#: Written beside ``ensemble.tsv`` by the ``choose_instances`` rule.
INSTANCES_FILE = "instances.json"


def tuned_instances(instances: Mapping[str, Any], tuned_json: str | None = None) -> dict:
    """The ``instances`` block with the settings chosen on validation images merged in.

    Parameters
    ----------
    instances : mapping
        The config's ``instances`` block.
    tuned_json : path, optional
        ``results/models/instances.json`` of the ``choose_instances`` rule; required when
        ``instances.tune`` is ``validation`` (and ignored otherwise).

    Returns
    -------
    dict
        ``instances`` with ``settings`` of the file over it and ``tune: none``.
    """
    import json
    from pathlib import Path

    from .errors import InputError

    out = dict(instances)
    if out.get("tune", "none") != "validation":
        return out
    if not tuned_json or not Path(tuned_json).is_file():
        raise InputError(
            tuned_json or INSTANCES_FILE,
            "instances.tune is 'validation' but the chosen settings are missing (made by the "
            "choose_instances rule next to ensemble.tsv)",
        )
    chosen = json.loads(Path(tuned_json).read_text())
    # fixed numbers from here on (a bundle records them, and a predict-only run keeps them)
    return {**out, **dict(chosen.get("settings", {})), "tune": "none"}
