"""Training: tf.data input pipeline from the patch store, hard-example mining, fit loop.

Inputs (written by the patch-extraction stage)
---------------------------------------------
``patches.zarr``
    zarr group with ``images`` uint8 ``(N, H, W, 3)`` and ``masks`` uint8
    ``(N, H, W)`` (values {0, 1}; any non-zero value counts as foreground).
``manifest.parquet``
    one row per patch with at least ``index`` (row in the arrays), ``split``
    (``"train"``/``"val"``) and ``foreground_fraction``.

Outputs of :func:`train_model` in ``out_dir``
---------------------------------------------
``epoch_NN.keras`` (every epoch, written to a temporary name and renamed;
architecture and weights without the optimizer state, load them with
:func:`brightseg.models.load_checkpoint`),
``history.csv`` (one row per epoch: ``epoch, loss, f1, iou, precision,
recall, accuracy, val_loss, val_f1, ..., lr``; rewritten atomically after
every epoch), ``tensorboard/`` and, last, ``card.json`` (the run's
configuration, data hash, versions, parameter counts, epochs run, best
epoch).  A run that dies leaves no ``card.json``.

Optimiser: Adam with ``lr(t) = lr * decay_rate ** floor(t / decay_steps)``
(``t`` = optimiser steps; ``lr_schedule: cosine``: a cosine from ``lr`` to ``lr / 100`` over
all ``epochs x steps_per_epoch`` steps, :func:`lr_schedule`), early stopping on ``val_loss``.  Metrics are
computed at threshold 0.5 from pixel counts pooled over the whole epoch
(micro-averaged; F1 equals the Dice coefficient of the binarised masks).

Hard-example mining (``hard_mining=True``): after every epoch the current
model scores every training patch with the per-sample loss (one forward pass,
inference mode) and :func:`mining_weights` turns those losses and the
patches' foreground fractions into the next epoch's sampling probabilities
(sampling with replacement).  Without mining every epoch is a seeded
permutation of the training patches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
import zarr

from . import __version__
from .config import ModelSpec, TrainingConfig
from .errors import InputError
from .io import atomic_path, write_text
from .losses import LOSSES, check_model_target, get_loss
from .models import ARCHITECTURES, build_model, count_params, set_precision

log = logging.getLogger(__name__)

#: Subdirectory of a run's ``out_dir`` holding its per-epoch checkpoints.
CHECKPOINT_DIR = "checkpoints"

__all__ = [
    "HISTORY_COLUMNS",
    "METRICS",
    "ConfusionMetric",
    "PatchData",
    "make_dataset",
    "mining_weights",
    "open_patches",
    "train_model",
    "validation_order",
]

METRICS = ("f1", "iou", "precision", "recall", "accuracy")
HISTORY_COLUMNS = ["epoch", "loss", *METRICS, "val_loss"] + [f"val_{m}" for m in METRICS] + ["lr"]


# --------------------------------------------------------------------------- metrics
@keras.saving.register_keras_serializable(package="brightseg")
class ConfusionMetric(keras.metrics.Metric):
    """Pixel metric at a probability threshold, from counts pooled over batches.

    ``kind``: ``f1`` (= Dice) ``2TP / (2TP + FP + FN)``, ``iou``
    ``TP / (TP + FP + FN)``, ``precision`` ``TP / (TP + FP)``, ``recall``
    ``TP / (TP + FN)``, ``accuracy`` ``(TP + TN) / all``.  An empty
    denominator gives 1.0 for f1/iou/precision/recall (nothing to find and
    nothing found).  Counts are float64 so large epochs stay exact.
    """

    def __init__(self, kind: str = "f1", threshold: float = 0.5, name: str | None = None, **kw):
        if kind not in METRICS:
            raise ValueError(f"unknown metric kind {kind!r}")
        super().__init__(name=name or kind, **kw)
        self.kind = kind
        self.threshold = threshold
        self.counts = self.add_variable(
            shape=(4,), initializer="zeros", dtype="float64", name="counts"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        # foreground: the sigmoid channel, or 1 - background of a 3-class softmax; extra
        # target channels (a border weight map) are ignored.
        y_true, y_pred = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
        if y_pred.shape.rank == 4 and y_pred.shape[-1] == 3:
            y_true, y_pred = 1.0 - y_true[..., 0], 1.0 - y_pred[..., 0]
        elif y_true.shape.rank == 4 and y_true.shape[-1] and y_true.shape[-1] > 1:
            y_true = y_true[..., 0]
        y_true = tf.reshape(y_true > 0.5, [-1])
        y_pred = tf.reshape(y_pred >= self.threshold, [-1])

        def count(mask):
            return tf.reduce_sum(tf.cast(mask, tf.float64))

        tp = count(y_true & y_pred)
        fp = count(~y_true & y_pred)
        fn = count(y_true & ~y_pred)
        tn = count(~y_true & ~y_pred)
        self.counts.assign_add(tf.stack([tp, fp, fn, tn]))

    def result(self):
        tp, fp, fn, tn = tf.unstack(self.counts)
        if self.kind == "f1":
            num, den = 2 * tp, 2 * tp + fp + fn
        elif self.kind == "iou":
            num, den = tp, tp + fp + fn
        elif self.kind == "precision":
            num, den = tp, tp + fp
        elif self.kind == "recall":
            num, den = tp, tp + fn
        else:
            num, den = tp + tn, tp + fp + fn + tn
        return tf.cast(tf.where(den > 0, num / tf.maximum(den, 1.0), 1.0), tf.float32)

    def reset_state(self):
        self.counts.assign(tf.zeros((4,), tf.float64))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "threshold": self.threshold}


# --------------------------------------------------------------------------- mining
def mining_weights(
    losses,
    fg_fraction,
    *,
    mix: float = 0.5,
    rare_quantile: float = 0.2,
    rare_factor: float = 2.0,
) -> np.ndarray:
    """Sampling probabilities for the next epoch from per-sample losses.

    ``w = (1 - mix) * loss_i / sum(loss) + mix / N``: harder samples are drawn
    more often while every sample keeps at least ``mix / N`` (nothing
    starves).  Then patches whose foreground fraction is at or below the
    ``rare_quantile`` quantile of ``fg_fraction`` (the rare, sparse-cell
    patches) get their weight multiplied by ``rare_factor``, and the weights
    are renormalised to sum to 1.

    Parameters
    ----------
    losses : array (N,)
        Non-negative per-sample losses (NaN/inf are treated as the largest
        finite loss; all-zero losses give uniform weights).
    fg_fraction : array (N,)
        Foreground fraction of each patch.
    mix : float
        Weight of the uniform component in [0, 1].
    rare_quantile, rare_factor : float
        Rare-patch threshold (quantile of ``fg_fraction``) and oversampling
        factor (1 disables it).

    Returns
    -------
    ndarray (N,)
        float64 probabilities summing to 1.
    """
    losses = np.asarray(losses, dtype=np.float64).ravel()
    fg = np.asarray(fg_fraction, dtype=np.float64).ravel()
    n = losses.size
    if n == 0:
        return np.zeros(0)
    if fg.size != n:
        raise ValueError(f"losses ({n}) and fg_fraction ({fg.size}) differ in length")
    if not 0.0 <= mix <= 1.0:
        raise ValueError("mix must be in [0, 1]")
    finite = np.isfinite(losses)
    fill = losses[finite].max() if finite.any() else 1.0
    losses = np.clip(np.where(finite, losses, fill), 0.0, None)
    total = losses.sum()
    hard = losses / total if total > 0 else np.full(n, 1.0 / n)
    w = (1.0 - mix) * hard + mix / n
    if rare_factor != 1.0 and n > 1:
        thr = np.quantile(fg, rare_quantile)
        w = np.where(fg <= thr, w * rare_factor, w)
    return w / w.sum()


# --------------------------------------------------------------------------- data
class PatchData:
    """Read access to the patch store, optionally cached in memory.

    Parameters
    ----------
    store : path
        ``patches.zarr`` group.
    manifest : path
        ``manifest.parquet``.
    in_memory : bool or "auto"
        Load the arrays into RAM (``auto``: when they total at most
        ``memory_limit`` bytes).  Otherwise batches are read from zarr with
        sorted indices (chunk locality).
    target : {"binary", "border3", "nucleus3"}
        What :meth:`read` returns as ``y`` (see :func:`brightseg.targets.make_target`):
        anything but a plain binary target needs the store's ``labels`` array
        (``nucleus3`` also ``nuclei``).
    border_weight : dict, optional
        ``{"w0", "sigma_px"}``: append the U-Net border weight map as the last channel.
    class_weights : (float, float)
        ``w_c`` (background, foreground) of the weight map.
    """

    def __init__(
        self,
        store,
        manifest,
        *,
        in_memory="auto",
        memory_limit: int = 2 << 30,
        target: str = "binary",
        border_weight: dict | None = None,
        class_weights: tuple[float, float] = (1.0, 1.0),
    ):
        from .targets import check_target, output_channels

        self.store = Path(store)
        self.manifest_path = Path(manifest)
        if not self.store.exists():
            raise InputError(self.store, "patch store does not exist")
        try:
            group = zarr.open_group(str(self.store), mode="r")
            images, masks = group["images"], group["masks"]
        except Exception as exc:  # noqa: BLE001 - any zarr failure is bad input
            raise InputError(
                self.store, f"not a patch store with 'images' and 'masks' arrays ({exc})"
            ) from None
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(
                self.store,
                f"'images' must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}",
            )
        if masks.shape != images.shape[:3]:
            raise InputError(
                self.store, f"'masks' shape {masks.shape} does not match images {images.shape[:3]}"
            )
        self.shape = tuple(images.shape)
        self.target = check_target(target)
        self.border_weight = None if border_weight is None else dict(border_weight)
        self.class_weights = tuple(float(v) for v in class_weights)
        self.channels = output_channels(target) + (self.border_weight is not None)
        needs = []
        if target != "binary" or self.border_weight is not None:
            needs.append("labels")
        if target == "nucleus3":
            needs.append("nuclei")
        extra = {}
        for name in needs:
            if name not in group:
                raise InputError(
                    self.store,
                    f"target {target!r}"
                    + (" with a border weight" if self.border_weight else "")
                    + f" needs the instance labels of every patch, but the store has no {name!r}"
                    " array; rebuild it with the labels (build_training_store(with_labels=True"
                    + (", with_nuclei=True" if name == "nuclei" else "")
                    + "))",
                )
            extra[name] = group[name]
            if extra[name].shape != masks.shape:
                raise InputError(self.store, f"{name!r} shape {extra[name].shape} != {masks.shape}")
        self.df = self._read_manifest(self.manifest_path, self.shape[0])
        nbytes = images.nbytes + masks.nbytes + sum(a.nbytes for a in extra.values())
        if in_memory == "auto":
            in_memory = nbytes <= memory_limit
        self.in_memory = bool(in_memory)
        if self.in_memory:
            log.info("loading %s into memory (%.1f MiB)", self.store, nbytes / 2**20)
            self.images, self.masks = images[...], masks[...]
            self.extra = {k: a[...] for k, a in extra.items()}
        else:
            self.images, self.masks = images, masks
            self.extra = extra
        self.train_index = self.df.loc[self.df["split"] == "train", "index"].to_numpy(np.int64)
        self.val_index = self.df.loc[self.df["split"] == "val", "index"].to_numpy(np.int64)
        fg = self.df.set_index("index")["foreground_fraction"]
        self.train_fg = fg.loc[self.train_index].to_numpy(np.float64)
        if self.train_index.size == 0:
            raise InputError(self.manifest_path, "no patches with split 'train'")
        if self.val_index.size == 0:
            raise InputError(self.manifest_path, "no patches with split 'val'")

    @staticmethod
    def _read_manifest(path: Path, n: int) -> pd.DataFrame:
        if not path.is_file():
            raise InputError(path, "manifest does not exist")
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001
            raise InputError(path, f"cannot read parquet ({type(exc).__name__}: {exc})") from None
        missing = {"index", "split", "foreground_fraction"} - set(df.columns)
        if missing:
            raise InputError(path, f"missing columns {sorted(missing)}")
        idx = df["index"].to_numpy()
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise InputError(path, f"'index' values outside [0, {n}) of the patch store")
        if pd.Index(idx).has_duplicates:
            raise InputError(path, "duplicate 'index' values")
        bad = set(df["split"].astype(str)) - {"train", "val", "test"}
        if bad:
            raise InputError(path, f"unknown split values {sorted(bad)}")
        return df.sort_values("index", kind="stable").reset_index(drop=True)

    @property
    def patch_size(self) -> int:
        return int(self.shape[1])

    def read(self, spec: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Load a batch: ``spec`` rows ``(index, y0, x0)``; crops ``size`` x ``size``.

        Returns float32 images in [0, 1] ``(B, size, size, 3)`` and float32
        targets ``(B, size, size, C)`` in ``spec``'s order (the store is read with sorted
        indices): the binary masks (C = 1), or with another ``target`` or a border weight
        :func:`brightseg.targets.make_target` of each patch's instance labels.
        """
        from .targets import make_target

        spec = np.asarray(spec, dtype=np.int64).reshape(-1, 3)
        idx = spec[:, 0]
        uniq, inverse = np.unique(idx, return_inverse=True)
        if self.in_memory:
            imgs, msks = self.images[uniq], self.masks[uniq]
            ext = {k: a[uniq] for k, a in self.extra.items()}
        else:
            imgs, msks = self.images.oindex[uniq], self.masks.oindex[uniq]
            ext = {k: a.oindex[uniq] for k, a in self.extra.items()}
        imgs, msks = imgs[inverse], msks[inverse]
        ext = {k: a[inverse] for k, a in ext.items()}
        h, w = imgs.shape[1:3]

        def crop(arr):
            if size == h and size == w:
                return arr
            return np.stack(
                [a[y : y + size, x : x + size] for a, (y, x) in zip(arr, spec[:, 1:], strict=True)]
            )

        x = crop(imgs).astype(np.float32) / np.float32(255.0)
        if "labels" not in ext:
            return x, (crop(msks) > 0).astype(np.float32)[..., None]
        labels = crop(ext["labels"])
        nuclei = crop(ext["nuclei"]) if "nuclei" in ext else [None] * len(labels)
        y = np.stack(
            [
                make_target(
                    self.target,
                    lab,
                    nuclei=nuc,
                    border_weight=self.border_weight,
                    class_weights=self.class_weights,
                )
                for lab, nuc in zip(labels, nuclei, strict=True)
            ]
        )
        return x, y


