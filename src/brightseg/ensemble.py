"""Ensemble inference: tiled, blended, voted U-Net predictions for a whole plate.

One ``predict`` job handles one plate.  Every checkpoint listed in
``results/models/ensemble.tsv`` is loaded once per job and wrapped in a
compiled :func:`tf.function` with a fixed batch shape (:func:`make_predictor`).
Images are cut into square tiles of the models' input size that overlap by
``overlap`` pixels (:func:`tile_grid`); each tile's prediction is weighted by a
separable raised-cosine window with a small floor (:func:`blend_window`) and
the weighted sum is normalised by the accumulated weight, so tile borders leave
no seams.  Images smaller than a tile are padded by reflection.  The per-model
probability maps are then combined by :func:`vote`:

``"mean"``
    mean probability, then ``mean > threshold`` (the paper's "mean and
    thresholding").
``"majority"``
    fraction of models whose probability is ``> 0.5``, then
    ``fraction > threshold`` (strictly: with two models both must agree).

Optional test-time augmentation (``tta=True``) runs the 8 dihedral transforms
(rotations by 90 degrees and their mirror images) of every tile and averages
the exactly inverted outputs per model before voting.  ``tta`` may also be one
flag per model (``models[].tta`` in the config, the ``tta`` column of
``ensemble.tsv``): the transformed tiles then go in batches of their own that
only the models with TTA predict, so a model without it costs what it costs
alone.

Pipeline
--------
``predict_plate`` streams a plate through five threads connected by bounded
queues, so reading, tiling, blending, voting and writing hide behind the model
forward passes:

reader
    loads the next image (prefetch: at most ``prefetch + 1`` input images are
    held at once);
producer
    cuts tiles (and their TTA copies) into full batches; the tile queue runs
    across images, so only the very last batch of the plate is padded;
main thread
    calls the predictors on each batch (nothing else);
accumulator
    blends tile outputs into row-band accumulators, normalises and votes each
    finished band of rows;
writer
    writes ``prob`` and ``mask`` into the plate store.

Accumulators hold one band of ``tile`` rows, not the whole image: when the
first tile of a new tile row arrives, every row above it is final and is
flushed.  Images above ``max_image_pixels`` are also *read* band by band from
the zarr array instead of whole.

Outputs
-------
Per image, two labels are written to the plate store: ``prob``, the mean
ensemble probability stored as ``uint8`` (``round(255 * p)``; 1/255 resolution
is ample for QC overlays and re-thresholding, and is half the size of
``float16``), and ``mask``, ``uint8`` 0/1 from the chosen vote (computed from
the float probabilities, not from the rounded ``prob``).  ``mask`` is written
last, so ``store.has_label(image_id, "mask")`` means the image is complete: a
rerun skips such images and redoes a partially written one.

With ``uncertainty=True`` (config ``qc.uncertainty``) two more ``uint8`` labels are written
before ``mask``, computed in the same streaming pass from the members' probabilities of each
band of rows (:func:`brightseg.qc.uncertainty_maps`): ``variance``, the members' variance
(``round(1020 * var)``), and ``entropy``, the binary entropy of the mean probability in bits
(``round(255 * H)``); 2 more bytes per pixel in the output buffers, nothing more held.

Memory
------
For a plate of 2048 x 1536 images (3.15 MPx), ``M`` models, batch ``B`` and
tile ``t`` = 256, the pipeline holds, independently of the number of images:

- inputs: 2 float32 images (current + prefetched) = 2 x 12.6 MB = 25 MB,
  plus the reader's transient uint16 decode (6.3 MB);
- batches: at most 4 input batches (2 queued, 1 filling, 1 in the model) of
  ``B x t x t x 3 x 4`` bytes = 6.3 MB each for B = 8, i.e. 25 MB, and 3 output
  batches of ``M x B x t x t x 4`` bytes = 2.1 MB per model each (13 MB for
  M = 2, 25 MB for M = 4);
- accumulators: ``(M + 1) x t x 1536 x 4`` bytes = 4.7 MB (M = 2) to 7.9 MB
  (M = 4), plus the same again for the band being normalised;
- outputs: ``prob`` + ``mask`` = 2 bytes/px = 6.3 MB per image, at most 3
  images (accumulating, queued, writing) = 19 MB.

That is about 100 MB (M = 2) to 120 MB (M = 4) for the whole 100-image plate
(or a 1,000-image one) on top of the TensorFlow runtime, the weights and the
model's activations for one batch (for a U-Net, hundreds of MB at B = 8), which
dominate.  Measured with ``resource.getrusage`` (``ru_maxrss``) in fresh
processes (2 CPU cores, two ``small_unet`` models, B = 8, 2048 x 1536 images in
a zarr store): the peak RSS after tracing and one forward pass of each model
was 965-980 MB; predicting 2 images raised it by 138 MB to 1103 MB, predicting
6 images by 134 MB to 1114 MB (the estimate above plus TensorFlow's copies of
the batches and zarr codec buffers) -- flat in the number of images, as the
structure guarantees (unit-tested: one live accumulator of one band, at most
two input images alive, a bounded number of images in flight).  A 100-image
plate therefore peaks at about 1.1 GB with these models.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import InferenceConfig
from .errors import InputError
from .metrics import choose_threshold, confusion_counts
from .progress import progress
from .qc import ENTROPY_LABEL, VARIANCE_LABEL, encode_entropy, encode_variance, uncertainty_maps
from .tiling import (
    _axis_positions,
    _check_tiling,
    _check_vote,
    _vote,
    blend_window,
    to_uint8,
    tta_transforms,
    vote_map,
)

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], Any]
"""``f(batch float32 (B, t, t, 3)) -> array-like (B, t, t, 1)`` probabilities."""

PROB_LABEL = "prob"
MASK_LABEL = "mask"
#: Label of a 3-class ensemble's seed-class probability (interior or nucleus), uint8.
SEED_LABEL = "seed"
SUMMARY_COLUMNS = [
    "image_id",
    "n_models",
    "vote",
    "threshold",
    "tta",
    "foreground_fraction",
]


# --------------------------------------------------------------------------- predictors


def make_predictor(model: Any, batch_size: int = 8, tile: int = 256) -> Predictor:
    """Wrap a Keras model in a compiled ``tf.function`` with a fixed batch shape.

    Parameters
    ----------
    model : keras.Model
        Takes float32 ``(B, tile, tile, 3)`` in [0, 1], returns sigmoid
        probabilities ``(B, tile, tile, 1)`` (any float dtype; the mixed
        precision policy is the caller's business).
    batch_size, tile : int
        The one input shape the function is traced for.

    Returns
    -------
    callable
        ``f(batch) -> tf.Tensor float32 (n, tile, tile, 1)`` for a numpy batch of
        ``n`` tiles; ``n < batch_size`` is zero-padded to the traced shape and the
        padding is cut from the result, larger batches are split.  The traced
        function is ``f.forward`` (``f.forward.experimental_get_tracing_count()``
        stays 1).  The result is returned without waiting for the device
        (conversion with ``np.asarray`` synchronises).
    """
    import tensorflow as tf

    spec = tf.TensorSpec((batch_size, tile, tile, 3), tf.float32)

    @tf.function(jit_compile=False, reduce_retracing=True, input_signature=[spec])
    def forward(x):
        return tf.cast(model(x, training=False), tf.float32)

    def predict(batch: np.ndarray):
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (tile, tile, 3):
            raise ValueError(f"expected a batch of shape (n, {tile}, {tile}, 3), got {batch.shape}")
        n = batch.shape[0]
        if n == batch_size:
            return forward(batch)
        if n > batch_size:
            parts = [predict(batch[i : i + batch_size]) for i in range(0, n, batch_size)]
            return tf.concat(parts, axis=0)
        padded = np.zeros((batch_size, tile, tile, 3), dtype=np.float32)
        padded[:n] = batch
        return forward(padded)[:n]

    predict.forward = forward  # type: ignore[attr-defined]
    predict.batch_size = batch_size  # type: ignore[attr-defined]
    predict.tile = tile  # type: ignore[attr-defined]
    return predict


def channel_predictors(predictor: Predictor, channels: int) -> list[Predictor]:
    """Split a multi-channel predictor into one single-channel predictor per channel.

    The tiling pipeline blends and votes single-channel maps; a 3-class (softmax) model
    enters it as 3 predictors, channel ``c`` returning ``(n, tile, tile, 1)``.  The model
    runs once per batch: the first channel's call computes and keeps the output for the
    same batch object, which the pipeline hands to every predictor in turn.

    Parameters
    ----------
    predictor : callable
        From :func:`make_predictor`; returns ``(n, tile, tile, channels)``.
    channels : int

    Returns
    -------
    list of callables
    """
    if channels == 1:
        return [predictor]
    cache: dict = {"batch": None, "out": None}

    def view(c: int) -> Predictor:
        def predict(batch):
            if cache["batch"] is not batch:
                out = np.asarray(predictor(batch), dtype=np.float32)
                if out.ndim != 4 or out.shape[-1] != channels:
                    raise ValueError(f"expected {channels} output channels, got {out.shape}")
                cache["batch"], cache["out"] = batch, out
            return cache["out"][..., c : c + 1]

        return predict

    return [view(c) for c in range(channels)]


def class_views(predictor: Predictor, target: str) -> tuple[Predictor, Predictor | None]:
    """Foreground and seed-class views of a model's predictor.

    For a binary (sigmoid) model: the predictor itself and None.  For a 3-class softmax
    model (``border3``, ``nucleus3``; :mod:`brightseg.targets`): a predictor of the
    foreground probability ``1 - p_background`` and one of the seed class (interior or
    nucleus), both ``(n, tile, tile, 1)``; the model runs once per batch (the foreground
    view computes, the seed view reuses the output for the same batch object).  Every
    consumer of single-channel probabilities (voting, thresholds, per-checkpoint scores)
    works unchanged on the foreground view.
    """
    from .targets import SEED_CHANNEL

    if target == "binary":
        return predictor, None
    channel = SEED_CHANNEL[target]
    cache: dict = {"batch": None, "out": None}

    def run(batch):
        if cache["batch"] is not batch:
            out = np.asarray(predictor(batch), dtype=np.float32)
            if out.ndim != 4 or out.shape[-1] != 3:
                raise ValueError(f"a {target} model must return 3 channels, got {out.shape}")
            cache["batch"], cache["out"] = batch, out
        return cache["out"]

    def foreground(batch):
        return np.clip(1.0 - run(batch)[..., 0:1], 0.0, 1.0)

    def seed(batch):
        return run(batch)[..., channel : channel + 1]

    return foreground, seed


# --------------------------------------------------------------------------- pipeline


class _Stopped(Exception):
    """Raised inside a pipeline thread when another thread failed."""


_END = object()


class _Pipe:
    """Threads joined by bounded queues; the first error stops all of them."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.threads: list[threading.Thread] = []

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()

    def start(self, name: str, fn: Callable, *args) -> None:
        def run() -> None:
            try:
                fn(*args)
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                self.fail(exc)

        th = threading.Thread(target=run, name=f"brightseg-{name}", daemon=True)
        th.start()
        self.threads.append(th)

    def put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                pass

    def get(self, q: queue.Queue) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                pass

    def acquire(self, sem: threading.Semaphore) -> None:
        while not sem.acquire(timeout=0.05):
            if self.stop.is_set():
                raise _Stopped

    def join(self) -> None:
        for th in self.threads:
            th.join()
        if self.error is not None:
            raise self.error


class _ZarrPlane:
    """Lazy float32 view of time ``t`` of a ``(T, C, H, W)`` uint16 array.

    ``(H, W)`` for one channel; ``(H, W, C)`` (channels last) for focal planes.
    """

    def __init__(self, array: Any, t: int):
        self.array = array
        self.t = t
        self.channels = int(array.shape[1])
        hw = tuple(int(s) for s in array.shape[-2:])
        self.shape = hw if self.channels == 1 else (*hw, self.channels)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key, slice(None))
        if self.channels == 1:
            raw = np.asarray(self.array[(self.t, 0, *key)])
        else:
            raw = np.moveaxis(np.asarray(self.array[(self.t, slice(None), *key[:2])]), 0, -1)
        return raw.astype(np.float32) / np.float32(65535)


