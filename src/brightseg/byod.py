"""Bring your own data: mask-folder annotations, pre-tiled patch sets, evaluation sets.

Like :mod:`brightseg.pipeline`, the public functions here are what the workflow's rules
run (issue #8); the mask and evaluation-set logic lives in :mod:`brightseg.maskfolder` and
:mod:`brightseg.evalsets`.

* :func:`import_mask_annotations`: a plate whose ``annotations`` is a folder of masks
  (matched to the plate's images by file stem) becomes exactly what a CVAT import writes.
  Images without a mask are simply not annotated; a mask without an image is bad input.
* :func:`resolve_patch_sets` and :func:`patch_set_training_pairs`: pre-tiled
  image/mask patches (``training.patch_sets``) for the augmentation stage, each patch
  grouped under the full-size image it was cut from (:func:`group_by_source`), so the
  grouped split keeps all patches of one source on one side.
* :func:`resolve_evaluation_sets`, :func:`evaluate_set`: held-out image/mask folders,
  predicted by the ensemble and every selected checkpoint and compared with other
  methods' masks (paper Table 2, paired tests, figures).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .io import IMAGE_SUFFIXES, write_parquet, write_text

log = logging.getLogger(__name__)

__all__ = [
    "ENSEMBLE",
    "NAME_PATTERN",
    "PAIRED_METRICS",
    "import_mask_annotations",
    "resolve_patch_sets",
    "patch_set_training_pairs",
    "group_by_source",
    "resolve_evaluation_sets",
    "synth_demo_evalset",
    "otsu_baseline_for_set",
    "evaluate_set",
    "comparison_tables",
    "metric_distributions",
    "method_overlays",
]

#: Method name of the ensemble in the evaluation-set tables.
ENSEMBLE = "ensemble"

#: Names of patch sets and evaluation sets (they become file names and wildcards).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"

#: Metrics of the paired comparison (ensemble - baseline per image) by default.
PAIRED_METRICS = ("f1", "dice", "iou", "hd95")

#: Metrics drawn in the distribution figure.
FIGURE_METRICS = ("dice", "iou", "precision", "recall", "f1", "hd95")

DEFAULT_PIXEL_SIZE_UM = 0.65


# --------------------------------------------------------------------------- mask folders


def _mask_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _remap(text: str, mapping: Mapping[str, str]) -> str:
    """Replace staged (symlink) paths in a message by the user's paths."""
    for staged, real in mapping.items():
        if staged in text:
            text = text.replace(staged, real)
    return text


