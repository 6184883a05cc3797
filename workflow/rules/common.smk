import logging
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from brightseg import cvat as bs_cvat
from brightseg import sheet as bs_sheet
from brightseg.errors import InputError

validate(config, schema="../schemas/config.schema.yaml")

ON_BAD_INPUT = config.get("on_bad_input", "error")
SYNTH = config.get("demo", {}).get("synth", {}) or {}

try:
    PLATES = bs_sheet.read_sheet(config["plates"])
    if config.get("plate_discovery"):
        _disc = config["plate_discovery"]
        PLATES = pd.concat(
            [
                PLATES,
                bs_sheet.discover_plates(
                    _disc["pattern"],
                    modality=_disc.get("modality", "brightfield"),
                    pixel_size_um=_disc["pixel_size_um"],
                    known=set(PLATES.index),
                ),
            ]
        )
    REGEX = bs_sheet.compile_regex(config["filename_regex"])
    # Plates on disk are checked now, before any job runs: a missing directory, a regex
    # that matches nothing, or two images on one well/field/timepoint stop the run here.
    for _plate, _row in PLATES.iterrows():
        if _plate not in SYNTH:
            bs_sheet.plate_images(
                _plate,
                _row["images"],
                REGEX,
                sheet_path=config["plates"],
                on_bad_input=ON_BAD_INPUT,
            )
    # Annotation exports on disk are parsed now too: a malformed XML (or, under
    # on_bad_input: error, a COCO annotation naming a missing image) stops the run here.
    # (The import job logs the skipped-shape counts; they are not repeated at every parse.)
    _cvat_log = logging.getLogger("brightseg.cvat")
    _cvat_level = _cvat_log.level
    _cvat_log.setLevel(logging.ERROR)
    try:
        for _plate, _row in PLATES.iterrows():
            _ann = _row["annotations"]
            if _ann and _plate not in SYNTH and not Path(_ann).is_dir():
                bs_cvat.load_annotations(
                    _ann,
                    labels=(config.get("annotations", {}) or {}).get("labels"),
                    on_bad_input=ON_BAD_INPUT,
                )
    finally:
        _cvat_log.setLevel(_cvat_level)
except InputError as exc:
    raise WorkflowError(f"brightseg: bad input: {exc}")

validate(PLATES, schema="../schemas/plates.schema.yaml")

PLATE_IDS = list(PLATES.index)
ANNOTATED = [p for p in PLATE_IDS if PLATES.loc[p, "annotations"]]
TRAINING = [p for p in PLATE_IDS if PLATES.loc[p, "use_for_training"]]


wildcard_constraints:
    plate=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    model=r"[A-Za-z0-9_.-]+",
    loss=r"[A-Za-z0-9_.-]+",


def plate_images_input(wildcards):
    """Raw images of a plate: the synth rule's output directory, or the files on disk."""
    row = PLATES.loc[wildcards.plate]
    if wildcards.plate in SYNTH:
        return row["images"]
    return [str(p) for p in bs_sheet.list_images(row["images"])]


def plate_annotations_input(wildcards):
    return PLATES.loc[wildcards.plate, "annotations"]


def plate_param(name):
    return lambda wildcards: PLATES.loc[wildcards.plate, name]


def _model_runs():
    """One row per training job: (model, loss) with the rest of its spec."""
    rows = []
    for spec in config.get("models", []):
        name = spec.get("name", spec["architecture"])
        rows.append(dict(spec, model=name, loss=spec["loss"]))
    runs = pd.DataFrame(rows, columns=["model", "loss", "architecture"])
    if runs.duplicated(["model", "loss"]).any():
        raise WorkflowError("config models: each (name, loss) pair must be unique")
    return runs, {(r["model"], r["loss"]): r for r in rows}


MODEL_RUNS, MODEL_SPECS = _model_runs()


LIVECELL = config.get("livecell", {}) or {}
LIVECELL_ON = bool(LIVECELL.get("enabled", False))
FIGURES = ["training_curves", "ensemble_ablation", "backbone_comparison", "morphometry"]
if LIVECELL_ON:
    FIGURES.append("livecell_groups")


def livecell_inputs(wildcards):
    """The synthetic fixture's directory (demo), or the real annotation files."""
    if LIVECELL.get("synth", False):
        return ["results/demo/livecell"]
    return list(LIVECELL.get("annotations", []))


def stats_input():
    if config["stats"].get("input", "evaluation") == "livecell" and LIVECELL_ON:
        return "results/tables/livecell/per_image.parquet"
    return "results/tables/evaluation.parquet"


