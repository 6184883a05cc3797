"""Keras U-Net models for brightfield / phase-contrast cell segmentation.

Every model takes float32 images ``(B, H, W, 3)`` in [0, 1] (H, W divisible
by 32), applies its encoder's ImageNet preprocessing inside the graph and
returns sigmoid foreground probabilities ``(B, H, W, 1)`` in float32.

Use :func:`build_model` with a name from :data:`ARCHITECTURES`:

=========================== ===================================================
``densenet121_unet``        Model-1, frozen DenseNet121, transposed-conv decoder
``vgg16_attention_unet``    Model-2, frozen VGG16, attention-gated skips
``vgg16_attention_ia_unet`` Model-3, frozen VGG16, attention + residual + IA
``small_unet``              small from-scratch U-Net (CPU demo)
``unet_<backbone>``         Table 1 backbone comparison (densenet121,
                            inceptionv3, vgg16, mobilenetv2, resnet50,
                            efficientnetb0), and resnet18 (built in
                            :mod:`~brightseg.models.resnet`)
``fpn_<backbone>``          the same encoders with a Feature Pyramid Network
                            decoder (:mod:`~brightseg.models.fpn`)
=========================== ===================================================
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import keras
import pandas as pd

from ..errors import InputError
from .backbones import BACKBONES, imagenet_weights_file, keras_cache_dir, resolve_imagenet_weights
from .blocks import ImageNetPreprocess, ResizeLike
from .flops import count_flops
from .fpn import backbone_fpn
from .runtime import POLICIES, cpu_supports_bf16, load_checkpoint, set_keras_home, set_precision
from .unet import (
    backbone_unet,
    densenet121_unet,
    small_unet,
    vgg16_attention_ia_unet,
    vgg16_attention_unet,
)

log = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "PAPER_PARAMS",
    "POLICIES",
    "ImageNetPreprocess",
    "ResizeLike",
    "backbone_fpn",
    "backbone_unet",
    "build_model",
    "check_encoder_weights",
    "count_flops",
    "count_params",
    "MULTICLASS_TARGETS",
    "model_target",
    "cpu_supports_bf16",
    "densenet121_unet",
    "imagenet_weights_file",
    "keras_cache_dir",
    "load_checkpoint",
    "param_table",
    "set_keras_home",
    "set_precision",
    "small_unet",
    "vgg16_attention_ia_unet",
    "vgg16_attention_unet",
]

ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "densenet121_unet": densenet121_unet,
    "vgg16_attention_unet": vgg16_attention_unet,
    "vgg16_attention_ia_unet": vgg16_attention_ia_unet,
    "small_unet": small_unet,
    **{f"unet_{b}": functools.partial(backbone_unet, b) for b in BACKBONES},
    **{f"fpn_{b}": functools.partial(backbone_fpn, b) for b in BACKBONES},
}

#: Encoder backbone of each architecture (None: trained from scratch).
ENCODERS: dict[str, str | None] = {
    "densenet121_unet": "densenet121",
    "vgg16_attention_unet": "vgg16",
    "vgg16_attention_ia_unet": "vgg16",
    "small_unet": None,
    **{f"unet_{b}": b for b in BACKBONES},
    **{f"fpn_{b}": b for b in BACKBONES},
}

#: Parameter counts reported in the paper (total, trainable).
PAPER_PARAMS: dict[str, tuple[float, float]] = {
    "densenet121_unet": (22.7e6, 15.7e6),
    "vgg16_attention_unet": (18.8e6, 4.09e6),
    "vgg16_attention_ia_unet": (28.85e6, 14.1e6),
}


def build_model(
    name: str,
    input_shape=(256, 256, 3),
    encoder_weights: str | os.PathLike = "none",
    *,
    freeze_encoder: bool | None = None,
    target: str = "binary",
    **kwargs,
) -> keras.Model:
    """Build an architecture of :data:`ARCHITECTURES`.

    Parameters
    ----------
    name : str
        Registry key.
    input_shape : tuple
        ``(H, W, 3)``, H and W divisible by 32 (or None).
    encoder_weights : {"none", "imagenet"} or path
        See :mod:`brightseg.models.backbones`.
    freeze_encoder : bool, optional
        Freeze the pretrained encoder (the paper's setup).  Default: frozen when weights
        are loaded, trained when the encoder is randomly initialised
        (``encoder_weights="none"``, e.g. offline on a CPU): a frozen random encoder
        would only pass noise features to the decoder.
    target : {"binary", "border3", "nucleus3"}
        binary: the sigmoid foreground head (``mask``); a 3-class target replaces it by a
        1x1 convolution to 3 channels and a softmax layer named after the target (float32),
        so a checkpoint says what it predicts (:func:`model_target`).
    **kwargs
        Passed to the builder (e.g. ``norm="instance"``, ``base_filters=8``,
        ``allow_download=False``).
    """
    if name not in ARCHITECTURES:
        raise InputError(
            None, f"unknown architecture {name!r}; expected one of {list(ARCHITECTURES)}"
        )
    model = ARCHITECTURES[name](input_shape=input_shape, encoder_weights=encoder_weights, **kwargs)
    freeze = (
        freeze_encoder
        if freeze_encoder is not None
        else os.fspath(encoder_weights or "none") != "none"
    )
    if target in MULTICLASS_TARGETS:
        features = model.get_layer("head_conv").input
        x = keras.layers.Conv2D(3, 1, name="head_conv3")(features)
        out = keras.layers.Activation("softmax", dtype="float32", name=target)(x)
        model = keras.Model(model.inputs, out, name=f"{model.name}_{target}")
    elif target != "binary":
        raise InputError(None, f"unknown target {target!r}; expected binary, border3 or nucleus3")
    encoder = next((layer for layer in model.layers if layer.name == "encoder"), None)
    if encoder is not None and not freeze:
        encoder.trainable = True
        log.info("%s: no pretrained encoder weights, so the encoder is trained too", name)
    return model


#: Targets with a 3-channel softmax head (the output layer is named after the target).
MULTICLASS_TARGETS = ("border3", "nucleus3")


def model_target(model: keras.Model) -> str:
    """``binary``, ``border3`` or ``nucleus3``: what a built or loaded model predicts."""
    layers = getattr(model, "layers", None)
    name = layers[-1].name if layers else None
    return name if name in MULTICLASS_TARGETS else "binary"


def check_encoder_weights(
    name: str, encoder_weights="imagenet", input_shape=(256, 256, 3), *, allow_download=True
) -> None:
    """Fail early (InputError) when an architecture's encoder weights are unavailable.

    Cheap: resolves (and possibly downloads) the ImageNet file or checks that
    a weights path exists, without building the model.
    """
    backbone = ENCODERS.get(name)
    if backbone is None or encoder_weights in (None, "none"):
        return
    if encoder_weights == "imagenet":
        resolve_imagenet_weights(backbone, input_shape, allow_download=allow_download)
    elif not os.path.isfile(encoder_weights):
        raise InputError(encoder_weights, "encoder weights file does not exist")


def count_params(model: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts; BN moving statistics count as non-trainable."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    return int(model.count_params()), trainable


def param_table(names=None, input_size: int = 256):
    """Parameter and FLOP counts of every architecture, next to the paper's parameters.

    Built with ``input_shape=(input_size, input_size, 3)`` and random weights
    (parameter counts do not depend on the input size; FLOPs do).  Columns ``name, total,
    trainable, gflops, paper_total, paper_trainable``: ``trainable`` with the encoder
    frozen (the paper's setup), ``gflops`` the GFLOPs of one ``input_size`` image
    (:func:`~brightseg.models.flops.count_flops`: 2 x the multiply-adds of every
    convolution and dense layer), paper values NaN where the paper reports none.

    Gaps to the paper: the frozen encoders match Keras exactly (DenseNet121
    notop 7.04 M, VGG16 notop 14.71 M, i.e. the paper's non-trainable parts);
    the decoders are reconstructions from the text, with widths chosen to land
    near the paper's trainable counts.  Remaining differences (a few percent)
    come from details the paper does not give (attention-gate widths,
    upsampling type, bias/BN placement).
    """

    rows = []
    for name in names or ARCHITECTURES:
        model = build_model(name, (input_size, input_size, 3), "none", freeze_encoder=True)
        total, trainable = count_params(model)
        paper = PAPER_PARAMS.get(name, (float("nan"), float("nan")))
        rows.append(
            {
                "name": name,
                "total": total,
                "trainable": trainable,
                "gflops": round(count_flops(model) / 1e9, 2),
                "paper_total": paper[0],
                "paper_trainable": paper[1],
            }
        )
        del model
    return pd.DataFrame(rows)
