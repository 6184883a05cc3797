"""Distillation: the ensemble's vote taught to one small, fast student network.

The ensemble votes with every selected checkpoint on every tile (``top_k`` forward passes,
times 8 with TTA).  A student is one small network trained to reproduce the ensemble's
*soft* vote, so that a plate costs one forward pass of a network a few percent the size.

Data
----
Soft targets are the ensemble's vote on the training split of the training store (every
augmented variant: the student sees exactly the 3-channel patches the members were
trained on) and, where ``ensemble.student.unlabelled_plates`` names plate stores, on
seeded tiles of those plates' images (no annotation needed: the ensemble labels them).
The vote is what the ensemble thresholds: the mean probability (``vote: mean``) or the
share of members above 0.5 (``vote: majority``).  Targets are stored as ``uint8``
(``round(255 * vote)``) in ``soft_targets.zarr``: ``targets`` (one per training patch, in
the order of the manifest's training rows, ``train_index``), ``unlabelled_images`` and
``unlabelled_targets``.

Training
--------
:func:`soft_loss`: per-pixel binary cross-entropy against the soft target plus
``dice_weight`` times a soft Dice loss; Adam, seeded permutations of the samples each
epoch, and the weights of the epoch with the lowest loss on the validation split's
un-augmented patches (their soft targets) are kept.

Evaluation (``card.json``)
--------------------------
On the validation split's un-augmented patches (those the threshold was chosen on), the
pooled Dice against the ground truth of the ensemble (vote > threshold) and of the
student (probability > the same threshold), their ratio, the Dice between the two
masks (agreement), the FLOPs of one tile of each (:func:`count_flops`) and their ratio.
The targets are ``dice_ratio >= min_dice_ratio`` (0.99) and ``flops_ratio <=
max_flops_ratio`` (0.05); ``on_miss`` says whether a miss is a warning (recorded in the
card) or stops the rule.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .io import atomic_path, write_text
from .metrics import confusion_counts
from .tiling import tta_transforms

log = logging.getLogger(__name__)

STUDENT_FILE = "student.keras"
CARD_FILE = "card.json"

__all__ = [
    "check_targets",
    "count_flops",
    "distill_ensemble",
    "ensemble_votes",
    "load_student",
    "pooled_dice",
    "sample_tiles",
    "soft_loss",
    "train_student",
]


# --------------------------------------------------------------------------- FLOPs


def count_flops(model: Any) -> int:
    """Floating-point operations of one forward pass of one input, counted from layer shapes.

    Counts ``2 x`` the multiply-accumulates of the convolutions (``Conv2D`` with groups,
    ``Conv2DTranspose``, ``DepthwiseConv2D``, ``SeparableConv2D``) and ``Dense`` layers,
    which dominate a U-Net; normalisation, activations, pooling and additions are left
    out (a few percent for these networks, in both the student and the ensemble).  Nested
    models (a pretrained encoder) are counted layer by layer.

    Parameters
    ----------
    model : keras.Model
        A functional model with static spatial input dimensions.

    Returns
    -------
    int
        FLOPs for one input of the model's input shape (batch size 1).

    Raises
    ------
    ValueError
        A layer with unknown spatial dimensions (build the model with a fixed input size).
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_flops(layer)
            continue
        if not isinstance(
            layer,
            keras.layers.Conv2D
            | keras.layers.Conv2DTranspose
            | keras.layers.DepthwiseConv2D
            | keras.layers.SeparableConv2D
            | keras.layers.Dense,
        ):
            continue
        inp = tuple(layer.input.shape)[1:]
        out = tuple(layer.output.shape)[1:]
        if any(d is None for d in (*inp, *out)):
            raise ValueError(
                f"layer {layer.name!r} has unknown dimensions {inp} -> {out}: "
                "count FLOPs of a model built for a fixed input size"
            )
        if isinstance(layer, keras.layers.Dense):
            positions = math.prod(out[:-1])
            total += 2 * positions * inp[-1] * out[-1]
            continue
        kh, kw = layer.kernel_size
        cin = inp[-1]
        if isinstance(layer, keras.layers.Conv2DTranspose):
            total += 2 * inp[0] * inp[1] * cin * kh * kw * out[-1]
        elif isinstance(layer, keras.layers.SeparableConv2D):
            mult = layer.depth_multiplier
            total += 2 * out[0] * out[1] * cin * mult * kh * kw  # depthwise
            total += 2 * out[0] * out[1] * cin * mult * out[-1]  # pointwise
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            total += 2 * out[0] * out[1] * out[-1] * kh * kw
        else:
            total += 2 * out[0] * out[1] * out[-1] * kh * kw * cin // layer.groups
    return int(total)


