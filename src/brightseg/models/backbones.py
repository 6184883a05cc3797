"""Frozen ImageNet encoders (keras.applications, and our ResNet18) and their weights.

An encoder is a nested functional :class:`keras.Model` named ``"encoder"``
that maps the preprocessed image to a list of feature maps (shallow to
deep; the last one is the bridge).  It is frozen (``trainable = False``, so
its BatchNormalization layers also run in inference mode).

Encoder weights
---------------
``"none"``
    Random initialisation (tests, parameter counts).
``"imagenet"``
    The ``*_notop.h5`` file of ``keras.applications`` read from Keras's cache,
    ``$KERAS_HOME/models/<file>`` (see :func:`brightseg.models.set_keras_home`).
    ResNet18 (not in ``keras.applications``, built in :mod:`brightseg.models.resnet`)
    reads ``resnet18_imagenet_notop.weights.h5`` there, converted once from torchvision's
    weights (:func:`brightseg.models.resnet.save_torchvision_weights`); it has no download.
    A missing file is downloaded when ``allow_download`` is true; if that is
    off or fails (offline cluster nodes) an :class:`~brightseg.errors.InputError`
    names the exact file and the directory to put it in, before any training.
a path
    ``*.weights.h5`` written by ``model.get_layer("encoder").save_weights``
    (Keras 3 format) is loaded into the encoder; any other ``*.h5`` (e.g. a
    ``keras.applications`` notop file kept elsewhere) is loaded into the
    backbone topologically, then by layer name as a fallback.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import keras

from ..errors import InputError, MissingDownload
from . import resnet
from .runtime import keras_cache_dir

log = logging.getLogger(__name__)

__all__ = ["BACKBONES", "build_encoder", "imagenet_weights_file", "keras_cache_dir"]

_GCS = "https://storage.googleapis.com/"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one keras.applications backbone as a U-Net encoder.

    ``features`` lists the skip layers (shallow to deep) followed by the
    bridge; an ``int`` is an index into ``base.layers`` (InceptionV3's stem
    activations have no stable names).
    """

    constructor: str
    preprocess: str
    features: tuple[str | int, ...]
    weights_file: str
    url_dir: str
    #: How to obtain the weights file where there is no download (``url_dir`` empty).
    source: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": BackboneSpec(
        "DenseNet121",
        "torch",
        ("conv1_relu", "pool2_relu", "pool3_relu", "pool4_relu", "relu"),
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "tensorflow/keras-applications/densenet/",
    ),
    "vgg16": BackboneSpec(
        "VGG16",
        "caffe",
        (
            "block1_conv2",
            "block2_conv2",
            "block3_conv3",
            "block4_conv3",
            "block5_conv3",
            "block5_pool",
        ),
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "tensorflow/keras-applications/vgg16/",
    ),
    "inceptionv3": BackboneSpec(
        "InceptionV3",
        "tf",
        (9, 16, "mixed2", "mixed7", "mixed10"),
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "tensorflow/keras-applications/inception_v3/",
    ),
    "mobilenetv2": BackboneSpec(
        "MobileNetV2",
        "tf",
        (
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
            "out_relu",
        ),
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
        _GCS + "tensorflow/keras-applications/mobilenet_v2/",
    ),
    "resnet50": BackboneSpec(
        "ResNet50",
        "caffe",
        (
            "conv1_relu",
            "conv2_block3_out",
            "conv3_block4_out",
            "conv4_block6_out",
            "conv5_block3_out",
        ),
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "tensorflow/keras-applications/resnet/",
    ),
    "efficientnetb0": BackboneSpec(
        "EfficientNetB0",
        "raw255",
        (
            "block2a_expand_activation",
            "block3a_expand_activation",
            "block4a_expand_activation",
            "block6a_expand_activation",
            "top_activation",
        ),
        "efficientnetb0_notop.h5",
        _GCS + "keras-applications/",
    ),
    "resnet18": BackboneSpec(
        "ResNet18",
        "torch",
        (
            "conv1_relu",
            "conv2_block2_out",
            "conv3_block2_out",
            "conv4_block2_out",
            "conv5_block2_out",
        ),
        resnet.IMAGENET_FILE,
        "",
        "convert torchvision's resnet18 ImageNet weights once with "
        "brightseg.models.resnet.save_torchvision_weights (see the README)",
    ),
}

#: Encoders built here rather than by ``keras.applications``.
_CUSTOM_CONSTRUCTORS = {"ResNet18": resnet.resnet18}


def imagenet_weights_file(backbone: str, input_shape=(256, 256, 3)) -> tuple[str, str]:
    """File name and download URL of a backbone's ImageNet notop weights.

    MobileNetV2 ships one file per input size; like ``keras.applications``
    we use the file for 96/128/160/192/224 rows and the 224 file otherwise.
    """
    spec = _spec(backbone)
    fname = spec.weights_file
    if "{rows}" in fname:
        rows = input_shape[0] if input_shape[0] in (96, 128, 160, 192, 224) else 224
        fname = fname.format(rows=rows)
    return fname, (spec.url_dir + fname) if spec.url_dir else ""