def open_patches(store, manifest, **kwargs) -> PatchData:
    """Open and validate a patch store + manifest (see :class:`PatchData`)."""
    return PatchData(store, manifest, **kwargs)


class _Sampler:
    """Per-epoch batch specs for training; thread-safe hand-over of mining weights.

    Epoch ``e`` draws ``steps * batch`` patches: a seeded permutation
    (repeated as needed) without weights, or ``rng.choice`` with the weights
    set by :meth:`set_weights` for that epoch.  With ``wait=True`` the
    generator blocks until the weights for epoch ``e >= 1`` are set, so the
    prefetching pipeline never samples with stale weights.
    """

    def __init__(self, data: PatchData, batch, steps, size, seed, *, wait: bool):
        self.data, self.batch, self.steps, self.size = data, batch, steps, size
        self.seed, self.wait = seed, wait
        self.weights: dict[int, np.ndarray] = {}
        self.cond = threading.Condition()
        self.closed = False

    def set_weights(self, epoch: int, w: np.ndarray) -> None:
        with self.cond:
            self.weights[epoch] = w
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def epoch_specs(self, epoch: int, w: np.ndarray | None) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        n = self.data.train_index.size
        k = self.steps * self.batch
        if w is None:
            reps = math.ceil(k / n)
            pos = np.concatenate([rng.permutation(n) for _ in range(reps)])[:k]
        else:
            pos = rng.choice(n, size=k, replace=True, p=w)
        idx = self.data.train_index[pos]
        span = self.data.patch_size - self.size
        off = rng.integers(0, span + 1, size=(k, 2)) if span > 0 else np.zeros((k, 2), np.int64)
        spec = np.column_stack([idx, off]).astype(np.int64).reshape(self.steps, self.batch, 3)
        # Sort within each batch for chunk locality (the batch's content is unchanged).
        order = np.argsort(spec[:, :, 0], axis=1, kind="stable")
        return np.take_along_axis(spec, order[:, :, None], axis=1)

    def __call__(self):
        epoch = 0
        while True:
            w = None
            if self.wait and epoch > 0:
                with self.cond:
                    while epoch not in self.weights and not self.closed:
                        self.cond.wait(timeout=1.0)
                    if self.closed:
                        return
                    w = self.weights[epoch]
            elif self.closed:
                return
            yield from self.epoch_specs(epoch, w)
            epoch += 1


