"""Grad-CAM maps of the segmentation models: which image regions drive the predicted mask.

Grad-CAM (Selvaraju et al. 2017) adapted to segmentation (Vinogradova et al. 2020): the
target is the sum of the model's foreground probability over a region (by default the
pixels it predicts as foreground); its gradients with respect to a chosen layer's
feature maps ``A_k``, averaged over space, weight the maps,

``CAM = ReLU(sum_k w_k A_k)``,  ``w_k = mean_{y,x} d target / d A_k(y, x)``,

and the map is bilinearly upsampled to the image size and scaled to [0, 1].

A *feature layer* is any layer of the outer model with a 4-D output (``(B, h, w, C)``),
named as the layer; the outputs of a nested encoder (the frozen ImageNet backbones) are
named ``encoder/<backbone layer>`` (e.g. ``encoder/out_relu``).  The default is the
deepest one: among the feature layers of the coarsest resolution, the last in graph
order (the bottleneck: ``bridge_c2_relu`` of ``small_unet``, the encoder's bridge of the
backbone models).

Whole images are explained in one pass: the fully convolutional model is rebuilt for the
image size, padded (reflect) to a multiple of 32 (:func:`brightseg.deploy.with_input_size`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "FeatureLayer",
    "default_layer",
    "checkpoint_name",
    "explain_files",
    "explain_images",
    "feature_layers",
    "gradcam",
    "gradcam_figure",
    "load_voting_models",
    "to_model_input",
]

#: Multiple the padded image size is rounded up to (the models' deepest stride).
PAD_MULTIPLE = 32


@dataclass(frozen=True)
class FeatureLayer:
    """One candidate layer for Grad-CAM: its name, outer-graph tensor and static shape."""

    name: str
    tensor: object
    shape: tuple


def feature_layers(model) -> list[FeatureLayer]:
    """Every layer output of ``model`` with a 4-D shape, in graph order.

    Outputs of a nested model (the encoder) are listed one by one as
    ``<nested name>/<its output layer>``.  The model's input and its final output are
    not candidates.
    """
    found: list[FeatureLayer] = []
    final = {id(t) for t in model.outputs}
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        # the layer's call in *this* graph (a nested model's .output is its inner graph's)
        node = layer._inbound_nodes[-1]  # noqa: SLF001 - Keras 3 keeps no public accessor
        tensors = list(node.output_tensors)
        if len(tensors) == 1:
            names = [layer.name]
        else:
            inner = getattr(layer, "outputs", None) or []
            names = [
                f"{layer.name}/{t._keras_history.operation.name}"  # noqa: SLF001
                if len(inner) == len(tensors)
                else f"{layer.name}/{i}"
                for i, t in enumerate(inner or tensors)
            ]
        for name, t in zip(names, tensors, strict=True):
            if len(t.shape) == 4 and id(t) not in final:
                found.append(FeatureLayer(name, t, tuple(t.shape)))
    return found


def default_layer(model) -> str:
    """The deepest feature layer: last in graph order among those of the coarsest size.

    Spatial sizes are compared by ``h * w`` of the static shapes (the model must have a
    static input size, as :func:`gradcam` builds it).
    """
    layers = [f for f in feature_layers(model) if None not in f.shape[1:3]]
    if not layers:
        raise InputError(None, f"model {model.name!r} has no feature layer with a static size")
    smallest = min(f.shape[1] * f.shape[2] for f in layers)
    return [f for f in layers if f.shape[1] * f.shape[2] == smallest][-1].name


def _find_layer(model, name: str) -> FeatureLayer:
    layers = feature_layers(model)
    for f in layers:
        if f.name == name:
            return f
    raise InputError(
        "--layer",
        f"model {model.name!r} has no feature layer {name!r}; valid layers (4-D outputs): "
        + ", ".join(f.name for f in layers),
    )


def _padded(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")
    return image, (h, w)


def gradcam(
    model,
    image: np.ndarray,
    *,
    layer: str | None = None,
    region: np.ndarray | None = None,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Grad-CAM map of one grey image for one segmentation model.

    Parameters
    ----------
    model : keras.Model
        A brightseg model (input ``(B, H, W, 3)`` in [0, 1], sigmoid output
        ``(B, H, W, 1)``), any static or ``None`` input size: it is rebuilt for the
        image's padded size with the same weights.
    image : ndarray
        ``(H, W)`` float image in [0, 1] (as the models see it).
    layer : str, optional
        Feature layer (:func:`feature_layers`); default :func:`default_layer`.
    region : ndarray of bool, optional
        ``(H, W)`` pixels whose summed probability is the target; default the
        predicted foreground (probability > ``threshold``), or the whole image when
        the model predicts no foreground.
    threshold : float
        Foreground threshold of the default region.

    Returns
    -------
    cam : ndarray
        ``(H, W)`` float32 in [0, 1] (all zero when no positive evidence exists).
    prob : ndarray
        ``(H, W)`` float32, the model's probability.
    layer : str
        The layer used.
    """
    import keras
    import tensorflow as tf

    from .deploy import with_input_size

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(None, f"expected a 2-D grey image, got shape {image.shape}")
    padded, (h, w) = _padded(image, PAD_MULTIPLE)
    sized = with_input_size(model, padded.shape)
    name = layer or default_layer(sized)
    feat = _find_layer(sized, name)
    sub = keras.Model(sized.inputs, [feat.tensor, sized.outputs[0]])
    x = tf.convert_to_tensor(np.repeat(padded[None, ..., None], 3, axis=-1))
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != image.shape:
            raise InputError(None, f"region shape {region.shape} differs from {image.shape}")
    with tf.GradientTape() as tape:
        acts, out = sub(x, training=False)
        acts = tf.cast(acts, tf.float32)
        prob = tf.cast(out, tf.float32)[0, :h, :w, 0]
        if region is None:
            weights = tf.cast(tf.stop_gradient(prob) > threshold, tf.float32)
            if float(tf.reduce_sum(weights)) == 0.0:
                weights = tf.ones_like(prob)
        else:
            weights = tf.constant(region, tf.float32)
        target = tf.reduce_sum(prob * weights)
    grads = tape.gradient(target, acts)
    if grads is None:
        raise InputError("--layer", f"the output does not depend on layer {name!r}")
    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(alpha * acts, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, padded.shape, method="bilinear")[0, :h, :w, 0].numpy()
    top = float(cam.max())
    cam = cam / top if top > 0 else np.zeros_like(cam)
    return cam.astype(np.float32), prob.numpy().astype(np.float32), name


