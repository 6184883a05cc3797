import logging
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from brightseg import bundle as bs_bundle
from brightseg import config as bs_config
from brightseg.annotations import cvat as bs_cvat
from brightseg import evalsets as bs_evalsets
from brightseg import focus as bs_focus
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
    # Multi-focal plates (sheet columns z_planes, z_select): None for single-plane ones.
    PLATE_FOCUS = {
        _plate: bs_focus.plate_focus(_row, sheet=SHEET)
        for _plate, _row in PLATES.iterrows()
    }
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
                focus=PLATE_FOCUS[_plate],
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


def plate_focus(wildcards):
    focus = PLATE_FOCUS[wildcards.plate]
    return None if focus is None else focus.as_dict()


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
# A working pixel size changes the training store (absent when null: the params stay as
# they were before the option existed).
AUGMENT_SCALE = (
    {"working_pixel_size_um": CFG.training.working_pixel_size_um}
    if CFG.training.working_pixel_size_um is not None
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
# instances.tune: validation - the watershed settings chosen on the validation plate images
# (rule choose_instances, beside ensemble.tsv), an input of every rule that splits cells. A
# bundle records the settings its run chose.
TUNE_INSTANCES = CFG.instances.tune == "validation"
if TUNE_INSTANCES and BUNDLE:
    raise WorkflowError(
        "brightseg: bad config: instances.tune is 'validation', which chooses the watershed "
        f"settings on a training run's validation images; the model bundle {BUNDLE} records "
        "the settings its run used: remove instances.tune (or set it to none)"
    )
INSTANCES_JSON = "results/models/instances.json" if TUNE_INSTANCES else []
# The annotations block as rule params, nucleus_labels left out when null (results made
# before the option existed keep their params).
ANNOTATIONS_PARAMS = {
    k: v
    for k, v in CFG.annotations.as_dict().items()
    if not (k == "nucleus_labels" and v is None)
}
# The instances block as rule params; tune left out at its default (none), so that results
# made before the option existed keep their params.
INSTANCES_PARAMS = {
    k: v
    for k, v in CFG.instances.as_dict().items()
    if not (k == "tune" and v == "none")
}
# Distillation (ensemble.distill): one small student, trained on the ensemble's soft votes
# (rule distill), predicts the plates; the ensemble stays for QC and the evaluation sets. A
# predict-only run uses the bundle's student (a bundle without one stops the run here).
DISTILL = CFG.ensemble.distill
STUDENT = CFG.ensemble.student_config
STUDENT_DIR = "results/models/student"
if DISTILL and BUNDLE and "student" not in _manifest:
    raise WorkflowError(
        f"brightseg: bad config: ensemble.distill is true but the model bundle {BUNDLE} "
        "has no student (train one with ensemble.distill: true, or set it to false)"
    )
_unknown_unlabelled = sorted(set(STUDENT.unlabelled_plates) - set(PLATES.index))
if DISTILL and _unknown_unlabelled:
    raise WorkflowError(
        "brightseg: bad config: ensemble.student.unlabelled_plates names plates that are "
        f"not in {SHEET}: {', '.join(_unknown_unlabelled)}"
    )
STUDENT_INPUT = (BUNDLE or f"{STUDENT_DIR}/student.keras") if DISTILL else []
# Only a distilled run has the QC param (a run without one keeps its params, so no rerun).
PREDICT_QC = {"qc_images": STUDENT.qc_images} if DISTILL else {}
_train_px = {float(PLATES.loc[p, "pixel_size_um"]) for p in TRAINING}
TRAINING_PIXEL_SIZE = _train_px.pop() if len(_train_px) == 1 else None


def model_spec(wildcards):
    spec = MODEL_SPECS[(wildcards.model, wildcards.loss)].as_dict()
    spec.pop("tta")  # an inference setting (select_checkpoints): no retraining
    if spec["target"] == "binary":
        # the default: a binary model's params stay as they were before targets existed
        del spec["target"]
    return spec


# models[].tta where set, as {"model/loss": bool}: the tta column of ensemble.tsv
MODEL_TTA = {
    f"{m}/{l}": s.tta for (m, l), s in MODEL_SPECS.items() if s.tta is not None
}


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
        targets += ["results/qc/skipped.tsv", "results/qc/polarity.tsv"]
    if BUNDLE:
        targets += evalset_targets()
        if PLATE_IDS:
            targets += expand("results/tables/{plate}/cells.parquet", plate=PLATE_IDS)
            targets.append("results/tables/images.parquet")
    if len(MODEL_RUNS):
        targets += ["results/models/ensemble.tsv", "results/training/gallery.png"]
        targets += ["results/models/bundle.tar"]
        if DISTILL:
            targets.append(f"{STUDENT_DIR}/card.json")
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
    if CFG.explain.enabled and PLATE_IDS and (BUNDLE or len(MODEL_RUNS)):
        targets += expand("results/qc/explain/{plate}", plate=PLATE_IDS)
    targets += qc_targets(targets)
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
# Focal planes (sheet z_planes/z_select): one model takes one kind of input, so the
# training plates share their plane count and every predicted plate has the models' count.
PLATE_CHANNELS = {
    p: 1 if PLATE_FOCUS[p] is None else PLATE_FOCUS[p].channels for p in PLATE_IDS
}
try:
    MODEL_PLANES = (
        int(_manifest["preprocessing"].get("input_planes", 1))
        if BUNDLE
        else bs_focus.check_training_channels(
            {p: PLATE_CHANNELS[p] for p in TRAINING},
            patch_sets=len(PATCH_SETS),
            where=SHEET,
        )
    )
except InputError as exc:
    raise WorkflowError(f"brightseg: bad input: {exc}")
_odd_planes = [p for p in PLATE_IDS if PLATE_CHANNELS[p] != MODEL_PLANES]
_models = f"of {BUNDLE}" if BUNDLE else "trained here"
if _odd_planes and (BUNDLE or TRAINING or PATCH_SETS):
    raise WorkflowError(
        f"brightseg: bad input: {SHEET}: plate(s) {_odd_planes} have "
        f"{[PLATE_CHANNELS[p] for p in _odd_planes]} focal plane(s) but the models "
        f"{_models} take {MODEL_PLANES}: "
        "a plate is predicted by models trained on images with its planes (z_planes/z_select)"
    )
if MODEL_PLANES > 1 and (EVALSETS or LIVECELL_ON):
    raise WorkflowError(
        f"brightseg: bad config: the models take {MODEL_PLANES} focal planes per image, "
        "but evaluation_sets and LIVECell hold single-plane images: leave evaluation_sets "
        "empty and livecell.enabled false (annotated plates with use_for_training false "
        "are the held-out evaluation of multi-focal models)"
    )
if not TRAINING and not PATCH_SETS and len(MODEL_RUNS):
    raise WorkflowError(
        f"{SHEET}: no plate has use_for_training and no training.patch_sets are "
        "given, but config lists models to train"
    )


# --- Uncertainty, per-image QC and the review list (qc block) ----------------------------

try:
    QC = bs_config.QcConfig.coerce(CFG["qc"])
except InputError as exc:
    raise WorkflowError(f"brightseg: bad input: {exc}")
# Added to the rules only when qc.uncertainty is on: with it off, the predict and
# measure_cells jobs (their params, inputs and outputs) are exactly those of before.
QC_PREDICT_PARAMS = {"uncertainty": True} if QC.uncertainty else {}
QC_MEASURE_INPUT = (
    {"predictions": "results/predictions/{plate}.zarr"} if QC.uncertainty else {}
)
QC_MEASURE_PARAMS = (
    {"qc": QC.subset(["uncertainty", "uncertain_band", "border_px"])}
    if QC.uncertainty
    else {}
)


def qc_targets(targets):
    """The QC outputs of qc.uncertainty / qc.export_cvat, given the other targets."""
    if not QC.uncertainty:
        return []
    out = []
    if "results/tables/images.parquet" in targets:
        out += ["results/qc/review.tsv", "results/figures/qc_scores.png"]
        if QC.export_cvat:
            out.append("results/qc/review")
    out += [
        f"results/tables/evalsets/{name}/qc.json"
        for name in EVALSETS
        if f"results/tables/evalsets/{name}/per_image.parquet" in targets
    ]
    return out
