"""U-Net architectures: the paper's three models, the backbone comparison, a demo net.

All builders share the contract of :func:`brightseg.models.build_model`:
input float32 ``(B, H, W, 3)`` in [0, 1] (grey replicated), the encoder's
ImageNet preprocessing inside the graph, output sigmoid probabilities
``(B, H, W, 1)`` whose final activation layer is float32 even under a mixed
precision policy.  H and W must be divisible by 32 (the deepest features are
at 1/32); ``None`` spatial dimensions are accepted (skips are then aligned
with :class:`~brightseg.models.blocks.ResizeLike` at run time).

Where the paper is vague the choices are documented per builder; the decoder
widths were chosen so the trainable parameter counts land near the paper's.
"""

from __future__ import annotations

import keras
from keras import layers, regularizers

from .backbones import BACKBONES, build_encoder
from .blocks import (
    ImageNetPreprocess,
    align_to,
    attention_gate,
    conv_norm_act,
    instance_activation,
    norm_layer,
    residual_block,
)

__all__ = [
    "backbone_unet",
    "densenet121_unet",
    "small_unet",
    "vgg16_attention_ia_unet",
    "vgg16_attention_unet",
]


def _check_shape(input_shape, multiple: int = 32) -> tuple:
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (H, W, 3), got {input_shape}")
    for d in input_shape[:2]:
        if d is not None and (d <= 0 or d % multiple):
            raise ValueError(f"input height/width must be divisible by {multiple}: {input_shape}")
    return input_shape