# --------------------------------------------------------------------------- soft targets


def ensemble_votes(
    predictors: Sequence[Any],
    images: np.ndarray,
    *,
    vote: str = "mean",
    tta: bool = False,
) -> np.ndarray:
    """The ensemble's soft vote on whole tiles: what its threshold is applied to.

    Parameters
    ----------
    predictors : sequence of callables
        :func:`brightseg.ensemble.make_predictor` of each member (batches of any length).
    images : ndarray, shape (N, t, t, 3)
        float32 tiles in [0, 1] of the members' input size ``t``.
    vote : {"mean", "majority"}
        ``mean``: mean probability; ``majority``: share of members with probability > 0.5.
    tta : bool
        Average the 8 dihedral transforms of each tile per member first (as the ensemble
        does at inference).

    Returns
    -------
    ndarray of float32, shape (N, t, t)
    """
    images = np.asarray(images, dtype=np.float32)
    transforms = tta_transforms(axes=(1, 2)) if tta else tta_transforms(axes=(1, 2))[:1]
    acc = np.zeros(images.shape[:3], dtype=np.float32)
    for predict in predictors:
        member = np.zeros(images.shape[:3], dtype=np.float32)
        for tr in transforms:
            out = np.asarray(predict(np.ascontiguousarray(tr.forward(images))), np.float32)
            member += tr.inverse(out[..., 0])
        member /= len(transforms)
        acc += (member > 0.5).astype(np.float32) if vote == "majority" else member
    return acc / len(predictors)


