import logging
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from brightseg import bundle as bs_bundle
from brightseg import config as bs_config
from brightseg.annotations import cvat as bs_cvat
from brightseg import evalsets as bs_evalsets
from brightseg.annotations import maskfolder as bs_maskfolder
from brightseg import sheet as bs_sheet
from brightseg.errors import InputError
from brightseg.illumination import radius_to_px
from brightseg.limits import Limits

# The whole config is checked once, against a schema that knows every key (an unknown key
# stops the run here, with the closest valid name), and becomes typed, frozen blocks with
# the defaults filled in. Rules pass the blocks' plain dicts as params (so Snakemake's
# params trigger sees them) and only the keys that change each rule's output.
# Predict-only runs (`model: <bundle>`): the bundle's preprocessing and inference keys are
# filled in (a conflicting value in the config stops the run, naming both), nothing is
# trained, and every plate is predicted with the bundle's checkpoints.
_CONFIG_SOURCE = ", ".join(str(f) for f in workflow.configfiles) or "config"
BUNDLE = config.get("model") or None
try:
    _config = config
    if BUNDLE:
        _config, _manifest = bs_bundle.config_with_bundle(config, source=_CONFIG_SOURCE)
        BUNDLE_SHA256 = _manifest["content_sha256"]
    CFG = bs_config.Config.from_dict(_config, source=_CONFIG_SOURCE)
except InputError as exc:
    raise WorkflowError(f"brightseg: bad config: {exc}")

ON_BAD_INPUT = CFG["on_bad_input"]
SEED = CFG["seed"]
SYNTH = CFG["demo"]["synth"]
SHEET = CFG["plates"]

try:
    LIMITS = Limits.from_config(CFG["limits"])
    PLATES = (
        bs_sheet.read_sheet(SHEET, limits=LIMITS) if SHEET else bs_sheet.empty_sheet()
    )
    if CFG["plate_discovery"]:
        _disc = CFG["plate_discovery"]
        PLATES = pd.concat(
            [
                PLATES,
                bs_sheet.discover_plates(
                    _disc["pattern"],
                    modality=_disc["modality"],
                    pixel_size_um=_disc["pixel_size_um"],
                    known=set(PLATES.index),
                ),
            ]
        )
    REGEX = bs_sheet.compile_regex(CFG["filename_regex"])
    # Plates on disk are checked now, before any job runs: a missing directory, a regex
    # that matches nothing, or two images on one well/field/timepoint stop the run here.
    for _plate, _row in PLATES.iterrows():
        if _plate not in SYNTH:
            bs_sheet.plate_images(
                _plate,
                _row["images"],
                REGEX,
                sheet_path=SHEET,
                on_bad_input=ON_BAD_INPUT,
                limits=LIMITS,
            )
    # Annotation exports on disk are parsed now too: a malformed XML (or, under
    # on_bad_input: error, a COCO annotation naming a missing image) stops the run here.
    # (The import job logs the skipped-shape counts; they are not repeated at every parse.)
    _cvat_log = logging.getLogger("brightseg.annotations.cvat")
    _cvat_level = _cvat_log.level
    _cvat_log.setLevel(logging.ERROR)
    _labels = CFG.annotations.labels
    try:
        for _plate, _row in PLATES.iterrows():
            _ann = _row["annotations"]
            if _ann and _plate not in SYNTH and not Path(_ann).is_dir():
                bs_cvat.load_annotations(
                    _ann,
                    labels=list(_labels) if _labels is not None else None,
                    on_bad_input=ON_BAD_INPUT,
                    limits=LIMITS,
                )
    finally:
        _cvat_log.setLevel(_cvat_level)
    # Per-plate illumination: the sheet's optional columns override the config block for
    # one plate (checked against the schema), so changing one plate's setting reruns only
    # that plate's jobs.
    PLATE_ILLUMINATION = {
        _plate: bs_config.plate_illumination(CFG.illumination, _row, sheet=SHEET)
        for _plate, _row in PLATES.iterrows()
    }
    # A radius that would allocate a structuring element beyond limits stops here too.
    for _plate, _ill in PLATE_ILLUMINATION.items():
        radius_to_px(
            _ill.radius, _ill.unit, PLATES.loc[_plate, "pixel_size_um"], LIMITS
        )
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


def plate_illumination(wildcards):
    return PLATE_ILLUMINATION[wildcards.plate].as_dict()


if BUNDLE and CFG.models:
    logging.getLogger("brightseg").warning(
        "model: %s is given: the config's %d models are not trained (predict-only run)",
        BUNDLE,
        len(CFG.models),
    )
MODEL_SPECS = {(m.name, m.loss): m for m in CFG.models} if not BUNDLE else {}
# 3-class targets and border weights (issue 16) train from instance labels, so augment
# then stores them too (empty for binary models, whose augment params stay unchanged).
AUGMENT_LABELS = (
    {
        "with_labels": True,
        "with_nuclei": any(m.target == "nucleus3" for m in CFG.models),
    }
    if any(m.target != "binary" or "border_weight" in m.loss_kwargs for m in CFG.models)
    else {}
)
if len(MODEL_SPECS) != len(CFG.models):
    raise WorkflowError(
        "brightseg: bad config: models: each (name, loss) pair must be unique"
    )