def import_mask_annotations(
    masks_dir: str | os.PathLike,
    images: str,
    out_dir: str | os.PathLike,
    *,
    plate: str = "",
    threshold: float = 127,
    mask_suffix: str = "",
    on_bad_input: str = "error",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import a plate's annotations given as a folder of masks.

    Every mask ``<stem><mask_suffix>.<png|tif|tiff|jpg|jpeg>`` belongs to the plate image
    with that stem.  The pairs are imported by
    :func:`brightseg.maskfolder.import_mask_folder` (binary 0/1 or 0/255, instance labels,
    RGB reduced to one channel, lossy JPEG binarised at ``threshold``), which writes the
    files :func:`brightseg.cvat.import_cvat` writes: ``<stem>_labels.tif``,
    ``<stem>_mask.png`` and ``manifest.parquet`` (``source_format`` ``mask_<kind>``).

    Parameters
    ----------
    masks_dir : path-like
        The folder of masks.
    images : str
        The plate's images: a folder or a glob pattern (as in the plate sheet).
    out_dir : path-like
        ``results/annotations/<plate>``.
    plate : str
        Plate name stored in the manifest.
    threshold : float
        Foreground is ``value > threshold`` in lossy (JPEG) masks.
    mask_suffix : str
        Masks are named ``<image stem><mask_suffix>`` (e.g. ``"_mask"``).
    on_bad_input : {"error", "skip"}
        A mask without an image, two files for one stem, an unreadable mask or a mask whose
        size differs from its image's: raise :class:`InputError`, or leave it out and list
        it in ``skipped``.  Plate images without a mask are not annotated (not an error).

    Returns
    -------
    manifest, skipped : pandas.DataFrame
        As :func:`brightseg.maskfolder.import_mask_folder`; ``image`` holds the image paths
        as the plate sheet gives them.
    """
    from .maskfolder import import_mask_folder
    from .sheet import list_images

    if on_bad_input not in ("error", "skip"):
        raise InputError("on_bad_input", f"must be 'error' or 'skip', got {on_bad_input!r}")
    masks_dir, out_dir = Path(masks_dir), Path(out_dir)
    if not masks_dir.is_dir():
        raise InputError(masks_dir, f"plate {plate!r}: annotation mask folder does not exist")
    image_files = list_images(images)
    if not image_files:
        raise InputError(images, f"plate {plate!r}: no images ({', '.join(IMAGE_SUFFIXES)})")
    skipped: list[tuple[str, str]] = []

    def problem(path: Path, message: str) -> None:
        err = InputError(path, message)
        if on_bad_input == "error":
            raise err
        log.warning("skipped %s", err)
        skipped.append((str(path), str(err)))

    image_set = {p.resolve() for p in image_files}
    by_stem: dict[str, list[Path]] = {}
    for p in image_files:
        by_stem.setdefault(p.stem, []).append(p)
    by_key: dict[str, list[Path]] = {}
    for p in _mask_files(masks_dir):
        if p.resolve() in image_set:
            continue  # images and masks in one folder (told apart by mask_suffix)
        if mask_suffix and not p.stem.endswith(mask_suffix):
            problem(p, f"mask name does not end with the mask suffix {mask_suffix!r}")
            continue
        key = p.stem[: len(p.stem) - len(mask_suffix)] if mask_suffix else p.stem
        by_key.setdefault(key, []).append(p)
    pairs: list[tuple[Path, Path]] = []
    for key, masks in sorted(by_key.items()):
        imgs = by_stem.get(key, [])
        if len(masks) > 1:
            problem(masks[0], f"several masks for {key!r}: {', '.join(m.name for m in masks)}")
        elif not imgs:
            problem(
                masks[0],
                f"no image of plate {plate!r} for this mask (looked for '{key}' in {images})",
            )
        elif len(imgs) > 1:
            problem(imgs[0], f"several images with stem {key!r}: {[i.name for i in imgs]}")
        else:
            pairs.append((imgs[0], masks[0]))
    if not pairs:
        hint = ""
        if Path(images).is_dir() and Path(images).resolve() == masks_dir.resolve():
            hint = " (the masks are in the image folder: every file there is read as an image; "
            hint += "use a glob for the images, or a folder of their own for the masks)"
        raise InputError(masks_dir, f"plate {plate!r}: no mask matches an image of {images}{hint}")
    n_unannotated = len(image_files) - len(pairs)
    log.info(
        "plate %s: %d masks in %s match images; %d images have no mask (not annotated)",
        plate,
        len(pairs),
        masks_dir,
        n_unannotated,
    )

    # Stage exactly the matched pairs (symlinks) so the import sees one image per mask.
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".mask-import-", dir=out_dir))
    mapping: dict[str, str] = {}
    try:
        for sub in ("images", "masks"):
            (stage / sub).mkdir()
        for image, mask in pairs:
            for sub, src in (("images", image), ("masks", mask)):
                link = stage / sub / src.name
                link.symlink_to(src.resolve())
                mapping[str(link)] = str(src)
        try:
            manifest, skip_df = import_mask_folder(
                stage / "images",
                stage / "masks",
                out_dir,
                plate=plate,
                threshold=threshold,
                expect="auto",
                on_bad_input=on_bad_input,
                mask_suffix=mask_suffix,
            )
        except InputError as exc:
            path = mapping.get(exc.path or "", exc.path)
            raise InputError(path, _remap(exc.message, mapping)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest["image"] = [mapping.get(p, p) for p in manifest["image"]]
    write_parquet(manifest, out_dir / "manifest.parquet")
    skipped += [(mapping.get(f, f), _remap(r, mapping)) for f, r in skip_df.itertuples(index=False)]
    return manifest, pd.DataFrame(skipped, columns=["file", "reason"])


# --------------------------------------------------------------------------- patch sets


def _check_name(name: Any, where: str) -> str:
    name = str(name or "")
    if not re.fullmatch(NAME_PATTERN, name):
        raise InputError(where, f"name {name!r} must match {NAME_PATTERN}")
    return name


def resolve_patch_sets(
    specs: Sequence[Mapping[str, Any]] | None,
    *,
    illumination: Mapping[str, Any] | None = None,
    mask_threshold: float = 127,
    on_bad_input: str = "error",
    check: bool = True,
) -> list[dict[str, Any]]:
    """Check ``training.patch_sets`` and fill in the defaults.

    Parameters
    ----------
    specs : list of mapping
        Each ``{images, masks}`` with optional ``name`` (default ``patches<i>``),
        ``name_regex`` (named group ``source``; default
        :data:`brightseg.maskfolder.DEFAULT_PATCH_REGEX`, ``<source>_<row>_<col>``),
        ``modality`` (``brightfield``), ``plate`` (default the name), ``mask_suffix``,
        ``pixel_size_um`` (0.65) and ``correct_illumination`` (true: the plates' top-hat
        correction is applied to each raw patch; false: patches are scaled by their dtype).
        Already resolved specs pass through unchanged (their ``illumination``,
        ``mask_threshold`` and ``on_bad_input`` are kept).
    illumination : mapping, optional
        The ``illumination`` config, stored in each set whose ``correct_illumination`` is
        true.
    mask_threshold : float
        Threshold of lossy masks (``annotations.mask_threshold``).
    on_bad_input : {"error", "skip"}
        What a bad patch does (see :func:`brightseg.maskfolder.load_patch_set`).
    check : bool
        Check that the folders exist.

    Returns
    -------
    list of dict
        Complete specs; ``illumination`` is the config to apply to each patch, or None.
    """
    from .maskfolder import DEFAULT_PATCH_REGEX
    from .sheet import MODALITIES

    out: list[dict[str, Any]] = []
    for i, spec in enumerate(specs or []):
        where = f"training.patch_sets[{i}]"
        if not isinstance(spec, Mapping):
            raise InputError(where, f"must be a mapping, got {spec!r}")
        name = _check_name(spec.get("name") or f"patches{i + 1}", f"{where}.name")
        regex = str(spec.get("name_regex") or DEFAULT_PATCH_REGEX)
        try:
            if "source" not in re.compile(regex).groupindex:
                raise InputError(f"{where}.name_regex", f"{regex!r} has no (?P<source>...) group")
        except re.error as exc:
            raise InputError(f"{where}.name_regex", f"invalid regex {regex!r}: {exc}") from None
        modality = str(spec.get("modality") or "brightfield")
        if modality not in MODALITIES:
            raise InputError(f"{where}.modality", f"must be one of {MODALITIES}, got {modality!r}")
        resolved = {
            "name": name,
            "images": str(spec.get("images") or ""),
            "masks": str(spec.get("masks") or ""),
            "name_regex": regex,
            "modality": modality,
            "plate": str(spec.get("plate") or name),
            "mask_suffix": str(spec.get("mask_suffix") or ""),
            "pixel_size_um": float(spec.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM),
            "illumination": (
                spec.get("illumination", illumination)
                if spec.get("correct_illumination", True)
                else None
            ),
            "mask_threshold": float(spec.get("mask_threshold", mask_threshold)),
            "on_bad_input": str(spec.get("on_bad_input", on_bad_input)),
        }
        if resolved["illumination"] is not None:
            resolved["illumination"] = dict(resolved["illumination"])
        for key in ("images", "masks"):
            if not resolved[key]:
                raise InputError(f"{where}.{key}", "missing folder")
            if check and not Path(resolved[key]).is_dir():
                raise InputError(resolved[key], f"{where}.{key}: folder does not exist")
        out.append(resolved)
    names = [s["name"] for s in out]
    if len(set(names)) != len(names):
        raise InputError("training.patch_sets", f"patch set names must be unique: {names}")
    return out


def _corrector(illumination: Mapping[str, Any] | None, pixel_size_um: float):
    if not illumination:
        return None
    from .illumination import correct_illumination, radius_to_px

    radius = radius_to_px(illumination["radius"], illumination.get("unit", "px"), pixel_size_um)

    def correct(image: np.ndarray) -> np.ndarray:
        return correct_illumination(
            image.astype(np.float32),
            radius,
            mode=illumination.get("mode", "white"),
            method=illumination.get("method", "fast"),
            percentiles=tuple(illumination.get("percentiles", (1.0, 99.8))),
        )

    return correct


def patch_set_training_pairs(
    patch_sets: Sequence[Mapping[str, Any]], *, groups: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the patches of every patch set in the form ``build_training_store`` takes.

    Parameters
    ----------
    patch_sets : list of mapping
        Output of :func:`resolve_patch_sets` (its ``mask_threshold`` and ``on_bad_input``
        apply, see :func:`brightseg.maskfolder.load_patch_set`).
    groups : dict, optional
        Filled with ``image_id -> source`` for :func:`group_by_source`.

    Yields
    ------
    dict
        ``image_id`` (``<set name>:<patch stem>``, unique across sets and plates),
        ``plate``, ``modality``, ``image`` (float32 in [0, 1]) and ``mask`` (uint8 0/1).
    """
    from .maskfolder import load_patch_set, patch_set_pairs

    for spec in patch_sets:
        threshold = float(spec.get("mask_threshold", 127))
        df = load_patch_set(
            spec["images"],
            spec["masks"],
            name_regex=spec["name_regex"],
            threshold=threshold,
            mask_suffix=spec.get("mask_suffix", ""),
            on_bad_input=str(spec.get("on_bad_input", "error")),
        )
        log.info(
            "patch set %s: %d patches of %d source images (%s)",
            spec["name"],
            len(df),
            df["source"].nunique(),
            "illumination-corrected" if spec.get("illumination") else "scaled by dtype",
        )
        df = df.assign(image_id=[f"{spec['name']}:{s}" for s in df["image_id"]])
        correct = _corrector(spec.get("illumination"), float(spec.get("pixel_size_um", 0.65)))
        for pair in patch_set_pairs(
            df,
            threshold=threshold,
            plate=spec["plate"],
            modality=spec["modality"],
            correct=correct,
        ):
            if groups is not None:
                groups[pair["image_id"]] = pair["source"]
            yield pair


def group_by_source(manifest: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Set ``source_image`` of pre-tiled patches to the image they were cut from.

    :func:`brightseg.augment.build_training_store` records each pair's ``image_id`` as
    ``source_image``, the column the grouped split groups by; for a patch that is the
    patch itself.  Here it becomes the patch's ``source`` (the ``name_regex`` group), so
    all patches of one source image (and their variants) land on one side of the split.
    A source named like a plate image joins that image's group.
    """
    out = manifest.copy()
    src = out["source_image"].astype(str)
    out["source_image"] = [groups.get(s, s) for s in src]
    return out


# --------------------------------------------------------------------------- evaluation sets


def _norm(path: Any) -> str:
    return os.path.normpath(str(path)) if path else ""


def resolve_evaluation_sets(
    specs: Sequence[Mapping[str, Any]] | None,
    *,
    synth_dir: str = "results/demo/evalset",
    produced: Sequence[str] = (),
    check: bool = True,
) -> dict[str, dict[str, Any]]:
    """Check ``evaluation_sets`` and fill in the defaults.

    Parameters
    ----------
    specs : list of mapping
        Each ``{name, images, masks}`` with optional ``mask_suffix``, ``pixel_size_um``
        (0.65), ``baselines`` (``{method: folder of its masks}``) and ``synth`` (true: the
        demo's synthetic set, made by the workflow in ``synth_dir``; images and masks
        default to its ``images``/``masks`` folders).
    synth_dir : str
        Output folder of the synthetic set.
    produced : sequence of str
        Folders the workflow makes (e.g. ``results/evalsets/<name>/otsu``): baselines there
        need not exist yet.
    check : bool
        Check that the folders exist.

    Returns
    -------
    dict
        ``name -> spec`` in config order.
    """
    out: dict[str, dict[str, Any]] = {}
    made = {_norm(f) for f in produced}
    for i, spec in enumerate(specs or []):
        where = f"evaluation_sets[{i}]"
        if not isinstance(spec, Mapping):
            raise InputError(where, f"must be a mapping, got {spec!r}")
        name = _check_name(spec.get("name"), f"{where}.name")
        if name in out:
            raise InputError(f"{where}.name", f"evaluation set {name!r} is listed twice")
        synth = bool(spec.get("synth", False))
        baselines = spec.get("baselines") or {}
        if not isinstance(baselines, Mapping):
            raise InputError(f"{where}.baselines", "must map method names to mask folders")
        resolved = {
            "name": name,
            "synth": synth,
            "images": _norm(spec.get("images") or (f"{synth_dir}/images" if synth else "")),
            "masks": _norm(spec.get("masks") or (f"{synth_dir}/masks" if synth else "")),
            "mask_suffix": str(spec.get("mask_suffix") or ""),
            "pixel_size_um": float(spec.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM),
            "baselines": {str(k): _norm(v) for k, v in baselines.items()},
        }
        for key in ("images", "masks"):
            if not resolved[key]:
                raise InputError(f"{where}.{key}", "missing folder")
            if check and not synth and not Path(resolved[key]).is_dir():
                raise InputError(resolved[key], f"{where}.{key}: folder does not exist")
        for method, folder in resolved["baselines"].items():
            if not re.fullmatch(NAME_PATTERN, method) or method == ENSEMBLE:
                raise InputError(
                    f"{where}.baselines", f"method name {method!r} (reserved or not a name)"
                )
            if check and folder not in made and not Path(folder).is_dir():
                raise InputError(folder, f"{where}.baselines.{method}: folder does not exist")
        out[name] = resolved
    return out


def synth_demo_evalset(out_dir: str, spec: Mapping[str, Any], *, seed: int) -> pd.DataFrame:
    """Rule ``synth_evalset``: the demo's held-out set (``images/``, ``masks/``)."""
    from .io import atomic_path
    from .pipeline import _derive_seed
    from .synth import synth_eval_set

    with atomic_path(out_dir, is_dir=True) as tmp:
        df = synth_eval_set(
            tmp,
            n_images=int(spec.get("n_images", 3)),
            shape=tuple(spec.get("shape", (256, 256))),
            seed=_derive_seed(seed, "evalset"),
            modality=str(spec.get("modality", "brightfield")),
            cells_per_image=tuple(spec.get("cells_per_image", (15, 30))),
            **(
                {"mean_radius_px": float(spec["mean_radius_px"])}
                if "mean_radius_px" in spec
                else {}
            ),
        )
    log.info("synthetic evaluation set: %d images in %s", len(df), out_dir)
    return df


def otsu_baseline_for_set(images: str, out_dir: str, *, otsu: Mapping[str, Any]) -> pd.DataFrame:
    """Rule ``evalset_baseline``: the classical top-hat + Otsu baseline on every image."""
    from .evalsets import write_otsu_baseline
    from .io import atomic_path

    with atomic_path(out_dir, is_dir=True) as tmp:
        df = write_otsu_baseline(
            images,
            tmp,
            radius_px=int(otsu.get("radius_px", 20)),
            mode=str(otsu.get("mode", "black")),
            method=str(otsu.get("method", "fast")),
            sigma=float(otsu.get("sigma", 2.0)),
            min_size=int(otsu.get("min_size", 30)),
            fill_holes=bool(otsu.get("fill_holes", True)),
        )
    df["mask"] = [str(Path(out_dir) / Path(p).name) for p in df["mask"]]
    log.info("otsu baseline: %d masks in %s", len(df), out_dir)
    return df


def comparison_tables(
    long_df: pd.DataFrame,
    *,
    baselines: Sequence[str],
    ours: str = ENSEMBLE,
    paired_metrics: Sequence[str] = PAIRED_METRICS,
) -> dict[str, pd.DataFrame]:
    """Summary, Table 2 layout and paired tests of a long per-image table.

    Returns
    -------
    dict
        ``summary`` (:func:`brightseg.evalsets.summary_table`), ``table2``
        (:func:`brightseg.evalsets.table2_layout`, ``ours`` last) and ``paired``
        (:func:`brightseg.evalsets.paired_comparison_table` of ``ours`` against every
        baseline, one block of rows per metric of ``paired_metrics``; empty without
        baselines).
    """
    from .evalsets import paired_comparison_table, summary_table, table2_layout

    summary = summary_table(long_df)
    table2 = table2_layout(summary, ours=ours)
    sub = long_df[long_df["method"].isin([ours, *baselines])]
    frames = [
        paired_comparison_table(sub, ours=ours, metric=m)
        for m in paired_metrics
        if baselines and m in set(sub["metric"])
    ]
    if frames:
        paired = pd.concat(frames, ignore_index=True)
    else:
        paired = paired_comparison_table(
            long_df[long_df["method"] == ours], ours=ours, metric=paired_metrics[0]
        )
    return {"summary": summary, "table2": table2, "paired": paired}


def metric_distributions(
    wide: pd.DataFrame,
    *,
    metrics: Sequence[str] = FIGURE_METRICS,
    order: Sequence[str] | None = None,
    seed: int = 0,
):
    """Box plots of per-image metrics per method, images as jittered points.

    ``wide`` has one row per image and method and one column per metric
    (:func:`brightseg.evalsets.wide_table`).  One panel per metric; ``order`` sets the
    methods' order (default sorted).  Non-finite values (e.g. HD95 of an empty
    prediction) are left out.
    """
    import matplotlib

    from .figures import STYLE, _colours, _figure

    metrics = [m for m in metrics if m in wide.columns]
    methods = list(order) if order is not None else sorted(wide["method"].astype(str).unique())
    with matplotlib.rc_context(STYLE):
        ncols = min(3, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        width = max(2.4, 0.5 * len(methods) + 1.0)
        fig = _figure(width * ncols, 2.6 * nrows + 0.4)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        rng = np.random.default_rng(seed)
        colours = _colours(len(methods))
        for ax, metric in zip(axes, metrics, strict=False):
            data = []
            for m in methods:
                v = wide.loc[wide["method"].astype(str) == m, metric].to_numpy(float)
                data.append(v[np.isfinite(v)])
            ax.boxplot(data, tick_labels=methods, showfliers=False, widths=0.6)
            for i, (colour, d) in enumerate(zip(colours, data, strict=True), start=1):
                jitter = rng.uniform(-0.18, 0.18, size=len(d))
                ax.scatter(i + jitter, d, s=6, color=colour, alpha=0.7, linewidths=0)
            ax.set_title(metric)
            ax.tick_params(axis="x", rotation=90)
        for ax in axes[len(metrics) :]:
            ax.set_axis_off()
        fig.suptitle("Per-image metrics per method")
    return fig


def method_overlays(
    image: np.ndarray,
    truth: np.ndarray,
    preds: Mapping[str, np.ndarray],
    *,
    title: str = "",
    scores: Mapping[str, float] | None = None,
):
    """The image and one TP/FN/FP overlay per method (:func:`brightseg.figures.overlay_rgb`)."""
    import matplotlib
    from matplotlib.patches import Patch

    from .figures import OVERLAY_COLOURS, STYLE, _figure, overlay_rgb

    with matplotlib.rc_context(STYLE):
        n = 1 + len(preds)
        h, w = np.asarray(image).shape[:2]
        panel = 2.4
        fig = _figure(panel * n, panel * h / w + 0.7)
        axes = np.atleast_1d(fig.subplots(1, n)).ravel()
        axes[0].imshow(np.asarray(image), cmap="gray")
        axes[0].set_title(title or "image")
        for ax, (method, pred) in zip(axes[1:], preds.items(), strict=True):
            ax.imshow(overlay_rgb(image, pred, truth))
            score = (scores or {}).get(method)
            ax.set_title(method if score is None else f"{method}\nF1 {score:.3f}")
        names = {"tp": "true positive", "fn": "false negative", "fp": "false positive"}
        handles = [
            Patch(color=np.asarray(c) / 255, label=names[k]) for k, c in OVERLAY_COLOURS.items()
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        for ax in axes:
            ax.set_axis_off()
    return fig


def _save_png(fig, path: Path) -> None:
    import matplotlib

    from .figures import PNG_METADATA, STYLE
    from .io import atomic_path

    with matplotlib.rc_context(STYLE), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata=PNG_METADATA)


def evaluate_set(
    ensemble_tsv: str,
    spec: Mapping[str, Any],
    outputs: Mapping[str, str],
    *,
    inference: Mapping[str, Any],
    illumination: Mapping[str, Any],
    threshold: float = 127,
    paired_metrics: Sequence[str] = PAIRED_METRICS,
    seed: int = 0,
) -> pd.DataFrame:
    """Rule ``evalset_compare``: the ensemble, each checkpoint and every baseline on a set.

    Every image is read (RGB reduced to luminance), illumination-corrected as the plates
    are (the set's ``pixel_size_um`` converts um radii) and predicted at full size by the
    ensemble (:class:`brightseg.evaluate.Ensemble`; single checkpoints are their own
    probability > 0.5, as in the ``evaluate`` rule).  Baseline masks are read as they are.

    Parameters
    ----------
    ensemble_tsv : str
        ``results/models/ensemble.tsv``.
    spec : mapping
        One entry of :func:`resolve_evaluation_sets`.
    outputs : mapping
        Paths: ``per_image``, ``summary``, ``table2_md``, ``table2_tex``, ``paired``,
        ``paired_md``, ``metrics_png`` (``.svg`` and ``.parquet`` beside it), ``overlays``
        (a folder, ``<image>.png`` per image) and ``overlay_counts`` (parquet).
    inference, illumination : mapping
        The config blocks.
    threshold : float
        Threshold of lossy mask files.
    paired_metrics : sequence of str
        Metrics of the paired tests.
    seed : int
        Jitter of the figure's points.

    Returns
    -------
    pandas.DataFrame
        The long per-image table (``set, image, method, metric, value``).
    """
    from .evalsets import (
        BASELINE_PREFIX,
        baseline_methods,
        load_eval_set,
        per_image_table,
        wide_table,
    )
    from .evaluate import Ensemble
    from .figures import overlay_counts, save_figure, table_to_latex, table_to_markdown
    from .illumination import correct_illumination, radius_to_px
    from .io import atomic_path, read_image
    from .maskfolder import read_mask
    from .metrics import pixel_metrics
    from .progress import progress

    name = str(spec["name"])
    eval_df = load_eval_set(spec, threshold=threshold, check=True)
    baselines = baseline_methods(eval_df)
    ens = Ensemble(ensemble_tsv, inference)
    clash = sorted(set(baselines) & {ENSEMBLE, *ens.names})
    if clash:
        raise InputError(f"evaluation_sets[{name}].baselines", f"method names {clash} are taken")
    px = float(spec.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM)
    radius = radius_to_px(illumination["radius"], illumination.get("unit", "px"), px)
    log.info(
        "evaluation set %s: %d images, %d checkpoints, baselines %s; top-hat radius %d px",
        name,
        len(eval_df),
        len(ens.names),
        baselines or "none",
        radius,
    )
    methods = [ENSEMBLE, *ens.names, *baselines]
    counts: list[pd.DataFrame] = []

    with atomic_path(outputs["overlays"], is_dir=True) as overlay_dir:
        overlay_dir.mkdir(parents=True)

        def items() -> Iterator[dict[str, Any]]:
            for row in progress(eval_df.to_dict("records"), desc=f"evaluation set {name}"):
                image_id = str(row["image_id"])
                raw = read_image(row["image"])
                image = correct_illumination(
                    raw.astype(np.float32),
                    radius,
                    mode=illumination.get("mode", "white"),
                    method=illumination.get("method", "fast"),
                    percentiles=tuple(illumination.get("percentiles", (1.0, 99.8))),
                )
                truth = read_mask(row["mask"], threshold=threshold, expect="auto")[0]
                probs, _, mask = ens.predict(image)
                preds = {ENSEMBLE: mask.astype(np.uint8)}
                for ckpt, p in zip(ens.names, probs, strict=True):
                    preds[ckpt] = (p > 0.5).astype(np.uint8)
                for b in baselines:
                    preds[b] = read_mask(row[BASELINE_PREFIX + b], threshold=threshold)[0]
                shown = {m: preds[m] for m in (ENSEMBLE, *baselines)}
                scores = {m: pixel_metrics(p, truth)["f1"] for m, p in shown.items()}
                fig = method_overlays(raw, truth, shown, title=image_id, scores=scores)
                _save_png(fig, Path(overlay_dir) / f"{image_id}.png")
                for m, p in shown.items():
                    counts.append(overlay_counts(p, truth).assign(image=image_id, method=m))
                for method in methods:
                    yield {
                        "set": name,
                        "image": image_id,
                        "method": method,
                        "pred": preds[method],
                        "truth": truth,
                    }

        long_df = per_image_table(items())
    write_parquet(long_df, outputs["per_image"])
    cnt = pd.concat(counts, ignore_index=True)[["image", "method", "class", "pixels"]]
    write_parquet(cnt, outputs["overlay_counts"])

    tables = comparison_tables(long_df, baselines=baselines, paired_metrics=paired_metrics)
    write_parquet(tables["summary"], outputs["summary"])
    table2 = tables["table2"]
    write_text(table_to_markdown(table2), outputs["table2_md"])
    caption = f"Evaluation set {name}: mean ± std over {len(eval_df)} images"
    write_text(table_to_latex(table2, caption=caption), outputs["table2_tex"])
    paired = tables["paired"]
    write_parquet(paired, outputs["paired"])
    if len(paired):
        paired_md = table_to_markdown(paired)
    else:
        paired_md = f"No baseline methods are configured for evaluation set {name}.\n"
    write_text(paired_md, outputs["paired_md"])
    log.info("evaluation set %s:\n%s", name, table2.to_string(index=False))

    wide = wide_table(long_df)
    fig = metric_distributions(wide, order=methods, seed=seed)
    save_figure(fig, wide, str(Path(outputs["metrics_png"]).with_suffix("")))
    return long_df
