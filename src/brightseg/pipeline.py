"""Workflow-facing entry points: one function per Snakemake rule.

Each function takes plain paths and parameters (what a rule's ``script:`` unpacks from
``snakemake.input/output/params``) and calls the stage modules.  Keeping this layer
separate lets the command line and the tests run exactly what the workflow runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from .errors import InputError
from .io import write_text

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["stage", "plate", "file", "reason"]


@contextlib.contextmanager
def log_to(path: str | os.PathLike | None, level: int = logging.INFO):
    """Send ``logging`` output to ``path`` (and stderr) for the duration of a rule.

    An :class:`InputError` is logged as one clean line and turned into exit status 1,
    so Snakemake reports the rule as failed with the message in its log, without a
    traceback from deep inside the code.
    """
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    old_level = root.level
    root.setLevel(level)
    try:
        yield
    except InputError as exc:
        log.error("bad input: %s", exc)
        raise SystemExit(f"brightseg: bad input: {exc}") from None
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


def write_skipped(
    rows: list[tuple[str, str]], path: str | os.PathLike, *, stage: str, plate: str
) -> None:
    """Write the items a rule skipped (``on_bad_input: skip``) as a TSV (possibly empty)."""
    df = pd.DataFrame([(stage, plate, f, r) for f, r in rows], columns=SKIPPED_COLUMNS)
    write_text(df.to_csv(sep="\t", index=False), path)


def merge_skipped(paths: list[str], out: str | os.PathLike) -> pd.DataFrame:
    """Concatenate per-rule skip lists into ``results/qc/skipped.tsv``."""
    frames = [pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False) for p in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SKIPPED_COLUMNS)
    df = df.reindex(columns=SKIPPED_COLUMNS).sort_values(SKIPPED_COLUMNS, kind="stable")
    write_text(df.to_csv(sep="\t", index=False), out)
    return df


# --- demo data -----------------------------------------------------------------------------


def synth_demo_plate(
    out_dir: str, plate: str, spec: dict, *, seed: int, pixel_size_um: float
) -> None:
    """Rule ``synth_plate``: one synthetic plate (images, ground truth, CVAT + COCO exports)."""
    from .synth import synth_plate

    # Each plate's seed derives from the config seed and the plate id, so adding a plate
    # leaves the others' bytes unchanged.
    plate_seed = _derive_seed(seed, plate)
    synth_plate(
        out_dir,
        plate,
        n_images=int(spec["n_images"]),
        shape=tuple(spec["shape"]),
        seed=plate_seed,
        modality=spec.get("modality", "brightfield"),
        pixel_size_um=pixel_size_um,
        cells_per_image=tuple(spec.get("cells_per_image", (15, 30))),
        n_fields=int(spec.get("n_fields", 1)),
        n_timepoints=int(spec.get("n_timepoints", 1)),
        annotate=True,
        **({"mean_radius_px": float(spec["mean_radius_px"])} if "mean_radius_px" in spec else {}),
    )


def _derive_seed(seed: int, *keys: object) -> int:
    import hashlib

    text = ":".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# --- annotations -----------------------------------------------------------------------------


def import_annotations(
    export: str,
    images: str,
    manifest: str,
    skipped: str,
    *,
    plate: str,
    labels: list[str] | None,
    on_bad_input: str,
    mask_threshold: float = 127,
    mask_suffix: str = "",
) -> None:
    """Rule ``import_annotations``: annotations -> label TIFFs, mask PNGs, manifest.

    ``export`` is a CVAT export (XML, or CVAT's zip), a COCO JSON, or a folder of mask
    images matched to the plate's images by file stem (``<stem><mask_suffix>.<ext>``;
    binary 0/1 or 0/255, instance labels, RGB, JPEG binarised at ``mask_threshold``:
    :func:`brightseg.byod.import_mask_annotations`).  Both write the same files.
    """
    out_dir = Path(manifest).parent
    if Path(manifest).resolve() != (out_dir / "manifest.parquet").resolve():
        raise ValueError(f"{manifest}: the manifest must be named manifest.parquet")
    if Path(export).is_dir():
        from .byod import import_mask_annotations

        _, skip_df = import_mask_annotations(
            export,
            images,
            out_dir,
            plate=plate,
            threshold=float(mask_threshold),
            mask_suffix=mask_suffix or "",
            on_bad_input=on_bad_input,
        )
    else:
        from .cvat import import_cvat

        _, skip_df = import_cvat(
            export, images, out_dir, plate=plate, labels=labels, on_bad_input=on_bad_input
        )
    rows = (
        list(skip_df[["file", "reason"]].itertuples(index=False, name=None)) if len(skip_df) else []
    )
    write_skipped(rows, skipped, stage="import_annotations", plate=plate)


# --- illumination correction + plate store ---------------------------------------------------


def correct_plate(
    images_spec: str,
    store: str,
    skipped: str,
    *,
    plate: str,
    regex: str,
    modality: str,
    pixel_size_um: float,
    illumination: dict,
    chunk: int = 256,
    on_bad_input: str = "error",
) -> None:
    """Rule ``correct_illumination``: top-hat correct every image of a plate into OME-Zarr.

    One job per plate: images are read, corrected and written one at a time, so memory
    stays bounded by one image whatever the plate size.
    """
    from .illumination import correct_illumination, radius_to_px
    from .io import read_image, warn_low_bit_depth
    from .platestore import write_plate
    from .sheet import compile_regex, plate_images

    table, skip_rows = plate_images(
        plate, images_spec, compile_regex(regex), on_bad_input=on_bad_input
    )
    radius_px = radius_to_px(illumination["radius"], illumination.get("unit", "px"), pixel_size_um)
    percentiles = tuple(illumination.get("percentiles", (1.0, 99.8)))

    # Unreadable images: error, or skip and list them (checked up front, so the store
    # holds exactly the readable images and a skip never leaves a hole mid-write).
    good = []
    shapes: dict[tuple, str] = {}
    for row in table.itertuples(index=False):
        try:
            img = read_image(row.path)
        except InputError as exc:
            if on_bad_input != "skip":
                raise
            skip_rows.append((row.path, exc.message))
            continue
        warn_low_bit_depth(img, row.path)
        shapes.setdefault(img.shape, row.path)
        good.append(row)
    if len(shapes) > 1:
        raise InputError(
            images_spec,
            f"plate {plate!r}: images differ in size: "
            + ", ".join(f"{s} ({p})" for s, p in shapes.items()),
        )
    if not good:
        raise InputError(images_spec, f"plate {plate!r}: no readable images")
    table = pd.DataFrame(good)

    def load(row) -> object:
        img = read_image(row.path).astype("float32")
        return correct_illumination(
            img,
            radius_px,
            mode=illumination.get("mode", "white"),
            method=illumination.get("method", "fast"),
            percentiles=percentiles,
        )

    log.info("plate %s: %d images, top-hat radius %d px", plate, len(table), radius_px)
    write_plate(
        store,
        plate,
        table,
        load=load,
        pixel_size_um=pixel_size_um,
        modality=modality,
        chunk=chunk,
        metadata={"illumination": dict(illumination, radius_px=radius_px)},
    )
    write_skipped(skip_rows, skipped, stage="correct_illumination", plate=plate)


# --- training set ----------------------------------------------------------------------------


def _training_pairs(stores: list[str], manifests: list[str]):
    """Yield the corrected image and annotation mask of every annotated training image."""
    from .io import read_image
    from .platestore import open_plate

    for store_path, manifest_path in zip(stores, manifests, strict=True):
        store = open_plate(store_path)
        ann = pd.read_parquet(manifest_path)
        ann_dir = Path(manifest_path).parent
        in_store = set(store.images["image_id"])
        for row in ann.sort_values("stem").itertuples(index=False):
            if row.stem not in in_store:
                log.warning(
                    "%s: %s has annotations but is not in the plate store", store_path, row.stem
                )
                continue
            mask = read_image(ann_dir / f"{row.stem}_mask.png")
            yield {
                "image_id": row.stem,
                "plate": store.plate,
                "modality": store.modality,
                "image": store.read(row.stem),
                "mask": (mask > 0).astype("uint8"),
            }


def build_training_set(
    stores: list[str],
    manifests: list[str],
    out_zarr: str,
    out_manifest: str,
    *,
    training: dict,
    seed: int,
) -> None:
    """Rule ``augment``: patches + 21 variants of every annotated training image into zarr.

    ``training["patch_sets"]`` (resolved by :func:`brightseg.byod.resolve_patch_sets`) adds
    pre-tiled image/mask patches after the plates' images.  A patch the size of
    ``patch_size`` is one tile (a larger one is tiled, a smaller one padded); its manifest
    rows get the image it was cut from as ``source_image``, the column the split groups by,
    so all patches of one source image land on the same side of the split.
    """
    import itertools

    from .augment import build_training_store
    from .byod import group_by_source, patch_set_training_pairs, resolve_patch_sets

    patch_sets = resolve_patch_sets(training.get("patch_sets") or [])
    groups: dict[str, str] = {}
    pairs = itertools.chain(
        _training_pairs(stores, manifests), patch_set_training_pairs(patch_sets, groups=groups)
    )
    df = build_training_store(
        pairs,
        out_zarr,
        out_manifest,
        patch_size=int(training.get("patch_size", 256)),
        stride=training.get("stride"),
        min_foreground=float(training.get("min_foreground", 0.0)),
        n_variants=int(training.get("n_variants", 21)),
        seed=seed,
    )
    if groups:
        from .io import write_parquet

        df = group_by_source(df, groups)
        write_parquet(df, out_manifest)
        from_sets = df["plate"].isin({s["plate"] for s in patch_sets})
        log.info(
            "patch sets: %d samples of %d pre-tiled patches grouped into %d source images",
            int(from_sets.sum()),
            len(groups),
            df.loc[from_sets, "source_image"].nunique(),
        )
    log.info(
        "training store: %d samples from %d source images", len(df), df["source_image"].nunique()
    )


def split_training_set(
    manifest_in: str, manifest_out: str, summary_out: str, *, training: dict, seed: int
) -> None:
    """Rule ``split``: grouped, stratified train/validation split of the training store."""
    from .split import apply_split, split_summary

    df = apply_split(
        manifest_in,
        manifest_out,
        val_fraction=float(training.get("val_fraction", 0.2)),
        seed=seed,
        group_col="source_image",
        strata_col="modality",
    )
    write_text(split_summary(df).to_csv(sep="\t", index=False), summary_out)


def make_gallery_figure(store: str, manifest: str, out_png: str, *, seed: int) -> None:
    """Rule ``gallery``: the augmentation gallery (paper Fig. 2) from the first training patch.

    The untouched variant (0) of the first patch of the training store: it exists whether
    the training data came from plates or from pre-tiled patch sets.
    """
    from .augment import make_gallery, open_training_store

    man = pd.read_parquet(manifest)
    first = man[man["variant"] == 0].sort_values("patch_id").iloc[0]
    images, masks = open_training_store(store)
    idx = int(first["index"])
    image = images[idx][..., 0].astype("float32") / 255.0
    make_gallery(image, (masks[idx] > 0).astype("uint8"), out_png, seed=seed, size=image.shape[0])


# --- training ------------------------------------------------------------------------------


def train_run(
    store: str,
    manifest: str,
    history: str,
    card: str,
    *,
    model: str,
    loss: str,
    spec: dict,
    training: dict,
    seed: int,
    keras_home: str | None = None,
) -> None:
    """Rule ``train``: one (architecture, loss) run with a checkpoint per epoch."""
    from .models import set_keras_home
    from .train import train_model

    if keras_home:
        set_keras_home(keras_home)
    out_dir = Path(history).parent
    train_model(
        store,
        manifest,
        out_dir,
        architecture=spec.get("architecture", model),
        loss=loss,
        epochs=int(training.get("epochs", 45)),
        batch_size=int(training.get("batch_size", 16)),
        lr=float(training.get("learning_rate", 1e-4)),
        decay_steps=int(training.get("decay_steps", 9000)),
        decay_rate=float(training.get("decay_rate", 0.9)),
        patience=int(training.get("patience", 5)),
        hard_mining=bool(spec.get("hard_mining", False)),
        seed=seed,
        deterministic=bool(training.get("deterministic", True)),
        precision=str(training.get("precision", "auto")),
        encoder_weights=str(
            spec.get("encoder_weights", training.get("encoder_weights", "imagenet"))
        ),
        steps_per_epoch=training.get("steps_per_epoch"),
        val_steps=training.get("val_steps"),
        model_kwargs=spec.get("model_kwargs") or {},
    )
    for p in (history, card):
        if not Path(p).is_file():
            raise RuntimeError(f"training finished without writing {p}")


def select_ensemble(histories: list[str], out_tsv: str, *, k: int, window: int = 1) -> None:
    """Rule ``select_checkpoints``: rank all epoch checkpoints, keep the top K."""
    from .selection import read_histories, select_checkpoints, write_ensemble_tsv

    sel = select_checkpoints(
        read_histories([Path(h).parent for h in histories]), k=k, window=window
    )
    missing = [p for p in sel["path"] if not Path(p).is_file()]
    if missing:
        raise RuntimeError(f"selected checkpoints do not exist: {missing}")
    write_ensemble_tsv(sel, out_tsv)


# --- inference, instances, morphometrics ------------------------------------------------------


def predict_plate(store: str, ensemble_tsv: str, out_tsv: str, *, inference: dict) -> None:
    """Rule ``predict``: every selected checkpoint predicts every image of a plate; votes combined."""
    from .ensemble import predict_plate_from_paths
    from .io import write_text
    from .models import set_precision

    set_precision(str(inference.get("precision", "auto")))
    summary = predict_plate_from_paths(
        store,
        ensemble_tsv,
        tile=int(inference.get("tile", 256)),
        overlap=int(inference.get("overlap", 32)),
        batch_size=int(inference.get("batch_size", 8)),
        vote=str(inference.get("vote", "mean")),
        threshold=float(inference.get("threshold", 0.5)),
        tta=bool(inference.get("tta", False)),
    )
    write_text(summary.to_csv(sep="\t", index=False), out_tsv)


def split_with_config(mask, pixel_size_um: float, instances: dict, *, prob=None):
    """Watershed instance splitting with the config's ``instances`` block."""
    from .instances import split_instances

    return split_instances(
        mask,
        pixel_size_um=pixel_size_um,
        h_um=instances.get("h_um"),
        min_area_um2=float(instances.get("min_area_um2", 20.0)),
        max_area_um2=instances.get("max_area_um2"),
        prob=prob,
        fill_holes=bool(instances.get("fill_holes", True)),
        remove_border=bool(instances.get("remove_border", False)),
    )


