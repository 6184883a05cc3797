"""Rules of the evaluation sets: the classical baseline and the method comparison (Table 2)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..annotations.maskfolder import DEFAULT_PIXEL_SIZE_UM, read_mask
from ..bundle import load_ensemble
from ..config import IlluminationConfig, InferenceConfig, OtsuConfig
from ..errors import InputError
from ..evalsets import (
    BASELINE_PREFIX,
    ENSEMBLE,
    PAIRED_METRICS,
    baseline_methods,
    comparison_tables,
    load_eval_set,
    per_image_table,
    wide_table,
    write_otsu_baseline,
)
from ..figures import (
    method_overlays,
    metric_distributions,
    overlay_counts,
    save_figure,
    save_png,
    table_to_latex,
    table_to_markdown,
)
from ..illumination import correct_illumination, radius_to_px
from ..io import atomic_path, read_image, write_parquet, write_png, write_text
from ..metrics import pixel_metrics
from ..progress import progress
from ..qc import encode_entropy, encode_variance, uncertainty_maps
from ..tiling import to_uint8
from . import atomic_dir

log = logging.getLogger(__name__)


def evalset_baseline(images: str, out_dir: str, *, otsu: OtsuConfig | Mapping) -> pd.DataFrame:
    """Rule ``evalset_baseline``: the classical top-hat + Otsu baseline on every image."""
    cfg = OtsuConfig.coerce(otsu)
    with atomic_path(out_dir, is_dir=True) as tmp:
        df = write_otsu_baseline(
            images,
            tmp,
            radius_px=cfg.radius_px,
            mode=cfg.mode,
            method=cfg.method,
            sigma=cfg.sigma,
            min_size=cfg.min_size,
            fill_holes=cfg.fill_holes,
        )
    df["mask"] = [str(Path(out_dir) / Path(p).name) for p in df["mask"]]
    log.info("otsu baseline: %d masks in %s", len(df), out_dir)
    return df


def evalset_compare(
    ensemble_tsv: str,
    spec: Mapping[str, Any],
    outputs: Mapping[str, str],
    *,
    inference: InferenceConfig | Mapping,
    illumination: IlluminationConfig | Mapping,
    threshold: float = 127,
    paired_metrics: Sequence[str] = PAIRED_METRICS,
    seed: int = 0,
    uncertainty: bool = False,
) -> pd.DataFrame:
    """Rule ``evalset_compare``: the ensemble, each checkpoint and every baseline on a set.

    Every image is read (RGB reduced to luminance), illumination-corrected as the plates
    are (the set's ``pixel_size_um`` converts um radii) and predicted at full size by the
    ensemble (:class:`brightseg.ensemble.Ensemble`; single checkpoints are their own
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
        (a folder, ``<image>.png`` per image), ``overlay_counts`` (parquet) and
        ``predictions`` (a folder: the ensemble's ``<image>_mask.png`` (0/255) and
        ``<image>_prob.png`` (``round(255 p)``) per image, to inspect and reuse).
    inference, illumination : mapping
        The config blocks.
    threshold : float
        Threshold of lossy mask files.
    paired_metrics : sequence of str
        Metrics of the paired tests.
    seed : int
        Jitter of the figure's points.
    uncertainty : bool
        ``qc.uncertainty``: the predictions folder also gets ``<image>_variance.png`` and
        ``<image>_entropy.png`` (the ``uint8`` codes of :mod:`brightseg.qc`).

    Returns
    -------
    pandas.DataFrame
        The long per-image table (``set, image, method, metric, value``).
    """
    name = str(spec["name"])
    eval_df = load_eval_set(spec, threshold=threshold, check=True)
    baselines = baseline_methods(eval_df)
    illum = IlluminationConfig.coerce(illumination)
    ens = load_ensemble(ensemble_tsv, inference)
    clash = sorted(set(baselines) & {ENSEMBLE, *ens.names})
    if clash:
        raise InputError(f"evaluation_sets[{name}].baselines", f"method names {clash} are taken")
    px = float(spec.get("pixel_size_um") or DEFAULT_PIXEL_SIZE_UM)
    radius = radius_to_px(illum.radius, illum.unit, px)
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

    with (
        atomic_dir(outputs["overlays"]) as overlay_dir,
        atomic_dir(outputs["predictions"]) as pred_dir,
    ):

        def items() -> Iterator[dict[str, Any]]:
            for row in progress(eval_df.to_dict("records"), desc=f"evaluation set {name}"):
                image_id = str(row["image_id"])
                raw = read_image(row["image"])
                image = correct_illumination(
                    raw.astype(np.float32),
                    radius,
                    mode=illum.mode,
                    method=illum.method,
                    percentiles=illum.percentiles,
                    uncertain_mode=illum.uncertain_mode,
                )
                truth = read_mask(
                    row["mask"], threshold=threshold, expect=spec.get("mask_mode", "auto")
                )[0]
                probs, prob, mask = ens.predict(image, pixel_size_um=px)
                write_png(
                    np.where(mask > 0, np.uint8(255), np.uint8(0)),
                    pred_dir / f"{image_id}_mask.png",
                )
                write_png(to_uint8(prob), pred_dir / f"{image_id}_prob.png")
                if uncertainty:
                    variance, entropy = uncertainty_maps(probs)
                    write_png(encode_variance(variance), pred_dir / f"{image_id}_variance.png")
                    write_png(encode_entropy(entropy), pred_dir / f"{image_id}_entropy.png")
                preds = {ENSEMBLE: mask.astype(np.uint8)}
                for ckpt, p in zip(ens.names, probs, strict=True):
                    preds[ckpt] = (p > 0.5).astype(np.uint8)
                for b in baselines:
                    preds[b] = read_mask(row[BASELINE_PREFIX + b], threshold=threshold)[0]
                shown = {m: preds[m] for m in (ENSEMBLE, *baselines)}
                scores = {m: pixel_metrics(p, truth)["f1"] for m, p in shown.items()}
                fig = method_overlays(
                    raw, truth, shown, title=image_id, scores=scores, pixel_size_um=px
                )
                save_png(fig, Path(overlay_dir) / f"{image_id}.png")
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