def validation_order(manifest: pd.DataFrame, seed: int) -> np.ndarray:
    """Store indices of the validation patches, in the order validation takes them.

    The un-augmented originals (``variant`` 0) come first, then the augmented variants;
    within each tier the sources take turns (round-robin over a seeded order of the
    ``source_image`` values, each source's patches in a seeded order).  So ``val_steps``
    batches are a seeded subset stratified across every validation source, originals
    first, instead of a prefix (all variants of the first few patches of one source).

    Parameters
    ----------
    manifest : pandas.DataFrame
        The training manifest (``index``, ``split``; ``variant`` and ``source_image`` are
        used where present).
    seed : int

    Returns
    -------
    ndarray of int64
    """
    val = manifest[manifest["split"] == "val"].sort_values("index", kind="stable")
    if val.empty:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 7])
    source = val["source_image"].astype(str) if "source_image" in val else pd.Series("", val.index)
    sources = np.array(sorted(source.unique()))
    source_rank = dict(
        zip(sources[rng.permutation(sources.size)], range(sources.size), strict=True)
    )
    tier = (val["variant"] != 0).astype(int) if "variant" in val else pd.Series(0, val.index)
    key = pd.DataFrame(
        {
            "index": val["index"].to_numpy(np.int64),
            "tier": tier.to_numpy(),
            "source": source.map(source_rank).to_numpy(),
            "shuffle": rng.permutation(len(val)),
        }
    )
    # turn within (tier, source): the patch's place in its source's seeded order
    key["turn"] = key.sort_values("shuffle").groupby(["tier", "source"]).cumcount()
    key = key.sort_values(["tier", "turn", "source"], kind="stable")
    return key["index"].to_numpy(np.int64)