class _Job:
    """One image on its way through the pipeline."""

    def __init__(self, key: Hashable, source: Any, tile: int, overlap: int):
        self.key = key
        shape = tuple(getattr(source, "shape", ()))
        if len(shape) != 2 and not (len(shape) == 3 and shape[2] == 3):
            raise InputError(
                str(key), f"expected a 2-D image or (H, W, 3) focal planes, got shape {shape}"
            )
        self.h, self.w = int(shape[0]), int(shape[1])
        if self.h < 1 or self.w < 1:
            raise InputError(str(key), f"image has no pixels (shape {shape})")
        if isinstance(source, np.ndarray) or self.h < tile or self.w < tile:
            arr = np.asarray(source if isinstance(source, np.ndarray) else source[:, :])
            arr = arr.astype(np.float32, copy=False)
            if not np.isfinite(arr).all():
                raise InputError(str(key), "image contains NaN or infinite values")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1e-3 or hi > 1.001:
                raise InputError(
                    str(key), f"expected a corrected image in [0, 1], got values in [{lo}, {hi}]"
                )
            pad = ((0, max(0, tile - self.h)), (0, max(0, tile - self.w)))
            if pad[0][1] or pad[1][1]:
                arr = np.pad(arr, pad + ((0, 0),) * (arr.ndim - 2), mode="reflect")
            source = arr
        self.source = source
        self.hp, self.wp = int(source.shape[0]), int(source.shape[1])
        self.ys = _axis_positions(self.hp, tile, overlap)
        self.xs = _axis_positions(self.wp, tile, overlap)

    def band(self, y: int, tile: int) -> np.ndarray:
        return np.asarray(self.source[y : y + tile, :], dtype=np.float32)