def sample_tiles(
    stores: Sequence[Any],
    n_tiles: int,
    size: int,
    *,
    seed: int,
    working_pixel_size_um: float | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Seeded ``size`` x ``size`` tiles of the images of plate stores (no annotations needed).

    The tiles are spread evenly over the stores (the first ``n_tiles % len(stores)`` get
    one more); within a store each tile takes a seeded image and a seeded position (an
    image smaller than a tile is padded by reflection).

    Parameters
    ----------
    stores : sequence of PlateStore-like
        ``images`` (DataFrame with ``image_id``), ``read(image_id)`` float32 in [0, 1],
        ``plate``.
    n_tiles, size : int
    seed : int

    Returns
    -------
    tiles : ndarray of uint8, shape (n_tiles, size, size)
        ``round(255 * image)``, as the training store holds images.
    table : DataFrame
        ``plate, image_id, y, x`` of each tile.
    """
    stores = list(stores)
    n_tiles = int(n_tiles) if stores else 0
    tiles = np.zeros((n_tiles, size, size), dtype=np.uint8)
    rows: list[dict] = []
    if n_tiles == 0:
        return tiles, pd.DataFrame(rows, columns=["plate", "image_id", "y", "x"])
    base, extra = divmod(n_tiles, len(stores))
    for s, store in enumerate(stores):
        ids = list(store.images["image_id"])
        if not ids:
            raise InputError(getattr(store, "root", store.plate), "plate store has no images")
        rng = np.random.default_rng([seed, 11, s])
        count = base + (s < extra)
        picks = rng.integers(0, len(ids), size=count)
        for image_index in sorted(set(picks.tolist())):
            image = np.asarray(store.read(ids[image_index]), dtype=np.float32)
            if working_pixel_size_um is not None:  # the models' grid (brightseg.scale)
                from .scale import resample_image, scale_factor, working_shape

                factor = scale_factor(float(store.pixel_size_um), working_pixel_size_um)
                image = resample_image(image, working_shape(image.shape, factor))
            pad = ((0, max(0, size - image.shape[0])), (0, max(0, size - image.shape[1])))
            if pad[0][1] or pad[1][1]:
                image = np.pad(image, pad, mode="reflect")
            for _ in range(int(np.count_nonzero(picks == image_index))):
                y = int(rng.integers(0, image.shape[0] - size + 1))
                x = int(rng.integers(0, image.shape[1] - size + 1))
                tiles[len(rows)] = np.rint(np.clip(image[y : y + size, x : x + size], 0, 1) * 255)
                rows.append({"plate": store.plate, "image_id": ids[image_index], "y": y, "x": x})
    return tiles, pd.DataFrame(rows, columns=["plate", "image_id", "y", "x"])


# --------------------------------------------------------------------------- training


def soft_loss(dice_weight: float = 0.0, eps: float = 1e-6):
    """Distillation loss against soft targets: per-sample BCE + ``dice_weight`` x soft Dice.

    ``bce = -mean(t log p + (1 - t) log(1 - p))`` over the pixels of a sample and
    ``dice = 1 - (2 sum(t p) + 1) / (sum(t) + sum(p) + 1)``; both are minimal where
    ``p = t`` (the BCE for any soft ``t``, the Dice term for binary ones).

    Returns
    -------
    callable
        ``loss(y_true, y_pred) -> (B,)`` for Keras.
    """
    import keras.ops as ops

    def loss(y_true, y_pred):
        t = ops.cast(y_true, "float32")
        p = ops.clip(ops.cast(y_pred, "float32"), eps, 1.0 - eps)
        axes = tuple(range(1, len(t.shape)))
        bce = -ops.mean(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p), axis=axes)
        inter = ops.sum(t * p, axis=axes)
        dice = 1.0 - (2.0 * inter + 1.0) / (ops.sum(t, axis=axes) + ops.sum(p, axis=axes) + 1.0)
        return bce + dice_weight * dice

    return loss


class _SoftData:
    """Samples (3-channel uint8 image, uint8 soft target) read by sample number.

    Parts are added with :meth:`add`: an image array (``(N, t, t, 3)`` patches or
    ``(N, t, t)`` grey tiles, numpy or zarr), the rows of it to use and their targets.
    ``read(spec, size)`` follows :meth:`brightseg.train.PatchData.read` (``spec`` rows
    ``(sample, y0, x0)``; whole tiles here), so :func:`brightseg.train.make_dataset`
    feeds Keras from it.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[Any, np.ndarray, Any]] = []
        self.offsets = np.zeros(1, dtype=np.int64)

    def add(self, images: Any, rows: np.ndarray, targets: Any) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(targets) != rows.size:
            raise ValueError(f"{rows.size} image rows but {len(targets)} targets")
        if rows.size:
            self.parts.append((images, rows, targets))
            self.offsets = np.append(self.offsets, self.offsets[-1] + rows.size)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, spec: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(spec, dtype=np.int64).reshape(-1, 3)[:, 0]
        x = np.empty((idx.size, size, size, 3), dtype=np.float32)
        y = np.empty((idx.size, size, size, 1), dtype=np.float32)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for p, (images, rows, targets) in enumerate(self.parts):
            sel = np.flatnonzero(part == p)
            if not sel.size:
                continue
            local = idx[sel] - self.offsets[p]
            uniq, inverse = np.unique(local, return_inverse=True)
            img = _take(images, rows[uniq])[inverse]
            if img.ndim == 3:  # grey tiles of plates: replicated as the models expect
                img = np.repeat(img[..., None], 3, axis=-1)
            x[sel] = img.astype(np.float32) / np.float32(255)
            y[sel, ..., 0] = _take(targets, uniq)[inverse].astype(np.float32) / np.float32(255)
        return x, y