def _val_specs(data: PatchData, batch: int, size: int, steps: int | None, seed: int) -> list:
    idx = validation_order(data.df, seed)
    nb = math.ceil(idx.size / batch)
    if steps is not None:
        nb = min(nb, steps)
    off = (data.patch_size - size) // 2
    return [
        np.column_stack([b, np.full((b.size, 2), off)]).astype(np.int64)
        for b in np.array_split(idx[: nb * batch], nb)
    ]


def make_dataset(
    data: PatchData,
    spec_source,
    size: int,
    cardinality: int | None = None,
    *,
    parallel: bool = True,
):
    """tf.data pipeline: batch specs -> parallel reads -> prefetch.

    ``spec_source`` is a callable returning a generator of ``(B, 3)`` int64
    batch specs ``(index, y0, x0)``.  Reads run in ``tf.numpy_function`` with
    ``num_parallel_calls=AUTOTUNE`` (order kept, ``deterministic=True``) and
    the result is prefetched (AUTOTUNE), so loading overlaps the model step.
    ``parallel=False`` maps sequentially: under op determinism TensorFlow turns the
    parallel map into a sequential one anyway, and that rewrite logs
    ``NodeDef mentions attribute use_unbounded_threadpool`` to stderr (TF 2.21).
    """
    ds = tf.data.Dataset.from_generator(
        spec_source, output_signature=tf.TensorSpec((None, 3), tf.int64)
    )
    if cardinality is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(cardinality))

    def load(spec):
        x, y = tf.numpy_function(
            lambda s: data.read(s, size), [spec], [tf.float32, tf.float32], stateful=False
        )
        x.set_shape((None, size, size, 3))
        y.set_shape((None, size, size, getattr(data, "channels", 1)))
        return x, y

    if parallel:
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(load)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- checkpoints
_SHARED_ID = re.compile(r'"shared_object_id": (\d+)')