class _Accumulator:
    """Blended sums for one band of ``tile`` rows of one image."""

    def __init__(self, job: _Job, n_models: int, tile: int, stats: dict):
        self.job = job
        self.cap = tile
        self.acc = np.zeros((n_models, tile, job.wp), dtype=np.float32)
        self.wsum = np.zeros((tile, job.wp), dtype=np.float32)
        self.base = 0
        self.row = 0
        self.outputs: list[np.ndarray] | None = None
        nbytes = self.acc.nbytes + self.wsum.nbytes
        stats["live_accumulators"] += 1
        stats["max_live_accumulators"] = max(
            stats["max_live_accumulators"], stats["live_accumulators"]
        )
        stats["peak_accumulator_bytes"] = max(stats["peak_accumulator_bytes"], nbytes)

    def flush(self, upto: int, reduce: Callable) -> None:
        """Normalise rows ``[base, upto)``, reduce them and shift the band up."""
        n = min(upto - self.base, self.cap)
        if n <= 0:
            return
        job = self.job
        y0, y1 = self.base, min(self.base + n, job.h)
        if y1 > y0:
            rows = y1 - y0
            probs = self.acc[:, :rows, : job.w] / self.wsum[:rows, : job.w]
            reduced = reduce(probs)
            if self.outputs is None:
                self.outputs = [np.empty(r.shape[:-2] + (job.h, job.w), r.dtype) for r in reduced]
            for out, r in zip(self.outputs, reduced, strict=True):
                out[..., y0:y1, :] = r
        keep = self.cap - n
        if keep:
            self.acc[:, :keep] = self.acc[:, n:]
            self.wsum[:keep] = self.wsum[n:]
        self.acc[:, keep:] = 0
        self.wsum[keep:] = 0
        self.base += n


def _new_stats() -> dict:
    return {
        "n_images": 0,
        "n_read": 0,
        "n_written": 0,
        "n_tiles": 0,
        "n_batches": 0,
        "n_padded_slots": 0,
        "live_accumulators": 0,
        "max_live_accumulators": 0,
        "peak_accumulator_bytes": 0,
        "max_images_in_flight": 0,
        "compute_s": 0.0,
        "wall_s": 0.0,
    }


def tta_flags(tta: bool | Sequence[bool], n_models: int) -> list[bool]:
    """One test-time-augmentation flag per model from a flag for all or one per model.

    Raises
    ------
    InputError
        A sequence whose length is not ``n_models``.
    """
    if isinstance(tta, bool | np.bool_ | int):
        return [bool(tta)] * n_models
    flags = [bool(f) for f in tta]
    if len(flags) != n_models:
        raise InputError("tta", f"{len(flags)} TTA flags for {n_models} models")
    return flags


def _tta_with_seeds(tta: bool | Sequence[bool], n_models: int, n_seeds: int) -> bool | list[bool]:
    """The TTA flags of the members followed by those of their seed-class views.

    A 3-class ensemble predicts each member twice (foreground and seed class, in member
    order: every member has the same target); each view takes its member's flag.
    """
    if isinstance(tta, bool | np.bool_ | int) or not n_seeds:
        return tta
    flags = tta_flags(tta, n_models)
    return flags + flags[:n_seeds]


def _tta_label(tta: bool | Sequence[bool]) -> bool | str:
    """The summary's ``tta``: a bool, or one 0/1 per model where they differ."""
    if isinstance(tta, bool | np.bool_ | int):
        return bool(tta)
    flags = [bool(f) for f in tta]
    if len(set(flags)) <= 1:
        return bool(flags and flags[0])
    return "".join("1" if f else "0" for f in flags)


def _as_tiles(out: Any, n: int, tile: int) -> np.ndarray:
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or arr.shape[0] < n or arr.shape[1:] != (tile, tile):
        raise ValueError(
            f"a predictor returned shape {np.shape(out)}; expected ({n}, {tile}, {tile}, 1)"
        )
    return arr


