"""k-fold cross-validation of a training recipe on a folder of images + masks (issue 12).

Folds are grouped by source image (one image is one group).  For each fold the recipe's
first ``models`` entry is trained on the other folds' images: every image is corrected
whole (:func:`brightseg.patches.patches_from_raw` parity: patches are windows of the
corrected full image), tiled and augmented into a training store
(:func:`brightseg.augment.build_training_store`), split grouped by image for validation and
trained with :func:`brightseg.train.train_model` (stopping at ``minutes`` of wall time).
The held-out full images are predicted with :func:`brightseg.ensemble.predict_image` (the
workflow's tiled, blended path), thresholded at the probability that maximises validation
Dice (:func:`brightseg.metrics.choose_threshold`, computed on the validation images' full
predictions), split into instances with :func:`brightseg.instances.split_with_config` and
scored: pixel Dice/precision/recall and instance F1 at IoU 0.5.

Targets (issue 16): a ``border3`` model or a border-weighted loss is trained from the masks'
instance labels (carried into the training store); a 3-class model is thresholded on its
foreground probability ``1 - p(background)`` and its interior probability seeds
``instances.method: interior``.  ``nucleus3`` needs nucleus labels, which mask folders lack.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .annotations.maskfolder import match_files, read_mask
from .artefacts import add_artefacts
from .config import validate_config
from .errors import InputError
from .illumination import correct_illumination, radius_to_px
from .io import read_image, write_text
from .metrics import choose_threshold, match_instances, pixel_metrics
from .scale import pair_to_working, scale_factor
from .selection import read_histories, select_checkpoints
from .targets import foreground_probability, seed_probability

log = logging.getLogger(__name__)


def fold_assignment(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of each of ``n`` images: a seeded permutation, dealt round-robin.

    Parameters
    ----------
    n, folds, seed : int

    Returns
    -------
    ndarray of int
    """
    if folds < 2 or folds > n:
        raise InputError(None, f"--folds must be in [2, {n}] for {n} images, got {folds}")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, int)
    out[order] = np.arange(n) % folds
    return out


def _load(
    images: Path,
    masks: Path,
    cfg: dict,
    pixel_size_um: float,
    working: float | None = None,
    artefacts: bool = False,
) -> list[dict]:
    pairs, _ = match_files(images, masks, mask_suffix=cfg["annotations"]["mask_suffix"])
    ill = cfg["illumination"]
    correct = partial(
        correct_illumination,
        radius_px=radius_to_px(ill["radius"], ill["unit"], pixel_size_um),
        mode=ill["mode"],
        method=ill["method"],
        percentiles=ill["percentiles"],
        uncertain_mode=ill.get("uncertain_mode", "black"),
    )
    out = []
    for stem, ipath, mpath in pairs:
        raw = read_image(ipath)
        if raw.ndim != 2:
            raise InputError(ipath, f"expected a 2-D grey image, got shape {raw.shape}")
        mask, labels, _ = read_mask(mpath, threshold=cfg["annotations"]["mask_threshold"])
        if mask.shape != raw.shape:
            raise InputError(mpath, f"mask shape {mask.shape} != image shape {raw.shape}")
        corrected = correct(raw)
        if labels is None:
            from .annotations.maskfolder import mask_to_labels

            labels = mask_to_labels(mask)
        item = {"stem": stem, "image": corrected, "mask": mask, "labels": labels}
        if artefacts:
            marked, hidden = add_artefacts(raw)
            item["test"] = {
                "image": correct(marked),
                "mask": np.where(hidden, 0, mask).astype(mask.dtype),
                "labels": np.where(hidden, 0, labels).astype(labels.dtype),
            }
        item["work"] = pair_to_working({**item, "pixel_size_um": pixel_size_um}, working)
        out.append(item)
    if len(out) < 2:
        raise InputError(images, f"need at least 2 image/mask pairs, found {len(out)}")
    return out


