"""Checkpoint selection for the ensemble and the backbone comparison table.

Both work on *histories*: one row per (run, epoch), a run being one
``results/models/{model}/{loss}/`` directory.  :func:`read_histories` builds
that table from the ``history.csv`` files written by
:func:`brightseg.train.train_model`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .io import write_text

log = logging.getLogger(__name__)

__all__ = [
    "ENSEMBLE_COLUMNS",
    "backbone_table",
    "read_histories",
    "select_checkpoints",
    "write_ensemble_tsv",
]

ENSEMBLE_COLUMNS = [
    "rank",
    "path",
    "model",
    "loss",
    "epoch",
    "val_f1",
    "val_loss",
    "val_iou",
    "val_precision",
    "val_recall",
    "stability",
    "score",
]


def read_histories(run_dirs) -> pd.DataFrame:
    """Concatenate ``history.csv`` files of training runs.

    Parameters
    ----------
    run_dirs : iterable of path
        Directories ``.../{model}/{loss}`` holding ``history.csv`` and
        ``checkpoints/epoch_NN.keras``; ``model`` and ``loss`` are taken from the
        last two path components.

    Returns
    -------
    DataFrame
        The history columns plus ``model``, ``loss`` and ``path`` (the
        epoch's checkpoint path, ``{run_dir}/checkpoints/epoch_{NN}.keras``).
    """
    frames = []
    for d in run_dirs:
        d = Path(d)
        f = d / "history.csv"
        if not f.is_file():
            raise InputError(f, "training history does not exist")
        try:
            df = pd.read_csv(f)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f, f"cannot read CSV ({type(exc).__name__}: {exc})") from None
        for col in ("epoch", "val_loss", "val_f1"):
            if col not in df.columns:
                raise InputError(f, f"missing column {col!r}")
        df.insert(0, "loss_name", d.name)
        df.insert(0, "model", d.parent.name)
        df["path"] = [
            os.fspath(d / "checkpoints" / f"epoch_{int(e):02d}.keras") for e in df["epoch"]
        ]
        frames.append(df)
    if not frames:
        raise InputError(None, "no training runs given")
    out = pd.concat(frames, ignore_index=True)
    # 'loss' in history.csv is the training loss value; keep the loss *name* apart.
    out = out.rename(columns={"loss": "train_loss", "loss_name": "loss"})
    return out


def _local_std(values: np.ndarray, window: int) -> np.ndarray:
    n = values.size
    out = np.empty(n)
    for i in range(n):
        out[i] = np.std(values[max(0, i - window) : i + window + 1])
    return out


def select_checkpoints(
    histories: pd.DataFrame,
    *,
    k: int = 14,
    window: int = 1,
    stability_weight: float = 1.0,
) -> pd.DataFrame:
    """Rank every epoch checkpoint of every run by validation F1 and stability.

    For epoch ``e`` of a run (a ``(model, loss)`` pair, epochs sorted):

    * ``stability`` = population standard deviation of ``val_f1`` over the
      run's epochs ``e - window .. e + window`` (truncated at the run's ends;
      0 for a lone epoch).  It measures how noisy the validation F1 is around
      that checkpoint: 0 is perfectly stable, a lucky spike scores high.
    * ``score = val_f1 - stability_weight * stability``.

    Checkpoints are sorted by ``score`` (descending), ties broken by
    ``val_f1`` (descending), ``val_loss`` (ascending), then ``model``,
    ``loss``, ``epoch`` (ascending), so the order is deterministic.  The top
    ``k`` are returned with ``rank`` 1..k.

    Parameters
    ----------
    histories : DataFrame
        Columns ``model, loss, epoch, path, val_f1, val_loss`` and optionally
        ``val_iou, val_precision, val_recall`` (NaN where absent).
    k : int
        Number of checkpoints to keep (the paper's ensemble uses 14).
    window : int
        Half-width of the stability window in epochs.
    stability_weight : float
        Penalty per unit of local F1 standard deviation.

    Returns
    -------
    DataFrame
        Columns :data:`ENSEMBLE_COLUMNS`.
    """
    required = {"model", "loss", "epoch", "path", "val_f1", "val_loss"}
    missing = required - set(histories.columns)
    if missing:
        raise InputError(None, f"histories lack columns {sorted(missing)}")
    if k < 1:
        raise InputError(None, f"k must be >= 1, got {k}")
    df = histories.copy()
    for col in ("val_iou", "val_precision", "val_recall"):
        if col not in df.columns:
            df[col] = np.nan
    df = df.sort_values(["model", "loss", "epoch"], kind="stable").reset_index(drop=True)
    df["stability"] = np.nan
    for _, idx in df.groupby(["model", "loss"], sort=True).groups.items():
        vals = df.loc[idx, "val_f1"].to_numpy(np.float64)
        df.loc[idx, "stability"] = _local_std(vals, window)
    df["score"] = df["val_f1"] - stability_weight * df["stability"]
    df = df[np.isfinite(df["score"].to_numpy(np.float64))]
    df = df.sort_values(
        ["score", "val_f1", "val_loss", "model", "loss", "epoch"],
        ascending=[False, False, True, True, True, True],
        kind="stable",
    ).head(k)
    df = df.reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    df["epoch"] = df["epoch"].astype(int)
    return df[ENSEMBLE_COLUMNS]


def write_ensemble_tsv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the selected checkpoints as a tab-separated file, atomically.

    The columns are :data:`ENSEMBLE_COLUMNS`, then ``tta`` (per-model test-time
    augmentation: ``true``, ``false`` or empty) and ``working_pixel_size_um`` (the pixel
    size the checkpoints were trained at, :mod:`brightseg.scale`) when ``df`` has them.
    """
    missing = set(ENSEMBLE_COLUMNS) - set(df.columns)
    if missing:
        raise InputError(path, f"ensemble table lacks columns {sorted(missing)}")
    columns = ENSEMBLE_COLUMNS + [c for c in ("tta", "working_pixel_size_um") if c in df.columns]
    write_text(df[columns].to_csv(sep="\t", index=False, float_format="%.6f"), path)


def _cv(x: np.ndarray) -> float:
    m = np.mean(x)
    return float(np.std(x) / abs(m)) if m != 0 else float("nan")


def backbone_table(histories: pd.DataFrame, params=None, *, last_n: int = 5) -> pd.DataFrame:
    """Backbone comparison (the paper's Table 1) from training histories.

    One row per run (``model``, and ``loss`` when that column exists).  With
    ``L``/``VL`` the train/validation loss, ``F``/``VF`` the train/validation
    F1, ``E`` the epochs run and ``b`` the best epoch (minimum ``VL``):

    ``final_train_loss``, ``final_val_loss``
        ``L`` and ``VL`` at the last epoch.
    ``loss_gap``
        ``final_val_loss - final_train_loss``.
    ``epochs_run``
        Number of epochs (early stopping shortens it).
    ``best_epoch``
        Epoch of minimum ``VL``.
    ``convergence_rate``
        Mean per-epoch decrease of ``VL`` from the first epoch to ``b``:
        ``(VL[first] - VL[b]) / (b - first)``; 0 when the first epoch is best.
    ``final_train_f1``, ``final_val_f1``, ``f1_gap``
        ``F`` and ``VF`` at the last epoch and ``F - VF``.
    ``overfitting_index``
        ``(VL - L) / L`` at the last epoch (0: no gap; 0.5: validation loss
        50 % above training loss).
    ``val_f1_std``, ``val_loss_std``
        Population standard deviation of ``VF`` / ``VL`` over all epochs.
    ``stability_f1``, ``stability_loss``
        ``1 - CV`` (coefficient of variation, std / |mean|) of ``VF`` / ``VL``
        over the last ``last_n`` epochs: 1 is perfectly flat.
    ``params_total``, ``params_trainable``
        From ``params`` (NaN when not given).

    Parameters
    ----------
    histories : DataFrame
        Columns ``model, epoch, val_loss, val_f1`` plus the training loss as
        ``train_loss`` (or ``loss`` when there is no loss-name column) and
        training F1 as ``f1``; optional ``loss`` (loss name).
    params : DataFrame or dict, optional
        DataFrame with ``name, total, trainable`` (as from
        :func:`brightseg.models.param_table`) or ``{model: (total, trainable)}``.
    last_n : int
        Epochs used by the stability indices.
    """
    h = histories.copy()
    if "train_loss" not in h.columns:
        if "loss" in h.columns and pd.api.types.is_numeric_dtype(h["loss"]):
            h = h.rename(columns={"loss": "train_loss"})
        else:
            raise InputError(None, "histories lack the training loss ('train_loss')")
    required = {"model", "epoch", "train_loss", "val_loss", "val_f1", "f1"}
    missing = required - set(h.columns)
    if missing:
        raise InputError(None, f"histories lack columns {sorted(missing)}")
    if isinstance(params, pd.DataFrame):
        pmap = {r["name"]: (r["total"], r["trainable"]) for _, r in params.iterrows()}
    else:
        pmap = dict(params or {})
    keys = ["model", "loss"] if "loss" in h.columns else ["model"]
    rows = []
    for key, g in h.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("epoch")
        vl = g["val_loss"].to_numpy(np.float64)
        tl = g["train_loss"].to_numpy(np.float64)
        vf = g["val_f1"].to_numpy(np.float64)
        tf_ = g["f1"].to_numpy(np.float64)
        ep = g["epoch"].to_numpy()
        b = int(np.argmin(vl))
        conv = (vl[0] - vl[b]) / (ep[b] - ep[0]) if b > 0 else 0.0
        tail = slice(max(0, len(g) - last_n), None)
        total, trainable = pmap.get(key[0], (np.nan, np.nan))
        row = dict(zip(keys, key, strict=True))
        row.update(
            {
                "final_train_loss": tl[-1],
                "final_val_loss": vl[-1],
                "loss_gap": vl[-1] - tl[-1],
                "epochs_run": len(g),
                "best_epoch": int(ep[b]),
                "convergence_rate": float(conv),
                "final_train_f1": tf_[-1],
                "final_val_f1": vf[-1],
                "f1_gap": tf_[-1] - vf[-1],
                "overfitting_index": (vl[-1] - tl[-1]) / tl[-1] if tl[-1] != 0 else np.nan,
                "val_f1_std": float(np.std(vf)),
                "val_loss_std": float(np.std(vl)),
                "stability_f1": 1.0 - _cv(vf[tail]),
                "stability_loss": 1.0 - _cv(vl[tail]),
                "params_total": total,
                "params_trainable": trainable,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def stacked_histories(histories: list[str | os.PathLike]) -> pd.DataFrame:
    """Every run's ``history.csv`` in one table, with ``model`` and ``loss_fn`` columns.

    ``model`` and ``loss_fn`` are the run directory's last two components
    (``results/models/{model}/{loss}/history.csv``).
    """
    frames = []
    for h in histories:
        run_dir = Path(h).parent
        df = pd.read_csv(h)
        df.insert(0, "loss_fn", run_dir.name)
        df.insert(0, "model", run_dir.parent.name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
