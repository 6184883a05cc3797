"""``brightseg bench touching``: binary vs border-weighted vs 3-class models on touching cells.

A DSB2018-like case (the Data Science Bowl 2018 nuclei: round, crowded, often touching
objects): :func:`touching_cells_scene` draws touching disks (the Voronoi-split ground truth
of :func:`brightseg.bench.instances.touching_disks`), each a dim dome-shaped cell body with a
bright round nucleus (radius :data:`NUCLEUS_FRACTION` of the cell's) at its centre, on a
noisy uneven background, blurred.  Touching cells meet without a gap, as in the labels.

:func:`bench_touching` trains one small U-Net per variant on the same training scenes and
scores held-out scenes by instance F1 at IoU 0.5:

``binary``          sigmoid mask, BCE + Dice, distance watershed (``instances.method: distance``)
``binary_weighted`` the same with the U-Net border weight map (``border_weight``) and the
                    touching pixels removed from the target, distance watershed
``border3``         softmax background / interior / border, ``cce_dice``, interior-seeded
                    watershed (``method: interior``)
``nucleus3``        softmax background / cytoplasm / nucleus, ``cce_dice``, LoG-seeded
                    watershed (``method: log_seeds``)

Each threshold is chosen on validation scenes (:func:`brightseg.metrics.choose_threshold`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .instances import touching_disks

log = logging.getLogger(__name__)

#: Nucleus radius as a fraction of the cell radius.
NUCLEUS_FRACTION = 0.45

#: The variants of :func:`bench_touching`: (target, loss, border weight, instances.method).
VARIANTS = {
    "binary": ("binary", "bce_dice", False, "distance"),
    "binary_weighted": ("binary", "bce_dice", True, "distance"),
    "border3": ("border3", "cce_dice", False, "interior"),
    "nucleus3": ("nucleus3", "cce_dice", False, "log_seeds"),
}


def touching_cells_scene(
    shape: tuple[int, int] = (256, 256),
    n: int = 40,
    *,
    radius_range: tuple[float, float] = (8.0, 14.0),
    seed: int = 0,
) -> dict:
    """One synthetic scene of touching round cells with nuclei.

    Parameters
    ----------
    shape : (int, int)
    n : int
        Number of cells.
    radius_range : (float, float)
        Cell radii in pixels.
    seed : int

    Returns
    -------
    dict
        ``image`` float32 in [0, 1], ``labels`` uint16 cell instances, ``nuclei`` uint16
        nucleus instances (same ids, inside their cell), ``mask`` uint8 {0, 1}.
    """
    rng = np.random.default_rng(seed)
    _, labels = touching_disks(shape, n, radius_range, rng=rng, overlap=0.3, touch=0.8)
    labels = labels.astype(np.uint16)
    image = np.zeros(shape, np.float64)
    nuclei = np.zeros(shape, np.uint16)
    centres = ndi.center_of_mass(labels > 0, labels, np.arange(1, labels.max() + 1))
    yy, xx = np.indices(shape)
    for i, (cy, cx) in enumerate(centres, start=1):
        cell = labels == i
        if not cell.any():
            continue
        r = np.sqrt(cell.sum() / np.pi)
        d = np.hypot(yy - cy, xx - cx)
        body = rng.uniform(0.30, 0.45) * (1.0 - 0.4 * (d / max(r, 1.0)) ** 2)
        image = np.where(cell, body, image)
        nuc = cell & (d <= NUCLEUS_FRACTION * r)
        nuclei[nuc] = i
        image = np.where(nuc, rng.uniform(0.7, 0.9), image)
    bg = 0.08 + 0.06 * ndi.gaussian_filter(rng.normal(size=shape), 30) * 30
    image = ndi.gaussian_filter(np.where(labels > 0, image, bg), 1.0)
    image = image + rng.normal(0.0, 0.03, shape)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return {
        "image": image,
        "labels": labels,
        "nuclei": nuclei,
        "mask": (labels > 0).astype(np.uint8),
    }


def bench_touching(
    out_dir: str | Path | None = None,
    *,
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 4,
    shape: tuple[int, int] = (256, 256),
    n_cells: int = 40,
    patch_size: int = 128,
    epochs: int = 8,
    steps_per_epoch: int = 20,
    base_filters: int = 8,
    variants=tuple(VARIANTS),
    seed: int = 0,
) -> dict:
    """Train each variant on the same touching-cell scenes; instance F1@0.5 on held-out ones.

    Parameters
    ----------
    out_dir : path, optional
        Working folder (store, models); a temporary one by default.
    n_train, n_val, n_test : int
        Scenes for training, threshold choice and scoring.
    shape, n_cells : scene size and cells per scene.
    patch_size, epochs, steps_per_epoch, base_filters : training size (batch 8).
    variants : names of :data:`VARIANTS`.
    seed : int

    Returns
    -------
    dict
        ``{variant}_f1`` (mean instance F1@0.5 over the test scenes), ``{variant}_dice``
        (pixel Dice), ``{variant}_s`` (training + scoring seconds), ``n_true`` (cells in
        the test scenes), ``distance_on_truth_f1`` (the distance watershed on the true
        masks: the ceiling of a binary mask).
    """
    from ..augment import build_training_store
    from ..crossval import _predict
    from ..instances import split_with_config
    from ..metrics import choose_threshold, match_instances, pixel_metrics
    from ..models.runtime import load_checkpoint
    from ..split import apply_split
    from ..targets import foreground_probability, seed_probability
    from ..train import train_model

    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="touching-"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = [
        touching_cells_scene(shape, n_cells, seed=seed * 1000 + i)
        for i in range(n_train + n_val + n_test)
    ]
    train, val, test = (
        scenes[:n_train],
        scenes[n_train : n_train + n_val],
        scenes[n_train + n_val :],
    )
    build_training_store(
        (
            {
                "image_id": f"scene{i}",
                "plate": "touching",
                "modality": "fluorescence",
                "image": s["image"],
                "mask": s["mask"],
                "labels": s["labels"],
                "nuclei": s["nuclei"],
            }
            for i, s in enumerate(train)
        ),
        work / "patches.zarr",
        work / "manifest_all.parquet",
        patch_size=patch_size,
        stride=patch_size // 2,
        n_variants=2,
        seed=seed,
        with_labels=True,
        with_nuclei=True,
    )
    apply_split(work / "manifest_all.parquet", work / "manifest.parquet", val_fraction=0.2, seed=0)
    diameter = 2.0 * NUCLEUS_FRACTION * float(np.mean([8.0, 14.0]))
    inference = {"batch_size": 8, "overlap": 16, "tta": False}
    result: dict = {
        "n_true": int(sum(int(s["labels"].max()) for s in test)),
        "distance_on_truth_f1": float(
            np.mean(
                [
                    match_instances(
                        split_with_config(s["mask"], 1.0, {"min_area_um2": 20.0}), s["labels"]
                    )["f1@0.5"]
                    for s in test
                ]
            )
        ),
    }
    for name in variants:
        target, loss, weighted, method = VARIANTS[name]
        t0 = time.monotonic()
        loss_kwargs = {} if loss == "cce_dice" else {"fg_weight": 1.0}
        if weighted:
            loss_kwargs["border_weight"] = {"w0": 10.0, "sigma_px": 5.0}
        card = train_model(
            work / "patches.zarr",
            work / "manifest.parquet",
            work / name,
            spec={
                "architecture": "small_unet",
                "loss": loss,
                "target": target,
                "loss_kwargs": loss_kwargs,
                "model_kwargs": {"base_filters": base_filters},
            },
            training={
                "epochs": epochs,
                "batch_size": 8,
                "steps_per_epoch": steps_per_epoch,
                "val_steps": 4,
                "learning_rate": 1e-3,
                "patience": epochs,
                "encoder_weights": "none",
                "precision": "float32",
            },
            seed=seed,
        )
        model = load_checkpoint(work / name / card["best_checkpoint"])
        thr = choose_threshold(
            [
                foreground_probability(_predict(model, s["image"], inference, patch_size))
                for s in val
            ],
            [s["mask"] for s in val],
        )["threshold"]
        instances = {
            "method": method,
            "min_area_um2": 20.0,
            "nucleus_diameter_um": diameter,
        }
        f1s, dices = [], []
        for s in test:
            out = _predict(model, s["image"], inference, patch_size)
            prob = foreground_probability(out)
            fg = (prob > thr).astype(np.uint8)
            lab = split_with_config(
                fg, 1.0, instances, prob=prob, seed_prob=seed_probability(out, target)
            )
            f1s.append(match_instances(lab, s["labels"])["f1@0.5"])
            dices.append(pixel_metrics(fg, s["mask"])["dice"])
        result[f"{name}_f1"] = float(np.mean(f1s))
        result[f"{name}_dice"] = float(np.mean(dices))
        result[f"{name}_s"] = round(time.monotonic() - t0, 1)
        log.info("%s: F1@0.5 %.3f, Dice %.3f", name, result[f"{name}_f1"], result[f"{name}_dice"])
    return result
