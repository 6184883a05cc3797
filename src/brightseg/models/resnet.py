"""ResNet18 (He et al. 2016, basic blocks), built in Keras: it is not in ``keras.applications``.

The topology is torchvision's ``resnet18`` without its pooling and ``fc`` head: a 7x7/2
convolution with 64 filters, batch normalisation, ReLU and a 3x3/2 max pool, then four stages
of two basic blocks (two 3x3 convolutions) with 64, 128, 256 and 512 filters and strides 1, 2,
2, 2; a block whose shape changes has a 1x1 projection shortcut with batch normalisation.
Convolutions have no bias, batch normalisation uses torchvision's epsilon (1e-5), and every
strided convolution pads explicitly as torchvision does (``ZeroPadding2D`` then ``valid``),
so torchvision's ImageNet weights reproduce its features exactly.  The encoder has
11,176,512 parameters (torchvision's 11,689,512 less the 513,000 of ``fc``); Keras counts
9,600 more, the batch-normalisation moving means and variances (non-trainable).

Layer names follow ``keras.applications.ResNet50``: ``conv1_conv``, ``conv1_bn``,
``conv1_relu``, ``pool1_pad``, ``pool1_pool``; in stage ``s`` (2..5) block ``b`` (1, 2):
``conv{s}_block{b}_1_conv/_1_bn/_1_relu``, ``_2_conv/_2_bn``, the projection
``_0_conv/_0_bn`` and the output ``conv{s}_block{b}_out``.  The U-Net skips are
``conv1_relu`` (1/2), ``conv2_block2_out`` (1/4), ``conv3_block2_out`` (1/8),
``conv4_block2_out`` (1/16) and ``conv5_block2_out`` (1/32).

ImageNet weights: the file :data:`IMAGENET_FILE` (Keras 3 ``.weights.h5`` of the model
:func:`resnet18` returns, i.e. weights stored under these layer names) in
``$KERAS_HOME/models/``.  :func:`save_torchvision_weights` writes it from torchvision's
``state_dict`` (see the README for the one-line conversion).  The input is preprocessed as
torchvision's (``ImageNetPreprocess("torch")``: ImageNet mean and standard deviation on
[0, 1] RGB).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
from keras import layers

from ..errors import InputError
from ..io import atomic_path

__all__ = ["IMAGENET_FILE", "STAGES", "resnet18", "save_torchvision_weights"]

#: File name of the ImageNet weights in ``$KERAS_HOME/models/``.
IMAGENET_FILE = "resnet18_imagenet_notop.weights.h5"
#: (filters, stride of the first block) of stages conv2..conv5, two basic blocks each.
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
_EPS = 1e-5  # torchvision's BatchNorm2d eps


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return layers.Conv2D(
        filters, kernel, strides=stride, padding=padding, use_bias=False, name=name
    )(x)


def _bn(x, name: str):
    return layers.BatchNormalization(epsilon=_EPS, momentum=0.9, name=name)(x)


def _basic_block(x, filters: int, stride: int, name: str):
    """``relu(bn(conv3x3(relu(bn(conv3x3/stride(x))))) + shortcut(x))``."""
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_0_conv")
        shortcut = _bn(shortcut, f"{name}_0_bn")
    else:
        shortcut = x
    y = _conv(x, filters, 3, stride, f"{name}_1_conv")
    y = _bn(y, f"{name}_1_bn")
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv(y, filters, 3, 1, f"{name}_2_conv")
    y = _bn(y, f"{name}_2_bn")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet18(input_shape=(None, None, 3), name: str = "resnet18") -> keras.Model:
    """ResNet18 without its head (``include_top=False``), randomly initialised.

    Parameters
    ----------
    input_shape : tuple
        ``(H, W, 3)``; the output is at 1/32 of the input (H and W divisible by 32 keep
        every stage's size exact).
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Input: a preprocessed image; output: ``conv5_block2_out`` (512 channels).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="input_layer")
    x = _conv(inputs, 64, 7, 2, "conv1_conv")
    x = _bn(x, "conv1_bn")
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (filters, stride) in enumerate(STAGES, start=2):
        x = _basic_block(x, filters, stride, f"conv{stage}_block1")
        x = _basic_block(x, filters, 1, f"conv{stage}_block2")
    return keras.Model(inputs, x, name=name)


def _torchvision_names() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (torchvision module prefix, kind ``conv`` or ``bn``)."""
    out = {"conv1_conv": ("conv1", "conv"), "conv1_bn": ("bn1", "bn")}
    for stage in range(2, 6):
        for block in (1, 2):
            k = f"conv{stage}_block{block}"
            t = f"layer{stage - 1}.{block - 1}"
            out[f"{k}_1_conv"] = (f"{t}.conv1", "conv")
            out[f"{k}_1_bn"] = (f"{t}.bn1", "bn")
            out[f"{k}_2_conv"] = (f"{t}.conv2", "conv")
            out[f"{k}_2_bn"] = (f"{t}.bn2", "bn")
            out[f"{k}_0_conv"] = (f"{t}.downsample.0", "conv")
            out[f"{k}_0_bn"] = (f"{t}.downsample.1", "bn")
    return out


def save_torchvision_weights(
    state_dict: Mapping[str, np.ndarray], path: str | os.PathLike | None = None
) -> Path:
    """Write torchvision ``resnet18`` weights as this encoder's ImageNet weights file.

    Parameters
    ----------
    state_dict : mapping of str to ndarray
        torchvision's ``resnet18().state_dict()`` as numpy arrays (``fc.*`` and
        ``num_batches_tracked`` are ignored), e.g. ``{k: v.numpy() for k, v in
        torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict().items()}``.
    path : path, optional
        Output ``.weights.h5``; default :data:`IMAGENET_FILE` in Keras's cache
        (:func:`brightseg.models.keras_cache_dir`), where ``encoder_weights: imagenet``
        looks for it.

    Returns
    -------
    Path
        The file written (atomically).

    Raises
    ------
    InputError
        A tensor is missing or has the wrong shape.
    """
    from .runtime import keras_cache_dir

    path = Path(path) if path is not None else keras_cache_dir() / IMAGENET_FILE
    if not path.name.endswith(".weights.h5"):
        raise InputError(path, "the weights file name must end in .weights.h5")
    model = resnet18((224, 224, 3))
    for layer_name, (prefix, kind) in _torchvision_names().items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            continue  # a block without projection
        keys = ("weight",) if kind == "conv" else ("weight", "bias", "running_mean", "running_var")
        missing = [f"{prefix}.{k}" for k in keys if f"{prefix}.{k}" not in state_dict]
        if missing:
            raise InputError(None, f"torchvision state_dict lacks {missing}")
        arrays = [np.asarray(state_dict[f"{prefix}.{k}"], dtype=np.float32) for k in keys]
        if kind == "conv":
            arrays = [arrays[0].transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(a.shape) for a in arrays]
        if got != expected:
            raise InputError(None, f"{prefix}: shapes {got}, expected {expected} ({layer_name})")
        layer.set_weights(arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # the temporary name keeps the .weights.h5 suffix
        model.save_weights(tmp)
    return path
