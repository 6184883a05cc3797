"""Figures and tables of the paper, reproducible to the byte.

Every figure is built by a function that takes a table (a pandas DataFrame)
and returns a :class:`matplotlib.figure.Figure` (no pyplot, so no global
state and no display backend is needed; rendering uses Agg).
:func:`save_figure` writes ``<stem>.png``, ``<stem>.svg`` and
``<stem>.parquet`` (the plotted data) atomically and without timestamps or
version strings, with a fixed SVG hash salt and the DejaVu Sans font shipped
with matplotlib, so a rerun writes identical bytes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from .io import atomic_path, write_parquet
from .scalebar import format_length, scale_bar_length_um

log = logging.getLogger(__name__)

#: rcParams applied while building and while saving every figure.
STYLE: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "mathtext.fontset": "dejavusans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "brightseg",
    "svg.fonttype": "none",
    "svg.image_inline": True,
    "image.interpolation": "nearest",
    "savefig.dpi": 150,
    "figure.dpi": 100,
}

#: Overlay colours (Okabe-Ito, colour-blind safe): true positive, false
#: negative, false positive pixels.
OVERLAY_COLOURS = {
    "tp": (0, 158, 115),  # bluish green
    "fn": (0, 114, 178),  # blue
    "fp": (213, 94, 0),  # vermillion
}

PNG_METADATA = {"Software": None}
SVG_METADATA = {"Date": None, "Creator": None}

#: Micrometre, as axis labels and scale bars write it.
UM = "µm"

#: Scores bounded by [0, 1]: their axes start at 0 (and end just above 1).
BOUNDED_METRICS = frozenset(
    {
        "dice",
        "iou",
        "f1",
        "precision",
        "recall",
        "accuracy",
        "ssim",
        "circularity",
        "convexity",
        "solidity",
        "eccentricity",
    }
)

#: Axis labels of metrics and per-cell features, in words with their units.  The
#: boundary distances of :mod:`brightseg.metrics` are in pixels; the per-cell table
#: (:data:`brightseg.morphometry.CELL_SCHEMA`) has µm and px columns.
AXIS_LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
    "accuracy": "accuracy",
    "ssim": "SSIM",
    "hd95": "HD95 (px)",
    "hausdorff": "Hausdorff distance (px)",
    "area_um2": f"area ({UM}²)",
    "area_px": "area (px)",
    "perimeter_um": f"perimeter ({UM})",
    "perimeter_px": "perimeter (px)",
    "major_axis_um": f"major axis ({UM})",
    "minor_axis_um": f"minor axis ({UM})",
    "aspect_ratio": "aspect ratio (major / minor axis)",
    "circularity": "circularity (4πA / P², 1 = disk)",
    "convexity": "convexity (hull perimeter / perimeter)",
    "solidity": "solidity (area / convex area)",
    "eccentricity": "eccentricity",
    "orientation_deg": "orientation (°)",
    "mean_intensity": "mean intensity (a.u.)",
    "std_intensity": "intensity standard deviation (a.u.)",
    "confluence_pct": "confluence (%)",
    "median_area_um2": f"median cell area ({UM}²)",
    "n_cells": "cells per image",
}

_PREFIXES = (("final_val_", "final validation "), ("final_train_", "final training "))
_PREFIXES += (("val_", "validation "), ("train_", "training "))


def _styled(func: Callable[..., Any]) -> Callable[..., Any]:
    """Build the figure under :data:`STYLE`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):

        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float):

    return Figure(figsize=(width, height), layout="constrained")