def canonicalize_keras_archive(path: str | os.PathLike) -> None:
    """Make a saved ``.keras`` file byte-identical for identical weights.

    Keras writes the save time into ``metadata.json`` and the zip entries, and the
    Python ``id()`` of shared dtype policies into ``config.json``.  The archive is
    rewritten with a fixed ``date_saved`` and zip timestamps, and the shared-object
    ids renumbered 1, 2, ... in order of appearance (the sharing is kept: equal ids
    stay equal).  The weights file is copied unchanged.
    """

    path = Path(path)
    with zipfile.ZipFile(path) as zin:
        entries = [(info.filename, zin.read(info.filename)) for info in zin.infolist()]
    ids: dict[str, str] = {}

    def renumber(m: re.Match) -> str:
        new = ids.setdefault(m.group(1), str(len(ids) + 1))
        return f'"shared_object_id": {new}'

    tmp = path.with_name(path.name + ".canon")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, data in entries:
            if name == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = "1980-01-01@00:00:00"
                data = json.dumps(meta, sort_keys=True).encode()
            elif name == "config.json":
                data = _SHARED_ID.sub(renumber, data.decode()).encode()
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- callbacks
class _EpochCallback(keras.callbacks.Callback):
    """lr logging, atomic per-epoch checkpoints and history CSV, progress log."""

    def __init__(self, out_dir: Path, ckpt_dir: Path, epochs: int, label: str):
        super().__init__()
        self.out_dir, self.ckpt_dir, self.epochs, self.label = out_dir, ckpt_dir, epochs, label
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        path = self.ckpt_dir / f"epoch_{epoch + 1:02d}.keras"
        # Checkpoints are for inference/selection: leave the optimizer state out
        # (Adam's two moments would add 2x the trainable weights to every file).
        optimizer = self.model.optimizer
        try:
            self.model.optimizer = None
            with atomic_path(path) as tmp:
                self.model.save(tmp)
                canonicalize_keras_archive(tmp)
        finally:
            self.model.optimizer = optimizer
        row = {"epoch": epoch + 1}
        row.update({k: float(logs[k]) for k in HISTORY_COLUMNS[1:] if k in logs})
        self.rows.append(row)
        df = pd.DataFrame(self.rows)
        df = df[[c for c in HISTORY_COLUMNS if c in df.columns]]
        write_text(df.to_csv(index=False, float_format="%.8g"), self.out_dir / "history.csv")
        log.info(
            "%s: %d%% (epoch %d/%d) loss=%.4f val_loss=%.4f val_f1=%.4f lr=%.3g",
            self.label,
            int(100 * (epoch + 1) / self.epochs),
            epoch + 1,
            self.epochs,
            row.get("loss", float("nan")),
            row.get("val_loss", float("nan")),
            row.get("val_f1", float("nan")),
            row["lr"],
        )


class _BudgetCallback(keras.callbacks.Callback):
    """Stop training after the epoch in which ``budget_s`` seconds of wall time have passed."""

    def __init__(self, budget_s: float):
        super().__init__()
        self.budget_s = budget_s
        self.stopped = False
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._t0 = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._t0 >= self.budget_s:
            self.stopped = True
            self.model.stop_training = True
            log.info("time budget of %.0f s reached after epoch %d", self.budget_s, epoch + 1)