def figure_inputs(wildcards):
    inputs = {
        "histories": expand(
            "results/models/{run.model}/{run.loss}/history.csv",
            run=MODEL_RUNS.itertuples(),
        ),
        "cards": expand(
            "results/models/{run.model}/{run.loss}/card.json",
            run=MODEL_RUNS.itertuples(),
        ),
        "ablation": "results/tables/ablation.parquet",
        "cells": expand("results/tables/{plate}/cells.parquet", plate=PLATE_IDS),
    }
    if LIVECELL_ON:
        inputs["livecell"] = "results/tables/livecell/per_image.parquet"
    return inputs


def model_spec(wildcards):
    return MODEL_SPECS[(wildcards.model, wildcards.loss)]


def all_targets():
    targets = expand("results/plates/{plate}.ome.zarr", plate=PLATE_IDS)
    targets += expand("results/annotations/{plate}/manifest.parquet", plate=ANNOTATED)
    targets.append("results/qc/skipped.tsv")
    if len(MODEL_RUNS):
        targets += ["results/models/ensemble.tsv", "results/training/gallery.png"]
        targets += expand("results/tables/{plate}/cells.parquet", plate=PLATE_IDS)
        targets.append("results/tables/images.parquet")
        targets += ["results/tables/evaluation.parquet", "results/tables/stats.json"]
        targets += expand("results/figures/{name}.png", name=FIGURES)
        if LIVECELL_ON:
            targets.append("results/tables/livecell/ap.md")
        targets += evalset_targets()
    return targets


# --- Bring your own data (issue #8): mask folders, patch sets, evaluation sets -------------

from brightseg import byod as bs_byod

ANNOTATIONS_CFG = config.get("annotations", {}) or {}
MASK_THRESHOLD = float(ANNOTATIONS_CFG.get("mask_threshold", 127))
MASK_SUFFIX = str(ANNOTATIONS_CFG.get("mask_suffix", "") or "")
COMPARISON = config.get("comparison", {}) or {}
DEMO_EVALSET = (config.get("demo", {}) or {}).get("evalset")
EVALSET_SYNTH_DIR = "results/demo/evalset"
OTSU_BASELINE_DIR = "results/evalsets/{evalset}/otsu"

try:
    PATCH_SETS = bs_byod.resolve_patch_sets(
        config.get("training", {}).get("patch_sets") or [],
        illumination=config["illumination"],
        mask_threshold=MASK_THRESHOLD,
        on_bad_input=ON_BAD_INPUT,
    )
    _evalset_names = [s.get("name") for s in config.get("evaluation_sets") or []]
    EVALSETS = bs_byod.resolve_evaluation_sets(
        config.get("evaluation_sets") or [],
        synth_dir=EVALSET_SYNTH_DIR,
        produced=[OTSU_BASELINE_DIR.format(evalset=n) for n in _evalset_names],
    )
except InputError as exc:
    raise WorkflowError(f"brightseg: bad input: {exc}")

if any(s["synth"] for s in EVALSETS.values()) and not DEMO_EVALSET:
    raise WorkflowError(
        "evaluation_sets: an entry has synth: true but config has no demo.evalset"
    )


def augment_training_params():
    """The training block, with the resolved patch sets when there are any."""
    if not PATCH_SETS:
        return config["training"]
    return dict(config["training"], patch_sets=PATCH_SETS)


def _evalset(wildcards):
    try:
        return EVALSETS[wildcards.evalset]
    except KeyError:
        raise WorkflowError(
            f"no evaluation set {wildcards.evalset!r} in config evaluation_sets"
        )


def evalset_images_input(wildcards):
    """Images of an evaluation set: the synthetic set's folder (demo), or the folder on disk."""
    spec = _evalset(wildcards)
    return EVALSET_SYNTH_DIR if spec["synth"] else spec["images"]


def evalset_compare_input(wildcards):
    spec = _evalset(wildcards)
    data = [EVALSET_SYNTH_DIR] if spec["synth"] else [spec["images"], spec["masks"]]
    return {
        "ensemble": "results/models/ensemble.tsv",
        "data": data,
        "baselines": list(spec["baselines"].values()),
    }


def evalset_targets():
    return [
        f"results/tables/evalsets/{name}/{leaf}"
        for name in EVALSETS
        for leaf in ("per_image.parquet", "table2.md", "paired.md")
    ]


if not TRAINING and not PATCH_SETS and len(MODEL_RUNS):
    raise WorkflowError(
        f"{config['plates']}: no plate has use_for_training and no training.patch_sets are "
        "given, but config lists models to train"
    )
