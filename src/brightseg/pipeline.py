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
) -> None:
    """Rule ``import_annotations``: CVAT/COCO export -> label TIFFs, mask PNGs, manifest."""
    from .cvat import import_cvat

    out_dir = Path(manifest).parent
    _, skip_df = import_cvat(
        export, images, out_dir, plate=plate, labels=labels, on_bad_input=on_bad_input
    )
    if Path(manifest).resolve() != (out_dir / "manifest.parquet").resolve():
        raise ValueError(f"{manifest}: the manifest must be named manifest.parquet")
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
    from .io import read_image
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