def gradcam_figure(
    image: np.ndarray,
    cam: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    title: str = "",
    pixel_size_um: float | None = None,
    alpha: float = 0.5,
):
    """The image and its Grad-CAM overlay side by side, with a colour bar and scale bars.

    The map is drawn with the ``inferno`` colour map over the grey image (opacity
    ``alpha``), the predicted mask's outline (if given) in cyan.
    """
    import matplotlib
    from matplotlib.lines import Line2D

    from .figures import STYLE, _figure, add_scale_bar

    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    with matplotlib.rc_context(STYLE):
        fig = _figure(7.4, 3.2 * h / w + 0.6)
        ax_i, ax_c = fig.subplots(1, 2)
        ax_i.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        ax_i.set_title("image")
        ax_c.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        shown = ax_c.imshow(cam, cmap="inferno", vmin=0.0, vmax=1.0, alpha=alpha)
        if mask is not None and np.any(mask):
            ax_c.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="cyan", linewidths=0.6)
            handle = Line2D([], [], color="cyan", linewidth=0.8, label="predicted mask")
            ax_c.legend(handles=[handle], loc="lower left", frameon=True, fontsize=6)
        ax_c.set_title(title or "Grad-CAM")
        bar = fig.colorbar(shown, ax=ax_c, fraction=0.046, pad=0.02)
        bar.set_label("Grad-CAM (normalised, a.u.)")
        for ax in (ax_i, ax_c):
            add_scale_bar(ax, pixel_size_um, w, h)
            ax.set_axis_off()
    return fig