def _run(
    items: Iterable[tuple[Hashable, Callable[[], Any]]],
    predictors: Sequence[Predictor],
    *,
    tile: int,
    overlap: int,
    batch_size: int,
    tta: bool | Sequence[bool],
    reduce: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    on_result: Callable[[Hashable, list[np.ndarray]], None],
    total: int | None = None,
    desc: str = "predict",
    prefetch: int = 1,
    stats: dict | None = None,
    scale: float = 1.0,
) -> dict:
    """Stream images through tiling, the predictors, blending, ``reduce`` and ``on_result``.

    ``scale`` != 1 (a working pixel size, :mod:`brightseg.scale`): each image is resampled
    by ``scale`` before tiling, the models' blended maps are resampled back to the image's
    own grid and ``reduce`` runs there (:func:`_native_outputs`), so ``on_result`` gets
    outputs of the image's own shape.
    """
    _check_tiling(tile, overlap)
    if int(batch_size) != batch_size or batch_size < 1:
        raise InputError("batch_size", f"batch size must be a positive integer, got {batch_size!r}")
    predictors = list(predictors)
    if not predictors:
        raise InputError("ensemble", "no models to predict with")
    stats = _new_stats() if stats is None else stats
    n_models = len(predictors)
    flags = tta_flags(tta, n_models)
    transforms = tta_transforms() if any(flags) else tta_transforms()[:1]
    n_tta = len(transforms)
    window = blend_window(tile, overlap)
    # per model: the transforms it averages and the weight of each
    model_tta = [n_tta if f else 1 for f in flags]
    model_window = [(window / np.float32(n)).astype(np.float32) for n in model_tta]
    # transform k goes to the models that use it; one batch stream per set of models
    readers = [tuple(m for m in range(n_models) if k < model_tta[m]) for k in range(n_tta)]
    groups = list(dict.fromkeys(readers))
    stream_of = [groups.index(r) for r in readers]

    slots = threading.Semaphore(prefetch + 1)
    q_jobs: queue.Queue = queue.Queue()
    q_batches: queue.Queue = queue.Queue(maxsize=2)
    q_results: queue.Queue = queue.Queue(maxsize=2)
    q_write: queue.Queue = queue.Queue(maxsize=1)
    pipe = _Pipe()

    rescale = float(scale) != 1.0
    user_reduce = reduce
    if rescale:  # keep the working-grid maps; reduce on the image's own grid at the end
        reduce = _keep_probs

    def reader() -> None:
        for key, load in items:
            pipe.acquire(slots)
            source = load()
            native = None
            if rescale:
                source, native = _to_working(source, float(scale))
            job = _Job(key, source, tile, overlap)
            job.native = native
            stats["n_read"] += 1
            stats["max_images_in_flight"] = max(
                stats["max_images_in_flight"], stats["n_read"] - stats["n_written"]
            )
            pipe.put(q_jobs, job)
        pipe.put(q_jobs, _END)

    def producer() -> None:
        batches = [np.empty((batch_size, tile, tile, 3), dtype=np.float32) for _ in groups]
        metas: list[list[tuple]] = [[] for _ in groups]
        seq = 0
        while (job := pipe.get(q_jobs)) is not _END:
            last_y, last_x = job.ys[-1], job.xs[-1]
            for y in job.ys:
                band = job.band(y, tile)
                for x in job.xs:
                    patch = band[:, x : x + tile]
                    if patch.ndim == 2:  # grey: replicated into the 3 input channels
                        patch = patch[..., None]
                    last = y == last_y and x == last_x
                    for k, tr in enumerate(transforms):
                        g = stream_of[k]
                        batches[g][len(metas[g])] = tr.forward(patch)
                        metas[g].append((seq, job, y, x, k, last))
                        if len(metas[g]) == batch_size:
                            pipe.put(q_batches, (g, batches[g], metas[g]))
                            batches[g] = np.empty_like(batches[g])
                            metas[g] = []
                    seq += 1
            job.source = band = patch = None  # release the input image
            slots.release()
        for g, meta in enumerate(metas):
            if meta:
                batches[g][len(meta) :] = 0
                stats["n_padded_slots"] += batch_size - len(meta)
                pipe.put(q_batches, (g, batches[g], meta))
        pipe.put(q_batches, _END)

    def accumulator() -> None:
        cur: _Accumulator | None = None
        # tiles whose transforms are still arriving (streams interleave), by sequence number
        pending: dict[int, list] = {}
        next_seq = 0

        def add(seq: int, job: _Job, y: int, x: int, last: bool, outs: list) -> None:
            nonlocal cur
            if cur is None or cur.job is not job:
                cur = _Accumulator(job, n_models, tile, stats)
            if y != cur.row:
                cur.flush(y, reduce)
                cur.row = y
            r0 = y - cur.base
            cur.wsum[r0 : r0 + tile, x : x + tile] += window
            for m in range(n_models):
                view = cur.acc[m, r0 : r0 + tile, x : x + tile]
                for k in range(model_tta[m]):
                    view += transforms[k].inverse(outs[k][m]) * model_window[m]
            if last:
                cur.flush(job.hp, reduce)
                stats["live_accumulators"] -= 1
                stats["n_images"] += 1
                outputs = cur.outputs
                if rescale:
                    outputs = _native_outputs(outputs[0], job.native, user_reduce)
                pipe.put(q_write, (job.key, outputs))
                cur = None

        while (item := pipe.get(q_results)) is not _END:
            g, meta, outs = item
            outs = [_as_tiles(o, len(meta), tile) for o in outs]
            for i, (seq, job, y, x, k, last) in enumerate(meta):
                entry = pending.setdefault(seq, [job, y, x, last, [None] * n_tta, 0])
                entry[4][k] = {m: outs[j][i] for j, m in enumerate(groups[g])}
                entry[5] += 1
            while next_seq in pending and pending[next_seq][5] == n_tta:
                job, y, x, last, tile_outs, _ = pending.pop(next_seq)
                add(next_seq, job, y, x, last, tile_outs)
                next_seq += 1
        pipe.put(q_write, _END)

    def writer() -> None:
        def results():
            while (item := pipe.get(q_write)) is not _END:
                yield item

        for key, outputs in progress(results(), total=total, desc=desc):
            on_result(key, outputs)
            stats["n_written"] += 1

    t0 = time.perf_counter()
    pipe.start("reader", reader)
    pipe.start("producer", producer)
    pipe.start("accumulator", accumulator)
    pipe.start("writer", writer)
    try:
        while (item := pipe.get(q_batches)) is not _END:
            g, batch, meta = item
            tc = time.perf_counter()
            outs = [predictors[m](batch) for m in groups[g]]
            stats["compute_s"] += time.perf_counter() - tc
            stats["n_batches"] += 1
            stats["n_tiles"] += len(meta)
            pipe.put(q_results, (g, meta, outs))
        pipe.put(q_results, _END)
    except _Stopped:
        pass
    except BaseException as exc:
        pipe.fail(exc)
    pipe.join()
    stats["wall_s"] += time.perf_counter() - t0
    return stats


