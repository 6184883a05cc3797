"""Custom Keras layers and decoder building blocks shared by every U-Net.

Only two custom layers exist, both registered with
``keras.saving.register_keras_serializable(package="brightseg")`` so that
``.keras`` checkpoints reload without ``custom_objects``:

* :class:`ImageNetPreprocess` - the encoder's ImageNet input preprocessing
  (``keras.applications.<x>.preprocess_input`` applied to ``x * 255``), run
  inside the graph so that callers always feed float32 images in [0, 1].
* :class:`ResizeLike` - bilinear resize of a feature map to the spatial size
  of a reference tensor (aligns decoder features with skips whose size is not
  exactly twice the decoder's, e.g. InceptionV3's valid-padded stages, or any
  model built with an unknown ``(None, None, 3)`` input shape).

Everything else (attention gates, residual blocks, the Instance Activation
module) is composed from built-in layers.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

__all__ = [
    "ImageNetPreprocess",
    "ResizeLike",
    "align_to",
    "attention_gate",
    "conv_norm_act",
    "instance_activation",
    "norm_layer",
    "residual_block",
]

# keras.applications.imagenet_utils constants.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="brightseg")
class ImageNetPreprocess(layers.Layer):
    """Map images in [0, 1] to an encoder's expected ImageNet input.

    Equivalent to ``keras.applications.<x>.preprocess_input(x * 255)``.

    Parameters
    ----------
    mode : {"caffe", "torch", "tf", "raw255", "identity"}
        ``caffe`` (VGG16, ResNet50): RGB -> BGR, then subtract the ImageNet
        BGR mean on the 0-255 scale.  ``torch`` (DenseNet121): scale to [0, 1]
        then standardise with the ImageNet mean/std.  ``tf`` (InceptionV3,
        MobileNetV2): scale to [-1, 1].  ``raw255`` (EfficientNetB0, whose
        graph normalises internally): multiply by 255.  ``identity``: no-op.
    """

    MODES = ("caffe", "torch", "tf", "raw255", "identity")

    def __init__(self, mode: str = "identity", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {self.MODES}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x * 255.0, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x - mean) / std
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "raw255":
            return x * 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package="brightseg")
class ResizeLike(layers.Layer):
    """Bilinearly resize ``x`` to the spatial size of ``ref``.

    Called as ``ResizeLike()([x, ref])``; output shape ``(B, H_ref, W_ref, C_x)``.
    The target size is read at run time, so the layer also works for models
    built with ``None`` spatial dimensions.
    """

    def call(self, inputs):
        x, ref = inputs
        size = ops.shape(ref)[1:3]
        out = tf.image.resize(x, size, method="bilinear")
        return ops.cast(out, x.dtype)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def align_to(x, ref, name: str | None = None):
    """Resize ``x`` to ``ref``'s spatial size only when their static sizes differ.

    When both sizes are known and equal the tensor is returned unchanged (no
    layer is added); unknown sizes always get a :class:`ResizeLike`.
    """
    xs, rs = tuple(x.shape[1:3]), tuple(ref.shape[1:3])
    if None not in xs and xs == rs:
        return x
    return ResizeLike(name=name)([x, ref])


def norm_layer(norm: str = "batch", name: str | None = None) -> layers.Layer:
    """Return a normalisation layer.

    ``batch`` -> :class:`keras.layers.BatchNormalization`; ``instance`` ->
    :class:`keras.layers.GroupNormalization` with ``groups=-1`` (one group per
    channel, i.e. instance normalisation, a built-in layer that serialises).
    """
    if norm == "batch":
        return layers.BatchNormalization(name=name)
    if norm == "instance":
        return layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)
    raise ValueError(f"unknown norm {norm!r}; expected 'batch' or 'instance'")


def conv_norm_act(
    x,
    filters: int,
    kernel_size: int = 3,
    *,
    norm: str = "batch",
    regularizer=None,
    name: str | None = None,
):
    """3x3 (or ``kernel_size``) convolution without bias, normalisation, ReLU."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=False,
        kernel_regularizer=regularizer,
        name=None if name is None else f"{name}_conv",
    )(x)
    x = norm_layer(norm, None if name is None else f"{name}_norm")(x)
    return layers.Activation("relu", name=None if name is None else f"{name}_relu")(x)


def attention_gate(x, g, inter_channels: int, *, name: str | None = None):
    """Additive attention gate (Oktay et al. 2018) applied to a skip ``x``.

    ``psi = sigmoid(conv1x1(relu(conv1x1(x) + conv1x1(g))))`` and the gate
    returns ``x * psi``.  ``g`` (the gating signal: decoder features) must
    already have ``x``'s spatial size; ``psi`` has one channel and is
    broadcast over ``x``'s channels.
    """
    n = (lambda s: None) if name is None else (lambda s: f"{name}_{s}")
    theta = layers.Conv2D(inter_channels, 1, use_bias=False, name=n("theta_x"))(x)
    phi = layers.Conv2D(inter_channels, 1, name=n("phi_g"))(g)
    f = layers.Activation("relu", name=n("relu"))(layers.Add(name=n("add"))([theta, phi]))
    psi = layers.Conv2D(1, 1, activation="sigmoid", name=n("psi"))(f)
    return layers.Multiply(name=n("gate"))([x, psi])


def residual_block(x, filters: int, *, shortcut=None, norm: str = "batch", name: str | None = None):
    """Two 3x3 conv + norm (+ReLU) with a residual shortcut.

    ``out = relu(norm(conv(relu(norm(conv(x))))) + s)``.  ``s`` is
    ``shortcut`` when given (a tensor with ``filters`` channels and ``x``'s
    spatial size, e.g. the decoder's upsampled features when ``x`` is their
    concatenation with a skip), else ``x`` itself when it has ``filters``
    channels, else a 1x1 conv + norm projection of ``x``.
    """
    n = (lambda s: None) if name is None else (lambda s: f"{name}_{s}")
    y = conv_norm_act(x, filters, norm=norm, name=n("a"))
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=n("b_conv"))(y)
    y = norm_layer(norm, n("b_norm"))(y)
    if shortcut is not None:
        s = shortcut
    elif x.shape[-1] != filters:
        s = layers.Conv2D(filters, 1, use_bias=False, name=n("proj_conv"))(x)
        s = norm_layer(norm, n("proj_norm"))(s)
    else:
        s = x
    return layers.Activation("relu", name=n("out"))(layers.Add(name=n("add"))([y, s]))


def instance_activation(x, *, norm: str = "batch", name: str | None = None):
    """Instance Activation module: ``x + relu(norm(conv1x1(x)))``.

    The paper describes it only as "1x1 conv + BN + ReLU with a residual add";
    the 1x1 conv keeps the channel count so the identity add needs no
    projection.
    """
    n = (lambda s: None) if name is None else (lambda s: f"{name}_{s}")
    y = layers.Conv2D(x.shape[-1], 1, use_bias=False, name=n("conv"))(x)
    y = norm_layer(norm, n("norm"))(y)
    y = layers.Activation("relu", name=n("relu"))(y)
    return layers.Add(name=n("add"))([x, y])