def _model_label(name: str) -> str:
    """A file-name-safe label of an ensemble member name (``small_unet/bce/e03``)."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")


def explain_images(
    images: Sequence[np.ndarray],
    stems: Sequence[str],
    models: Sequence,
    names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    layer: str | None = None,
    threshold: float = 0.5,
    pixel_size_um: float | None = None,
    working_pixel_size_um: float | None = None,
) -> list[dict]:
    """Grad-CAM of every image for every model, written as figures and raw maps.

    With ``working_pixel_size_um`` (models trained at a working pixel size,
    :mod:`brightseg.scale`) each image is resampled to it from ``pixel_size_um`` for the
    models, and the map and mask come back to the image's own grid.

    Writes ``<stem>_gradcam_<model>.png`` (:func:`gradcam_figure`) and
    ``<stem>_gradcam_<model>.npy`` (the float32 map in [0, 1]) into ``out_dir``.

    Returns
    -------
    list of dict
        One row per (image, model): ``image``, ``model``, ``layer``, ``png``, ``npy``,
        ``foreground_fraction`` (of the model's mask) and ``cam_in_mask`` (share of the
        map's mass inside the predicted mask).
    """
    from .deploy import with_input_size
    from .figures import save_png
    from .io import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sized: dict[tuple, object] = {}  # each model rebuilt once per padded image size
    from .scale import resample_image, scale_factor, working_shape

    factor = 1.0
    if working_pixel_size_um is not None:
        if pixel_size_um is None:
            raise InputError(
                "explain", "the models work at a pixel size: the images' pixel size is needed"
            )
        factor = scale_factor(float(pixel_size_um), working_pixel_size_um)
    for image, stem in zip(images, stems, strict=True):
        image = np.asarray(image)
        seen = image
        if factor != 1.0:
            seen = resample_image(image.astype(np.float32), working_shape(image.shape, factor))
        shape = _padded(seen, PAD_MULTIPLE)[0].shape
        for i, (model, name) in enumerate(zip(models, names, strict=True)):
            if (i, shape) not in sized:
                sized[(i, shape)] = with_input_size(model, shape)
            cam, prob, used = gradcam(sized[(i, shape)], seen, layer=layer, threshold=threshold)
            if factor != 1.0:
                cam = resample_image(cam, image.shape[:2])
                prob = resample_image(prob, image.shape[:2])
            mask = prob > threshold
            label = _model_label(name)
            png = out / f"{stem}_gradcam_{label}.png"
            npy = out / f"{stem}_gradcam_{label}.npy"
            fig = gradcam_figure(
                image,
                cam,
                mask,
                title=f"{stem}\n{name}, layer {used}",
                pixel_size_um=pixel_size_um,
            )
            save_png(fig, png)
            with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
                np.save(fh, cam)
            total = float(cam.sum())
            rows.append(
                {
                    "image": stem,
                    "model": name,
                    "layer": used,
                    "png": png.name,
                    "npy": npy.name,
                    "foreground_fraction": float(mask.mean()),
                    "cam_in_mask": float(cam[mask].sum() / total) if total > 0 else float("nan"),
                }
            )
            log.info("Grad-CAM %s / %s (%s) -> %s", stem, name, used, png)
    return rows


def checkpoint_name(path: str | os.PathLike) -> str:
    """``model/loss/eNN`` of a workflow checkpoint (``<model>/<loss>/checkpoints/epoch_NN.keras``),
    else the file stem."""
    path = Path(path)
    parts = path.parts
    if len(parts) >= 4 and parts[-2] == "checkpoints" and path.stem.startswith("epoch_"):
        epoch = path.stem.removeprefix("epoch_")
        if epoch.isdigit():
            return f"{parts[-4]}/{parts[-3]}/e{int(epoch):02d}"
    return path.stem


def to_model_input(image: np.ndarray, path: str | os.PathLike = "") -> np.ndarray:
    """An already corrected image as the models see it: float32 in [0, 1].

    Integer images are divided by their type's maximum (a ``brightseg tophat`` uint16
    TIFF, a uint8 PNG); float images must already lie in [0, 1].
    """
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return (image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)).astype(np.float32)
    image = image.astype(np.float32)
    if image.size and (image.min() < 0 or image.max() > 1):
        raise InputError(
            path,
            f"float image values in [{image.min():g}, {image.max():g}], expected [0, 1] "
            "(a corrected image; or give a model bundle, which corrects raw images)",
        )
    return image


def explain_files(
    images: Sequence[str | os.PathLike],
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    layer: str | None = None,
    threshold: float = 0.5,
    pixel_size_um: float | None = None,
) -> pd.DataFrame:
    """``brightseg explain``: Grad-CAM of image files for every voting model.

    With a model bundle the images are raw and corrected as the bundle's training data
    were (the path :func:`brightseg.segment.segment_images` takes); with an
    ``ensemble.tsv`` or a ``.keras`` checkpoint they are already corrected
    (:func:`to_model_input`).  Writes the files of :func:`explain_images` and
    ``explain.tsv`` into ``out_dir`` (the folder ``brightseg segment`` wrote the masks
    into, so the maps lie next to the predictions).
    """
    from .bundle import is_bundle, read_manifest
    from .config import IlluminationConfig
    from .illumination import correct_illumination, radius_to_px
    from .io import read_image, write_text
    from .platestore import quantise
    from .segment import expand_images

    files = expand_images(images)
    prepare = None
    px = pixel_size_um
    if is_bundle(model):
        pre = read_manifest(model)["preprocessing"]
        px = px if px is not None else pre.get("pixel_size_um")
        if px is None:
            raise InputError(model, "the bundle records no pixel size: give --pixel-size-um")
        ill = IlluminationConfig.from_dict(pre["illumination"])
        radius_px = radius_to_px(ill.radius, ill.unit, float(px))

        def prepare(raw):
            return quantise(
                correct_illumination(
                    raw.astype(np.float32),
                    radius_px,
                    mode=ill.mode,
                    method=ill.method,
                    percentiles=tuple(ill.percentiles),
                )
            )

    names, models, working = load_voting_models(model, with_working=True)
    arrays = []
    for path in files:
        raw = read_image(path)
        arrays.append(prepare(raw) if prepare else to_model_input(raw, path))
    rows = explain_images(
        arrays,
        [p.stem for p in files],
        models,
        names,
        out_dir,
        layer=layer,
        threshold=threshold,
        pixel_size_um=px,
        working_pixel_size_um=working,
    )
    table = pd.DataFrame(rows)
    write_text(table.to_csv(sep="\t", index=False), Path(out_dir) / "explain.tsv")
    return table


def load_voting_models(
    source: str | os.PathLike, *, with_files: bool = False, with_working: bool = False
) -> tuple:
    """The voting checkpoints of an ``ensemble.tsv``, a model bundle or one ``.keras`` file.

    Returns
    -------
    names : list of str
        ``model/loss/eNN`` per checkpoint (:func:`checkpoint_name` for one ``.keras``).
    models : list of keras.Model
        Loaded with :func:`brightseg.models.load_checkpoint`, in voting order.
    files : list of (str, int)
        Only with ``with_files``: each checkpoint's file name and size in bytes (read
        while a bundle archive's members still exist).
    working_pixel_size_um : float or None
        Only with ``with_working`` (last): the pixel size the checkpoints were trained at
        (``ensemble.tsv``'s column; None for one ``.keras`` file or a table without it).
    """
    from . import models as zoo
    from .bundle import is_bundle, open_bundle
    from .ensemble import _table_working_pixel_size, read_ensemble

    source = Path(source)

    def load(paths, names, working=None) -> tuple:
        models = [zoo.load_checkpoint(p) for p in paths]
        files = [(Path(p).name, Path(p).stat().st_size) for p in paths]
        out = (names, models, files) if with_files else (names, models)
        return (*out, working) if with_working else out

    if source.suffix == ".keras":
        return load([source], [checkpoint_name(source)])

    def from_table(tsv) -> tuple:
        table = read_ensemble(tsv)
        names = [
            f"{r.model}/{r.loss}/e{int(r.epoch):02d}"
            if {"model", "loss", "epoch"} <= set(table)
            else Path(r.path).stem
            for r in table.itertuples(index=False)
        ]
        return load(list(table["path"]), names, _table_working_pixel_size(table, str(source)))

    if is_bundle(source):
        with open_bundle(source) as bundle:
            return from_table(bundle.ensemble_tsv)
    return from_table(source)