def _take(array: Any, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of a numpy or zarr array (zarr read in sorted order)."""
    if isinstance(array, np.ndarray):
        return array[index]
    order = np.argsort(index, kind="stable")
    out = np.asarray(array.oindex[index[order]])
    return out[np.argsort(order, kind="stable")]


def _epoch_specs(n: int, batch: int, steps: int, seed: int):
    """Infinite generator of ``(batch, 3)`` specs: a seeded permutation per epoch."""

    def gen():
        epoch = 0
        while True:
            rng = np.random.default_rng([seed, 23, epoch])
            reps = math.ceil(steps * batch / n)
            pos = np.concatenate([rng.permutation(n) for _ in range(reps)])[: steps * batch]
            for b in pos.reshape(steps, batch):
                yield np.column_stack([np.sort(b), np.zeros((batch, 2), np.int64)])
            epoch += 1

    return gen


def train_student(
    data: _SoftData,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    architecture: str,
    model_kwargs: Mapping,
    size: int,
    epochs: int,
    steps_per_epoch: int | None,
    batch_size: int,
    learning_rate: float,
    dice_weight: float,
    seed: int,
) -> tuple[Any, pd.DataFrame]:
    """Train the student on soft targets; the weights of the best validation epoch are kept.

    Parameters
    ----------
    data : _SoftData
        The training samples and their soft targets.
    val_x : ndarray (n, size, size, 3) float32, val_y : ndarray (n, size, size, 1) float32
        Validation tiles and the ensemble's vote on them (the monitored loss).
    architecture, model_kwargs
        A :data:`brightseg.models.ARCHITECTURES` key (trained from scratch) and its
        builder arguments.
    size : int
        Input tile size.
    epochs, steps_per_epoch, batch_size, learning_rate, dice_weight
        ``steps_per_epoch`` None: every sample once per epoch.
    seed : int

    Returns
    -------
    model : keras.Model
        An uncompiled model with the best epoch's weights (saved as the student).
    history : DataFrame
        ``epoch, loss, val_loss``.
    """
    import keras

    from .models import build_model
    from .train import make_dataset

    keras.utils.set_random_seed(seed)
    shape = (size, size, 3)
    model = build_model(architecture, shape, "none", **dict(model_kwargs))
    steps = steps_per_epoch or max(1, math.ceil(len(data) / batch_size))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=soft_loss(dice_weight))
    ds = make_dataset(data, _epoch_specs(len(data), batch_size, steps, seed), size)
    best: dict[str, Any] = {"loss": math.inf, "weights": None, "epoch": None}
    rows: list[dict] = []

    class _Best(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"epoch": epoch + 1, "loss": float(logs.get("loss", math.nan))}
            row["val_loss"] = float(logs.get("val_loss", math.nan))
            rows.append(row)
            log.info("student epoch %d: loss %.4f, val_loss %.4f", *row.values())
            if row["val_loss"] < best["loss"]:
                best.update(loss=row["val_loss"], weights=self.model.get_weights(), epoch=epoch + 1)

    model.fit(
        ds,
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=(val_x, val_y),
        validation_batch_size=batch_size,
        callbacks=[_Best()],
        shuffle=False,
        verbose=0,
    )
    # A fresh, uncompiled model with the best weights: the checkpoint holds no loss
    # closure or optimizer state, only what inference needs.
    student = build_model(architecture, shape, "none", **dict(model_kwargs))
    student.set_weights(best["weights"] if best["weights"] is not None else model.get_weights())
    history = pd.DataFrame(rows, columns=["epoch", "loss", "val_loss"])
    history.attrs["best_epoch"] = best["epoch"]
    return student, history


def pooled_dice(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Dice of the masks pooled over all pixels (``2TP / (2TP + FP + FN)``; 1.0 if empty)."""
    tp = fp = fn = 0
    for p, t in zip(preds, truths, strict=True):
        c = confusion_counts(p, t)
        tp, fp, fn = tp + c["tp"], fp + c["fp"], fn + c["fn"]
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def save_student(model: Any, path: str | os.PathLike) -> None:
    """Save the student atomically as a byte-reproducible ``.keras`` file."""
    from .train import canonicalize_keras_archive

    with atomic_path(path) as tmp:  # keeps the .keras suffix Keras asks for
        model.save(tmp)
        canonicalize_keras_archive(tmp)


def write_card(card: Mapping, path: str | os.PathLike) -> None:
    write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", path)


# --------------------------------------------------------------------------- inference


def load_student(
    source: str | os.PathLike,
    inference,
    *,
    threshold: float,
    working_pixel_size_um: float | None = None,
):
    """The student as a one-member :class:`brightseg.ensemble.Ensemble`.

    Parameters
    ----------
    source : path
        ``student.keras``, or a model bundle that holds one (``student/student.keras``).
    inference : InferenceConfig or mapping
        Tiling, batch size, TTA and precision as for the ensemble; the vote becomes
        ``mean`` (of one member: the student's probability, which learnt the ensemble's
        vote) at ``threshold`` (the ensemble's).
    threshold : float
    working_pixel_size_um : float, optional
        The ensemble's (the student learnt from the same training store, on its grid).

    Returns
    -------
    Ensemble
    """
    from . import bundle as bs_bundle
    from .config import InferenceConfig
    from .ensemble import Ensemble
    from .models import load_checkpoint

    inf = InferenceConfig.coerce(inference).replace(vote="mean", threshold=float(threshold))
    if bs_bundle.is_bundle(source):
        with bs_bundle.open_bundle(source) as b:
            if "student" not in b.manifest:
                raise InputError(
                    source,
                    "ensemble.distill is true but this model bundle has no student "
                    "(train one with ensemble.distill: true, or set it to false)",
                )
            path = b.root / b.manifest["student"]["file"]
            table = _student_table(path, working_pixel_size_um)
            student = Ensemble(table, [load_checkpoint(path)], inf, source=source)
            student.key  # noqa: B018 - hashed while the archive's files still exist
            return student
    table = _student_table(source, working_pixel_size_um)
    return Ensemble(table, [load_checkpoint(source)], inf, source=source)


def _student_table(path: str | os.PathLike, working_pixel_size_um: float | None) -> pd.DataFrame:
    table = pd.DataFrame({"path": [str(path)]})
    if working_pixel_size_um is not None:
        table["working_pixel_size_um"] = float(working_pixel_size_um)
    return table


# --------------------------------------------------------------------------- the rule's work

#: Training-store rows whose soft targets are computed at once (bounded memory).
TARGET_CHUNK = 256
#: Soft-target and image arrays up to this size are trained from memory.
MEMORY_LIMIT = 2 << 30


def _votes_u8(ens: Any, x: np.ndarray) -> np.ndarray:
    inf = ens.inference
    v = ensemble_votes(ens.predictors, x, vote=inf.vote, tta=inf.tta)
    return np.rint(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8)


def distill_ensemble(
    ens: Any,
    store: str | os.PathLike,
    manifest: str | os.PathLike,
    out_student: str | os.PathLike,
    out_card: str | os.PathLike,
    out_history: str | os.PathLike,
    out_targets: str | os.PathLike,
    *,
    student: Any,
    unlabelled_stores: Sequence[Any] = (),
    seed: int = 0,
) -> dict:
    """Distil a loaded ensemble into a student; write it, its card, history and targets.

    Parameters
    ----------
    ens : brightseg.ensemble.Ensemble
        The voting checkpoints with the resolved threshold (:func:`brightseg.bundle.load_ensemble`).
    store, manifest : path
        The training store (``patches.zarr``) and its split manifest.
    out_student, out_card, out_history, out_targets : path
        ``student.keras``, ``card.json``, ``history.csv`` and ``soft_targets.zarr``.
    student : StudentConfig or mapping
        The ``ensemble.student`` block.
    unlabelled_stores : sequence of PlateStore-like
        Plates whose images add ``student.unlabelled_tiles`` ensemble-labelled tiles.
    seed : int

    Returns
    -------
    dict
        The card.

    Raises
    ------
    InputError
        No training or validation patches, or members whose input size differs from the
        patch size.
    RuntimeError
        ``on_miss: error`` and a target missed (the card is logged first).
    """
    import zarr

    from .augment import open_training_store
    from .config import StudentConfig
    from .ensemble import make_predictor
    from .models import build_model, count_params, load_checkpoint

    cfg = StudentConfig.coerce(student)
    df = pd.read_parquet(manifest)
    images, masks = open_training_store(store)
    size = int(images.shape[1])
    if ens.tile != size:
        raise InputError(
            store, f"patches are {size} px but the ensemble predicts {ens.tile} px tiles"
        )
    train_rows = np.sort(df.loc[df["split"] == "train", "index"].to_numpy(np.int64))
    val = df[df["split"] == "val"]
    if "variant" in val and (val["variant"] == 0).any():
        val = val[val["variant"] == 0]
    val_rows = np.sort(val["index"].to_numpy(np.int64))
    if not train_rows.size or not val_rows.size:
        raise InputError(manifest, "distillation needs training and validation patches")
    if images.nbytes <= MEMORY_LIMIT:
        images = images[...]
    inf = ens.inference

    # 1. soft targets of the training patches and of the unlabelled plates' tiles
    log.info("soft targets: %d training patches, %d members", train_rows.size, len(ens.names))
    tiles, tile_table = sample_tiles(
        unlabelled_stores,
        cfg.unlabelled_tiles,
        size,
        seed=seed,
        working_pixel_size_um=ens.working_pixel_size_um,
    )
    with atomic_path(out_targets, is_dir=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        chunk = (min(64, max(1, train_rows.size)), size, size)
        targets = root.create_array(
            "targets", shape=(train_rows.size, size, size), chunks=chunk, dtype="uint8"
        )
        for i in range(0, train_rows.size, TARGET_CHUNK):
            rows = train_rows[i : i + TARGET_CHUNK]
            x = _take(images, rows).astype(np.float32) / np.float32(255)
            targets[i : i + rows.size] = _votes_u8(ens, x)
        n_u = len(tiles)
        uchunk = (min(64, max(1, n_u)), size, size)
        u_images = root.create_array(
            "unlabelled_images", shape=(n_u, size, size), chunks=uchunk, dtype="uint8"
        )
        u_targets = root.create_array(
            "unlabelled_targets", shape=(n_u, size, size), chunks=uchunk, dtype="uint8"
        )
        if n_u:
            u_images[...] = tiles
            for i in range(0, n_u, TARGET_CHUNK):
                x = tiles[i : i + TARGET_CHUNK].astype(np.float32) / np.float32(255)
                u_targets[i : i + len(x)] = _votes_u8(ens, np.repeat(x[..., None], 3, axis=-1))
        root.attrs.update(
            {
                "vote": inf.vote,
                "tta": bool(inf.tta),
                "members": list(ens.names),
                "train_index": train_rows.tolist(),
                "unlabelled": tile_table.to_dict("records"),
            }
        )
    root = zarr.open_group(str(out_targets), mode="r")
    targets, u_targets = root["targets"], root["unlabelled_targets"]
    if targets.nbytes <= MEMORY_LIMIT:
        targets, u_targets = targets[...], u_targets[...]
    data = _SoftData()
    data.add(images, train_rows, targets)
    data.add(tiles, np.arange(len(tiles)), u_targets)

    # 2. validation tiles: the ensemble's vote (monitored loss, Dice) and the ground truth
    val_x = _take(images, val_rows).astype(np.float32) / np.float32(255)
    val_truth = np.asarray(masks.oindex[val_rows]) > 0
    val_vote = ensemble_votes(ens.predictors, val_x, vote=inf.vote, tta=inf.tta)
    val_soft = (np.rint(np.clip(val_vote, 0, 1) * 255) / 255).astype(np.float32)[..., None]

    # 3. the student
    model, history = train_student(
        data,
        val_x,
        val_soft,
        architecture=cfg.architecture,
        model_kwargs=cfg.model_kwargs,
        size=size,
        epochs=cfg.epochs,
        steps_per_epoch=cfg.steps_per_epoch,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        dice_weight=cfg.dice_weight,
        seed=seed,
    )
    save_student(model, out_student)
    write_text(history.to_csv(index=False, lineterminator="\n"), out_history)

    # 4. the card: Dice on validation, FLOPs, the targets
    thr = float(inf.threshold)
    # the student predicts plates with the ensemble's tiling and TTA (a one-member vote)
    student_prob = ensemble_votes(
        [make_predictor(model, inf.batch_size, size)], val_x, vote="mean", tta=inf.tta
    )
    ens_masks = val_vote > thr
    student_masks = student_prob > thr
    ens_dice = pooled_dice(list(ens_masks), list(val_truth))
    student_dice = pooled_dice(list(student_masks), list(val_truth))
    member_flops = []
    for path in ens.table["path"]:
        member_flops.append(count_flops(load_checkpoint(path)))
    student_flops = count_flops(
        build_model(cfg.architecture, (size, size, 3), "none", **dict(cfg.model_kwargs))
    )
    total, trainable = count_params(model)
    dice_ratio = student_dice / ens_dice if ens_dice > 0 else math.nan
    flops_ratio = student_flops / sum(member_flops)
    dice_ok = bool(dice_ratio >= cfg.min_dice_ratio)
    flops_ok = bool(flops_ratio <= cfg.max_flops_ratio)
    card = {
        "architecture": cfg.architecture,
        "model_kwargs": dict(cfg.model_kwargs),
        "params": {"total": total, "trainable": trainable},
        "flops": {
            "tile": size,
            "student": student_flops,
            "members": member_flops,
            "ensemble": int(sum(member_flops)),
            "ratio": flops_ratio,
            "counted": "2 x multiply-accumulates of conv/dense layers, one tile, no TTA",
        },
        "validation": {
            "n_patches": int(val_rows.size),
            "vote": inf.vote,
            "threshold": thr,
            "tta": bool(inf.tta),
            "ensemble_dice": ens_dice,
            "student_dice": student_dice,
            "dice_ratio": dice_ratio,
            "agreement_dice": pooled_dice(list(student_masks), list(ens_masks)),
        },
        "targets": {
            "min_dice_ratio": cfg.min_dice_ratio,
            "max_flops_ratio": cfg.max_flops_ratio,
            "dice_ok": dice_ok,
            "flops_ok": flops_ok,
            "met": dice_ok and flops_ok,
            "on_miss": cfg.on_miss,
        },
        "training": {
            **{k: v for k, v in cfg.subset(cfg.DISTILL_KEYS).items() if k != "model_kwargs"},
            "seed": seed,
            "n_training_patches": int(train_rows.size),
            "n_unlabelled_tiles": len(tiles),
            "epochs_run": len(history),
            "best_epoch": history.attrs.get("best_epoch"),
            "best_val_loss": float(history["val_loss"].min()) if len(history) else None,
        },
        "ensemble": {"members": list(ens.names), "key": ens.key},
    }
    write_card(card, out_card)
    log.info(
        "student %s: validation Dice %.4f vs ensemble %.4f (ratio %.4f), FLOPs %.3g vs %.3g "
        "(ratio %.4f)",
        cfg.architecture,
        student_dice,
        ens_dice,
        dice_ratio,
        student_flops,
        sum(member_flops),
        flops_ratio,
    )
    check_targets(card, where=out_card)
    return card


def check_targets(card: Mapping, *, where: str | os.PathLike = CARD_FILE) -> bool:
    """Warn about, or stop on, a student that misses its targets (``on_miss``).

    Parameters
    ----------
    card : mapping
        A student card (``validation.dice_ratio``, ``flops.ratio``, ``targets``).
    where : path
        The card's file, named in the message.

    Returns
    -------
    bool
        Whether both targets are met (a miss under ``on_miss: warn`` is logged).

    Raises
    ------
    RuntimeError
        A miss under ``on_miss: error`` (the card is logged first).
    """
    targets = card["targets"]
    if targets["met"]:
        return True
    msg = (
        f"the student misses its targets: Dice ratio {card['validation']['dice_ratio']:.4f} "
        f"(min {targets['min_dice_ratio']}), FLOPs ratio {card['flops']['ratio']:.4f} "
        f"(max {targets['max_flops_ratio']}); see {where}"
    )
    if targets["on_miss"] == "error":
        log.error("%s\n%s", msg, json.dumps(card, indent=2, sort_keys=True))
        raise RuntimeError(msg + " (ensemble.student.on_miss: error)")
    log.warning("%s (ensemble.student.on_miss: warn)", msg)
    return False