class _ScalarLogger(keras.callbacks.Callback):
    """Per-epoch scalars as TensorBoard event files (``train/``, ``validation/``).

    Written with core ``tf.summary.write`` and the ``scalars`` plugin
    metadata, so it works without the ``tensorboard`` package (which
    ``keras.callbacks.TensorBoard`` needs); ``tensorboard --logdir`` reads it
    like Keras's own logs (tags ``epoch_loss``, ``epoch_f1``, ...,
    ``epoch_learning_rate``).
    """

    def __init__(self, log_dir: Path):
        super().__init__()
        from tensorflow.core.framework import summary_pb2

        self.log_dir = Path(log_dir)
        self.meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        self.writers = {}

    def _writer(self, kind):
        if kind not in self.writers:
            self.writers[kind] = tf.summary.create_file_writer(str(self.log_dir / kind))
        return self.writers[kind]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            if key == "lr":
                kind, tag = "train", "epoch_learning_rate"
            elif key.startswith("val_"):
                kind, tag = "validation", "epoch_" + key[4:]
            else:
                kind, tag = "train", "epoch_" + key
            with self._writer(kind).as_default():
                tf.summary.write(tag, tf.constant(float(value)), step=epoch, metadata=self.meta)
        for w in self.writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self.writers.values():
            w.close()


class _MiningCallback(keras.callbacks.Callback):
    """Scores the training patches after each epoch and sets the next epoch's weights.

    ``budget`` (``training.mining_budget``): at most that many patches are scored per
    epoch, a seeded random subset; the others keep the loss of their last scoring (the mean
    of the scored ones until then).  None: every patch, every epoch.
    """

    def __init__(
        self,
        data: PatchData,
        sampler: _Sampler,
        loss_fn,
        size,
        batch,
        mining_kw,
        *,
        budget: int | None = None,
        seed: int = 0,
    ):
        super().__init__()

        self.data, self.sampler, self.size, self.batch = data, sampler, size, batch
        self.loss_fn = loss_fn
        self.kw = mining_kw
        self.budget, self.seed = budget, seed
        self.losses = np.full(data.train_index.size, np.nan)
        self.last_weights: np.ndarray | None = None

    def scored_positions(self, epoch: int) -> np.ndarray:
        """Positions in ``train_index`` scored after ``epoch`` (sorted)."""
        n = self.data.train_index.size
        if self.budget is None or self.budget >= n:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch, 11])
        return np.sort(rng.choice(n, size=self.budget, replace=False))

    def on_epoch_end(self, epoch, logs=None):
        pos = self.scored_positions(epoch)
        idx = self.data.train_index[pos]
        off = (self.data.patch_size - self.size) // 2
        losses = []
        for start in range(0, idx.size, self.batch):
            b = idx[start : start + self.batch]
            x, y = self.data.read(np.column_stack([b, np.full((b.size, 2), off)]), self.size)
            p = self.model.predict_on_batch(x)
            losses.append(np.asarray(self.loss_fn(y, p), dtype=np.float64))
        scored = np.concatenate(losses)
        self.losses[pos] = scored
        current = np.where(np.isnan(self.losses), scored.mean(), self.losses)
        w = mining_weights(current, self.data.train_fg, **self.kw)
        self.last_weights = w
        log.info(
            "hard-example mining: %d of %d patches scored, loss mean %.4f max %.4f; "
            "max/min sampling weight ratio %.2f",
            pos.size,
            current.size,
            scored.mean(),
            scored.max(),
            w.max() / max(w.min(), 1e-300),
        )
        self.sampler.set_weights(epoch + 1, w)


