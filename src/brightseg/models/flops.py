"""Analytic FLOP counts of Keras models from their layer shapes.

A multiply-add counts as two FLOPs.  Counted: every convolution (``Conv2D``,
``Conv2DTranspose``, ``DepthwiseConv2D``, ``SeparableConv2D``) and ``Dense`` layer, in nested
models too (the encoders), from its kernel and its static output (or, for transposed
convolutions, input) shape; biases, normalisation, activations, pooling, resizing and
element-wise operations are not (together a few percent of a convolutional network's
cost).  This is the convention of torchvision's model table ("GFLOPS" there counts
multiply-adds, i.e. half of :func:`count_flops`): ResNet18 at 224 x 224 is 1.81 G
multiply-adds in both.
"""

from __future__ import annotations

import math

import keras

__all__ = ["count_flops", "layer_macs"]


def _spatial(shape) -> int:
    dims = tuple(shape)[1:-1]
    if any(d is None for d in dims):
        raise ValueError(f"FLOPs need a static input size, got shape {tuple(shape)}")
    return math.prod(int(d) for d in dims)


def layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-adds of one call of ``layer`` (0 for layers that are not counted)."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        k = math.prod(layer.kernel_size)
        c_in = int(layer.input.shape[-1])
        out = _spatial(layer.output.shape)
        return out * (
            k * c_in * layer.depth_multiplier + c_in * layer.depth_multiplier * layer.filters
        )
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        k = math.prod(layer.kernel_size)
        return _spatial(layer.output.shape) * k * int(layer.output.shape[-1])
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # every input pixel scatters a kernel_h x kernel_w x c_in x c_out product
        k = math.prod(layer.kernel_size)
        return _spatial(layer.input.shape) * k * int(layer.input.shape[-1]) * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        k = math.prod(layer.kernel_size)
        c_in = int(layer.input.shape[-1]) // layer.groups
        return _spatial(layer.output.shape) * k * c_in * layer.filters
    if isinstance(layer, keras.layers.Dense):
        shape = tuple(layer.input.shape)
        positions = math.prod(int(d) for d in shape[1:-1]) if len(shape) > 2 else 1
        return positions * int(shape[-1]) * layer.units
    return 0


def count_flops(model: keras.Model) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass of one image through ``model``.

    The model must have a static input size (build it with e.g. ``(256, 256, 3)``).
    Layers of nested models are counted once each.
    """
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            macs += count_flops(layer) // 2
        else:
            macs += layer_macs(layer)
    return 2 * macs