def _keep_probs(probs: np.ndarray) -> tuple[np.ndarray, ...]:
    return (probs,)


def _to_working(source: Any, factor: float) -> tuple[np.ndarray, tuple[int, int]]:
    """An image (array or band-readable plane) resampled to the working grid, and its shape."""
    from .scale import resample_image, working_shape

    native = (int(source.shape[0]), int(source.shape[1]))
    arr = np.asarray(source if isinstance(source, np.ndarray) else source[:, :], np.float32)
    return resample_image(arr, working_shape(native, factor)), native


def _native_outputs(
    probs: np.ndarray, native: tuple[int, int], reduce: Callable, band: int = 512
) -> list[np.ndarray]:
    """Working-grid maps ``(M, h, w)`` resampled to ``native`` and reduced band by band.

    Holds the ``M`` maps at the image's own size (float32) while it reduces them.
    """
    from .scale import resample_image

    up = np.stack([resample_image(p, native) for p in probs])
    outputs: list[np.ndarray] | None = None
    for y0 in range(0, native[0], band):
        y1 = min(y0 + band, native[0])
        reduced = reduce(up[:, y0:y1])
        if outputs is None:
            outputs = [np.empty(r.shape[:-2] + tuple(native), r.dtype) for r in reduced]
        for out, r in zip(outputs, reduced, strict=True):
            out[..., y0:y1, :] = r
    assert outputs is not None
    return outputs


# --------------------------------------------------------------------------- images


def predict_image(
    image: np.ndarray,
    predictors: Sequence[Predictor],
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    tta: bool | Sequence[bool] = False,
    scale: float = 1.0,
) -> np.ndarray:
    """Per-model blended probability maps of one image.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, 3)
        Corrected image, float in [0, 1]; any size.  ``(H, W, 3)``: three focal
        planes (:mod:`brightseg.focus`), the models' three input channels; a grey
        image is replicated into them.
    predictors : sequence of callables
        ``f(batch float32 (B, tile, tile, 3)) -> (B, tile, tile, 1)``, e.g. from
        :func:`make_predictor`.
    tile, overlap, batch_size : int
        Tiling (see :func:`tile_grid`, :func:`blend_window`) and batch size.
    tta : bool or sequence of bool
        Average the 8 dihedral transforms per model: for every model, or one flag per
        model (see :func:`tta_flags`).
    scale : float
        Resampling factor to the models' working grid (:func:`brightseg.scale.scale_factor`);
        the maps come back on the image's own grid.

    Returns
    -------
    ndarray of float32, shape (M, H, W)
    """
    result: list[np.ndarray] = []
    _run(
        [(0, lambda: image)],
        predictors,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        reduce=lambda probs: (probs,),
        on_result=lambda key, outputs: result.append(outputs[0]),
        total=1,
        desc="predict image",
        scale=scale,
    )
    return result[0]