def resolve_imagenet_weights(
    backbone: str, input_shape=(256, 256, 3), *, allow_download: bool = True
) -> Path:
    """Path of the cached ImageNet weights, downloading them if allowed.

    Raises
    ------
    InputError
        The file is not cached and cannot be downloaded; the message names
        the file and the directory to place it in.
    """
    fname, url = imagenet_weights_file(backbone, input_shape)
    cache = keras_cache_dir()
    target = cache / fname
    if target.is_file() and target.stat().st_size > 0:
        return target
    why = "downloads are disabled"
    if not url:
        why = "there is no download for it"
    elif allow_download:
        old = socket.getdefaulttimeout()
        try:
            socket.setdefaulttimeout(30)
            got = keras.utils.get_file(
                fname, url, cache_subdir="models", cache_dir=str(cache.parent)
            )
            return Path(got)
        except Exception as exc:  # noqa: BLE001 - any network/IO failure
            why = f"download failed ({type(exc).__name__}: {exc})"
        finally:
            socket.setdefaulttimeout(old)
    where = f"it can be downloaded from {url}" if url else _spec(backbone).source
    raise MissingDownload(
        target,
        f"ImageNet weights for the {backbone} encoder are missing and {why}. "
        f"Place the file '{fname}' in the directory '{cache}' "
        f"({where}), set KERAS_HOME to a directory whose "
        "models/ folder holds it, or use encoder_weights='none' or a weights-file path.",
    )


def _spec(backbone: str) -> BackboneSpec:
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise InputError(
            None, f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}"
        ) from None


def _load_weight_file(encoder: keras.Model, base: keras.Model, path: Path) -> None:
    if not path.is_file():
        raise InputError(path, "encoder weights file does not exist")
    errors = []
    if path.name.endswith(".weights.h5"):
        attempts = [lambda: encoder.load_weights(path)]
    else:
        attempts = [lambda: base.load_weights(path), lambda: base.load_weights(path, by_name=True)]
    for attempt in attempts:
        try:
            attempt()
            return
        except Exception as exc:  # noqa: BLE001 - report every failed strategy
            errors.append(f"{type(exc).__name__}: {exc}")
    raise InputError(path, "cannot load encoder weights: " + " | ".join(errors))


def build_encoder(
    backbone: str,
    inputs,
    *,
    encoder_weights: str | os.PathLike = "none",
    allow_download: bool = True,
    features: tuple[str | int, ...] | None = None,
) -> tuple[keras.Model, list]:
    """Build a frozen encoder and apply it to ``inputs`` (already preprocessed).

    Parameters
    ----------
    backbone : str
        Key of :data:`BACKBONES`.
    inputs : KerasTensor
        Preprocessed image tensor ``(B, H, W, 3)``.
    encoder_weights : {"none", "imagenet"} or path
        See the module docstring.
    allow_download : bool
        Download missing ImageNet weights into Keras's cache.
    features : tuple, optional
        Override the backbone's feature layers (names or ``base.layers``
        indices, shallow to deep).

    Returns
    -------
    encoder : keras.Model
        The nested, frozen encoder (layer name ``"encoder"``).
    feats : list of KerasTensor
        Its outputs on ``inputs``, shallow to deep.
    """
    spec = _spec(backbone)
    input_shape = tuple(inputs.shape[1:])
    weights = os.fspath(encoder_weights) if encoder_weights is not None else "none"
    imagenet_path = None
    if weights == "imagenet":
        # Resolve before building anything: fail fast and clearly when offline.
        imagenet_path = resolve_imagenet_weights(
            backbone, input_shape, allow_download=allow_download
        )
    if spec.constructor in _CUSTOM_CONSTRUCTORS:
        base = _CUSTOM_CONSTRUCTORS[spec.constructor](input_shape)
    else:
        ctor = getattr(keras.applications, spec.constructor)
        base = ctor(include_top=False, weights=None, input_shape=input_shape)
    outs = []
    for f in features or spec.features:
        layer = base.layers[f] if isinstance(f, int) else base.get_layer(f)
        outs.append(layer.output)
    encoder = keras.Model(base.inputs, outs, name="encoder")
    if imagenet_path is not None:
        base.load_weights(imagenet_path)
        log.info("%s encoder: ImageNet weights from %s", backbone, imagenet_path)
    elif weights != "none":
        _load_weight_file(encoder, base, Path(weights))
        log.info("%s encoder: weights from %s", backbone, weights)
    encoder.trainable = False
    feats = encoder(inputs)
    return encoder, list(feats)
