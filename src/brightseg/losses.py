"""Segmentation losses (Keras 3) with per-sample variants for hard-example mining.

All losses take ``y_true`` in {0, 1} with shape ``(B, H, W, 1)`` or
``(B, H, W)`` and ``y_pred`` sigmoid probabilities ``(B, H, W, 1)``.  They are
computed in float32 (the models' outputs are float32 under every dtype
policy).  Each loss is first computed per sample (shape ``(B,)``: pixel terms
averaged over the image, Dice per image); the batch loss is the mean of that.

``bce_dice``
    ``mean_px(w * BCE) + (1 - Dice)`` with class weights ``w = 10`` on
    foreground pixels and ``1`` on background (the weighted BCE is divided by
    the pixel count, not by the sum of weights, as Keras's ``sample_weight``
    does).
``focal_dice_boundary``
    ``0.3 * focal + 0.6 * (1 - Dice) + 0.1 * boundary`` with the binary focal
    loss ``-alpha_t (1 - p_t)**gamma log(p_t)`` (alpha 0.25 on foreground,
    0.75 on background, gamma 2) averaged over pixels, and the boundary term
    ``mean_px |L(p) - L(y)|`` where ``L`` is the 4-neighbour Laplacian
    ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` with symmetric (edge-replicating)
    padding, so image borders create no spurious edges.  It penalises
    predicted contours that are misplaced, blurred or missing.

``cce_dice`` (3-class targets ``border3`` / ``nucleus3``, softmax outputs ``(B, H, W, 3)``)
    ``mean_px(w * CCE) + (1 - mean(Dice_1, Dice_2))``: categorical cross-entropy
    ``-sum_k y_k log p_k`` (``w = 1``, or the border weight map) plus the soft Dice of the two
    foreground classes (interior and border, or cytoplasm and nucleus) averaged.

Border weight (``loss_kwargs.border_weight: {w0: 10, sigma_px: 5}``, ``bce_dice`` and
``cce_dice``): ``y_true`` carries the U-Net weight map of :func:`brightseg.targets.border_weight_map`
as its last channel (the training reader appends it) and the pixel weight of the
cross-entropy is that map instead of the class weights (which it contains as ``w_c``).

Dice is the soft Dice ``(2 sum(y p) + s) / (sum(y) + sum(p) + s)`` per image
with smoothing ``s = 1`` (an empty mask predicted empty scores 1).
Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` inside logarithms.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from .errors import InputError

__all__ = [
    "LOSSES",
    "BCEDice",
    "CCEDice",
    "MULTICLASS_LOSSES",
    "cce_dice_per_sample",
    "check_model_target",
    "FocalDiceBoundary",
    "bce_dice",
    "bce_dice_per_sample",
    "focal_dice_boundary",
    "focal_dice_boundary_per_sample",
    "get_loss",
    "laplacian",
    "soft_dice_per_sample",
]

EPS = 1e-7
DICE_SMOOTH = 1.0


def _prep(y_true, y_pred):
    y_pred = tf.cast(y_pred, tf.float32)
    y_true = tf.cast(y_true, tf.float32)
    if y_true.shape.rank == 3:
        y_true = y_true[..., None]
    if y_pred.shape.rank == 3:
        y_pred = y_pred[..., None]
    return y_true, y_pred


def soft_dice_per_sample(y_true, y_pred, smooth: float = DICE_SMOOTH):
    """Soft Dice coefficient per image, shape ``(B,)``."""
    y_true, y_pred = _prep(y_true, y_pred)
    axes = [1, 2, 3]
    inter = tf.reduce_sum(y_true * y_pred, axis=axes)
    denom = tf.reduce_sum(y_true, axis=axes) + tf.reduce_sum(y_pred, axis=axes)
    return (2.0 * inter + smooth) / (denom + smooth)


def bce_dice_per_sample(
    y_true, y_pred, *, fg_weight: float = 10.0, bg_weight: float = 1.0, weighted: bool = False
):
    """Class-weighted BCE + (1 - soft Dice) per image, shape ``(B,)``.

    ``weighted``: ``y_true`` is ``(B, H, W, 2)``, mask and pixel weight map.
    """
    y_true, y_pred = _prep(y_true, y_pred)
    if weighted:
        y_true, w = y_true[..., :1], y_true[..., 1:2]
    p = tf.clip_by_value(y_pred, EPS, 1.0 - EPS)
    bce = -(y_true * tf.math.log(p) + (1.0 - y_true) * tf.math.log(1.0 - p))
    if not weighted:
        w = fg_weight * y_true + bg_weight * (1.0 - y_true)
    wbce = tf.reduce_mean(w * bce, axis=[1, 2, 3])
    return wbce + (1.0 - soft_dice_per_sample(y_true, y_pred))


def laplacian(x):
    """4-neighbour Laplacian of ``(B, H, W, 1)`` maps with symmetric padding."""
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    kernel = tf.constant([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], tf.float32)
    return tf.nn.conv2d(x, kernel[:, :, None, None], strides=1, padding="VALID")


def focal_dice_boundary_per_sample(
    y_true,
    y_pred,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weights: tuple[float, float, float] = (0.3, 0.6, 0.1),
):
    """Focal x 0.3 + Dice loss x 0.6 + Laplacian boundary x 0.1 per image, ``(B,)``."""
    y_true, y_pred = _prep(y_true, y_pred)
    p = tf.clip_by_value(y_pred, EPS, 1.0 - EPS)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    focal = tf.reduce_mean(-alpha_t * (1.0 - p_t) ** gamma * tf.math.log(p_t), axis=[1, 2, 3])
    dice_loss = 1.0 - soft_dice_per_sample(y_true, y_pred)
    boundary = tf.reduce_mean(tf.abs(laplacian(y_pred) - laplacian(y_true)), axis=[1, 2, 3])
    wf, wd, wb = weights
    return wf * focal + wd * dice_loss + wb * boundary


def cce_dice_per_sample(y_true, y_pred, *, weighted: bool = False):
    """(Weighted) categorical CE + (1 - mean soft Dice of classes 1, 2) per image, ``(B,)``.

    ``y_true``: one-hot ``(B, H, W, 3)``, with ``weighted`` a 4th channel, the weight map.
    """
    y_true, y_pred = _prep(y_true, y_pred)
    w = y_true[..., 3:4] if weighted else 1.0
    y_true = y_true[..., :3]
    p = tf.clip_by_value(y_pred, EPS, 1.0)
    cce = -tf.reduce_sum(y_true * tf.math.log(p), axis=-1, keepdims=True)
    wcce = tf.reduce_mean(w * cce, axis=[1, 2, 3])
    dice = 0.5 * (
        soft_dice_per_sample(y_true[..., 1:2], y_pred[..., 1:2])
        + soft_dice_per_sample(y_true[..., 2:3], y_pred[..., 2:3])
    )
    return wcce + (1.0 - dice)


def _check_border_weight(border_weight):
    if border_weight is None:
        return None
    if not isinstance(border_weight, dict) or set(border_weight) - {"w0", "sigma_px"}:
        raise TypeError(f"border_weight must be a mapping with w0, sigma_px, got {border_weight!r}")
    w0, sigma = float(border_weight.get("w0", 10.0)), float(border_weight.get("sigma_px", 5.0))
    if w0 < 0 or sigma <= 0:
        raise TypeError(f"border_weight needs w0 >= 0 and sigma_px > 0, got {border_weight!r}")
    return {"w0": w0, "sigma_px": sigma}


@keras.saving.register_keras_serializable(package="brightseg")
class BCEDice(keras.losses.Loss):
    """Keras loss: class-weighted BCE (10:1) + (1 - soft Dice); optional border weight map."""

    def __init__(
        self,
        fg_weight=10.0,
        bg_weight=1.0,
        border_weight=None,
        reduction="sum_over_batch_size",
        name="bce_dice",
        **kw,
    ):
        super().__init__(reduction=reduction, name=name, **kw)
        self.fg_weight = fg_weight
        self.bg_weight = bg_weight
        self.border_weight = _check_border_weight(border_weight)

    def call(self, y_true, y_pred):
        return bce_dice_per_sample(
            y_true,
            y_pred,
            fg_weight=self.fg_weight,
            bg_weight=self.bg_weight,
            weighted=self.border_weight is not None,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "fg_weight": self.fg_weight,
            "bg_weight": self.bg_weight,
            "border_weight": self.border_weight,
        }


@keras.saving.register_keras_serializable(package="brightseg")
class CCEDice(keras.losses.Loss):
    """Keras loss for 3-class softmax outputs: (weighted) CCE + (1 - mean class Dice)."""

    def __init__(self, border_weight=None, reduction="sum_over_batch_size", name="cce_dice", **kw):
        super().__init__(reduction=reduction, name=name, **kw)
        self.border_weight = _check_border_weight(border_weight)

    def call(self, y_true, y_pred):
        return cce_dice_per_sample(y_true, y_pred, weighted=self.border_weight is not None)

    def get_config(self):
        return {**super().get_config(), "border_weight": self.border_weight}


@keras.saving.register_keras_serializable(package="brightseg")
class FocalDiceBoundary(keras.losses.Loss):
    """Keras loss: 0.3 focal + 0.6 Dice loss + 0.1 Laplacian boundary."""

    def __init__(
        self,
        alpha=0.25,
        gamma=2.0,
        weights=(0.3, 0.6, 0.1),
        reduction="sum_over_batch_size",
        name="focal_dice_boundary",
        **kw,
    ):
        super().__init__(reduction=reduction, name=name, **kw)
        self.alpha = alpha
        self.gamma = gamma
        self.weights = tuple(weights)

    def call(self, y_true, y_pred):
        return focal_dice_boundary_per_sample(
            y_true, y_pred, alpha=self.alpha, gamma=self.gamma, weights=self.weights
        )

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "gamma": self.gamma,
            "weights": list(self.weights),
        }


LOSSES: dict[str, type[keras.losses.Loss]] = {
    "bce_dice": BCEDice,
    "focal_dice_boundary": FocalDiceBoundary,
    "cce_dice": CCEDice,
}

#: Losses of 3-class (softmax) targets; the others take the binary (sigmoid) target.
MULTICLASS_LOSSES = ("cce_dice",)


def check_model_target(target: str, loss: str, where: str = "models[]") -> None:
    """Refuse a loss that does not fit the target (InputError naming both).

    ``border3`` and ``nucleus3`` train with ``cce_dice``; ``binary`` with the others.
    """
    multi = target in ("border3", "nucleus3")
    if multi != (loss in MULTICLASS_LOSSES):
        want = list(MULTICLASS_LOSSES) if multi else sorted(set(LOSSES) - set(MULTICLASS_LOSSES))
        raise InputError(
            None, f"{where}: target {target!r} cannot train with loss {loss!r}; use one of {want}"
        )


def get_loss(
    name: str, reduction: str | None = "sum_over_batch_size", **kwargs
) -> keras.losses.Loss:
    """Instantiate a loss of :data:`LOSSES`.

    ``reduction="none"`` (or None) gives the per-sample loss, shape ``(B,)``,
    used for hard-example mining; the default averages over the batch.
    """

    if name not in LOSSES:
        raise InputError(None, f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](reduction="none" if reduction is None else reduction, **kwargs)
    except TypeError as exc:
        raise InputError(None, f"loss {name!r}: bad loss_kwargs {kwargs!r} ({exc})") from None


def bce_dice(y_true, y_pred):
    """Batch-mean :func:`bce_dice_per_sample` (plain function form)."""
    return tf.reduce_mean(bce_dice_per_sample(y_true, y_pred))


def focal_dice_boundary(y_true, y_pred):
    """Batch-mean :func:`focal_dice_boundary_per_sample` (plain function form)."""
    return tf.reduce_mean(focal_dice_boundary_per_sample(y_true, y_pred))
