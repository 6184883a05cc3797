"""The ``brightseg`` command line: the workflow's functions, usable outside Snakemake."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from .annotations.cvat import import_cvat
from .bench.dag import bench_dag
from .bench.ensemble import bench_ensemble
from .bench.instances import bench_instances
from .bench.tophat import bench_tophat
from .errors import EXIT_BAD_INPUT, InputError
from .illumination import correct_file
from .instances import split_instances_file
from .stats import stats_from_file
from .synth import synth_eval_set, synth_livecell, synth_plate


def _handle_errors(func):
    """Turn bad input into a one-line message and exit status 2 (no traceback).

    Bad input is an :class:`InputError`, or an unusable path given on the command line
    (missing, a directory where a file is expected, no permission).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            click.echo(f"brightseg: {exc.kind}: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except (
            FileNotFoundError,
            FileExistsError,
            IsADirectoryError,
            NotADirectoryError,
            PermissionError,
        ) as exc:
            # A path given on the command line that cannot be used: bad input, not a bug.
            click.echo(f"brightseg: error: {exc.filename}: {exc.strerror}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


def _kv_line(result: dict) -> str:
    """The machine-readable last line of a benchmark: ``key=value`` pairs.

    Scalars only: tuples become ``AxB``, nested containers are left out, spaces are
    replaced so that every pair stays one token.
    """

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, tuple | list) and all(isinstance(x, int | float) for x in v):
            return "x".join(str(x) for x in v)
        return str(v).replace(" ", "_")

    return " ".join(
        f"{k}={fmt(v)}"
        for k, v in result.items()
        if not isinstance(v, dict) and not hasattr(v, "shape")
    )


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress at INFO level.")
def main(verbose: bool) -> None:
    """brightseg: segmentation of unstained live-cell microscopy plates."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# --- synthetic data ----------------------------------------------------------------------------


@main.group()
def synth() -> None:
    """Synthetic brightfield plates, LIVECell-format fixtures and evaluation sets."""


@synth.command("plate")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--plate", default="synth1", show_default=True, help="Plate id (file-name prefix).")
@click.option("--n-images", default=4, show_default=True)
@click.option("--shape", nargs=2, type=int, default=(512, 512), show_default=True, help="H W")
@click.option("--seed", default=0, show_default=True)
@click.option("--modality", type=click.Choice(["brightfield", "phase"]), default="brightfield")
@click.option("--pixel-size-um", default=0.65, show_default=True)
@click.option("--cells", nargs=2, type=int, default=(15, 30), show_default=True, help="min max")
@click.option("--mean-radius-px", default=18.0, show_default=True)
@_handle_errors
def synth_plate_cmd(
    out_dir, plate, n_images, shape, seed, modality, pixel_size_um, cells, mean_radius_px
):
    """Write a synthetic plate: images/, labels/, cvat.xml and coco.json under OUT_DIR."""

    df = synth_plate(
        out_dir,
        plate,
        n_images=n_images,
        shape=tuple(shape),
        seed=seed,
        modality=modality,
        pixel_size_um=pixel_size_um,
        cells_per_image=tuple(cells),
        mean_radius_px=mean_radius_px,
    )
    click.echo(f"{len(df)} images, {int(df['n_cells'].sum())} cells -> {out_dir}")


@synth.command("livecell")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n-per-line", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@_handle_errors
def synth_livecell_cmd(out_dir, n_per_line, seed):
    """Write a LIVECell-format fixture (real schema, one truncated image)."""

    out = synth_livecell(out_dir, n_per_line=n_per_line, seed=seed)
    click.echo(f"LIVECell fixture -> {out['root']}")


@synth.command("evalset")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n-images", default=3, show_default=True)
@click.option("--shape", nargs=2, type=int, default=(512, 512), show_default=True)
@click.option("--seed", default=0, show_default=True)
@_handle_errors
def synth_evalset_cmd(out_dir, n_images, shape, seed):
    """Write a held-out evaluation set: images/*.tif and masks/*.png."""

    df = synth_eval_set(out_dir, n_images=n_images, shape=tuple(shape), seed=seed)
    click.echo(f"{len(df)} images -> {out_dir}")


# --- stages ------------------------------------------------------------------------------------


@main.command("import-cvat")
@click.argument("export", type=click.Path())
@click.option("--images", "images_dir", required=True, type=click.Path(), help="Image directory.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--plate", default="", help="Plate id recorded in the manifest.")
@click.option("--label", "labels", multiple=True, default=("cell",), show_default=True)
@click.option("--on-bad-input", type=click.Choice(["error", "skip"]), default="error")
@_handle_errors
def import_cvat_cmd(export, images_dir, out_dir, plate, labels, on_bad_input):
    """Import a CVAT export (XML 1.1 or COCO 1.0 JSON) as label TIFFs and mask PNGs."""

    manifest, skipped = import_cvat(
        export, images_dir, out_dir, plate=plate, labels=list(labels), on_bad_input=on_bad_input
    )
    click.echo(f"{len(manifest)} images, {int(manifest['n_cells'].sum())} cells -> {out_dir}")
    for row in skipped.itertuples(index=False):
        click.echo(f"skipped {row.file}: {row.reason}", err=True)


@main.command("export-cvat")
@click.argument("labels", nargs=-1, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--images",
    "images_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder of the images of LABELS (matched by stem); copied as 8-bit PNGs to OUT/images.",
)
@click.option(
    "--review",
    default=None,
    type=click.Path(dir_okay=False),
    help="results/qc/review.tsv: export its flagged images from the run's stores instead.",
)
@click.option(
    "--results",
    default="results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The run's results folder (with --review): plates/ and instances/ stores.",
)
@click.option("--shapes", type=click.Choice(["polygon", "mask"]), default="polygon")
@click.option("--tolerance-px", default=0.35, show_default=True, help="Polygon simplification.")
@click.option("--min-iou", default=0.99, show_default=True, help="Polygons below: exact masks.")
@_handle_errors
def export_cvat_cmd(labels, out_dir, images_dir, review, results, shapes, tolerance_px, min_iou):
    """Predicted label images as a CVAT task import (CVAT 1.1 XML and COCO 1.0 JSON).

    LABELS are instance-label images (``<stem>_labels.tif`` -> image ``<stem>.png``), or
    ``--review`` names the review table of a run.  Writes OUT/cvat.xml, OUT/coco.json and
    OUT/images/ (per plate in OUT/<plate>/ with --review); `brightseg import-cvat` of
    either file gives the label images back (IoU >= --min-iou per cell; 1 with masks).
    """
    from .io import read_image
    from .rules.qc import export_review, qc_export_cvat

    qc = {"export_shapes": shapes, "tolerance_px": tolerance_px, "min_iou": min_iou}
    if review:
        plates = sorted(set(pd_read_tsv(review)["plate"]))
        res = Path(results)
        stores = {p: str(res / "plates" / f"{p}.ome.zarr") for p in plates}
        instances = {p: str(res / "instances" / f"{p}.zarr") for p in plates}
        manifest = qc_export_cvat(review, stores, instances, out_dir, qc=qc)
        click.echo(f"{len(manifest)} images of {len(plates)} plates -> {out_dir}")
        return
    if not labels:
        raise InputError(None, "give label images (LABELS) or --review review.tsv")
    items = []
    for path in labels:
        stem = Path(path).stem
        stem = stem[: -len("_labels")] if stem.endswith("_labels") else stem
        item = {"name": f"{stem}.png", "labels": read_image(path)}
        if images_dir:
            found = sorted(
                p
                for p in Path(images_dir).glob(f"{stem}.*")
                if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg")
            )
            if not found:
                raise InputError(Path(images_dir) / stem, "no image of this stem")
            item["image"] = read_image(found[0])
        items.append(item)
    df = export_review(items, out_dir, qc=qc)
    click.echo(
        f"{len(df)} images, {int(df['polygons'].sum())} polygons, "
        f"{int(df['masks'].sum())} masks -> {out_dir}"
    )


def pd_read_tsv(path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", dtype={"plate": str, "image_id": str})


@main.command("tophat")
@click.argument("in_path", type=click.Path())
@click.argument("out_path", type=click.Path())
@click.option("--radius", type=int, required=True, help="Disk radius in pixels.")
@click.option("--mode", type=click.Choice(["white", "black"]), default="white", show_default=True)
@click.option("--method", type=click.Choice(["fast", "exact"]), default="fast", show_default=True)
@_handle_errors
def tophat_cmd(in_path, out_path, radius, mode, method):
    """Top-hat illumination correction of one image (written as uint16 TIFF)."""

    correct_file(in_path, out_path, radius, mode, method)


@main.command("split-instances")
@click.option("--mask", "mask_path", required=True, type=click.Path())
@click.option("--out", "out_path", required=True, type=click.Path())
@click.option("--pixel-size-um", default=1.0, show_default=True)
@click.option("--prob", "prob_path", default=None, type=click.Path())
@click.option("--h-um", default=None, type=float, help="h-maxima height in micrometres.")
@click.option("--min-area-um2", default=None, type=float)
@click.option("--remove-border", is_flag=True)
@_handle_errors
def split_instances_cmd(
    mask_path, out_path, pixel_size_um, prob_path, h_um, min_area_um2, remove_border
):
    """Split a binary mask into cells (distance transform + h-maxima + watershed)."""

    kwargs = {"h_um": h_um, "remove_border": remove_border}
    if min_area_um2 is not None:
        kwargs["min_area_um2"] = min_area_um2
    split_instances_file(
        mask_path, out_path, pixel_size_um=pixel_size_um, prob_path=prob_path, **kwargs
    )


@main.command("stats")
@click.option("--input", "input_path", required=True, type=click.Path())
@click.option("--column", required=True)
@click.option("--baseline", required=True, type=float)
@click.option("--out", "out_json", required=True, type=click.Path())
@click.option("--md", "out_md", default=None, type=click.Path())
@click.option("--tex", "out_tex", default=None, type=click.Path())
@click.option("--threshold", default=None, type=float, help="Beta posterior threshold.")
@click.option("--nan-policy", type=click.Choice(["error", "drop"]), default="error")
@_handle_errors
def stats_cmd(input_path, column, baseline, out_json, out_md, out_tex, threshold, nan_policy):
    """One-sample t-test against a baseline, Cohen's d and a Beta credible interval."""

    kwargs = {"out_md": out_md, "out_tex": out_tex, "nan_policy": nan_policy}
    if threshold is not None:
        kwargs["threshold"] = threshold
    rep = stats_from_file(input_path, column, baseline, out_json=out_json, **kwargs)
    click.echo(
        f"n={rep['n']} mean={rep['mean']:.4f} t={rep['t']:.3f} "
        f"log10_p={rep['log10_p']:.2f} d={rep['cohens_d']:.3f} -> {out_json}"
    )


@main.command("segment")
@click.argument("images", nargs=-1, required=True)
@click.option("--model", required=True, type=click.Path(), help="Model bundle (directory or .tar).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--pixel-size-um", type=float, default=None, help="Of the images (default: the bundle's)."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(),
    default=None,
    help=("A YAML with instances: / inference: blocks (watershed, batch size, TTA)."),
)
@_handle_errors
def segment_cmd(images, model, out_dir, pixel_size_um, config_path):
    """Segment IMAGES (files, folders, globs) with a model bundle, without a plate sheet.

    Writes <stem>_labels.tif, <stem>_mask.png, <stem>_overlay.png, cells.parquet,
    cells.csv and images.tsv into OUT, with the workflow's own code.
    """
    import yaml

    from .segment import segment_images

    blocks = {}
    if config_path:
        with open(config_path) as fh:
            blocks = yaml.safe_load(fh) or {}
        if not isinstance(blocks, dict):
            raise InputError(config_path, "expected a mapping with instances:/inference: blocks")
        unknown = set(blocks) - {"instances", "inference"}
        if unknown:
            raise InputError(
                config_path, f"only instances and inference apply, not {sorted(unknown)}"
            )
    cells = segment_images(
        images,
        model,
        out_dir,
        pixel_size_um=pixel_size_um,
        instances=blocks.get("instances"),
        inference=blocks.get("inference"),
    )
    n_images = cells["image_id"].nunique() if len(cells) else 0
    click.echo(f"{len(cells)} cells in {n_images} images -> {out_dir}")


@main.command("explain")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--model",
    required=True,
    type=click.Path(),
    help="A model bundle (raw images), an ensemble.tsv or a .keras checkpoint (corrected images).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--layer", default=None, help="Feature layer (default: the deepest).")
@click.option("--threshold", default=0.5, show_default=True, help="Of each model's mask.")
@click.option("--pixel-size-um", type=float, default=None, help="For the scale bar.")
@click.option("--list-layers", is_flag=True, help="Print each model's feature layers and exit.")
@_handle_errors
def explain_cmd(images, model, out_dir, layer, threshold, pixel_size_um, list_layers):
    """Grad-CAM maps of IMAGES for each voting model of MODEL.

    Writes <stem>_gradcam_<model>.png (image, map overlay with the mask outline, colour
    bar, scale bar), <stem>_gradcam_<model>.npy (the map, float32 in [0, 1]) and
    explain.tsv into OUT: use the folder `brightseg segment` wrote the masks into.
    """
    from .explain import default_layer, explain_files, feature_layers, load_voting_models

    if list_layers:
        for name, m in zip(*load_voting_models(model), strict=True):
            click.echo(f"{name} (default {default_layer(m)}):")
            for f in feature_layers(m):
                click.echo(f"  {f.name}  {tuple(f.shape[1:])}")
        return
    table = explain_files(
        images, model, out_dir, layer=layer, threshold=threshold, pixel_size_um=pixel_size_um
    )
    click.echo(f"{len(table)} Grad-CAM maps ({table['layer'].iloc[0]}) -> {out_dir}")


@main.command("export-tflite")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--patches", default="results/training/patches.zarr", show_default=True, type=click.Path()
)
@click.option(
    "--manifest", default="results/training/manifest.parquet", show_default=True, type=click.Path()
)
@click.option("--size", type=int, default=None, help="Input size S (default: the model's, or 256).")
@click.option(
    "--form",
    "forms",
    multiple=True,
    type=click.Choice(["float32", "float16", "int8"]),
    default=("float32", "float16", "int8"),
    show_default=True,
)
@click.option("--threshold", default=0.5, show_default=True, help="Mask threshold of the check.")
@click.option("--threads", default=1, show_default=True, help="CPU threads (TFLite and Keras).")
@click.option("--repeats", default=20, show_default=True, help="Timed runs (median reported).")
@click.option("--n-val", type=int, default=None, help="Validation patches checked (default all).")
@click.option(
    "--all-variants",
    is_flag=True,
    help="Check on every validation patch, augmented variants included (default: originals).",
)
@click.option("--n-representative", default=64, show_default=True, help="int8 calibration.")
@click.option("--min-dice", default=0.99, show_default=True)
@click.option("--seed", default=0, show_default=True)
@_handle_errors
def export_tflite_cmd(
    checkpoints,
    out_dir,
    patches,
    manifest,
    size,
    forms,
    threshold,
    threads,
    repeats,
    n_val,
    all_variants,
    n_representative,
    min_dice,
    seed,
):
    """TFLite forms of CHECKPOINTS (.keras files, or an ensemble.tsv / bundle: every voting
    checkpoint), each checked against its Keras model on the validation patches.

    Writes <model>_<form>.tflite, <model>_tflite.{tsv,md} per checkpoint and tflite.{tsv,md}
    (all rows: size, median CPU latency of one SxS patch, Dice vs Keras) into OUT; exits 1
    when a form's Dice against the Keras mask is under --min-dice (the table is written).
    """
    import pandas as pd
    import tensorflow as tf

    # before any op runs: the Keras row is timed with the same thread count (in a process
    # where TensorFlow already ran, the table's threads column says what it used: 0 = all)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:
        logging.getLogger(__name__).warning("Keras threads unchanged: %s", exc)
    from .deploy import ExportCheckFailed, check_passed, export_tflite, training_patches
    from .explain import _model_label, load_voting_models
    from .figures import table_to_markdown
    from .io import write_text

    val, rep = training_patches(
        patches,
        manifest,
        n_val=n_val,
        n_representative=n_representative,
        seed=seed,
        originals_only=not all_variants,
    )
    tables = []
    for source in checkpoints:
        names, models, files = load_voting_models(source, with_files=True)
        for name, model, file in zip(names, models, files, strict=True):
            tables.append(
                export_tflite(
                    model,
                    out_dir,
                    stem=_model_label(name),
                    val_patches=val,
                    representative=rep,
                    size=size,
                    forms=forms,
                    threshold=threshold,
                    threads=threads,
                    repeats=repeats,
                    min_dice=min_dice,
                    keras_file=file,
                )
            )
    table = pd.concat(tables, ignore_index=True)
    write_text(
        table.to_csv(sep="\t", index=False, float_format="%.4f"), Path(out_dir) / "tflite.tsv"
    )
    md = table_to_markdown(table, floatfmt=".4f")
    write_text(md + "\n", Path(out_dir) / "tflite.md")
    click.echo(md)
    try:
        check_passed(table, min_dice)
    except ExportCheckFailed as exc:
        click.echo(f"brightseg: error: {exc}", err=True)
        sys.exit(1)


@main.command("models")
def models_cmd():
    """Parameters (total, trainable with the encoder frozen) and GFLOPs per 256x256 image
    of every architecture, next to the paper's parameter counts."""
    from .models import param_table

    click.echo(param_table().to_string(index=False))


# --- benchmarks ----------------------------------------------------------------------------


@main.group()
def bench() -> None:
    """Benchmarks: each prints figures and ends with one line of key=value pairs."""


@bench.command("tophat")
@click.option("--shape", nargs=2, type=int, default=(1536, 2048), show_default=True)
@click.option("--radius", default=100, show_default=True)
@click.option("--repeats", default=3, show_default=True)
def bench_tophat_cmd(shape, radius, repeats):
    """Exact vs fast top-hat on the same image: time ratio and error."""

    r = bench_tophat(shape=tuple(shape), radius=radius, repeats=repeats)
    click.echo(f"image {shape[0]}x{shape[1]}, disk radius {radius} px")
    click.echo(
        f"exact: {r['exact_s']:.3f} s   fast: {r['fast_s']:.4f} s   ratio: {r['ratio']:.1f}x"
    )
    click.echo(
        f"max |fast - exact| = {100 * r['max_error_fraction']:.3f} % of range, "
        f"mean {100 * r['mean_error_fraction']:.4f} %"
    )
    click.echo(_kv_line(r))


@bench.command("instances")
@click.option("--shape", nargs=2, type=int, default=(1536, 2048), show_default=True)
@click.option("--n", default=300, show_default=True, help="Number of touching disks.")
@click.option("--repeats", default=3, show_default=True)
def bench_instances_cmd(shape, n, repeats):
    """Fast watershed chain vs scikit-image's plain chain on the same masks."""

    r = bench_instances(shape=tuple(shape), n=n, repeats=repeats)
    for k, v in r.items():
        click.echo(f"{k:>20}: {v}")
    click.echo(_kv_line(r))


@bench.command("touching")
@click.option("--out", "out", default=None, help="Working folder (default: a temporary one).")
@click.option("--n-train", default=8, show_default=True)
@click.option("--n-test", default=4, show_default=True)
@click.option("--epochs", default=8, show_default=True)
@click.option("--steps", default=20, show_default=True, help="Steps of 8 patches per epoch.")
@click.option("--seed", default=0, show_default=True)
def bench_touching_cmd(out, n_train, n_test, epochs, steps, seed):
    """Binary vs border-weighted vs border3 vs nucleus3 models on touching cells: F1@0.5."""
    from .bench.touching import bench_touching

    r = bench_touching(
        out, n_train=n_train, n_test=n_test, epochs=epochs, steps_per_epoch=steps, seed=seed
    )
    for k, v in r.items():
        click.echo(f"{k:>24}: {v}")
    click.echo(_kv_line(r))


@bench.command("ensemble")
@click.option("--n-images", default=4, show_default=True)
@click.option("--shape", nargs=2, type=int, default=(1024, 1024), show_default=True)
@click.option("--n-models", default=2, show_default=True)
@click.option("--tile", default=256, show_default=True)
@click.option("--overlap", default=32, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option(
    "--ensemble",
    default=None,
    type=click.Path(exists=True),
    help="Trained checkpoints (ensemble.tsv or a model bundle) instead of random models.",
)
@click.option(
    "--student",
    default="default",
    show_default=True,
    help="Distilled student: student.keras, a bundle with one, 'default' (the default "
    "student architecture, random weights) or 'none'.",
)
@_handle_errors
def bench_ensemble_cmd(n_images, shape, n_models, tile, overlap, batch_size, ensemble, student):
    """Raw forward vs zarr-to-zarr predict vs the paper's per-image predict-and-stitch.

    With a student (default): the student's patches/s beside the ensemble's.
    """

    r = bench_ensemble(
        n_images=n_images,
        shape=tuple(shape),
        n_models=n_models,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        ensemble=ensemble,
        student=None if student == "none" else student,
    )
    for k, v in r.items():
        click.echo(f"{k:>20}: {v}")
    if "speedup" in r:
        click.echo(
            f"student: {r['student_patches_per_s']:.1f} patches/s, ensemble "
            f"({r['n_models']} models): {r['ensemble_patches_per_s']:.1f} patches/s, "
            f"speed-up {r['speedup']:.1f}x at {100 * r['flops_ratio']:.2f} % of the FLOPs"
        )
    click.echo(_kv_line(r))


@bench.command("train")
@click.option("--size", default=256, show_default=True)
@click.option("--batch", default=16, show_default=True)
@click.option("--steps", default=3, show_default=True)
@click.option(
    "--architecture", "architectures", multiple=True, default=("small_unet", "vgg16_attention_unet")
)
def bench_train_cmd(size, batch, steps, architectures):
    """Per-model training step time (fp32, bf16) and input-pipeline throughput."""
    from .bench.train import bench_train

    df = bench_train(architectures=tuple(architectures), batch=batch, size=size, steps=steps)
    click.echo(df.to_string(index=False))
    result = {"batch": batch, "size": size}
    for row in df.itertuples(index=False):
        tag = (
            "bf16"
            if "bfloat16" in row.precision
            else ("fp16" if "float16" in row.precision else "fp32")
        )
        result[f"{row.architecture}_{tag}_step_s"] = float(row.step_s)
    result["pipeline_batches_per_s"] = float(df["pipeline_batches_per_s"].iloc[0])
    result["pipeline_over_model"] = float(df["pipeline_over_model"].min())
    click.echo(_kv_line(result))


@bench.command("dag")
@click.option("--plates", "n_plates", default=1000, show_default=True)
@click.option("--workdir", default=None, type=click.Path(file_okay=False))
def bench_dag_cmd(n_plates, workdir):
    """Time ``snakemake -n`` on a sheet of N small synthetic plates."""

    r = bench_dag(n_plates, workdir=Path(workdir) if workdir else None)
    click.echo(_kv_line(r))


@main.command("cv")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--masks", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--folds", default=3, show_default=True, type=int)
@click.option("--config", "config", default="config/cpu.yaml", show_default=True)
@click.option("--minutes", default=None, type=float, help="Training budget per fold.")
@click.option("--out", "out", default="results/cv", show_default=True)
@click.option("--pixel-size-um", default=1.0, show_default=True, type=float)
@click.option("--fold", "only", default=None, type=int, help="Run only this fold (0-based).")
@click.option(
    "--working-pixel-size-um",
    default=None,
    type=float,
    help="Train and predict on images resampled to this pixel size (default: the images' own).",
)
@click.option(
    "--tune-instances/--no-tune-instances",
    default=True,
    show_default=True,
    help="Also choose instances.h_um / min_area_um2 on each fold's validation images.",
)
@click.option(
    "--vote/--no-vote",
    default=True,
    show_default=True,
    help="Also score the vote of the top ensemble.top_k epoch checkpoints (*_vote columns).",
)
@click.option(
    "--curve-every",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Learning curve: score every Nth epoch checkpoint too (curve.tsv); 0: none.",
)
@click.option(
    "--reuse-models",
    is_flag=True,
    help="Score the folds already trained in --out again instead of training them.",
)
@click.option(
    "--test-artefacts",
    is_flag=True,
    help="Burn a dark frame, a scale bar and JPEG blocks into the test images (robustness).",
)
@_handle_errors
def cv_cmd(
    images,
    masks,
    folds,
    config,
    minutes,
    out,
    pixel_size_um,
    only,
    working_pixel_size_um,
    tune_instances,
    vote,
    curve_every,
    reuse_models,
    test_artefacts,
):
    """k-fold cross-validation (grouped by image) of a training recipe on images + masks.

    Ends with ``dice= precision= recall= f1_50= [f1_50_tuned=] [dice_vote= f1_50_vote=
    f1_50_tuned_vote=] folds= minutes=`` (means over folds; f1_50_tuned with the watershed
    settings chosen on each fold's validation images; *_vote: the top-k checkpoint vote).
    """
    from .crossval import run_cv, summary_line

    # progress per epoch and fold (the group option set WARNING unless --verbose)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    s = run_cv(
        images,
        masks,
        out,
        config=config,
        folds=folds,
        minutes=minutes,
        pixel_size_um=pixel_size_um,
        only=only,
        tune_instances=tune_instances,
        working_pixel_size_um=working_pixel_size_um,
        vote=vote,
        curve_every=curve_every,
        reuse_models=reuse_models,
        test_artefacts=test_artefacts,
    )
    click.echo(summary_line(s))


@main.command("cluster-check")
@click.option(
    "--profile",
    "profile",
    default="slurm",
    show_default=True,
    help="Profile name or path, found as `snakemake --profile` finds it.",
)
def cluster_check_cmd(profile):
    """Before any Slurm job: will Snakemake see its jobs finish with this profile?

    Reports whether `scontrol show config` works, MinJobAge, whether `sacct` works
    (accounting), the status command the Slurm plugin will therefore use, the partitions;
    exits 1 with a recommendation when the run would stall.
    """
    from .cluster import check

    report = check(profile)
    click.echo(report.text())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