def _predict(model, image: np.ndarray, inference: dict, tile: int, scale: float) -> np.ndarray:
    """Blended full-image prediction (on the models' grid, resampled back by ``scale``):
    ``(H, W)`` for a sigmoid model, ``(H, W, 3)`` softmax."""
    from .ensemble import channel_predictors, make_predictor, predict_image

    channels = int(model.output_shape[-1])
    pred = make_predictor(model, batch_size=int(inference["batch_size"]), tile=tile)
    out = predict_image(
        image,
        channel_predictors(pred, channels),
        tile=tile,
        overlap=int(inference["overlap"]),
        batch_size=int(inference["batch_size"]),
        tta=bool(inference["tta"]),
        scale=scale,
    )
    return out[0] if channels == 1 else np.moveaxis(out, 0, -1)


def _splitter(instances: dict, pixel_size_um: float):
    """``split(fg, prob, settings=None, seed=None)``: the config's watershed (``settings``
    over it; ``seed``: the interior / nucleus probability of a 3-class model)."""
    from .instances import split_with_config

    use_prob = bool(instances.get("use_prob", False))

    def split(fg, prob, settings=None, seed=None):
        cfg = {**instances, **(settings or {})}
        return split_with_config(
            fg, pixel_size_um, cfg, prob=prob if use_prob else None, seed_prob=seed
        )

    return split


def _tune_instances(split, probs: list, seeds: list, labels: list, threshold: float) -> dict:
    """The watershed settings chosen on the validation images (see :mod:`brightseg.tuning`)."""
    from .tuning import choose_instance_settings

    masks = [(p > threshold).astype(np.uint8) for p in probs]
    pick = choose_instance_settings(
        masks, labels, lambda i, st: split(masks[i], probs[i], st, seed=seeds[i])
    )
    return pick["settings"]


def _vote_members(preds: list[np.ndarray], vote: str) -> np.ndarray:
    """One prediction from the members' maps: their mean, or for ``majority`` (sigmoid maps)
    the share of members above 0.5 (the workflow's two votes)."""
    from .tiling import vote_map

    if len(preds) == 1:
        return preds[0]
    stack = np.stack(preds)
    return vote_map(stack, vote if stack.ndim == 3 else "mean")


def _score_predictor(
    predict, *, val: list, tests: list, target: str, splitter, tune: bool, fixed=None
) -> tuple[float, dict | None, list[dict]]:
    """Threshold on the validation images (maximal Dice), watershed choice (``tune``, else
    ``fixed``), then pixel and instance scores of each test image.

    Returns ``(threshold, watershed settings or None, one row per test image)``.
    """
    val_preds = [predict(d["image"]) for d in val]
    val_probs = [foreground_probability(p) for p in val_preds]
    val_seeds = [seed_probability(p, target) for p in val_preds]
    del val_preds
    thr = float(choose_threshold(val_probs, [d["mask"] for d in val])["threshold"])
    tuned = fixed
    if tune:
        tuned = _tune_instances(splitter, val_probs, val_seeds, [d["labels"] for d in val], thr)
    del val_probs, val_seeds
    rows = []
    for item in tests:
        d = {**item, **item.get("test", {})}  # --test-artefacts: the test copy
        pred = predict(d["image"])
        prob = foreground_probability(pred)
        fg = (prob > thr).astype(np.uint8)
        px = pixel_metrics(fg, d["mask"])
        seed_map = seed_probability(pred, target)
        inst = match_instances(splitter(fg, prob, seed=seed_map), d["labels"], thresholds=(0.5,))
        row = {
            "image": d["stem"],
            "threshold": thr,
            "dice": px["dice"],
            "precision": px["precision"],
            "recall": px["recall"],
            "f1_50": inst["f1@0.5"],
            "n_true": inst["n_true"],
            "n_pred": inst["n_pred"],
        }
        if tuned is not None:
            chosen = match_instances(
                splitter(fg, prob, tuned, seed=seed_map), d["labels"], thresholds=(0.5,)
            )
            row["f1_50_tuned"] = chosen["f1@0.5"]
            row["n_pred_tuned"] = chosen["n_pred"]
        rows.append(row)
    return thr, tuned, rows


