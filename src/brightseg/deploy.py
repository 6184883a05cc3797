"""TFLite export of a checkpoint, checked against the Keras model on validation patches.

Three forms are written (:data:`FORMS`):

``float32``
    Plain conversion.
``float16``
    Post-training float16 quantisation: weights stored as float16 (about half the size),
    computed in float32 on a CPU.
``int8``
    Full-integer post-training quantisation: int8 weights and activations, calibrated
    with a representative dataset of *training* patches; the input and output stay
    float32 (a quantise op after the input, a dequantise op before the output), so every
    form is a drop-in replacement taking ``(1, S, S, 3)`` float32 in [0, 1] and returning
    ``(1, S, S, 1)`` probabilities.

Each exported model is run on the validation patches next to the Keras model; the pooled
Dice of its mask (probability > threshold) against the Keras model's mask must reach
``min_dice`` (0.99).  The report table (:func:`export_tflite`) has one row per form
(``keras`` included): file size, median CPU latency of one patch and the Dice.

The converter sees a model with a static input size ``S`` (batch 1): a checkpoint with a
different or unknown input size is rebuilt for ``S`` with the same weights
(:func:`with_input_size`, the models are fully convolutional).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "FORMS",
    "MIN_DICE",
    "ExportCheckFailed",
    "TFLiteModel",
    "check_passed",
    "convert",
    "export_tflite",
    "fit_patches",
    "interleaved_latency_ms",
    "pooled_dice",
    "training_patches",
    "with_input_size",
]

FORMS = ("float32", "float16", "int8")
"""The TFLite forms :func:`export_tflite` writes."""

MIN_DICE = 0.99
"""Least pooled Dice of an exported model's mask against the Keras model's mask."""


class ExportCheckFailed(RuntimeError):
    """An exported form's Dice against the Keras model is under the minimum."""


def with_input_size(model, shape: int | Sequence[int]):
    """``model`` rebuilt for a static ``(H, W)`` input, sharing nothing but equal weights.

    Every ``InputLayer`` of the model's config (the nested encoder's too) gets the new
    spatial size; the weights are copied.  ``model`` is returned unchanged when its
    input already has that size.
    """
    import keras

    h, w = (int(shape), int(shape)) if np.isscalar(shape) else (int(shape[0]), int(shape[1]))
    current = tuple(model.inputs[0].shape[1:3])
    if current == (h, w):
        return model
    config = copy.deepcopy(model.get_config())

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                batch_shape = list(node["config"]["batch_shape"])
                node["config"]["batch_shape"] = [batch_shape[0], h, w, batch_shape[-1]]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    from . import models  # noqa: F401 - registers the custom layers

    try:
        sized = keras.Model.from_config(config)
    except Exception as exc:  # noqa: BLE001 - a model that is not fully convolutional
        raise InputError(
            None, f"cannot rebuild {model.name!r} for input {h}x{w} ({type(exc).__name__}: {exc})"
        ) from None
    sized.set_weights(model.get_weights())
    return sized