# --------------------------------------------------------------------------- training
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:

    return {
        "brightseg": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


@contextlib.contextmanager
def _dtype_policy(policy: str):

    old = keras.mixed_precision.global_policy().name
    try:
        yield set_precision(policy)
    finally:
        keras.mixed_precision.set_global_policy(old)


def lr_schedule(
    kind: str, lr: float, total_steps: int, decay_steps: int, decay_rate: float
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning-rate schedule of a training run.

    Parameters
    ----------
    kind : {"exponential", "cosine"}
        ``exponential``: ``lr * decay_rate ** floor(t / decay_steps)`` (staircase; the
        paper's).  ``cosine``: ``lr`` falling along a half cosine to ``lr / 100`` at step
        ``total_steps`` (then constant), for a fixed budget of epochs.
    lr : float
        Initial learning rate.
    total_steps : int
        Optimiser steps of the whole run (``epochs * steps_per_epoch``).
    decay_steps, decay_rate : int, float
        The exponential schedule's parameters.

    Returns
    -------
    keras.optimizers.schedules.LearningRateSchedule
    """
    if kind == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps, decay_rate, staircase=True
        )
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, max(1, int(total_steps)), alpha=0.01)
    raise InputError(None, f"training.lr_schedule must be exponential or cosine, got {kind!r}")


def _working_pixel_size(store) -> dict:
    """``{"working_pixel_size_um": w}`` of a training store that records one, else ``{}``."""
    from .augment import training_store_working_pixel_size

    value = training_store_working_pixel_size(store)
    return {} if value is None else {"working_pixel_size_um": value}


def train_model(
    store,
    manifest,
    out_dir,
    *,
    spec: ModelSpec | Mapping,
    training: TrainingConfig | Mapping,
    seed: int = 0,
    checkpoint_dir=None,
    input_size: int | None = None,
    min_delta: float = 0.0,
    mining_kwargs: dict | None = None,
    in_memory="auto",
    run_eagerly: bool = False,
    time_budget_s: float | None = None,
) -> dict:
    """Train one architecture with one loss and write checkpoints, history and card.

    Parameters
    ----------
    store, manifest : path
        ``patches.zarr`` and ``manifest.parquet`` (see module docstring).
    out_dir : path
        Output directory (e.g. ``results/models/{model}/{loss}``) of ``history.csv``,
        ``card.json`` and ``tensorboard/``.  Previous outputs are removed.
    spec : ModelSpec or mapping
        The run (a ``models`` entry): ``architecture`` and ``loss`` (keys of
        :data:`brightseg.models.ARCHITECTURES` and :data:`brightseg.losses.LOSSES`),
        ``hard_mining`` (loss-driven resampling each epoch, see :func:`mining_weights`;
        ``mining_kwargs`` are passed to it), ``encoder_weights`` (``none``, ``imagenet`` or
        a path; default the training block's; resolved before any data is read, so
        missing ImageNet weights fail first), ``model_kwargs`` (builder arguments) and
        ``loss_kwargs`` (loss arguments, e.g. ``bce_dice``'s ``fg_weight``).
    training : TrainingConfig or mapping
        The ``training`` block (defaults from the config schema).  Adam with staircase
        exponential decay (``learning_rate``, ``decay_steps``, ``decay_rate``); early
        stopping after ``patience`` epochs without a ``val_loss`` decrease larger than
        ``min_delta``; ``deterministic`` also calls
        ``tf.config.experimental.enable_op_determinism()`` (process-wide and
        irreversible; it also disables XLA); ``precision`` is the dtype policy for
        :func:`brightseg.models.set_precision` (restored afterwards);
        ``steps_per_epoch``/``val_steps`` null: every training patch once per epoch
        (``ceil(n_train / batch)`` steps) and the whole validation split.
    seed : int
        ``keras.utils.set_random_seed(seed)``.
    input_size : int, optional
        Model input size; default the patch size.  Smaller values train on
        seeded random crops (validation: centre crops).
    model_kwargs : dict, optional
        Extra builder arguments.
    in_memory : bool or "auto"
        See :class:`PatchData`.
    run_eagerly : bool
        Keras eager mode (debugging, tiny tests).
    time_budget_s : float, optional
        Wall-clock training budget: training stops after the epoch that crosses it
        (``card.json``: ``stopped_budget``).
    checkpoint_dir : path, optional
        Where the per-epoch ``epoch_NN.keras`` go (default ``out_dir/checkpoints``; the
        ``train`` rule declares it as a directory output).

    Returns
    -------
    dict
        The contents of ``card.json``.
    """
    spec = ModelSpec.coerce(spec)
    cfg = TrainingConfig.coerce(training)
    architecture, loss, hard_mining = spec.architecture, spec.loss, spec.hard_mining
    encoder_weights = spec.encoder_weights or cfg.encoder_weights
    model_kwargs = dict(spec.model_kwargs)
    loss_kwargs = dict(spec.loss_kwargs)
    get_loss(loss, **loss_kwargs)  # bad loss_kwargs fail before any data is read
    target = getattr(spec, "target", "binary")
    check_model_target(target, loss)
    border_weight = loss_kwargs.get("border_weight")
    class_weights = (
        float(loss_kwargs.get("bg_weight", 1.0)),
        float(loss_kwargs.get("fg_weight", 10.0)),
    )
    epochs, batch_size, lr = cfg.epochs, cfg.batch_size, cfg.learning_rate
    decay_steps, decay_rate, patience = cfg.decay_steps, cfg.decay_rate, cfg.patience
    deterministic, precision = cfg.deterministic, cfg.precision
    steps_per_epoch, val_steps = cfg.steps_per_epoch, cfg.val_steps

    out_dir = Path(out_dir)
    if architecture not in ARCHITECTURES:
        raise InputError(None, f"unknown architecture {architecture!r}")
    if loss not in LOSSES:
        raise InputError(None, f"unknown loss {loss!r}")
    config = {
        "architecture": architecture,
        "loss": loss,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "decay_steps": decay_steps,
        "decay_rate": decay_rate,
        "patience": patience,
        "min_delta": min_delta,
        "hard_mining": hard_mining,
        "seed": seed,
        "deterministic": deterministic,
        "precision": precision,
        "encoder_weights": os.fspath(encoder_weights),
        "steps_per_epoch": steps_per_epoch,
        "val_steps": val_steps,
        "mining_budget": cfg.mining_budget,
        **({} if cfg.lr_schedule == "exponential" else {"lr_schedule": cfg.lr_schedule}),
        "input_size": input_size,
        "model_kwargs": model_kwargs or {},
        "target": target,
        "loss_kwargs": loss_kwargs,
        "mining_kwargs": mining_kwargs or {},
    }
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    data = PatchData(
        store,
        manifest,
        in_memory=in_memory,
        target=target,
        border_weight=border_weight,
        class_weights=class_weights,
    )
    size = input_size or data.patch_size
    if size > data.patch_size:
        raise InputError(store, f"input_size {size} exceeds the patch size {data.patch_size}")
    n_train = data.train_index.size
    steps = steps_per_epoch or max(1, math.ceil(n_train / batch_size))

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for old in [*ckpt_dir.glob("epoch_*.keras"), out_dir / "history.csv", out_dir / "card.json"]:
        old.unlink(missing_ok=True)
    label = f"train {architecture}/{loss}"

    with _dtype_policy(precision) as policy:
        model = build_model(
            architecture,
            (size, size, 3),
            encoder_weights,
            target=target,
            **(model_kwargs or {}),
        )
        total, trainable = count_params(model)
        log.info(
            "%s: %s params (%s trainable), %d train / %d val patches, %d steps/epoch, policy %s",
            label,
            f"{total:,}",
            f"{trainable:,}",
            n_train,
            data.val_index.size,
            steps,
            policy,
        )
        schedule = lr_schedule(cfg.lr_schedule, lr, epochs * steps, decay_steps, decay_rate)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=schedule),
            loss=get_loss(loss, **loss_kwargs),
            metrics=[ConfusionMetric(m) for m in METRICS],
            run_eagerly=run_eagerly,
        )
        sampler = _Sampler(data, batch_size, steps, size, seed, wait=hard_mining)
        train_ds = make_dataset(data, sampler, size, parallel=not deterministic)
        val_batches = _val_specs(data, batch_size, size, val_steps, seed)
        val_ds = make_dataset(
            data, lambda: iter(val_batches), size, len(val_batches), parallel=not deterministic
        )
        epoch_cb = _EpochCallback(out_dir, ckpt_dir, epochs, label)
        callbacks = []
        if hard_mining:
            callbacks.append(
                _MiningCallback(
                    data,
                    sampler,
                    get_loss(loss, reduction=None, **loss_kwargs),
                    size,
                    batch_size,
                    mining_kwargs or {},
                    budget=cfg.mining_budget,
                    seed=seed,
                )
            )
        callbacks.append(epoch_cb)
        stopper = None
        if patience and patience > 0:
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=patience, min_delta=min_delta
            )
            callbacks.append(stopper)
        callbacks.append(_ScalarLogger(out_dir / "tensorboard"))
        budget = None
        if time_budget_s is not None:
            budget = _BudgetCallback(float(time_budget_s))
            callbacks.append(budget)
        try:
            model.fit(
                train_ds,
                epochs=epochs,
                steps_per_epoch=steps,
                validation_data=val_ds,
                callbacks=callbacks,
                shuffle=False,
                verbose=0,
            )
        finally:
            sampler.close()

    hist = pd.DataFrame(epoch_cb.rows)
    best = int(hist.loc[hist["val_loss"].idxmin(), "epoch"]) if len(hist) else None
    card = {
        "config": config,
        "data": {
            "store": os.fspath(store),
            "manifest": os.fspath(manifest),
            "manifest_sha256": _sha256(Path(manifest)),
            "n_train": int(n_train),
            "n_val": int(data.val_index.size),
            "patch_size": data.patch_size,
            **_working_pixel_size(store),
        },
        "versions": _versions(),
        "params": {"total": total, "trainable": trainable},
        "precision_policy": policy,
        "steps_per_epoch": steps,
        "epochs_run": len(hist),
        "stopped_early": bool(stopper is not None and stopper.stopped_epoch > 0),
        "stopped_budget": bool(budget is not None and budget.stopped),
        "time_budget_s": time_budget_s,
        "best_epoch": best,
        "best_val_loss": None if best is None else float(hist["val_loss"].min()),
        "best_checkpoint": None if best is None else f"{CHECKPOINT_DIR}/epoch_{best:02d}.keras",
    }
    write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", out_dir / "card.json")
    log.info("%s: done, %d epochs, best epoch %s", label, len(hist), best)
    return card
