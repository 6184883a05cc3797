"""Feature Pyramid Network decoder (Lin et al. 2017; the semantic head of Kirillov et al. 2019).

``fpn_<backbone>`` has the contract of every brightseg model (see
:func:`brightseg.models.build_model`): float32 ``(B, H, W, 3)`` in [0, 1] in, the encoder's
ImageNet preprocessing inside the graph, sigmoid probabilities ``(B, H, W, 1)`` out (float32
under any precision policy).  Only the decoder differs from ``unet_<backbone>``, on the same
frozen encoder, so the two can be compared and ensembled.
"""

from __future__ import annotations

import keras
from keras import layers

from .backbones import BACKBONES, build_encoder
from .blocks import align_to, conv_norm_act
from .unet import _check_shape, _head, _input_and_preprocess

__all__ = ["backbone_fpn"]


def backbone_fpn(
    backbone: str,
    input_shape=(256, 256, 3),
    encoder_weights="none",
    *,
    pyramid_filters: int = 256,
    segmentation_filters: int = 128,
    merge: str = "concat",
    dropout: float = 0.2,
    allow_download: bool = True,
) -> keras.Model:
    """FPN decoder on a frozen encoder of :data:`~brightseg.models.backbones.BACKBONES`.

    The encoder's four deepest features (strides 4, 8, 16 and 32; for VGG16
    ``block3_conv3``, ``block4_conv3``, ``block5_conv3``, ``block5_pool``) become the
    pyramid: a lateral 1x1 convolution (``pyramid_filters``) on each, a top-down pathway
    (bilinear 2x upsampling of the coarser level, resized onto the lateral when sizes
    differ, added to it) and a 3x3 smoothing convolution per level (P2..P5).  Each level
    then gets a segmentation head of two ``3x3 conv + BN + ReLU`` (``segmentation_filters``)
    and is upsampled bilinearly to the stride-4 level; the four maps are concatenated
    (``merge="concat"``) or summed (``"sum"``), spatially dropped out (``dropout``), fused
    by one more ``3x3 conv + BN + ReLU``, upsampled 4x to the input size and passed to the
    1x1 sigmoid head.

    Parameters
    ----------
    backbone : str
        Key of :data:`~brightseg.models.backbones.BACKBONES`.
    input_shape : tuple
        ``(H, W, 3)``, H and W divisible by 32 (or None).
    encoder_weights : {"none", "imagenet"} or path
        See :mod:`brightseg.models.backbones`.
    pyramid_filters, segmentation_filters : int
        Widths of the pyramid and of the per-level heads.
    merge : {"concat", "sum"}
        How the per-level maps are combined.
    dropout : float
        ``SpatialDropout2D`` rate after merging.
    allow_download : bool
        Download missing ImageNet weights into Keras's cache.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    if merge not in ("concat", "sum"):
        raise ValueError(f"unknown merge {merge!r}; expected 'concat' or 'sum'")
    input_shape = _check_shape(input_shape)
    inputs, x = _input_and_preprocess(input_shape, backbone)
    _, feats = build_encoder(
        backbone,
        x,
        encoder_weights=encoder_weights,
        allow_download=allow_download,
        features=BACKBONES[backbone].features[-4:],
    )
    # top-down: P5 from C5, then P_i = lateral(C_i) + up(P_{i+1})
    pyramid = []
    p = None
    for level, c in zip((5, 4, 3, 2), feats[::-1], strict=True):
        lateral = layers.Conv2D(pyramid_filters, 1, name=f"fpn_p{level}_lateral")(c)
        if p is not None:
            up = layers.UpSampling2D(2, interpolation="bilinear", name=f"fpn_p{level}_up")(p)
            up = align_to(up, lateral, name=f"fpn_p{level}_align")
            lateral = layers.Add(name=f"fpn_p{level}_add")([lateral, up])
        p = lateral
        pyramid.append(
            layers.Conv2D(pyramid_filters, 3, padding="same", name=f"fpn_p{level}_smooth")(p)
        )
    finest = pyramid[-1]  # P2, stride 4
    heads = []
    for level, p in zip((5, 4, 3, 2), pyramid, strict=True):
        h = conv_norm_act(p, segmentation_filters, name=f"seg_p{level}_c1")
        h = conv_norm_act(h, segmentation_filters, name=f"seg_p{level}_c2")
        if level > 2:
            h = layers.UpSampling2D(
                2 ** (level - 2), interpolation="bilinear", name=f"seg_p{level}_up"
            )(h)
            h = align_to(h, finest, name=f"seg_p{level}_align")
        heads.append(h)
    if merge == "concat":
        x = layers.Concatenate(name="seg_merge")(heads)
    else:
        x = layers.Add(name="seg_merge")(heads)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name="seg_dropout")(x)
    x = conv_norm_act(x, segmentation_filters, name="seg_fuse")
    x = layers.UpSampling2D(4, interpolation="bilinear", name="seg_up")(x)
    return _head(x, inputs, f"fpn_{backbone}")
