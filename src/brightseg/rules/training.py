"""Rules of the training stage: augmented training store, split, gallery, training, selection."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ..annotations.maskfolder import group_by_source, patch_set_training_pairs, resolve_patch_sets
from ..augment import (
    build_training_store,
    make_gallery,
    open_training_store,
    training_store_planes,
)
from ..bundle import load_ensemble, training_summary, write_bundle
from ..config import EnsembleConfig, InferenceConfig, ModelSpec, StudentConfig, TrainingConfig
from ..ensemble import resolve_threshold, validation_threshold
from ..errors import InputError
from ..io import read_image, write_parquet, write_text
from ..platestore import open_plate
from ..scale import pair_to_working
from ..selection import read_histories, write_ensemble_tsv
from ..selection import select_checkpoints as _select
from ..split import apply_split, split_summary

log = logging.getLogger(__name__)


def _plate_training_pairs(
    stores: Sequence[str],
    manifests: Sequence[str],
    with_labels: bool = False,
    with_nuclei: bool = False,
) -> Iterator[dict]:
    """Yield the corrected image and annotation mask of every annotated training image.

    ``with_labels``: also its instance labels (``<stem>_labels.tif`` of the import);
    ``with_nuclei``: also its nucleus labels (``<stem>_nuclei.tif``, imported with
    ``annotations.nucleus_labels``).
    """
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
            pair = {
                "image_id": row.stem,
                "plate": store.plate,
                "modality": store.modality,
                "pixel_size_um": store.pixel_size_um,
                "image": store.read(row.stem),
                "mask": (mask > 0).astype("uint8"),
            }
            if with_labels:
                pair["labels"] = read_image(ann_dir / f"{row.stem}_labels.tif")
            if with_nuclei:
                nuclei = ann_dir / f"{row.stem}_nuclei.tif"
                if not nuclei.is_file():
                    raise InputError(
                        nuclei,
                        f"a nucleus3 model trains on nucleus labels, but plate {store.plate}'s "
                        "annotations have none: name the nucleus label of its CVAT/COCO export "
                        "in annotations.nucleus_labels (mask folders carry no nuclei)",
                    )
                pair["nuclei"] = read_image(nuclei)
            yield pair


def augment(
    stores: Sequence[str],
    manifests: Sequence[str],
    out_zarr: str,
    out_manifest: str,
    *,
    training: TrainingConfig | dict,
    patch_sets: Sequence[dict],
    seed: int,
) -> None:
    """Rule ``augment``: patches + 21 variants of every annotated training image into zarr.

    ``training`` needs only the keys that change the store
    (:data:`brightseg.config.TrainingConfig.AUGMENT_KEYS`: the rule's params hold nothing
    else, so changing ``epochs`` does not rerun the augmentation).  ``patch_sets`` (resolved
    by :func:`brightseg.annotations.maskfolder.resolve_patch_sets`) add pre-tiled image/mask patches
    after the plates' images.  A patch the size of ``patch_size`` is one tile (a larger
    one is tiled, a smaller one padded); its manifest rows get the image it was cut from as
    ``source_image``, the column the split groups by, so all patches of one source image
    land on the same side of the split.  ``training`` may also hold ``with_labels`` (store
    the instance labels for 3-class targets and border weights; patch sets, which have
    binary masks only, get their connected components) and ``with_nuclei`` (nucleus3: the
    nucleus labels imported with ``annotations.nucleus_labels``; an image without them, or a
    patch set, stops the run with an explanation).
    """
    training = dict(training if isinstance(training, dict) else training.as_dict())
    with_labels = bool(training.pop("with_labels", False))
    working = training.pop("working_pixel_size_um", None)
    with_nuclei = bool(training.pop("with_nuclei", False))
    if with_nuclei and patch_sets:
        raise InputError(
            "training.patch_sets",
            "a nucleus3 model trains on nucleus labels, which pre-tiled patch sets (binary "
            "masks) do not carry: train it on plates annotated with annotations.nucleus_labels",
        )
    cfg = TrainingConfig.coerce(training)
    patch_sets = resolve_patch_sets(patch_sets)
    groups: dict[str, str] = {}
    set_pairs = patch_set_training_pairs(patch_sets, groups=groups)
    if with_labels:
        set_pairs = ({**p, "labels": _components(p["mask"])} for p in set_pairs)
    pairs = itertools.chain(
        _plate_training_pairs(stores, manifests, with_labels, with_nuclei), set_pairs
    )
    if working is not None:
        log.info(
            "training images resampled to %.3f um/px (training.working_pixel_size_um)", working
        )
        pairs = (pair_to_working(p, float(working)) for p in pairs)
    df = build_training_store(
        pairs,
        out_zarr,
        out_manifest,
        patch_size=cfg.patch_size,
        stride=cfg.stride,
        min_foreground=cfg.min_foreground,
        n_variants=cfg.n_variants,
        seed=seed,
        with_labels=with_labels,
        with_nuclei=with_nuclei,
        working_pixel_size_um=None if working is None else float(working),
    )
    if groups:
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


def _components(mask):
    """Connected components of a binary mask (instance labels of a patch set's patch)."""
    from scipy import ndimage as ndi

    return ndi.label(mask > 0)[0].astype("uint16")


def split(
    manifest_in: str, manifest_out: str, summary_out: str, *, val_fraction: float, seed: int
) -> None:
    """Rule ``split``: grouped, stratified train/validation split of the training store."""
    df = apply_split(
        manifest_in,
        manifest_out,
        val_fraction=float(val_fraction),
        seed=seed,
        group_col="source_image",
        strata_col="modality",
    )
    write_text(split_summary(df).to_csv(sep="\t", index=False), summary_out)


def gallery(store: str, manifest: str, out_png: str, *, seed: int) -> None:
    """Rule ``gallery``: the augmentation gallery (paper Fig. 2) from the first training patch.

    The untouched variant (0) of the first patch of the training store: it exists whether
    the training data came from plates or from pre-tiled patch sets.
    """
    man = pd.read_parquet(manifest)
    first = man[man["variant"] == 0].sort_values("patch_id").iloc[0]
    images, masks = open_training_store(store)
    idx = int(first["index"])
    # a grey image's three channels are equal; of three focal planes the gallery shows
    # the middle one
    channel = 1 if training_store_planes(store) == 3 else 0
    image = images[idx][..., channel].astype("float32") / 255.0
    make_gallery(image, (masks[idx] > 0).astype("uint8"), out_png, seed=seed, size=image.shape[0])


def train(
    store: str,
    manifest: str,
    history: str,
    card: str,
    checkpoints: str,
    *,
    spec: ModelSpec | dict,
    training: TrainingConfig | dict,
    seed: int,
    keras_home: str | None = None,
) -> None:
    """Rule ``train``: one (architecture, loss) run with a checkpoint per epoch.

    ``checkpoints`` is the run's declared ``directory()`` output (``epoch_NN.keras``);
    ``history.csv``, ``card.json`` and ``tensorboard/`` go beside it.
    """
    from ..models import set_keras_home
    from ..train import train_model  # TensorFlow: imported by the rules that need it

    spec = ModelSpec.coerce(spec)
    cfg = TrainingConfig.coerce(training)
    if keras_home:
        set_keras_home(keras_home)
    out_dir = Path(history).parent
    train_model(
        store, manifest, out_dir, spec=spec, training=cfg, seed=seed, checkpoint_dir=checkpoints
    )
    for p in (history, card):
        if not Path(p).is_file():
            raise RuntimeError(f"training finished without writing {p}")


def select_checkpoints(
    histories: Sequence[str],
    out_tsv: str,
    *,
    ensemble: EnsembleConfig | dict,
    tta: Mapping[str, bool] | None = None,
) -> None:
    """Rule ``select_checkpoints``: rank all epoch checkpoints, keep the top K.

    ``tta`` maps ``"model/loss"`` to that run's ``models[].tta`` where the config sets
    one; the table then gets a ``tta`` column (empty: ``inference.tta``), which
    :class:`~brightseg.ensemble.Ensemble` honours per checkpoint.
    """
    cfg = EnsembleConfig.coerce(ensemble)
    sel = _select(
        read_histories([Path(h).parent for h in histories]),
        k=cfg.top_k,
        window=cfg.stability_window,
    )
    missing = [p for p in sel["path"] if not Path(p).is_file()]
    if missing:
        raise RuntimeError(f"selected checkpoints do not exist: {missing}")
    runs = sel["model"].astype(str) + "/" + sel["loss"].astype(str)
    if tta:
        sel["tta"] = ["" if tta.get(r) is None else str(bool(tta[r])).lower() for r in runs]
    working = _working_pixel_sizes(histories)
    if any(v is not None for v in working.values()):
        sel["working_pixel_size_um"] = [working[r] for r in runs]
    write_ensemble_tsv(sel, out_tsv)


def _working_pixel_sizes(histories: Sequence[str]) -> dict[str, float | None]:
    """``"model/loss"`` -> the working pixel size in the run's ``card.json`` (None: none)."""
    out = {}
    for h in histories:
        run = Path(h).parent
        card_path = run / "card.json"
        if not card_path.is_file():
            raise InputError(card_path, "training card does not exist (written by the train rule)")
        card = json.loads(card_path.read_text())
        out[f"{run.parent.name}/{run.name}"] = card.get("data", {}).get("working_pixel_size_um")
    return out


def choose_threshold(
    ensemble_tsv: str, store: str, manifest: str, out_json: str, *, inference: dict
) -> dict:
    """Rule ``choose_threshold``: the vote threshold of the trained ensemble, in ``threshold.json``.

    With ``inference.threshold: validation`` it is the threshold that maximises the
    ensemble's pooled Dice on the validation split's un-augmented patches (variant 0; every
    validation sample where the manifest has no variants).  With a number, that number is
    recorded (``chosen_on: config``) with its pooled validation Dice, beside the threshold
    validation would have chosen (``best_threshold``, ``best_dice``): the file always says
    which threshold the predictions used, so a changed setting leaves no stale file behind.
    """
    configured = InferenceConfig.coerce(inference)
    inf = configured.replace(threshold=0.5)
    df = pd.read_parquet(manifest)
    val = df[df["split"] == "val"]
    if "variant" in val and (val["variant"] == 0).any():
        val = val[val["variant"] == 0]
    if val.empty:
        raise InputError(manifest, "no validation patches to choose the threshold on")
    images, masks = open_training_store(store)
    index = val["index"].sort_values().to_numpy()
    # the store's three channels are the corrected grey image (equal for variant 0), or
    # three focal planes (kept as the channels)
    x = images.oindex[index].astype("float32") / 255.0
    if training_store_planes(store) == 1:
        x = x[..., 0]
    y = masks.oindex[index]
    ens = load_ensemble(ensemble_tsv, inf)
    fixed = None if configured.validation_threshold else float(configured.threshold)
    chosen = validation_threshold(ens, list(x), list(y), fixed=fixed)
    log.info(
        "threshold %.2f (%s) on %d validation patches: pooled Dice %.4f (%.4f at 0.5; "
        "best %.2f: %.4f)",
        chosen["threshold"],
        chosen["chosen_on"],
        chosen["n_patches"],
        chosen["dice"],
        chosen["dice_at_0.5"],
        chosen["best_threshold"],
        chosen["best_dice"],
    )
    write_text(json.dumps(chosen, indent=2) + "\n", out_json)
    return chosen


def choose_instances(
    ensemble_tsv: str,
    training_manifest: str,
    stores: Mapping[str, str],
    annotations: Mapping[str, str],
    out_json: str,
    *,
    inference: InferenceConfig | dict,
    instances: dict,
) -> dict:
    """Rule ``choose_instances``: watershed settings chosen on the validation plate images.

    The validation split's source images that are plate images (patch-set sources have no
    full-size image) are predicted whole by the ensemble (at the chosen threshold, each at
    its plate's pixel size), and :func:`brightseg.tuning.choose_instance_settings` picks
    ``h_um`` and ``min_area_um2`` by the best mean instance F1 at IoU 0.5 against their
    imported instance labels; ``out_json`` holds ``settings``, ``f1_50`` (theirs),
    ``f1_50_config`` (the config's own), ``n_images`` and the whole grid.  The rules that
    split cells merge ``settings`` over the config (:func:`brightseg.tuning.tuned_instances`).
    The held-out evaluation (``evaluate``) scores these same images, so its instance metrics
    are not independent of the choice; the evaluation sets are.
    """
    import numpy as np

    from ..config import InstancesConfig
    from ..ensemble import to_uint8
    from ..instances import split_with_config
    from ..tuning import choose_instance_settings
    from .evaluation import heldout_images

    # every plate given is a training plate: the held-out images are the validation split's
    val = heldout_images(training_manifest, dict(stores), dict(annotations), list(stores))
    if val.empty:
        raise InputError(
            training_manifest,
            "instances.tune is 'validation' but the validation split holds no plate images "
            "(pre-tiled patch sets have no full-size images to split into cells); set "
            "instances.tune: none",
        )
    cfg = InstancesConfig.coerce(instances).as_dict()
    ens = load_ensemble(ensemble_tsv, InferenceConfig.coerce(inference))
    with_seed = cfg["method"] != "distance"
    masks, truths, probs, seeds, sizes = [], [], [], [], []
    for row in val.itertuples(index=False):
        ps = open_plate(row.store, mode="r")
        truth = read_image(row.labels)
        out = ens.predict(
            ps.read(row.image_id), with_seed=with_seed, pixel_size_um=ps.pixel_size_um
        )
        prob, mask = out[1], out[2]
        masks.append(mask)
        probs.append(prob)
        seed = out[3].mean(axis=0) if with_seed and out[3] is not None else None
        # as the prediction store holds them (uint8), which split_instances reads
        seeds.append(None if seed is None else to_uint8(seed).astype(np.float32) / 255.0)
        truths.append(truth)
        sizes.append(float(ps.pixel_size_um))

    def split_one(i, settings):
        prob = to_uint8(probs[i]).astype(np.float32) / 255.0 if cfg["use_prob"] else None
        return split_with_config(
            masks[i], sizes[i], {**cfg, **settings}, prob=prob, seed_prob=seeds[i]
        )

    pick = choose_instance_settings(masks, truths, split_one)
    result = {
        "settings": pick["settings"],
        "f1_50": pick["f1_50"],
        "f1_50_config": pick["f1_50_config"],
        "n_images": len(masks),
        "images": [f"{r.plate}/{r.image_id}" for r in val.itertuples(index=False)],
        "grid": pick["table"],
    }
    write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", out_json)
    return result


def distill(
    ensemble_tsv: str,
    store: str,
    manifest: str,
    student_out: str,
    card_out: str,
    history_out: str,
    targets_out: str,
    *,
    inference: InferenceConfig | dict,
    student: StudentConfig | dict,
    unlabelled_stores: Sequence[str] = (),
    seed: int,
    precision: str = "float32",
    deterministic: bool = True,
) -> dict:
    """Rule ``distill``: the ensemble's soft votes taught to one small student network.

    The ensemble votes with the chosen threshold (``threshold.json``); soft targets, the
    student, its history and its card go to ``results/models/student/`` (see
    :mod:`brightseg.distill`).  ``precision`` and ``deterministic`` are the training
    block's.
    """
    import tensorflow as tf

    from ..distill import distill_ensemble
    from ..train import _dtype_policy

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    ens = load_ensemble(ensemble_tsv, InferenceConfig.coerce(inference))
    stores = [open_plate(p, mode="r") for p in unlabelled_stores]
    with _dtype_policy(precision):
        return distill_ensemble(
            ens,
            store,
            manifest,
            student_out,
            card_out,
            history_out,
            targets_out,
            student=StudentConfig.coerce(student),
            unlabelled_stores=stores,
            seed=seed,
        )


def bundle(
    ensemble_tsv: str,
    manifest: str,
    split_summary: str,
    out_dir: str,
    archive: str,
    *,
    illumination: dict,
    inference: InferenceConfig | dict,
    tile: int | None,
    pixel_size_um: float | None,
    training: dict,
    seed: int,
    instances: dict | None = None,
    input_planes: int = 1,
    student: Sequence[str] = (),
) -> None:
    """Rule ``bundle``: the voting checkpoints as a portable, verified model bundle.

    ``illumination`` is the block the training images were corrected with; ``tile`` the
    models' input size (the training patch size); ``pixel_size_um`` the training images'
    pixel size where they share one (None otherwise); ``input_planes`` the focal planes
    of the training images (:mod:`brightseg.focus`); ``student`` the distilled
    ``student.keras`` and its ``card.json`` (empty without distillation).  See
    :mod:`brightseg.bundle`.
    """
    inf = resolve_threshold(InferenceConfig.coerce(inference), ensemble_tsv)
    summary = training_summary([manifest], split_summary, seed=seed, training=training)
    write_bundle(
        ensemble_tsv,
        out_dir,
        archive,
        illumination=illumination,
        inference=inf.as_dict(),
        tile=tile,
        pixel_size_um=pixel_size_um,
        training=summary,
        instances=instances,
        input_planes=int(input_planes),
        student=student[0] if student else None,
        student_card=student[1] if student else None,
    )
