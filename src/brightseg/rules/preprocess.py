"""Rules of the preprocessing stage: annotation import, illumination correction, skip list."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..annotations.cvat import import_cvat
from ..annotations.maskfolder import import_mask_annotations
from ..config import AnnotationsConfig, IlluminationConfig
from ..errors import InputError
from ..focus import Focus, annotations_to_images, read_planes
from ..illumination import POLARITY_MARGIN, plate_polarity, radius_to_px
from ..illumination import correct_illumination as _correct
from ..io import read_image, warn_low_bit_depth, write_text
from ..limits import Limits
from ..platestore import write_plate
from ..sheet import compile_regex, list_images, plate_images
from . import SKIPPED_COLUMNS, write_skipped

log = logging.getLogger(__name__)


def import_annotations(
    export: str,
    images: str,
    manifest: str,
    skipped: str,
    *,
    plate: str,
    annotations: AnnotationsConfig | dict,
    on_bad_input: str,
    limits: Limits | dict | None = None,
    focus: Focus | dict | None = None,
) -> None:
    """Rule ``import_annotations``: annotations -> label TIFFs, mask PNGs, manifest.

    Of a multi-focal plate (``focus``, :func:`brightseg.focus.plate_focus`) an annotation
    drawn on a plane file ``<stem>_z<k>`` becomes the mask of image ``<stem>``
    (:func:`brightseg.focus.annotations_to_images`).

    ``export`` is a CVAT export (XML, or CVAT's zip), a COCO JSON, or a folder of mask
    images matched to the plate's images by file stem (``<stem><mask_suffix>.<ext>``;
    binary 0/1 or 0/255, instance labels, RGB, JPEG binarised at ``mask_threshold``:
    :func:`brightseg.annotations.maskfolder.import_mask_annotations`).  Both write the same files.
    """
    cfg = AnnotationsConfig.coerce(annotations)
    limits = limits if isinstance(limits, Limits) else Limits.from_config(limits)
    out_dir = Path(manifest).parent
    if Path(manifest).resolve() != (out_dir / "manifest.parquet").resolve():
        raise ValueError(f"{manifest}: the manifest must be named manifest.parquet")
    if Path(export).is_dir():
        _, skip_df = import_mask_annotations(
            export,
            list_images(images),
            out_dir,
            plate=plate,
            images_where=images,
            threshold=cfg.mask_threshold,
            mask_suffix=cfg.mask_suffix,
            on_bad_input=on_bad_input,
            mask_mode=cfg.mask_mode,
        )
    else:
        labels = list(cfg.labels) if cfg.labels is not None else None
        _, skip_df = import_cvat(
            export,
            images,
            out_dir,
            plate=plate,
            labels=labels,
            on_bad_input=on_bad_input,
            limits=limits,
            nucleus_labels=list(cfg.nucleus_labels) if cfg.nucleus_labels else None,
        )
    if Focus.coerce(focus) is not None:
        annotations_to_images(manifest)
    rows = (
        list(skip_df[["file", "reason"]].itertuples(index=False, name=None)) if len(skip_df) else []
    )
    write_skipped(rows, skipped, stage="import_annotations", plate=plate)


def correct_illumination(
    images_spec: str,
    store: str,
    skipped: str,
    *,
    plate: str,
    regex: str,
    modality: str,
    pixel_size_um: float,
    illumination: IlluminationConfig | dict,
    chunk: int,
    on_bad_input: str = "error",
    limits: Limits | dict | None = None,
    focus: Focus | dict | None = None,
) -> None:
    """Rule ``correct_illumination``: top-hat correct every image of a plate into OME-Zarr.

    One job per plate: images are read, corrected and written one at a time, so memory
    stays bounded by one image whatever the plate size.  ``illumination`` is the plate's
    own (the config block with the sheet's per-plate overrides).  ``focus`` (a
    multi-focal plate, :func:`brightseg.focus.plate_focus`; None: one plane per image)
    keeps the selected planes of every image, each corrected like a single image, as the
    store's channels; ``illumination: auto`` decides the polarity on the first kept plane.
    """
    cfg = IlluminationConfig.coerce(illumination)
    focus = Focus.coerce(focus)
    limits = limits if isinstance(limits, Limits) else Limits.from_config(limits)
    table, skip_rows = plate_images(
        plate,
        images_spec,
        compile_regex(regex),
        on_bad_input=on_bad_input,
        limits=limits,
        focus=focus,
    )

    def read(row) -> np.ndarray:
        """The raw image ``(H, W)``, or the kept planes ``(C, H, W)`` of a multi-focal one."""
        if focus is None:
            return read_image(row.path, limits=limits)
        return read_planes(row.planes, focus, limits=limits)

    radius_px = radius_to_px(cfg.radius, cfg.unit, pixel_size_um, limits)

    # Unreadable images: error, or skip and list them (checked up front, so the store
    # holds exactly the readable images and a skip never leaves a hole mid-write).
    good = []
    shapes: dict[tuple, str] = {}
    for row in table.itertuples(index=False):
        try:
            img = read(row)
        except InputError as exc:
            if on_bad_input != "skip":
                raise
            skip_rows.append(
                (exc.path if focus is not None and exc.path else row.path, exc.message)
            )
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

    # The polarity statistic of every plate (up to 8 of its images): it decides `auto`
    # and catches a fixed mode that contradicts the images (cells would come out inverted).
    def read_2d(i: int) -> np.ndarray:
        img = read(table.iloc[i])
        return img if img.ndim == 2 else img[0]  # z-stacks: the first kept plane

    mode, stat, flag, n_sampled = plate_polarity(
        len(table),
        read_2d,
        radius_px,
        cfg.mode,
        method=cfg.method,
        uncertain_mode=cfg.uncertain_mode,
    )
    log.info(
        "plate %s: polarity statistic %+.3f (log white/black top-hat energy, %d images) -> "
        "mode %s (configured %s)",
        plate,
        stat,
        n_sampled,
        mode,
        cfg.mode,
    )
    if flag == "uncertain":
        log.warning(
            "plate %s: polarity uncertain (statistic %+.3f, |s| < %.2f); using "
            "illumination.uncertain_mode = %s. Check results/qc/polarity.tsv and set "
            "illumination_mode for this plate in the sheet if its cells are %s than the "
            "background",
            plate,
            stat,
            POLARITY_MARGIN,
            mode,
            "brighter" if mode == "black" else "darker",
        )
    elif flag == "disagrees":
        log.warning(
            "plate %s: illumination mode %s, but the polarity statistic %+.3f says the cells "
            "are %s than the background: they may be segmented inverted. Set "
            "illumination_mode for this plate in the sheet (or auto)",
            plate,
            mode,
            stat,
            "brighter" if stat > 0 else "darker",
        )
    extra = {
        "mode_decided": mode,
        "polarity_statistic": stat,
        "polarity_uncertain": flag == "uncertain",
        "polarity_flag": flag,
    }

    def correct(img: np.ndarray) -> np.ndarray:
        return _correct(
            img.astype("float32"),
            radius_px,
            mode=mode,
            method=cfg.method,
            percentiles=tuple(cfg.percentiles),
        )

    def load(row) -> np.ndarray:
        img = read(row)
        if img.ndim == 2:
            return correct(img)
        if len(img) == 1:  # one plane kept of a z-stack: a single-plane image
            return correct(img[0])
        return np.stack([correct(plane) for plane in img])  # planes: each like an image

    log.info("plate %s: %d images, top-hat radius %d px (%s)", plate, len(table), radius_px, mode)
    write_plate(
        store,
        plate,
        table,
        load=load,
        pixel_size_um=pixel_size_um,
        modality=modality,
        chunk=chunk,
        metadata={
            "illumination": dict(cfg.as_dict(), radius_px=radius_px, **extra),
            **({"focus": focus.as_dict()} if focus is not None else {}),
        },
        channels=1 if focus is None else focus.channels,
    )
    write_skipped(skip_rows, skipped, stage="correct_illumination", plate=plate)


POLARITY_COLUMNS = [
    "plate",
    "mode_configured",
    "mode_used",
    "statistic",
    "flag",
    "modality",
    "store",
]


def polarity_report(stores: list[str], out: str) -> pd.DataFrame:
    """Rule ``polarity_report``: each plate's top-hat polarity into ``results/qc/polarity.tsv``.

    One row per plate store: the configured mode (``auto``, ``black`` or ``white``), the mode
    used, the statistic of :func:`brightseg.illumination.decide_polarity` and a flag
    (``ok``, ``uncertain``: ``auto`` fell back to ``illumination.uncertain_mode``,
    ``disagrees``: a fixed mode the images contradict).  Plates flagged are logged.
    """
    from ..platestore import open_plate

    rows = []
    for path in stores:
        store = open_plate(path, mode="r")
        ill = dict(store.metadata.get("illumination") or {})
        stat = ill.get("polarity_statistic")
        rows.append(
            {
                "plate": store.plate,
                "mode_configured": ill.get("mode", ""),
                "mode_used": ill.get("mode_decided", ill.get("mode", "")),
                "statistic": round(float(stat), 4) if stat is not None else float("nan"),
                "flag": ill.get("polarity_flag", ""),
                "modality": store.modality,
                "store": str(path),
            }
        )
    df = pd.DataFrame(rows, columns=POLARITY_COLUMNS).sort_values("plate", kind="stable")
    flagged = df[~df["flag"].isin(["ok", ""])]
    for row in flagged.itertuples(index=False):
        log.warning("plate %s: polarity %s (statistic %+.3f)", row.plate, row.flag, row.statistic)
    log.info("%d plates, %d flagged for polarity review", len(df), len(flagged))
    write_text(df.to_csv(sep="\t", index=False, float_format="%.4f"), out)
    return df


def skipped_report(paths: list[str], out: str) -> pd.DataFrame:
    """Rule ``skipped_report``: per-rule skip lists into ``results/qc/skipped.tsv``."""
    frames = [pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False) for p in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SKIPPED_COLUMNS)
    df = df.reindex(columns=SKIPPED_COLUMNS).sort_values(SKIPPED_COLUMNS, kind="stable")
    write_text(df.to_csv(sep="\t", index=False), out)
    return df