def _val_stems(manifest: Path) -> set[str]:
    split = pd.read_parquet(manifest, columns=["source_image", "split"])
    return set(split.loc[split["split"] == "val", "source_image"].astype(str))


def _reused_card(fdir: Path, train_stems: set[str], expect: dict) -> dict | None:
    """The card of a fold trained before (``reuse_models``), or None when there is none.

    ``expect``: card values (``config.<key>`` or ``data.<key>``) the model must have been
    trained with; another value is an error naming the card."""
    card_path = fdir / "model" / "card.json"
    manifest = fdir / "manifest.parquet"
    if not (card_path.is_file() and manifest.is_file()):
        return None
    stems = set(pd.read_parquet(manifest, columns=["source_image"])["source_image"].astype(str))
    if stems != train_stems:
        raise InputError(
            manifest,
            f"--reuse-models: the fold was trained on other images ({sorted(stems ^ train_stems)} "
            "differ); use another --out or the same --folds and seed",
        )
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(card_path, f"not valid JSON ({exc})") from None
    for key, want in expect.items():
        part, name = key.split(".")
        have = (card.get(part) or {}).get(name)
        if have != want:
            raise InputError(
                card_path,
                f"--reuse-models: trained with {key} = {have!r}, this config gives {want!r}",
            )
    return card


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    """A table written atomically (a killed run leaves no half-written file)."""
    write_text(frame.to_csv(sep="\t", index=False), path)


def _checkpoint(fdir: Path, epoch: int) -> Path:
    """A fold's epoch checkpoint (the path :func:`brightseg.selection.read_histories` gives)."""
    return fdir / "model" / "checkpoints" / f"epoch_{int(epoch):02d}.keras"


def _seconds_to(fdir: Path, ckpt: Path) -> float:
    """Seconds of training to a checkpoint: from the split (written just before training)
    to the checkpoint's file time; NaN when it is missing."""
    start = (fdir / "manifest.parquet").stat().st_mtime
    return ckpt.stat().st_mtime - start if ckpt.is_file() else float("nan")


def _learning_curve(
    fdir: Path, card: dict, predictor, every: int, tuned, score: dict, *, fold: int
) -> list[dict]:
    """Test scores of every ``every``-th epoch checkpoint (and the best and last)."""
    history = pd.read_csv(fdir / "model" / "history.csv").set_index("epoch")
    last = int(card["epochs_run"])
    epochs = sorted({*range(every, last + 1, every), int(card.get("best_epoch", last)), last})
    out = []
    for i, epoch in enumerate(epochs):
        ckpt = _checkpoint(fdir, epoch)
        if not ckpt.is_file():
            continue
        thr, _, rows = _score_predictor(predictor([ckpt]), tune=False, fixed=tuned, **score)
        frame = pd.DataFrame(rows)
        row = {
            "fold": fold,
            "epoch": epoch,
            "train_s": round(_seconds_to(fdir, ckpt), 1),
            "val_loss": float(history.loc[epoch, "val_loss"]),
            "val_f1": float(history.loc[epoch, "val_f1"]),
            "threshold": thr,
        }
        keys = ["dice", "precision", "recall", "f1_50"] + (
            ["f1_50_tuned"] if tuned is not None else []
        )
        row.update({m: float(frame[m].mean()) for m in keys})
        out.append(row)
        log.info(
            "learning curve, fold %d: %d%% (epoch %d: %s)",
            fold,
            100 * (i + 1) // len(epochs),
            epoch,
            " ".join(f"{m}={row[m]:.3f}" for m in keys),
        )
    return out