def split_plate_instances(
    store: str, predictions: str, out_tsv: str, *, instances: dict, pixel_size_um: float
) -> None:
    """Rule ``split_instances``: watershed of every predicted mask into the ``cells`` label."""
    from .platestore import open_plate
    from .progress import progress

    ps = open_plate(store)
    pred = pd.read_csv(predictions, sep="\t")
    rows = []
    use_prob = bool(instances.get("use_prob", False))
    for image_id in progress(list(pred["image_id"]), desc=f"split_instances {ps.plate}"):
        mask = ps.read_label(image_id, "mask")
        prob = ps.read_label(image_id, "prob") if use_prob else None
        labels = split_with_config(
            mask,
            pixel_size_um,
            instances,
            prob=None if prob is None else prob.astype("float32") / 255.0,
        )
        ps.write_label(image_id, "cells", labels)
        rows.append({"image_id": image_id, "n_cells": int(labels.max())})
    write_text(pd.DataFrame(rows).to_csv(sep="\t", index=False), out_tsv)


def measure_plate(
    store: str,
    instances_tsv: str,
    cells_out: str,
    images_out: str,
    overlay_dir: str,
    *,
    n_overlays: int = 4,
    export: dict | None = None,
) -> None:
    """Rule ``measure_cells``: per-cell morphometrics and per-image summaries of a plate."""
    from .io import write_png
    from .morphometry import (
        CellTableWriter,
        contour_overlay,
        measure_cells,
        summarise_image,
        write_image_table,
    )
    from .platestore import open_plate
    from .progress import progress

    ps = open_plate(store)
    ids = list(pd.read_csv(instances_tsv, sep="\t")["image_id"])
    meta_by_id = ps.images.set_index("image_id")
    summaries = []
    overlay_dir_p = Path(overlay_dir)
    export = export or {}
    with atomic_dir(overlay_dir_p) as tmp_overlays, CellTableWriter(cells_out) as writer:
        for i, image_id in enumerate(progress(ids, desc=f"measure_cells {ps.plate}")):
            labels = ps.read_label(image_id, "cells")
            image = ps.read(image_id)
            m = meta_by_id.loc[image_id]
            meta = {
                "plate": ps.plate,
                "image_id": image_id,
                "well": f"{m['row']}{int(m['column']):02d}",
                "row": str(m["row"]),
                "column": int(m["column"]),
                "field": int(m["field"]),
                "timepoint": int(m["timepoint"]),
            }
            cells = measure_cells(labels, image, pixel_size_um=ps.pixel_size_um, meta=meta)
            writer.write(cells)
            summaries.append(
                summarise_image(cells, labels, pixel_size_um=ps.pixel_size_um, meta=meta)
            )
            if i < n_overlays:
                write_png(contour_overlay(image, labels), Path(tmp_overlays) / f"{image_id}.png")
            if export.get("cellpose") or export.get("imagej_rois"):
                _export_labels(labels, Path(cells_out).parent / "exports", image_id, export)
    write_image_table(summaries, images_out)


def _export_labels(labels, out_dir: Path, image_id: str, export: dict) -> None:
    from .instances import write_cellpose_masks, write_imagej_rois

    out_dir.mkdir(parents=True, exist_ok=True)
    if export.get("cellpose"):
        write_cellpose_masks(labels, out_dir / f"{image_id}_masks.tif")
    if export.get("imagej_rois"):
        write_imagej_rois(labels, out_dir / f"{image_id}_rois.zip")


@contextlib.contextmanager
def atomic_dir(path: Path):
    """A directory output built under a temporary name and renamed into place."""
    from .io import atomic_path

    with atomic_path(path, is_dir=True) as tmp:
        Path(tmp).mkdir(parents=True)
        yield tmp


def aggregate(paths: list[str], out: str) -> None:
    """Rule ``aggregate_tables``: per-plate image summaries into one table."""
    from .morphometry import aggregate_tables

    aggregate_tables(paths, out)