def _head(x, inputs, name: str) -> keras.Model:
    """1x1 sigmoid head, float32 under any dtype policy; aligns to the input size."""
    x = align_to(x, inputs, name="head_align")
    x = layers.Conv2D(1, 1, name="head_conv")(x)
    out = layers.Activation("sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, out, name=name)


def _input_and_preprocess(input_shape, backbone: str | None):
    inputs = keras.Input(shape=input_shape, dtype="float32", name="image")
    mode = BACKBONES[backbone].preprocess if backbone else "tf"
    x = ImageNetPreprocess(mode, dtype="float32", name="preprocess")(inputs)
    return inputs, x


def densenet121_unet(
    input_shape=(256, 256, 3),
    encoder_weights="none",
    *,
    decoder_filters=(512, 256, 128, 64),
    final_filters: int = 32,
    dropout=(0.25, 0.5),
    l2: float = 1e-4,
    allow_download: bool = True,
) -> keras.Model:
    """Model-1: frozen DenseNet121 encoder with a transposed-convolution decoder.

    Skips ``conv1_relu`` (1/2), ``pool2_relu`` (1/4), ``pool3_relu`` (1/8),
    ``pool4_relu`` (1/16); bridge ``relu`` (1/32).  Each decoder stage
    (deep to shallow, filters ``decoder_filters``) is
    ``Conv2DTranspose(3x3, stride 2) + BN + ReLU + Dropout``, a bilinear
    resize onto the skip when sizes differ, concatenation, then one
    ``3x3 conv + BN + ReLU`` fusing the concatenation.  The paper lists only
    the transposed-conv part; the fusing conv is our choice and brings the
    trainable count to the paper's 15.7 M (without it: 9.4 M).  Dropout rises
    linearly from ``dropout[0]`` at the deepest stage to ``dropout[1]`` at the
    shallowest.  A final ``Conv2DTranspose`` (``final_filters``) + BN + ReLU
    returns to full resolution, then a 1x1 sigmoid.  L2 ``l2`` on every
    decoder convolution kernel (the frozen encoder's weights do not train, so
    the penalty would only be a constant there).
    """
    input_shape = _check_shape(input_shape)
    reg = regularizers.L2(l2) if l2 else None
    inputs, x = _input_and_preprocess(input_shape, "densenet121")
    _, feats = build_encoder(
        "densenet121", x, encoder_weights=encoder_weights, allow_download=allow_download
    )
    skips, x = feats[:-1][::-1], feats[-1]
    n = len(skips)
    lo, hi = dropout
    for i, (skip, f) in enumerate(zip(skips, decoder_filters, strict=True)):
        rate = lo + (hi - lo) * i / max(n - 1, 1)
        name = f"dec{n - i}"
        x = layers.Conv2DTranspose(
            f,
            3,
            strides=2,
            padding="same",
            use_bias=False,
            kernel_regularizer=reg,
            name=f"{name}_up",
        )(x)
        x = layers.BatchNormalization(name=f"{name}_up_bn")(x)
        x = layers.Activation("relu", name=f"{name}_up_relu")(x)
        x = layers.Dropout(rate, name=f"{name}_dropout")(x)
        x = align_to(x, skip, name=f"{name}_align")
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = conv_norm_act(x, f, regularizer=reg, name=f"{name}_fuse")
    x = layers.Conv2DTranspose(
        final_filters,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_regularizer=reg,
        name="dec0_up",
    )(x)
    x = layers.BatchNormalization(name="dec0_up_bn")(x)
    x = layers.Activation("relu", name="dec0_up_relu")(x)
    x = align_to(x, inputs, name="head_align")
    x = layers.Conv2D(1, 1, kernel_regularizer=reg, name="head_conv")(x)
    out = layers.Activation("sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, out, name="densenet121_unet")


def vgg16_attention_unet(
    input_shape=(256, 256, 3),
    encoder_weights="none",
    *,
    decoder_filters=(256, 128, 64, 32),
    dropout: float = 0.1,
    allow_download: bool = True,
) -> keras.Model:
    """Model-2: frozen VGG16 encoder, attention-gated skips.

    Skips ``block1_conv2`` (1/1), ``block2_conv2`` (1/2), ``block3_conv3``
    (1/4), ``block4_conv3`` (1/8); bridge ``block5_conv3`` (1/16; VGG16's last
    conv).  Per decoder stage (deep to shallow, filters ``decoder_filters``,
    i.e. shrinking as the decoder approaches the output): bilinear 2x
    upsampling, an additive attention gate on the skip gated by the upsampled
    decoder features (inter channels = half the stage filters), concatenation,
    two ``3x3 conv + BN + ReLU``, dropout ``dropout``.  1x1 sigmoid head.
    Bilinear upsampling (not transposed convs) is our reading of the paper's
    parameter budget (4.09 M trainable).
    """
    input_shape = _check_shape(input_shape)
    inputs, x = _input_and_preprocess(input_shape, "vgg16")
    _, feats = build_encoder(
        "vgg16",
        x,
        encoder_weights=encoder_weights,
        allow_download=allow_download,
        features=BACKBONES["vgg16"].features[:5],
    )
    skips, x = feats[:-1][::-1], feats[-1]
    n = len(skips)
    for i, (skip, f) in enumerate(zip(skips, decoder_filters, strict=True)):
        name = f"dec{n - i}"
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
        x = align_to(x, skip, name=f"{name}_align")
        gated = attention_gate(skip, x, max(f // 2, 1), name=f"{name}_att")
        x = layers.Concatenate(name=f"{name}_concat")([x, gated])
        x = conv_norm_act(x, f, name=f"{name}_c1")
        x = conv_norm_act(x, f, name=f"{name}_c2")
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return _head(x, inputs, "vgg16_attention_unet")


def vgg16_attention_ia_unet(
    input_shape=(256, 256, 3),
    encoder_weights="none",
    *,
    decoder_filters=(512, 256, 128, 64),
    final_filters: int = 32,
    dropout=(0.2, 0.4),
    norm: str = "batch",
    allow_download: bool = True,
) -> keras.Model:
    """Model-3: frozen VGG16 encoder, attention gates, residual blocks, IA modules.

    Encoder features ``block1_pool`` (1/2) .. ``block4_pool`` (1/16) are the
    skips and ``block5_pool`` (1/32) the bridge.  Per decoder stage (deep to
    shallow, ``decoder_filters``): ``Conv2DTranspose(3x3, stride 2)`` + norm +
    ReLU, an attention gate on the skip (gated by the upsampled features,
    inter channels = half the filters), concatenation, a residual block
    (:func:`~brightseg.models.blocks.residual_block`: two 3x3 convs on the
    concatenation, added to the upsampled features), an Instance Activation
    module (:func:`~brightseg.models.blocks.instance_activation`) and
    ``SpatialDropout2D``.  The dropout rate rises linearly with depth from
    ``dropout[0]`` (shallowest stage) to ``dropout[1]`` (deepest).  A last
    stage without skip (transposed conv to full size + residual block with
    ``final_filters``) precedes the 1x1 sigmoid head.  ``norm="instance"``
    replaces every decoder BatchNormalization by instance normalisation
    (``GroupNormalization(groups=-1)``); the frozen encoder is unchanged.
    """
    input_shape = _check_shape(input_shape)
    inputs, x = _input_and_preprocess(input_shape, "vgg16")
    _, feats = build_encoder(
        "vgg16",
        x,
        encoder_weights=encoder_weights,
        allow_download=allow_download,
        features=("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"),
    )
    skips, x = feats[:-1][::-1], feats[-1]
    n = len(skips)
    lo, hi = dropout
    for i, (skip, f) in enumerate(zip(skips, decoder_filters, strict=True)):
        rate = hi - (hi - lo) * i / max(n - 1, 1)
        name = f"dec{n - i}"
        x = layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", use_bias=False, name=f"{name}_up"
        )(x)
        x = norm_layer(norm, f"{name}_up_norm")(x)
        x = layers.Activation("relu", name=f"{name}_up_relu")(x)
        x = align_to(x, skip, name=f"{name}_align")
        gated = attention_gate(skip, x, max(f // 2, 1), name=f"{name}_att")
        up = x
        x = layers.Concatenate(name=f"{name}_concat")([x, gated])
        x = residual_block(x, f, shortcut=up, norm=norm, name=f"{name}_res")
        x = instance_activation(x, norm=norm, name=f"{name}_ia")
        x = layers.SpatialDropout2D(rate, name=f"{name}_dropout")(x)
    x = layers.Conv2DTranspose(
        final_filters, 3, strides=2, padding="same", use_bias=False, name="dec0_up"
    )(x)
    x = norm_layer(norm, "dec0_up_norm")(x)
    x = layers.Activation("relu", name="dec0_up_relu")(x)
    x = residual_block(x, final_filters, norm=norm, name="dec0_res")
    return _head(x, inputs, "vgg16_attention_ia_unet")


def backbone_unet(
    backbone: str,
    input_shape=(256, 256, 3),
    encoder_weights="none",
    *,
    decoder_filters=(256, 128, 64, 32, 16),
    allow_download: bool = True,
) -> keras.Model:
    """Plain U-Net on a frozen ``keras.applications`` encoder (paper Table 1).

    One decoder for every backbone so that only the encoder differs: per skip
    (deep to shallow) bilinear 2x upsampling, a bilinear resize onto the skip
    when sizes differ (InceptionV3's valid padding gives 125/60/29/14/6 for a
    256 input), concatenation and two ``3x3 conv + BN + ReLU``; stages left
    over after the last skip upsample without a skip.  Finally the features
    are resized to the input size if needed and a 1x1 sigmoid applied.
    Feature layers are those of :data:`~brightseg.models.backbones.BACKBONES`
    (for VGG16 five skips ``block1_conv2..block5_conv3`` and bridge
    ``block5_pool``; for the others four skips at 1/2..1/16 and the 1/32
    bridge), following the common segmentation-models convention.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    input_shape = _check_shape(input_shape)
    inputs, x = _input_and_preprocess(input_shape, backbone)
    _, feats = build_encoder(
        backbone, x, encoder_weights=encoder_weights, allow_download=allow_download
    )
    skips, x = feats[:-1][::-1], feats[-1]
    for i, f in enumerate(decoder_filters):
        name = f"dec{len(decoder_filters) - i}"
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
        if i < len(skips):
            x = align_to(x, skips[i], name=f"{name}_align")
            x = layers.Concatenate(name=f"{name}_concat")([x, skips[i]])
        x = conv_norm_act(x, f, name=f"{name}_c1")
        x = conv_norm_act(x, f, name=f"{name}_c2")
    return _head(x, inputs, f"unet_{backbone}")


def small_unet(
    input_shape=(256, 256, 3),
    encoder_weights="none",
    *,
    base_filters: int = 16,
    depth: int = 4,
    dropout: float = 0.1,
    allow_download: bool = True,
) -> keras.Model:
    """Small U-Net trained from scratch (CPU demo).

    ``depth`` max-pooling stages with ``base_filters * 2**level`` filters (two
    ``3x3 conv + BN + ReLU`` each), a bridge with ``base_filters * 2**depth``
    filters, ``Conv2DTranspose(2x2, stride 2)`` upsampling and dropout
    ``dropout`` in the bridge.  Inputs are mapped to [-1, 1].  With the
    defaults: about 1.9 M parameters; ``base_filters=8`` gives about 0.5 M.
    ``encoder_weights`` must be ``"none"`` (there is no pretrained encoder).
    """
    del allow_download
    if encoder_weights not in (None, "none"):
        raise ValueError("small_unet has no pretrained encoder; use encoder_weights='none'")
    input_shape = _check_shape(input_shape, multiple=2**depth)
    inputs, x = _input_and_preprocess(input_shape, None)
    skips = []
    for level in range(depth):
        f = base_filters * 2**level
        x = conv_norm_act(x, f, name=f"enc{level}_c1")
        x = conv_norm_act(x, f, name=f"enc{level}_c2")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_norm_act(x, base_filters * 2**depth, name="bridge_c1")
    x = layers.Dropout(dropout, name="bridge_dropout")(x)
    x = conv_norm_act(x, base_filters * 2**depth, name="bridge_c2")
    for level in reversed(range(depth)):
        f = base_filters * 2**level
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = conv_norm_act(x, f, name=f"dec{level}_c1")
        x = conv_norm_act(x, f, name=f"dec{level}_c2")
    return _head(x, inputs, "small_unet")