def predict_image_voted(
    image: np.ndarray,
    predictors: Sequence[Predictor],
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    tta: bool | Sequence[bool] = False,
    vote: str = "mean",
    threshold: float = 0.5,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Streaming variant of :func:`predict_image` that votes band by band.

    Returns ``(prob float32 (H, W), mask uint8 (H, W))`` as :func:`vote` of the
    per-model maps, without ever holding all ``M`` full-size maps.
    """
    _check_vote(vote, threshold)
    method = vote  # the parameter shadows the function
    result: list[list[np.ndarray]] = []
    _run(
        [(0, lambda: image)],
        predictors,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        reduce=lambda probs: _vote(probs, method, threshold),
        on_result=lambda key, outputs: result.append(outputs),
        total=1,
        desc="predict image",
        scale=scale,
    )
    prob, mask = result[0]
    return prob, mask


# --------------------------------------------------------------------------- plates


def _store_loader(store: Any, image_id: Hashable, max_image_pixels: int | None) -> Callable:
    def load():
        if max_image_pixels and hasattr(store, "image_array"):
            array, t = store.image_array(image_id)
            h, w = array.shape[-2:]
            if h * w > max_image_pixels:
                log.info("%s: %d x %d image read band by band", image_id, h, w)
                return _ZarrPlane(array, t)
        return store.read(image_id)

    return load


def predict_plate(
    store: Any,
    predictors: Sequence[Predictor],
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    vote: str = "mean",
    threshold: float = 0.5,
    tta: bool | Sequence[bool] = False,
    skip_existing: bool = True,
    prefetch: int = 1,
    max_image_pixels: int | None = 2**26,
    desc: str = "predict",
    uncertainty: bool = False,
    seed_predictors: Sequence[Predictor] | None = None,
    scale: float = 1.0,
) -> pd.DataFrame:
    """Predict every image of a plate store and write ``prob`` and ``mask`` labels.

    Parameters
    ----------
    store : PlateStore-like
        Needs ``images`` (DataFrame with ``image_id``), ``read(image_id)`` (float32
        2-D, or ``(H, W, 3)`` focal planes), ``has_label``, ``create_label``,
        ``write_label``, ``read_label``; and
        optionally ``image_array(image_id) -> (zarr (T, C, H, W), t)`` for
        band-wise reading of images above ``max_image_pixels``.
    predictors : sequence of callables
        One per ensemble model (see :func:`make_predictor`).
    tile, overlap, batch_size, tta
        See :func:`predict_image`.
    vote, threshold
        See :func:`vote`.
    skip_existing : bool
        Skip images whose ``mask`` label is complete (resumable jobs).
    prefetch : int
        Images read ahead of the one being tiled.
    max_image_pixels : int or None
        Larger images are read band by band (None: always whole).
    desc : str
        Progress label.
    uncertainty : bool
        Also write the ``variance`` and ``entropy`` labels (module docstring).
    seed_predictors : sequence of callables, optional
        3-class ensembles (:func:`class_views`): the seed-class view of each model; their
        mean probability is written as the ``seed`` label (uint8, like ``prob``) for
        ``instances.method: interior | log_seeds``.
    scale : float
        Resampling factor to the models' working grid (see :func:`predict_image`); the
        labels are written on the images' own grid.

    Returns
    -------
    DataFrame
        One row per image in ``store.images`` order: ``image_id, n_models, vote,
        threshold, tta, foreground_fraction`` (``tta``: a bool, or one 0/1 per model where
        the models differ; the same whether an image was
        predicted now or resumed: ``df.attrs["resumed"]`` counts those).  ``df.attrs["engine"]``
        holds pipeline statistics (tiles, batches, compute and wall seconds,
        peak accumulator bytes, ...).
    """
    _check_vote(vote, threshold)
    predictors = list(predictors)
    seeds = list(seed_predictors or [])
    n_fg = len(predictors)
    ids = list(store.images["image_id"])
    rows: dict[Hashable, dict] = {}

    def row(image_id: Hashable, fraction: float) -> dict:
        return {
            "image_id": image_id,
            "n_models": len(predictors),
            "vote": vote,
            "threshold": float(threshold),
            "tta": _tta_label(tta),
            "foreground_fraction": float(fraction),
        }

    todo = []
    for image_id in ids:
        if skip_existing and store.has_label(image_id, MASK_LABEL):
            mask = np.asarray(store.read_label(image_id, MASK_LABEL))
            rows[image_id] = row(image_id, np.count_nonzero(mask) / max(mask.size, 1))
        else:
            todo.append(image_id)
    if len(todo) < len(ids):
        log.info(
            "%s: %d of %d images already predicted (resumed)", desc, len(ids) - len(todo), len(ids)
        )

    def reduce(probs: np.ndarray) -> tuple[np.ndarray, ...]:
        prob, mask = _vote(probs[:n_fg], vote, threshold)
        out = [to_uint8(prob), mask]
        if uncertainty:  # of the members' foreground probabilities
            variance, entropy = uncertainty_maps(probs[:n_fg])
            out += [encode_variance(variance), encode_entropy(entropy)]
        if seeds:
            out.append(to_uint8(probs[n_fg:].mean(axis=0)))
        return tuple(out)

    def on_result(image_id: Hashable, outputs: list[np.ndarray]) -> None:
        prob_u8, mask = outputs[:2]
        if seeds:
            store.create_label(image_id, SEED_LABEL, np.uint8)
            store.write_label(image_id, SEED_LABEL, outputs[-1])
        store.create_label(image_id, PROB_LABEL, np.uint8)
        store.write_label(image_id, PROB_LABEL, prob_u8)
        if uncertainty:  # outputs[2:4]; the seed map, if any, is last
            for name, arr in zip((VARIANCE_LABEL, ENTROPY_LABEL), outputs[2:4], strict=True):
                store.create_label(image_id, name, np.uint8)
                store.write_label(image_id, name, arr)
        store.create_label(image_id, MASK_LABEL, np.uint8)
        store.write_label(image_id, MASK_LABEL, mask)  # last: marks the image complete
        rows[image_id] = row(image_id, np.count_nonzero(mask) / mask.size)

    stats = _new_stats()
    if todo:
        _run(
            ((image_id, _store_loader(store, image_id, max_image_pixels)) for image_id in todo),
            predictors + seeds,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            tta=_tta_with_seeds(tta, n_fg, len(seeds)),
            reduce=reduce,
            on_result=on_result,
            total=len(todo),
            desc=desc,
            prefetch=prefetch,
            stats=stats,
            scale=scale,
        )
        log.info(
            "%s: %d images, %d tiles in %d batches, %.1f s (%.1f s in the models)",
            desc,
            stats["n_images"],
            stats["n_tiles"],
            stats["n_batches"],
            stats["wall_s"],
            stats["compute_s"],
        )
    df = pd.DataFrame([rows[i] for i in ids], columns=SUMMARY_COLUMNS)
    df.attrs["engine"] = dict(stats)
    df.attrs["resumed"] = len(ids) - len(todo)
    return df


def read_ensemble(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``ensemble.tsv`` and resolve checkpoint paths.

    Relative ``path`` entries are resolved against the working directory
    first, then against the TSV's directory.  Rows are sorted by ``rank`` when
    that column exists.

    Raises
    ------
    InputError
        Missing/empty file, no ``path`` column, no rows, or a missing checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "ensemble table does not exist")
    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as exc:  # noqa: BLE001 - any parser error is bad input
        raise InputError(
            path, f"cannot read ensemble table ({type(exc).__name__}: {exc})"
        ) from None
    if "path" not in df.columns:
        raise InputError(path, f"no 'path' column (columns: {list(df.columns)})")
    if df.empty:
        raise InputError(path, "ensemble table lists no checkpoints")
    if "rank" in df.columns:
        df = df.sort_values("rank", kind="stable").reset_index(drop=True)
    resolved = []
    for entry in df["path"].astype(str):
        p = Path(entry)
        candidates = [p] if p.is_absolute() else [p, path.parent / p]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(path, f"checkpoint {entry!r} does not exist")
        resolved.append(str(found))
    df["path"] = resolved
    return df


DEFAULT_TILE = 256


def _model_tile(model: Any) -> int | None:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    if shape is None or len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        return None
    return int(shape[1])


def resolve_tile(models: Sequence[Any], requested: int | None, where: str = "ensemble") -> int:
    """The one rule for the tile size, used by plates, evaluation sets and LIVECell alike.

    ``inference.tile: null`` takes the models' static input size (256 for fully
    convolutional models).  An explicit tile must equal a static input size: a model built
    for 256 px tiles is not silently fed 512 px ones.  Checkpoints with different static
    sizes cannot vote together.
    """
    tiles = {_model_tile(m) for m in models} - {None}
    if len(tiles) > 1:
        raise InputError(where, f"checkpoints have different input sizes {sorted(tiles)}")
    static = tiles.pop() if tiles else None
    if requested is None:
        return static or DEFAULT_TILE
    if static is not None and int(requested) != static:
        raise InputError(
            "inference.tile",
            f"tile {requested} differs from the models' input size {static}: "
            f"set inference.tile to {static} or null",
        )
    return int(requested)


THRESHOLD_FILE = "threshold.json"
"""Written beside ``ensemble.tsv`` by the ``choose_threshold`` rule."""


def resolve_threshold(inference: InferenceConfig, ensemble_tsv: str | os.PathLike):
    """``inference`` with ``threshold: validation`` replaced by the chosen number.

    The number is ``threshold`` of :data:`THRESHOLD_FILE` beside ``ensemble_tsv`` (see
    :func:`validation_threshold`); a numeric threshold is returned unchanged.
    """
    if not inference.validation_threshold:
        return inference
    path = Path(ensemble_tsv).with_name(THRESHOLD_FILE)
    if not path.is_file():
        raise InputError(
            path,
            "inference.threshold is 'validation' but the chosen threshold is missing "
            "(made by the choose_threshold rule next to the ensemble.tsv)",
        )
    try:
        value = float(json.loads(path.read_text())["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"no numeric 'threshold' ({type(exc).__name__}: {exc})") from None
    if not 0.0 <= value < 1.0:
        raise InputError(path, f"threshold {value} is outside [0, 1)")
    return inference.replace(threshold=value)


def validation_threshold(ensemble: Ensemble, images, masks, *, fixed: float | None = None) -> dict:
    """The vote threshold that maximises the ensemble's pooled Dice on validation patches.

    Parameters
    ----------
    ensemble : Ensemble
        Its vote (mean probability, or share of models above 0.5 for ``majority``) is
        what is thresholded.
    images : sequence of ndarray
        Validation images as the models see them (float32 in [0, 1], H x W).
    masks : sequence of ndarray
        Their ground truth (non-zero = foreground).
    fixed : float, optional
        A threshold set in the config: it is the one returned (``chosen_on: config``), with
        its pooled Dice; the best one is still reported beside it.

    Returns
    -------
    dict
        ``threshold`` and its pooled ``dice``, ``chosen_on`` (``validation`` or ``config``),
        ``best_threshold`` and ``best_dice`` (:func:`brightseg.metrics.choose_threshold`),
        ``dice_at_0.5``, ``n_patches`` and ``vote``.
    """
    votes = []
    for image in progress(images, total=len(images), desc="choose_threshold"):
        probs, prob, _ = ensemble.predict(np.asarray(image, np.float32))
        votes.append(vote_map(probs, ensemble.inference.vote, prob))
    best = choose_threshold(votes, list(masks))
    out = {**best, "chosen_on": "validation"}
    if fixed is not None:
        counts = [confusion_counts(v > fixed, m) for v, m in zip(votes, masks, strict=True)]
        tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp", "fp", "fn"))
        dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        out = {**best, "threshold": float(fixed), "dice": dice, "chosen_on": "config"}
    out.update(best_threshold=best["threshold"], best_dice=best["dice"])
    return {**out, "n_patches": len(votes), "vote": ensemble.inference.vote}


def _table_tta(table: pd.DataFrame, default: bool, where: str) -> list[bool]:
    """Per-checkpoint TTA from ``ensemble.tsv``'s optional ``tta`` column (empty: ``default``)."""
    if "tta" not in table.columns:
        return [bool(default)] * len(table)
    flags = []
    for value in table["tta"]:
        text = "" if pd.isna(value) else str(value).strip().lower()
        if text in ("", "none", "null"):
            flags.append(bool(default))
        elif text in ("true", "1", "1.0", "yes"):
            flags.append(True)
        elif text in ("false", "0", "0.0", "no"):
            flags.append(False)
        else:
            raise InputError(where, f"tta column: expected true, false or empty, got {value!r}")
    return flags