def run_cv(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    *,
    config: str | Path = "config/cpu.yaml",
    folds: int = 3,
    minutes: float | None = None,
    pixel_size_um: float = 1.0,
    only: int | None = None,
    tune_instances: bool = True,
    working_pixel_size_um: float | None = None,
    vote: bool = True,
    curve_every: int = 0,
    reuse_models: bool = False,
    test_artefacts: bool = False,
) -> dict:
    """Cross-validate the recipe of ``config`` on paired image/mask folders.

    Parameters
    ----------
    images, masks : path
        Folders of images and masks paired by stem (see :func:`match_files`).
    out : path
        Output folder: ``fold_K/`` (store, model, ``per_image.tsv``), ``per_image.tsv``,
        ``summary.json`` and ``summary.md``.
    config : path
        YAML with ``training``, ``models``, ``illumination`` (and optionally ``inference``,
        ``instances``, ``seed``) blocks; defaults from the config schema.
    folds : int
        Number of folds (grouped by image).
    minutes : float, optional
        Wall-clock training budget per fold; training stops after the epoch that crosses it.
    pixel_size_um : float
        Pixel size (top-hat radius in um, instance area filters).
    only : int, optional
        Run fold ``only`` (0-based) of the ``folds`` alone (e.g. one cluster job per fold);
        the summary is then over that fold (sd NaN).
    tune_instances : bool
        Also choose the watershed settings (``instances.h_um``, ``min_area_um2``) on each
        fold's validation images (:func:`brightseg.tuning.choose_instance_settings`) and score
        the test images with them too (``f1_50_tuned``; ``f1_50`` keeps the config's).
    working_pixel_size_um : float, optional
        Train and predict with images resampled to this pixel size
        (:mod:`brightseg.scale`); probabilities come back to the images' own grid, where
        they are thresholded, split and scored.  ``None``: the config's
        ``training.working_pixel_size_um`` (null: the images' own pixel size).
    vote : bool
        Also score the workflow's ensemble: the mean vote (``inference.vote``) of the top
        ``ensemble.top_k`` epoch checkpoints ranked by :func:`brightseg.selection.select_checkpoints`,
        with its own validation threshold and watershed choice (columns ``*_vote``).
    curve_every : int
        Learning curve: also score every ``curve_every``-th epoch checkpoint (and the best and
        the last) on the fold's test images, each at its own validation threshold, split with
        the watershed chosen for the best checkpoint; ``fold_K/curve.tsv`` and ``curve.tsv``
        (epoch, seconds of training to that checkpoint, validation loss/F1, test metrics).
        0: no curve.
    reuse_models : bool
        Skip the training of a fold whose ``fold_K/model/card.json`` and ``manifest.parquet``
        exist (same images; e.g. to add ``curve_every`` or the vote to a finished run) and
        score its checkpoints again.  The trained model must come from the same config: the
        card's config is compared with this one's and a mismatch is an error.
    test_artefacts : bool
        Score the test images with acquisition artefacts burned into the raw image before
        its correction (:func:`brightseg.artefacts.add_artefacts`: a dark frame, a scale
        bar with its label, a JPEG round trip; the frame's cells leave the ground truth);
        training and validation images stay as they are.

    Returns
    -------
    dict
        The summary: mean and sd over folds of ``dice``, ``precision``, ``recall``, ``f1_50``,
        per-fold rows, wall times.
    """
    from .augment import build_training_store
    from .models.runtime import load_checkpoint
    from .split import apply_split
    from .train import train_model

    t0 = time.monotonic()
    metrics = ["dice", "precision", "recall", "f1_50"] + (["f1_50_tuned"] if tune_instances else [])
    cpath = Path(config)
    if not cpath.is_file():
        raise InputError(cpath, "config file not found")
    raw_cfg = yaml.safe_load(cpath.read_text()) or {}
    raw_cfg.pop("plates", None)
    if any((m or {}).get("target") == "nucleus3" for m in raw_cfg.get("models") or []):
        raise InputError(cpath, "brightseg cv has no nucleus labels: target nucleus3 cannot run")
    cfg = validate_config(raw_cfg, source=str(cpath))
    seed = int(cfg.get("seed", 0))
    tr = dict(cfg["training"])
    spec = dict(cfg["models"][0])
    inference = dict(cfg["inference"])
    if spec.get("tta") is not None:  # models[].tta overrides inference.tta
        inference["tta"] = bool(spec["tta"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = spec.get("target", "binary")
    needs_labels = target != "binary" or "border_weight" in (spec.get("loss_kwargs") or {})
    if working_pixel_size_um is None:
        working_pixel_size_um = tr.get("working_pixel_size_um")
    factor = scale_factor(pixel_size_um, working_pixel_size_um)
    data = _load(
        Path(images), Path(masks), cfg, pixel_size_um, working_pixel_size_um, test_artefacts
    )
    fold_of = fold_assignment(len(data), folds, seed)
    if only is not None and not 0 <= only < folds:
        raise InputError(None, f"--fold must be in [0, {folds - 1}], got {only}")
    scored = metrics + ([f"{m}_vote" for m in metrics] if vote else [])
    rows, fold_rows, curve_rows = [], [], []
    for k in range(folds) if only is None else [only]:
        tk = time.monotonic()
        fdir = out / f"fold_{k}"
        model_dir = fdir / "model"
        train_items = [d for d, f in zip(data, fold_of, strict=True) if f != k]
        test_items = [d for d, f in zip(data, fold_of, strict=True) if f == k]
        log.info(
            "fold %d/%d: %d train, %d test images", k + 1, folds, len(train_items), len(test_items)
        )
        expect = {
            "config.architecture": spec["architecture"],
            "config.loss": spec["loss"],
            "config.model_kwargs": spec.get("model_kwargs") or {},
            "config.loss_kwargs": spec.get("loss_kwargs") or {},
            "config.seed": seed + k,
            "data.patch_size": int(tr["patch_size"]),
            "data.working_pixel_size_um": working_pixel_size_um,
        }
        card = (
            _reused_card(fdir, {d["stem"] for d in train_items}, expect) if reuse_models else None
        )
        if card is not None:
            log.info("fold %d/%d: reusing the trained model in %s", k + 1, folds, model_dir)
            t_train = _seconds_to(fdir, _checkpoint(fdir, card["epochs_run"]))
        else:
            fdir.mkdir(parents=True, exist_ok=True)
            build_training_store(
                (
                    {
                        "image_id": d["stem"],
                        "plate": "cv",
                        "modality": "phase",
                        "image": d["work"]["image"],
                        "mask": d["work"]["mask"],
                        "labels": d["work"]["labels"],
                    }
                    for d in train_items
                ),
                fdir / "patches.zarr",
                fdir / "manifest_all.parquet",
                patch_size=tr["patch_size"],
                stride=tr["stride"],
                min_foreground=tr["min_foreground"],
                n_variants=tr["n_variants"],
                seed=seed + k,
                with_labels=needs_labels,
                working_pixel_size_um=working_pixel_size_um,
            )
            apply_split(
                fdir / "manifest_all.parquet",
                fdir / "manifest.parquet",
                val_fraction=tr["val_fraction"],
                seed=seed + k,
            )
            card = train_model(
                fdir / "patches.zarr",
                fdir / "manifest.parquet",
                model_dir,
                spec=spec,
                training=tr,
                seed=seed + k,
                time_budget_s=None if minutes is None else 60.0 * float(minutes),
            )
            t_train = time.monotonic() - tk
        val_stems = _val_stems(fdir / "manifest.parquet")
        val = [d for d in train_items if d["stem"] in val_stems] or train_items[:1]
        tile = int(tr["patch_size"])

        def predictor(paths: list, _tile: int = tile):
            models = [load_checkpoint(p) for p in paths]
            return lambda image: _vote_members(
                [_predict(m, image, inference, _tile, factor) for m in models], inference["vote"]
            )

        score = {
            "val": val,
            "tests": test_items,
            "target": target,
            "splitter": _splitter(cfg["instances"], pixel_size_um),
        }
        best = model_dir / card["best_checkpoint"]
        thr, tuned, fold_img = _score_predictor(predictor([best]), tune=tune_instances, **score)
        extra: dict = {}
        if vote:
            ranked = select_checkpoints(
                read_histories([model_dir]),
                k=int(cfg["ensemble"]["top_k"]),
                window=int(cfg["ensemble"]["stability_window"]),
            )
            thr_vote, tuned_vote, voted = _score_predictor(
                predictor(list(ranked["path"])), tune=tune_instances, **score
            )
            for row, vrow in zip(fold_img, voted, strict=True):
                row.update({f"{m}_vote": vrow[m] for m in metrics})
            extra = {
                "vote_epochs": ",".join(str(e) for e in ranked["epoch"]),
                "threshold_vote": thr_vote,
                **(
                    {"instances_tuned_vote": json.dumps(tuned_vote, sort_keys=True)}
                    if tune_instances
                    else {}
                ),
            }
        rows.extend({"fold": k, **row} for row in fold_img)
        if curve_every:
            fold_curve = _learning_curve(
                fdir, card, predictor, int(curve_every), tuned, score, fold=k
            )
            _write_tsv(pd.DataFrame(fold_curve), fdir / "curve.tsv")
            curve_rows.extend(fold_curve)
        fr = pd.DataFrame([r for r in rows if r["fold"] == k])
        fold_rows.append(
            {
                "fold": k,
                "n_test": len(test_items),
                "threshold": thr,
                "epochs_run": card["epochs_run"],
                "best_epoch": int(card.get("best_epoch", -1)),
                "train_s": round(t_train, 1),
                "wall_s": round(time.monotonic() - tk, 1),
                **{m: float(fr[m].mean()) for m in scored},
                **(
                    {"instances_tuned": json.dumps(tuned, sort_keys=True)} if tune_instances else {}
                ),
                **extra,
            }
        )
        _write_tsv(fr, fdir / "per_image.tsv")
        log.info("fold %d/%d done: %s", k + 1, folds, fold_rows[-1])
    if curve_rows:
        _write_tsv(pd.DataFrame(curve_rows), out / "curve.tsv")
    per_fold = pd.DataFrame(fold_rows)
    _write_tsv(pd.DataFrame(rows), out / "per_image.tsv")
    _write_tsv(per_fold, out / "per_fold.tsv")
    summary = {
        m: {"mean": float(per_fold[m].mean()), "sd": float(per_fold[m].std(ddof=1))} for m in scored
    }
    summary.update(
        folds=folds,
        folds_run=[r["fold"] for r in fold_rows],
        n_images=len(data),
        total_s=round(time.monotonic() - t0, 1),
        minutes_budget=minutes,
        pixel_size_um=pixel_size_um,
        working_pixel_size_um=working_pixel_size_um,
        test_artefacts=test_artefacts,
        config=str(cpath),
        per_fold=fold_rows,
    )
    write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    md = ["| metric | mean | sd |", "|---|---|---|"] + [
        f"| {m} | {summary[m]['mean']:.3f} | {summary[m]['sd']:.3f} |" for m in scored
    ]
    if vote:
        md.append(
            "\n*_vote: the mean vote of the top "
            f"{cfg['ensemble']['top_k']} epoch checkpoints (ensemble.top_k, ranked as the "
            "workflow's select_checkpoints ranks them), its own threshold and watershed; the "
            "other rows score the best checkpoint alone"
        )
    if tune_instances:
        chosen = ", ".join(f"fold {r['fold']}: {r['instances_tuned']}" for r in fold_rows)
        md.append(
            "\nf1_50_tuned: the test images split with the watershed settings chosen on each "
            f"fold's validation images ({chosen}); copy them into the config's `instances:`"
        )
    md.append(f"\n{folds} folds, {len(data)} images, total {summary['total_s']:.0f} s")
    write_text("\n".join(md) + "\n", out / "summary.md")
    return summary


def summary_line(summary: dict) -> str:
    """The machine-readable last line of ``brightseg cv``."""
    keys = ["dice", "precision", "recall", "f1_50", "f1_50_tuned", "dice_vote"]
    keys += ["f1_50_vote", "f1_50_tuned_vote"]
    pairs = [f"{k}={summary[k]['mean']:.4f}" for k in keys if k in summary]
    return " ".join(pairs + [f"folds={summary['folds']}", f"minutes={summary['total_s'] / 60:.1f}"])