def _require(df, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: table lacks columns {missing}; has {list(df.columns)}")


def _no_data(title: str, message: str):
    """A figure that says there is nothing to draw (instead of failing on an empty table)."""
    log.warning("%s: %s; drawing an empty figure", title, message)
    fig = _figure(4.0, 2.4)
    ax = fig.subplots()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def axis_label(name: str) -> str:
    """Words (and unit) for a metric or feature column: ``hd95`` -> ``HD95 (px)``,
    ``val_f1`` -> ``validation F1``, ``area_um2`` -> ``area (µm²)``; unknown names with
    their underscores as spaces."""
    for prefix, words in _PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in AXIS_LABELS:
            return words + AXIS_LABELS[name[len(prefix) :]]
    return AXIS_LABELS.get(name, name.replace("_", " "))


def is_bounded(name: str) -> bool:
    """Whether a metric or feature column lies in [0, 1] (``val_f1``, ``dice``, ...)."""
    base = name
    for prefix, _ in _PREFIXES:
        base = base.removeprefix(prefix)
    return base in BOUNDED_METRICS


def _bounded_axis(ax, name: str) -> None:
    """A [0, 1] metric's y axis from 0 to just above 1, a distance's from 0."""
    if is_bounded(name):
        ax.set_ylim(0.0, 1.05)
    elif name in ("hd95", "hausdorff"):
        ax.set_ylim(bottom=0.0)


def _with_n(name: str, n: int) -> str:
    return f"{name} (n={n})"


def add_scale_bar(
    ax,
    pixel_size_um: float | None,
    width_px: int,
    height_px: int | None = None,
    *,
    fraction: float = 0.2,
):
    """Draw a scale bar in the bottom-right corner of an ``imshow`` panel.

    The bar is white with a thin black edge, ``length_um / pixel_size_um`` pixels
    (data units) long, where ``length_um`` is a round length about ``fraction`` of the
    image width (:func:`brightseg.scalebar.scale_bar_length_um`); its length (e.g.
    ``"50 µm"``) is written above it.  Without a pixel size (None) nothing is drawn.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        An axes showing an image with ``imshow``'s default extent (pixel centres at
        integer coordinates, row 0 at the top).
    pixel_size_um : float or None
        Pixel size in µm; None when unknown (no bar).
    width_px, height_px : int
        Image size in pixels (the height defaults to the axes' y extent).
    fraction : float
        Target bar length as a fraction of the width.

    Returns
    -------
    matplotlib.patches.Rectangle or None
        The bar (``gid`` ``"scale_bar"``), None when no bar was drawn.
    """
    if pixel_size_um is None:
        return None
    px = float(pixel_size_um)
    if height_px is None:
        height_px = round(abs(ax.get_ylim()[0] - ax.get_ylim()[1]))
    length_um = scale_bar_length_um(int(width_px), px, fraction=fraction)
    length = length_um / px
    margin = 0.04 * width_px
    thick = max(1.0, 0.015 * height_px)
    x1 = width_px - 0.5 - margin
    y1 = height_px - 0.5 - margin
    bar = Rectangle(
        (x1 - length, y1 - thick),
        length,
        thick,
        facecolor="white",
        edgecolor="black",
        linewidth=0.4,
        gid="scale_bar",
    )
    ax.add_patch(bar)
    ax.text(
        x1 - length / 2,
        y1 - thick - 0.01 * height_px,
        format_length(length_um, UM),
        color="white",
        fontsize=6,
        ha="center",
        va="bottom",
        path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")],
    )
    return bar


def _colours(n: int) -> list:

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# --------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------
def save_figure(fig, data, out_stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.png``, ``<stem>.svg`` and ``<stem>.parquet`` reproducibly.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    data : pandas.DataFrame
        The plotted data (written without index).
    out_stem : path-like
        Output path without suffix.

    Returns
    -------
    list of Path
        The three files written.
    """

    stem = Path(out_stem)
    paths = [Path(f"{stem}.parquet"), Path(f"{stem}.svg"), Path(f"{stem}.png")]
    write_parquet(data.reset_index(drop=True), paths[0])
    with matplotlib.rc_context(STYLE):
        with atomic_path(paths[1]) as tmp:
            fig.savefig(tmp, format="svg", metadata=SVG_METADATA)
        with atomic_path(paths[2]) as tmp:
            fig.savefig(tmp, format="png", metadata=PNG_METADATA)
    log.info("wrote %s.{png,svg,parquet}", stem)
    return paths


# --------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------
@_styled
def training_curves(
    history,
    *,
    metric: str = "val_f1",
    group: Sequence[str] = ("model", "loss_fn"),
    x: str = "epoch",
):
    """Validation score and losses per epoch for every model (paper Fig. 4).

    Parameters
    ----------
    history : pandas.DataFrame
        Keras histories stacked: ``epoch``, ``loss``, ``val_loss``, ``metric``
        and the identifying columns ``group`` (those present are used; the
        name of the loss *function* must not be ``loss``, which is the
        training loss value: use ``loss_fn``).
    metric : str
        Score plotted in the left panel (e.g. ``val_f1``).
    """
    group = [g for g in group if g in history.columns]
    _require(history, [x, metric, "loss", "val_loss"], "training_curves")
    if not group:
        raise ValueError("training_curves: no identifying column (e.g. 'model') in the table")
    fig = _figure(7.5, 3.0)
    ax_m, ax_l = fig.subplots(1, 2)
    keys = sorted(history.groupby(group, sort=True).groups)
    if not keys:
        ax_m.text(0.5, 0.5, "no training history", ha="center", va="center")
        ax_l.set_axis_off()
        return fig
    for colour, key in zip(_colours(len(keys)), keys, strict=True):
        key = key if isinstance(key, tuple) else (key,)
        sel = np.ones(len(history), dtype=bool)
        for col, val in zip(group, key, strict=True):
            sel &= (history[col] == val).to_numpy()
        h = history[sel].sort_values(x)
        label = " / ".join(map(str, key))
        ax_m.plot(h[x], h[metric], color=colour, label=label, lw=1.2)
        ax_l.plot(h[x], h["loss"], color=colour, lw=1.2, label=f"{label} (train)")
        ax_l.plot(h[x], h["val_loss"], color=colour, lw=1.2, ls="--", label=f"{label} (val)")

    for ax in (ax_m, ax_l):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_m.set(
        xlabel=x,
        ylabel=axis_label(metric),
        title=f"Validation {axis_label(metric.removeprefix('val_'))}",
    )
    _bounded_axis(ax_m, metric)
    ax_l.set(xlabel=x, ylabel="loss", title="Loss (solid: train, dashed: validation)")
    ax_m.legend(loc="lower right", frameon=False)
    return fig


@_styled
def backbone_comparison(
    table,
    *,
    value: str = "f1",
    label: str = "model",
    hue: str | None = "loss_fn",
    error: str | None = None,
):
    """Bars of a score per backbone (paper Table 1), grouped by ``hue`` if present.

    ``error`` names a column of error-bar half-lengths (default
    ``<value>_std`` when present; the workflow passes ``val_f1_std``, the standard
    deviation of the validation F1 over the run's epochs).  A [0, 1] score's axis
    starts at 0.
    """
    _require(table, [label, value], "backbone_comparison")
    if hue is not None and hue not in table.columns:
        hue = None
    if error is None and f"{value}_std" in table.columns:
        error = f"{value}_std"
    labels = sorted(table[label].astype(str).unique())
    hues = sorted(table[hue].astype(str).unique()) if hue else [None]
    if not labels:
        return _no_data(f"{value} per backbone", "no models to compare")
    fig = _figure(max(4.0, 0.6 * len(labels) * len(hues) + 1.5), 3.0)
    ax = fig.subplots()
    width = 0.8 / len(hues)
    for j, (colour, h) in enumerate(zip(_colours(len(hues)), hues, strict=True)):
        sub = table if h is None else table[table[hue].astype(str) == h]
        sub = sub.assign(_key=sub[label].astype(str)).set_index("_key")
        xs, ys, es = [], [], []
        for i, lab in enumerate(labels):
            if lab in sub.index:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(float(sub.loc[lab, value]))
                es.append(float(sub.loc[lab, error]) if error else 0.0)
        bars = ax.bar(xs, ys, width=width * 0.95, color=colour, label=h, yerr=es if error else None)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set(ylabel=axis_label(value), title=f"{axis_label(value)} per backbone")
    _bounded_axis(ax, value)
    if hue:
        ax.legend(title=hue, frameon=False)
    return fig


@_styled
def livecell_groups(per_image, *, value: str = "f1", by: str = "cell_line", seed: int = 0):
    """Box plot with the individual images as points, per cell line (LIVECell).

    Tick labels give the number of images per group; a [0, 1] score's axis starts at 0.
    """
    _require(per_image, [by, value], "livecell_groups")
    groups = sorted(per_image[by].astype(str).unique())
    if not groups:
        return _no_data(f"{value} per {by.replace('_', ' ')}", "no images")
    data = [per_image.loc[per_image[by].astype(str) == g, value].to_numpy(float) for g in groups]
    fig = _figure(max(4.0, 0.55 * len(groups) + 1.5), 3.2)
    ax = fig.subplots()
    ticks = [_with_n(g, int(np.isfinite(d).sum())) for g, d in zip(groups, data, strict=True)]
    ax.boxplot(data, tick_labels=ticks, showfliers=False, widths=0.6)
    rng = np.random.default_rng(seed)
    for i, (colour, d) in enumerate(zip(_colours(len(groups)), data, strict=True), start=1):
        jitter = rng.uniform(-0.18, 0.18, size=len(d))
        ax.scatter(i + jitter, d, s=3, color=colour, alpha=0.5, linewidths=0, rasterized=False)
    ax.set(
        xlabel=by.replace("_", " "),
        ylabel=f"{axis_label(value)} per image",
        title=f"{axis_label(value)} per {by.replace('_', ' ')}",
    )
    _bounded_axis(ax, value)
    ax.tick_params(axis="x", rotation=30)
    return fig


@_styled
def ensemble_ablation(
    table,
    *,
    metrics: Sequence[str] = ("f1", "precision", "recall", "accuracy"),
    ensemble: str = "ensemble",
):
    """Mean metrics of every single model next to the ensemble (section 4.3).

    ``table`` is :func:`brightseg.metrics.ablation_table` output (``model``
    and the metric columns, ``n_images`` when present: then the legend gives each
    model's number of images); rows keep their order.  The bars are means (no error
    bars); the axis runs from 0 to just above 1.
    """
    _require(table, ["model", *metrics], "ensemble_ablation")
    models = [str(m) for m in table["model"]]
    if not models:
        return _no_data("Single models and the ensemble", "no models")
    fig = _figure(max(4.5, 0.35 * len(models) * len(metrics) + 1.5), 3.0)
    ax = fig.subplots()
    width = 0.8 / len(models)
    colours = _colours(len(models))
    for j, (colour, model) in enumerate(zip(colours, models, strict=True)):
        row = table.iloc[j]
        label = _with_n(model, int(row["n_images"])) if "n_images" in table.columns else model
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(metrics))]
        ys = [float(row[m]) for m in metrics]
        is_ens = model == ensemble
        ax.bar(
            xs,
            ys,
            width=width * 0.95,
            color="black" if is_ens else colour,
            label=label,
            hatch="//" if is_ens else None,
            edgecolor="white" if is_ens else None,
        )
    ax.set_ylim(0.0, 1.05)
    ax.set_xticks(range(len(metrics)), [axis_label(m) for m in metrics])
    ax.set(ylabel="mean over held-out images", title="Single models and the ensemble")
    ax.legend(frameon=False, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def overlay_rgb(
    image: np.ndarray, pred_mask: np.ndarray, true_mask: np.ndarray, *, alpha: float = 0.5
) -> np.ndarray:
    """RGB uint8 overlay: TP, FN and FP pixels tinted (:data:`OVERLAY_COLOURS`).

    ``image`` (any numeric 2-D array) is min-max scaled to grey; pixels that
    are true positive, false negative and false positive are blended with
    their colour at ``alpha``; true negatives stay grey.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    p = np.asarray(pred_mask) != 0
    t = np.asarray(true_mask) != 0
    if p.shape != img.shape or t.shape != img.shape:
        raise ValueError(f"mask shapes {p.shape}, {t.shape} differ from image {img.shape}")
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    for key, sel in (("tp", p & t), ("fn", ~p & t), ("fp", p & ~t)):
        colour = np.asarray(OVERLAY_COLOURS[key], dtype=np.float64)
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * colour
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def overlay_counts(pred_mask: np.ndarray, true_mask: np.ndarray):
    """Pixel counts per overlay class (the data of :func:`overlay_panel`)."""

    p = np.asarray(pred_mask) != 0
    t = np.asarray(true_mask) != 0
    counts = {
        "tp": int(np.sum(p & t)),
        "fn": int(np.sum(~p & t)),
        "fp": int(np.sum(p & ~t)),
        "tn": int(np.sum(~p & ~t)),
    }
    return pd.DataFrame({"class": list(counts), "pixels": list(counts.values())})


@_styled
def overlay_panel(
    image: np.ndarray,
    pred_mask: np.ndarray,
    true_mask: np.ndarray,
    *,
    title: str | None = None,
    pixel_size_um: float | None = None,
):
    """Image and TP/FN/FP overlay side by side (paper Fig. 5).

    With ``pixel_size_um`` both panels get a scale bar (:func:`add_scale_bar`); without
    it (unknown pixel size) neither does.
    """

    rgb = overlay_rgb(image, pred_mask, true_mask)
    h, w = rgb.shape[:2]
    fig = _figure(7.0, 7.0 * h / (2 * w) + 0.6)
    ax_i, ax_o = fig.subplots(1, 2)
    ax_i.imshow(np.asarray(image), cmap="gray")
    ax_i.set_title("image")
    ax_o.imshow(rgb)
    ax_o.set_title(title or "overlay")
    names = {"tp": "true positive", "fn": "false negative", "fp": "false positive"}
    handles = [Patch(color=np.asarray(c) / 255, label=names[k]) for k, c in OVERLAY_COLOURS.items()]
    ax_o.legend(handles=handles, loc="lower left", frameon=True, fontsize=6)
    for ax in (ax_i, ax_o):
        add_scale_bar(ax, pixel_size_um, w, h)
        ax.set_axis_off()
    return fig


@_styled
def morphometry_distributions(
    cells,
    *,
    features: Sequence[str] = ("area", "circularity"),
    by: str | None = None,
    max_groups: int = 60,
):
    """Distributions of cell features per plate (or per well within one plate).

    ``by`` defaults to ``plate`` when the table has several plates, else
    ``well``.  At most ``max_groups`` groups (the first in sorted order) are
    drawn.  Axes are labelled in words with units (:func:`axis_label`: ``area_um2``
    -> area (µm²)); tick labels give the number of cells per group; features in
    [0, 1] (circularity, solidity, ...) have axes from 0.
    """
    _require(cells, list(features), "morphometry_distributions")
    if by is None:
        by = "plate" if "plate" in cells.columns and cells["plate"].nunique() > 1 else "well"
    _require(cells, [by], "morphometry_distributions")
    groups = sorted(cells[by].astype(str).unique())
    if not groups:
        return _no_data(f"Cell morphometry per {by}", "no cells detected in any plate")
    if len(groups) > max_groups:
        log.warning("morphometry_distributions: drawing %d of %d groups", max_groups, len(groups))
        groups = groups[:max_groups]
    fig = _figure(max(4.0, 0.3 * len(groups) + 1.5), 2.4 * len(features))
    axes = np.atleast_1d(fig.subplots(len(features), 1, sharex=True))
    keys = cells[by].astype(str)
    for ax, feat in zip(axes, features, strict=True):
        data = [cells.loc[keys == g, feat].dropna().to_numpy(float) for g in groups]
        ax.boxplot(data, showfliers=False, widths=0.6)
        ax.set(ylabel=axis_label(feat))
        _bounded_axis(ax, feat)
    n_cells = keys.value_counts()
    ticks = [_with_n(g, int(n_cells.get(g, 0))) for g in groups]
    axes[-1].set_xticks(range(1, len(groups) + 1), ticks)
    axes[0].set_title(f"Cell morphometry per {by}")
    axes[-1].set_xlabel(f"{by} (n = cells)")
    axes[-1].tick_params(axis="x", rotation=90)
    return fig


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------
def _format_cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return format(v, floatfmt)
    return str(value)


def table_to_markdown(df, *, floatfmt: str = ".4f") -> str:
    """GitHub Markdown table of a DataFrame (no index), deterministic formatting."""
    cols = [str(c) for c in df.columns]
    numeric = [df[c].dtype.kind in "iuf" for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for row in df.itertuples(index=False):
        cells = [_format_cell(v, floatfmt).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    out = []
    for ch in text:
        out.append(
            {
                "\\": r"\textbackslash{}",
                "&": r"\&",
                "%": r"\%",
                "$": r"\$",
                "#": r"\#",
                "_": r"\_",
                "{": r"\{",
                "}": r"\}",
                "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}",
            }.get(ch, ch)
        )
    return "".join(out)


def table_to_latex(df, *, floatfmt: str = ".4f", caption: str | None = None) -> str:
    """LaTeX booktabs ``tabular`` of a DataFrame (no index, no jinja2 needed)."""
    numeric = [df[c].dtype.kind in "iuf" for c in df.columns]
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(_latex_escape(str(c)) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    for row in df.itertuples(index=False):
        lines.append(" & ".join(_latex_escape(_format_cell(v, floatfmt)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines = [r"\begin{table}", r"\centering", f"\\caption{{{_latex_escape(caption)}}}"] + lines
        lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- evaluation sets

#: Metrics drawn in the evaluation sets' distribution figure.
FIGURE_METRICS = ("dice", "iou", "precision", "recall", "f1", "hd95")


def metric_distributions(
    wide: pd.DataFrame,
    *,
    metrics: Sequence[str] = FIGURE_METRICS,
    order: Sequence[str] | None = None,
    seed: int = 0,
):
    """Box plots of per-image metrics per method, images as jittered points.

    ``wide`` has one row per image and method and one column per metric
    (:func:`brightseg.evalsets.wide_table`).  One panel per metric; ``order`` sets the
    methods' order (default sorted).  Non-finite values (e.g. HD95 of an empty
    prediction) are left out; tick labels give the images drawn per method
    (``ensemble (n=12)``).  The y axes name the metric and unit (HD95 and Hausdorff in
    pixels, as :mod:`brightseg.metrics` computes them); [0, 1] scores start at 0.
    """

    metrics = [m for m in metrics if m in wide.columns]
    methods = list(order) if order is not None else sorted(wide["method"].astype(str).unique())
    with matplotlib.rc_context(STYLE):
        ncols = min(3, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        width = max(2.4, 0.5 * len(methods) + 1.0)
        fig = _figure(width * ncols, 2.6 * nrows + 0.4)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        rng = np.random.default_rng(seed)
        colours = _colours(len(methods))
        for ax, metric in zip(axes, metrics, strict=False):
            data = []
            for m in methods:
                v = wide.loc[wide["method"].astype(str) == m, metric].to_numpy(float)
                data.append(v[np.isfinite(v)])
            ticks = [_with_n(m, len(d)) for m, d in zip(methods, data, strict=True)]
            ax.boxplot(data, tick_labels=ticks, showfliers=False, widths=0.6)
            for i, (colour, d) in enumerate(zip(colours, data, strict=True), start=1):
                jitter = rng.uniform(-0.18, 0.18, size=len(d))
                ax.scatter(i + jitter, d, s=6, color=colour, alpha=0.7, linewidths=0)
            ax.set_title(axis_label(metric))
            ax.set_ylabel(axis_label(metric))
            _bounded_axis(ax, metric)
            ax.tick_params(axis="x", rotation=90)
        for ax in axes[len(metrics) :]:
            ax.set_axis_off()
        fig.suptitle("Per-image metrics per method")
    return fig


def method_overlays(
    image: np.ndarray,
    truth: np.ndarray,
    preds: Mapping[str, np.ndarray],
    *,
    title: str = "",
    scores: Mapping[str, float] | None = None,
    pixel_size_um: float | None = None,
):
    """The image and one TP/FN/FP overlay per method (:func:`brightseg.figures.overlay_rgb`).

    With ``pixel_size_um`` every panel gets a scale bar (:func:`add_scale_bar`); without
    it (unknown pixel size) none does.
    """

    with matplotlib.rc_context(STYLE):
        n = 1 + len(preds)
        h, w = np.asarray(image).shape[:2]
        panel = 2.4
        fig = _figure(panel * n, panel * h / w + 0.7)
        axes = np.atleast_1d(fig.subplots(1, n)).ravel()
        axes[0].imshow(np.asarray(image), cmap="gray")
        axes[0].set_title(title or "image")
        for ax, (method, pred) in zip(axes[1:], preds.items(), strict=True):
            ax.imshow(overlay_rgb(image, pred, truth))
            score = (scores or {}).get(method)
            ax.set_title(method if score is None else f"{method}\nF1 {score:.3f}")
        names = {"tp": "true positive", "fn": "false negative", "fp": "false positive"}
        handles = [
            Patch(color=np.asarray(c) / 255, label=names[k]) for k, c in OVERLAY_COLOURS.items()
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        for ax in axes:
            add_scale_bar(ax, pixel_size_um, w, h)
            ax.set_axis_off()
    return fig


def save_png(fig, path: Path) -> None:

    with matplotlib.rc_context(STYLE), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata=PNG_METADATA)


# -------------------------------------------------------------------------- quality control

QC_SCORE_LABEL = "QC score (0-1; mean of entropy in cells, bits, and uncertain-border share)"


def qc_score_distribution(data: pd.DataFrame, *, threshold: float):
    """Histogram of the per-image QC score (:mod:`brightseg.qc`) with the review threshold.

    ``data`` has ``qc_score`` (one row per image).  The x axis spans [0, 1] (the score's
    range), the y axis counts images from 0; the title gives n and how many are flagged.
    """
    _require(data, ["qc_score"], "qc_score_distribution")
    scores = data["qc_score"].to_numpy(float)
    scores = scores[np.isfinite(scores)]
    with matplotlib.rc_context(STYLE):
        if not scores.size:
            return _no_data("QC score per image", "no images")
        fig = _figure(4.2, 2.8)
        ax = fig.subplots()
        bins = np.linspace(0.0, 1.0, 41)
        ax.hist(scores, bins=bins, color=_colours(1)[0], edgecolor="white", linewidth=0.4)
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.0)
        n_flag = int((scores > threshold).sum())
        ax.text(
            threshold,
            0.97,
            f" review threshold {threshold:g}\n {n_flag} flagged",
            transform=ax.get_xaxis_transform(),
            va="top",
            ha="left",
            fontsize=7,
        )
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(bottom=0.0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(QC_SCORE_LABEL)
        ax.set_ylabel("images")
        ax.set_title(_with_n("QC score per image", len(scores)))
    return fig


def qc_vs_metric(
    table: pd.DataFrame,
    *,
    metric: str = "dice",
    rho: float = float("nan"),
    threshold: float | None = None,
    title: str = "",
):
    """Per-image QC score against a per-image metric (e.g. Dice), Spearman rho in the title.

    Both axes are bounded from 0 (the score in [0, 1], [0, 1] metrics to just above 1).
    """
    _require(table, ["qc_score", metric], "qc_vs_metric")
    x = table["qc_score"].to_numpy(float)
    y = table[metric].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    with matplotlib.rc_context(STYLE):
        if not ok.any():
            return _no_data("QC score and segmentation quality", "no images")
        fig = _figure(4.0, 3.2)
        ax = fig.subplots()
        ax.scatter(x[ok], y[ok], s=14, color=_colours(1)[0], alpha=0.85, linewidths=0)
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.0)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.05) if is_bounded(metric) else ax.set_ylim(bottom=0.0)
        ax.set_xlabel("QC score (0-1; higher = less certain)")
        ax.set_ylabel(f"ensemble {axis_label(metric)} per image")
        rho_txt = "n/a" if not np.isfinite(rho) else f"{rho:.2f}"
        head = f"{title}: " if title else ""
        ax.set_title(f"{head}{_with_n('images', int(ok.sum()))}, Spearman ρ = {rho_txt}")
    return fig