MODEL_RUNS = pd.DataFrame(
    [{"model": m, "loss": l} for m, l in MODEL_SPECS], columns=["model", "loss"]
)
# What votes: the trained ensemble, or the bundle of a predict-only run (its content hash
# is a param of the rules that use it, so a new bundle reruns exactly those).
ENSEMBLE_SOURCE = BUNDLE or "results/models/ensemble.tsv"
ENSEMBLE_ID = BUNDLE_SHA256 if BUNDLE else "trained"
# The trained ensemble's threshold (made by the choose_threshold rule, beside ensemble.tsv)
# is the one chosen on the validation patches (inference.threshold = validation) or the
# configured number with its validation Dice; always made, so that a changed setting leaves
# no stale file. A bundle records the number it was chosen as.
THRESHOLD_JSON = [] if BUNDLE else "results/models/threshold.json"
_train_px = {float(PLATES.loc[p, "pixel_size_um"]) for p in TRAINING}
TRAINING_PIXEL_SIZE = _train_px.pop() if len(_train_px) == 1 else None


def model_spec(wildcards):
    spec = MODEL_SPECS[(wildcards.model, wildcards.loss)].as_dict()
    if spec["target"] == "binary":
        # the default: a binary model's params stay as they were before targets existed
        del spec["target"]
    return spec


def run_outputs(leaf):
    """One path per training run (model, loss): results/models/{model}/{loss}/<leaf>."""
    return expand(
        f"results/models/{{run.model}}/{{run.loss}}/{leaf}", run=MODEL_RUNS.itertuples()
    )


LIVECELL = CFG.livecell
LIVECELL_ON = LIVECELL.enabled
FIGURES = ["training_curves", "ensemble_ablation", "backbone_comparison", "morphometry"]
if LIVECELL_ON:
    FIGURES.append("livecell_groups")


def livecell_inputs(wildcards):
    """The synthetic fixture's directory (demo), or the real annotation files."""
    if LIVECELL.synth:
        return ["results/demo/livecell"]
    return list(LIVECELL.annotations)


def stats_input():
    if CFG.stats.input == "livecell" and LIVECELL_ON:
        return "results/tables/livecell/per_image.parquet"
    return "results/tables/evaluation.parquet"


def figure_inputs(wildcards):
    inputs = {
        "histories": run_outputs("history.csv"),
        "cards": run_outputs("card.json"),
        "ablation": "results/tables/ablation.parquet",
        "cells": expand("results/tables/{plate}/cells.parquet", plate=PLATE_IDS),
    }
    if LIVECELL_ON:
        inputs["livecell"] = "results/tables/livecell/per_image.parquet"
    return inputs


def all_targets():
    """What a plain `snakemake` makes. Plate-level tables, the held-out evaluation, the
    statistics and the figures need plates (annotated ones for the evaluation): without
    plates yet (training on patch sets only), only the models and the evaluation sets.
    """
    targets = expand("results/plates/{plate}.ome.zarr", plate=PLATE_IDS)
    targets += expand("results/annotations/{plate}/manifest.parquet", plate=ANNOTATED)
    if PLATE_IDS:
        targets.append("results/qc/skipped.tsv")
    if BUNDLE:
        targets += evalset_targets()
        if PLATE_IDS:
            targets += expand("results/tables/{plate}/cells.parquet", plate=PLATE_IDS)
            targets.append("results/tables/images.parquet")
    if len(MODEL_RUNS):
        targets += ["results/models/ensemble.tsv", "results/training/gallery.png"]
        targets += ["results/models/bundle.tar"]
        targets += evalset_targets()
        if LIVECELL_ON:
            targets.append("results/tables/livecell/ap.md")
        if PLATE_IDS:
            targets += expand("results/tables/{plate}/cells.parquet", plate=PLATE_IDS)
            targets.append("results/tables/images.parquet")
        if ANNOTATED:
            targets += [
                "results/tables/evaluation.parquet",
                "results/figures/segmentation_overlay.png",
            ]
            targets += expand("results/figures/{name}.png", name=FIGURES)
        if ANNOTATED or stats_input().startswith("results/tables/livecell"):
            targets.append("results/tables/stats.json")
    return targets


# --- Bring your own data: mask folders, patch sets, evaluation sets ---------------------

DEMO_EVALSET = CFG["demo"]["evalset"]
EVALSET_SYNTH_DIR = "results/demo/evalset"
OTSU_BASELINE_DIR = "results/evalsets/{evalset}/otsu"

try:
    PATCH_SETS = bs_maskfolder.resolve_patch_sets(
        CFG.training.patch_sets,
        illumination=CFG.illumination.as_dict(),
        mask_threshold=CFG.annotations.mask_threshold,
        mask_mode=CFG.annotations.mask_mode,
        on_bad_input=ON_BAD_INPUT,
    )
    EVALSETS = bs_evalsets.resolve_evaluation_sets(
        CFG["evaluation_sets"],
        synth_dir=EVALSET_SYNTH_DIR,
        produced=[
            OTSU_BASELINE_DIR.format(evalset=s["name"]) for s in CFG["evaluation_sets"]
        ],
    )
except InputError as exc:
    raise WorkflowError(f"brightseg: bad input: {exc}")

if any(s["synth"] for s in EVALSETS.values()) and not DEMO_EVALSET:
    raise WorkflowError(
        "evaluation_sets: an entry has synth: true but config has no demo.evalset"
    )


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
        "ensemble": ENSEMBLE_SOURCE,
        "threshold": THRESHOLD_JSON,
        "data": data,
        "baselines": list(spec["baselines"].values()),
    }


def evalset_targets():
    return [
        f"results/tables/evalsets/{name}/{leaf}"
        for name in EVALSETS
        for leaf in ("per_image.parquet", "table2.md", "paired.md")
    ]


if BUNDLE and TRAINING:
    logging.getLogger("brightseg").warning(
        "model: %s is given: plates with use_for_training (%s) are predicted, not trained on",
        BUNDLE,
        ", ".join(TRAINING),
    )
if not TRAINING and not PATCH_SETS and len(MODEL_RUNS):
    raise WorkflowError(
        f"{SHEET}: no plate has use_for_training and no training.patch_sets are "
        "given, but config lists models to train"
    )