def _table_working_pixel_size(table: pd.DataFrame, where: str) -> float | None:
    """The one working pixel size of ``ensemble.tsv``'s optional column (None: absent)."""
    if "working_pixel_size_um" not in table.columns:
        return None
    values = pd.to_numeric(table["working_pixel_size_um"], errors="coerce")
    sizes = sorted({round(float(v), 6) for v in values.dropna()})
    if len(sizes) > 1 or (sizes and values.isna().any()):
        raise InputError(
            where,
            "the checkpoints were trained at different working pixel sizes "
            f"({sorted({str(v) for v in table['working_pixel_size_um']})}); an ensemble votes "
            "on one grid (give every model the same training.working_pixel_size_um)",
        )
    if sizes and sizes[0] <= 0:
        raise InputError(where, f"working_pixel_size_um must be positive, got {sizes[0]}")
    return sizes[0] if sizes else None


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Ensemble:
    """The selected checkpoints, loaded once, with the inference settings.

    Build it with :meth:`load`.  :meth:`predict` predicts one in-memory image (evaluation
    sets, LIVECell, held-out images); :meth:`predict_plate` streams a whole plate store.
    :attr:`key` identifies what produced a mask: the checkpoints' content hashes and the
    inference parameters (a resumed job reuses only masks with the same key).

    Attributes
    ----------
    table : DataFrame
        ``ensemble.tsv`` with resolved paths.
    names : list of str
        One per checkpoint, ``model/loss/eNN`` (or the file stem).
    inference : InferenceConfig
    tile : int
        From :func:`resolve_tile`.
    tta : list of bool
        Test-time augmentation per checkpoint: the ``tta`` column of ``ensemble.tsv``
        (``models[].tta`` of the config) where it is set, else ``inference.tta``.
    predictors : list of callables
        :func:`make_predictor` of each model.
    """

    def __init__(self, table: pd.DataFrame, models: Sequence[Any], inference, *, source=""):
        self.inference = InferenceConfig.coerce(inference)
        _check_vote(self.inference.vote, self.inference.threshold)
        self.table = table.reset_index(drop=True)
        self.names = [
            f"{r.model}/{r.loss}/e{int(r.epoch):02d}"
            if {"model", "loss", "epoch"} <= set(self.table)
            else Path(r.path).stem
            for r in self.table.itertuples(index=False)
        ]
        self.tile = resolve_tile(models, self.inference.tile, str(source or "ensemble"))
        self.tta = _table_tta(self.table, self.inference.tta, str(source or "ensemble"))
        #: The pixel size (um) the checkpoints were trained at (``working_pixel_size_um``
        #: column of ``ensemble.tsv``), or None: images are predicted on their own grid.
        self.working_pixel_size_um = _table_working_pixel_size(
            self.table, str(source or "ensemble")
        )
        from .models import model_target

        targets = sorted({model_target(m) for m in models})
        if len(targets) > 1:
            raise InputError(
                str(source or "ensemble"),
                f"the checkpoints mix the targets {targets}; an ensemble votes on one kind of "
                "output (give every models entry the same target)",
            )
        #: What the members predict: binary, border3 or nucleus3.
        self.target = targets[0] if targets else "binary"
        views = [
            class_views(make_predictor(m, self.inference.batch_size, self.tile), self.target)
            for m in models
        ]
        #: Foreground probability of each model (3-class models: 1 - background).
        self.predictors = [fg for fg, _ in views]
        #: Seed-class (interior / nucleus) probability of each 3-class model; else empty.
        self.seed_predictors = [s for _, s in views if s is not None]

    @classmethod
    def load(cls, ensemble_tsv: str | os.PathLike, inference) -> Ensemble:
        """Read ``ensemble.tsv`` (:func:`read_ensemble`) and load every checkpoint once.

        Precision: a Keras 3 checkpoint stores each layer's dtype policy, so a model
        trained under ``mixed_bfloat16`` also predicts in bf16 and a float32 one in
        float32, whatever the global policy (``inference.precision``) at load time, which
        only affects the input layer; :func:`make_predictor` casts outputs to float32.
        """
        import keras

        from . import models as zoo

        inference = resolve_threshold(InferenceConfig.coerce(inference), ensemble_tsv)
        table = read_ensemble(ensemble_tsv)
        previous = keras.config.dtype_policy()
        zoo.set_precision(inference.precision)
        try:
            models = []
            for ckpt in table["path"]:
                log.info("loading %s", ckpt)
                models.append(zoo.load_checkpoint(ckpt))
        finally:
            keras.config.set_dtype_policy(previous)  # a process-wide setting: restored
        return cls(table, models, inference, source=ensemble_tsv)

    @functools.cached_property
    def key(self) -> str:
        """sha256 of the checkpoints' bytes (in voting order) and the inference settings."""
        h = hashlib.sha256()
        for path in self.table["path"]:
            h.update(_file_sha256(path).encode())
        settings = dict(self.inference.as_dict(), tile=self.tile)
        if any(f != self.inference.tta for f in self.tta):
            settings["tta_per_model"] = self.tta
        if self.working_pixel_size_um is not None:
            settings["working_pixel_size_um"] = self.working_pixel_size_um
        h.update(json.dumps(settings, sort_keys=True).encode())
        return h.hexdigest()

    def scale_for(self, pixel_size_um: float | None) -> float:
        """Resampling factor of an image of ``pixel_size_um`` to the checkpoints' grid.

        1.0 without a working pixel size, or for ``pixel_size_um=None`` (an image already on
        the working grid, such as a validation patch of the training store).
        """
        from .scale import scale_factor

        if pixel_size_um is None or self.working_pixel_size_um is None:
            return 1.0
        return scale_factor(float(pixel_size_um), self.working_pixel_size_um)

    def _store_pixel_size(self, store: Any) -> float | None:
        px = getattr(store, "pixel_size_um", None)
        if self.working_pixel_size_um is not None and px is None:
            raise InputError(
                str(store),
                "the checkpoints work at a pixel size "
                f"({self.working_pixel_size_um} um) but the store has none",
            )
        return px

    def predict(
        self, image: np.ndarray, *, with_seed: bool = False, pixel_size_um: float | None = None
    ) -> tuple[np.ndarray, ...]:
        """Per-model probabilities (M, H, W), ensemble probability and ensemble mask.

        ``with_seed``: also the seed-class probability of each model, ``(M, H, W)`` (a
        3-class ensemble; None for a binary one), as a fourth element; the ensemble's seed
        map is its mean.  ``pixel_size_um``: the image's pixel size; with checkpoints
        trained at a working pixel size the image is resampled to it and the maps back
        (:meth:`scale_for`; None: the image is on the working grid already).
        """
        inf = self.inference
        seeds = self.seed_predictors if with_seed else []
        out = predict_image(
            image,
            self.predictors + seeds,
            tile=self.tile,
            overlap=inf.overlap,
            batch_size=inf.batch_size,
            tta=_tta_with_seeds(self.tta, len(self.predictors), len(seeds)),
            scale=self.scale_for(pixel_size_um),
        )
        n = len(self.predictors)
        probs = out[:n]
        prob, mask = _vote(probs, inf.vote, inf.threshold)
        if with_seed:
            return probs, prob, mask, (out[n:] if seeds else None)
        return probs, prob, mask

    def predict_plate(
        self,
        store: Any,
        *,
        skip_existing: bool = True,
        desc: str = "predict",
        uncertainty: bool = False,
    ):
        """:func:`predict_plate` with this ensemble's models and settings (images resampled
        to the working pixel size, if any, from the store's ``pixel_size_um``)."""
        inf = self.inference
        return predict_plate(
            store,
            self.predictors,
            tile=self.tile,
            overlap=inf.overlap,
            batch_size=inf.batch_size,
            vote=inf.vote,
            threshold=inf.threshold,
            tta=self.tta,
            skip_existing=skip_existing,
            desc=desc,
            uncertainty=uncertainty,
            seed_predictors=self.seed_predictors,
            scale=self.scale_for(self._store_pixel_size(store)),
        )