def convert(model, form: str, *, representative: Iterable[np.ndarray] | None = None) -> bytes:
    """Convert a static-size model to a TFLite flatbuffer.

    Parameters
    ----------
    model : keras.Model
        Input ``(None, S, S, 3)`` with S known (see :func:`with_input_size`).
    form : {"float32", "float16", "int8"}
    representative : iterable of ndarray, optional
        ``(S, S, 3)`` float32 images for the int8 calibration (required for ``int8``).

    Returns
    -------
    bytes
        The ``.tflite`` model, batch 1.
    """
    import keras
    import tensorflow as tf

    if form not in FORMS:
        raise InputError("--forms", f"unknown TFLite form {form!r}; expected one of {FORMS}")
    shape = tuple(model.inputs[0].shape[1:])
    if None in shape:
        raise InputError(None, f"model {model.name!r} needs a static input size to convert")
    with tempfile.TemporaryDirectory(prefix="brightseg-tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serve",
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((1, *shape), tf.float32)],
        )
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
            archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if form == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif form == "int8":
            if representative is None:
                raise InputError(None, "int8 conversion needs a representative dataset")
            samples = [np.asarray(x, np.float32) for x in representative]
            if not samples:
                raise InputError(None, "the representative dataset is empty")

            def gen():
                for x in samples:
                    yield [x[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = gen
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bytes(converter.convert())


def _interpreter(content: bytes, threads: int):
    """The LiteRT interpreter when ``ai_edge_litert`` is installed, else TF's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806 - deprecated in TF, still shipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Interpreter(model_content=content, num_threads=int(threads))


class TFLiteModel:
    """A TFLite model of batch 1 run on a stack of patches.

    Parameters
    ----------
    content : bytes or path
        The flatbuffer or a ``.tflite`` file.
    threads : int
        Interpreter threads.
    """

    def __init__(self, content: bytes | str | os.PathLike, threads: int = 1):
        if not isinstance(content, bytes):
            path = Path(content)
            if not path.is_file():
                raise InputError(path, "TFLite model does not exist")
            content = path.read_bytes()
        self.interpreter = _interpreter(content, threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.shape = tuple(int(d) for d in self.input["shape"][1:])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` float32 image -> ``(H, W)`` float32 probability."""
        self.interpreter.set_tensor(self.input["index"], np.asarray(x, np.float32)[None])
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self.output["index"]), np.float32)[0, ..., 0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` -> ``(N, H, W)`` probabilities, one patch at a time."""
        return np.stack([self.invoke(x) for x in batch])


def pooled_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two stacks of boolean masks, pooled over all pixels (1.0 when both are empty)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    tp = np.count_nonzero(pred & ref)
    denom = np.count_nonzero(pred) + np.count_nonzero(ref)
    return 1.0 if denom == 0 else float(2 * tp / denom)


def interleaved_latency_ms(
    fns: Sequence[Callable[[], object]], repeats: int = 20, warmup: int = 2
) -> list[tuple[float, float]]:
    """Median wall and CPU time (ms) of each ``fn()``, timed in interleaved rounds.

    Each of ``repeats`` rounds runs every function once, so on a shared machine all of
    them meet the same load; the process CPU time (all threads) is less sensitive to
    other processes than the wall time.  ``warmup`` untimed rounds come first.

    Returns
    -------
    list of (wall_ms, cpu_ms)
        One pair per function, medians over the rounds.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for i, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[i].append(time.perf_counter() - w0)
            cpu[i].append(time.process_time() - c0)
    return [
        (1000.0 * statistics.median(w), 1000.0 * statistics.median(c))
        for w, c in zip(wall, cpu, strict=True)
    ]


def fit_patches(patches: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey patches ``(N, h, w)`` as ``(N, size, size, 3)`` model inputs, and where they are.

    Larger patches are centre-cropped, smaller ones reflect-padded at the bottom and
    right.  Returns the inputs and a ``(size, size)`` boolean mask of the pixels that
    come from the patch (padding excluded), the pixels the Dice check counts.
    """
    patches = np.asarray(patches, np.float32)
    n, h, w = patches.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    patches = patches[:, y0 : y0 + size, x0 : x0 + size]
    ch, cw = patches.shape[1:]
    valid = np.zeros((size, size), bool)
    valid[:ch, :cw] = True
    if (ch, cw) != (size, size):
        mode = "reflect" if min(ch, cw) > 1 and size < 2 * min(ch, cw) else "symmetric"
        patches = np.pad(patches, ((0, 0), (0, size - ch), (0, size - cw)), mode=mode)
    return np.repeat(patches[..., None], 3, axis=-1), valid


def training_patches(
    store: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    n_val: int | None = None,
    n_representative: int = 64,
    seed: int = 0,
    originals_only: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Validation and representative patches of a training store, grey float32 in [0, 1].

    Validation: the ``val`` split's un-augmented patches (``variant`` 0 where the
    manifest has variants), as the threshold is chosen on, or every ``val`` patch with
    ``originals_only=False``; in index order, the first ``n_val`` (all when None).  Representative: a seeded sample of ``n_representative``
    ``train`` patches (augmented variants included: they span the intensities the
    model was trained on).

    Returns
    -------
    val, representative : ndarray
        ``(N, h, w)`` float32.
    """
    from .augment import open_training_store

    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(manifest, "training manifest does not exist")
    df = pd.read_parquet(manifest)
    missing = {"index", "split"} - set(df.columns)
    if missing:
        raise InputError(manifest, f"missing columns {sorted(missing)}")
    images, _ = open_training_store(store)
    val = df[df["split"] == "val"]
    if originals_only and "variant" in val and (val["variant"] == 0).any():
        val = val[val["variant"] == 0]
    train = df[df["split"] == "train"]
    if val.empty or train.empty:
        raise InputError(manifest, "needs patches of both the 'train' and the 'val' split")
    val_index = np.sort(val["index"].to_numpy(np.int64))[: n_val or None]
    rng = np.random.default_rng([seed, 16])
    train_index = train["index"].to_numpy(np.int64)
    rep_index = np.sort(rng.choice(train_index, min(n_representative, train_index.size), False))

    def grey(index):
        return images.oindex[index][..., 0].astype(np.float32) / np.float32(255.0)

    return grey(val_index), grey(rep_index)


def _keras_forward(model):
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((1, *shape), tf.float32)])
    def forward(x):
        return tf.cast(model(x, training=False), tf.float32)

    return forward


def export_tflite(
    model,
    out_dir: str | os.PathLike,
    *,
    stem: str,
    val_patches: np.ndarray,
    representative: np.ndarray,
    size: int | None = None,
    forms: Sequence[str] = FORMS,
    threshold: float = 0.5,
    threads: int = 1,
    repeats: int = 20,
    min_dice: float = MIN_DICE,
    keras_file: tuple[str, int] | str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Export ``model`` to TFLite forms, check them against Keras, time everything.

    Parameters
    ----------
    model : keras.Model
        A brightseg model (loaded checkpoint).
    out_dir : path
        Gets ``<stem>_<form>.tflite`` per form and ``<stem>_tflite.tsv`` / ``.md`` (the
        table).
    stem : str
        File-name stem (e.g. the checkpoint's ``model_loss_eNN``).
    val_patches, representative : ndarray
        Grey ``(N, h, w)`` float32 patches (:func:`training_patches`): the Dice check runs
        on the first, the int8 calibration on the second.
    size : int, optional
        The exported input size S (default: the model's static input size, else 256);
        patches are fitted to it (:func:`fit_patches`).
    forms : sequence of str
        Subset of :data:`FORMS`.
    threshold : float
        Mask threshold of both models.
    threads : int
        Threads of the TFLite interpreters (the Keras row uses TensorFlow's intra-op
        setting of the process: see the ``threads`` column).
    repeats : int
        Timed rounds (medians reported), after two warm-up rounds.
    min_dice : float
        Least pooled Dice against the Keras mask; the ``passed`` column says which
        forms reach it.
    keras_file : path or (name, bytes), optional
        The checkpoint file: the ``keras`` row's file name and size.

    Returns
    -------
    pandas.DataFrame
        ``model, form, file, size_mb, latency_ms, cpu_ms, threads, input, dice_vs_keras,
        passed, n_patches, threshold``; ``latency_ms`` and ``cpu_ms`` are the median wall
        and process CPU time of one ``S x S`` patch (batch 1) on the CPU, all forms timed
        in interleaved rounds (:func:`interleaved_latency_ms`).
    """
    import tensorflow as tf

    from .io import atomic_path, write_text

    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        raise InputError("--forms", f"unknown TFLite forms {bad}; expected some of {FORMS}")
    static = model.inputs[0].shape[1]
    size = int(size or static or 256)
    sized = with_input_size(model, size)
    x_val, valid = fit_patches(val_patches, size)
    x_rep, _ = fit_patches(representative, size)
    if len(x_val) == 0:
        raise InputError(None, "no validation patches for the Dice check")
    forward = _keras_forward(sized)
    ref = np.concatenate([forward(x[None]).numpy()[..., 0] for x in x_val])
    ref_mask = (ref > threshold)[:, valid]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = x_val[:1]
    keras_threads = tf.config.threading.get_intra_op_parallelism_threads()
    if keras_file is None:
        keras_name, keras_mb = "", np.nan
    elif isinstance(keras_file, tuple):
        keras_name, keras_mb = str(keras_file[0]), keras_file[1] / 1e6
    else:
        keras_name, keras_mb = Path(keras_file).name, Path(keras_file).stat().st_size / 1e6
    rows = [
        {
            "form": "keras",
            "file": keras_name,
            "size_mb": keras_mb,
            "threads": int(keras_threads),
            "input": f"{size}x{size}",
            "dice_vs_keras": 1.0,
            "passed": True,
        }
    ]
    runners = [lambda: forward(sample).numpy()]
    for form in forms:
        t0 = time.perf_counter()
        content = convert(sized, form, representative=x_rep if form == "int8" else None)
        path = out / f"{stem}_{form}.tflite"
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(content)
        lite = TFLiteModel(content, threads)
        prob = lite.predict(x_val)
        runners.append(lambda lite=lite: lite.invoke(sample[0]))
        dice = pooled_dice((prob > threshold)[:, valid], ref_mask)
        rows.append(
            {
                "form": form,
                "file": path.name,
                "size_mb": len(content) / 1e6,
                "threads": int(threads),
                "input": f"{size}x{size}",
                "dice_vs_keras": dice,
                "passed": bool(dice >= min_dice),
            }
        )
        log.info(
            "%s %s: %.2f MB, Dice vs Keras %.4f on %d patches (%.1f s)",
            stem,
            form,
            len(content) / 1e6,
            dice,
            len(x_val),
            time.perf_counter() - t0,
        )
    timings = interleaved_latency_ms(runners, repeats)
    for row, (wall_ms, cpu_ms) in zip(rows, timings, strict=True):
        row["latency_ms"], row["cpu_ms"] = wall_ms, cpu_ms
    table = pd.DataFrame(rows)
    table = table[[*table.columns[:3], "latency_ms", "cpu_ms", *table.columns[3:-2]]]
    table.insert(0, "model", stem)
    table["n_patches"] = len(x_val)
    table["threshold"] = float(threshold)
    write_text(table.to_csv(sep="\t", index=False, float_format="%.4f"), out / f"{stem}_tflite.tsv")
    from .figures import table_to_markdown

    write_text(table_to_markdown(table, floatfmt=".4f") + "\n", out / f"{stem}_tflite.md")
    return table


def check_passed(table: pd.DataFrame, min_dice: float = MIN_DICE) -> None:
    """Raise :class:`ExportCheckFailed` naming every form whose Dice is under ``min_dice``."""
    failed = table[(table["form"] != "keras") & ~(table["dice_vs_keras"] >= min_dice)]
    if len(failed):
        which = ", ".join(
            f"{r.model} {r.form} (Dice {r.dice_vs_keras:.4f})" for r in failed.itertuples()
        )
        raise ExportCheckFailed(
            f"exported model's mask differs from the Keras model's: Dice < {min_dice} for {which}"
        )
