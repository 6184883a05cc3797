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


@main.command("models")
def models_cmd():
    """Parameter counts of every architecture next to the paper's numbers."""
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
def bench_ensemble_cmd(n_images, shape, n_models, tile, overlap, batch_size):
    """Raw forward vs zarr-to-zarr predict vs the paper's per-image predict-and-stitch."""

    r = bench_ensemble(
        n_images=n_images,
        shape=tuple(shape),
        n_models=n_models,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
    )
    for k, v in r.items():
        click.echo(f"{k:>20}: {v}")
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
@_handle_errors
def cv_cmd(images, masks, folds, config, minutes, out, pixel_size_um, only):
    """k-fold cross-validation (grouped by image) of a training recipe on images + masks.

    Ends with ``dice= precision= recall= f1_50= folds= minutes=`` (means over folds).
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
