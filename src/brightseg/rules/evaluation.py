"""Rules of the evaluation stage: held-out metrics, ablation, LIVECell, statistics, figures.

The metric, statistics and figure logic lives in :mod:`brightseg.metrics`,
:mod:`brightseg.stats`, :mod:`brightseg.annotations.livecell` and :mod:`brightseg.figures`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .. import figures as F
from ..annotations.livecell import (
    ap_per_cell_line,
    ap_table,
    group_table,
    import_livecell,
    summary_table,
)
from ..bundle import load_ensemble
from ..config import IlluminationConfig, InstancesConfig, StatsConfig
from ..ensemble import Ensemble
from ..errors import InputError
from ..figures import overlay_counts, overlay_panel, save_figure, table_to_latex, table_to_markdown
from ..focus import display_plane
from ..illumination import correct_illumination, radius_to_px
from ..instances import split_with_config
from ..io import read_image, write_parquet, write_text
from ..metrics import ablation_table, evaluate_pairs
from ..platestore import open_plate
from ..selection import backbone_table, read_histories, stacked_histories
from ..stats import stats_from_file

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


def _items(
    ens: Ensemble,
    image: np.ndarray,
    truth_labels: np.ndarray,
    *,
    pixel_size_um: float,
    instances: dict,
    extra: dict,
) -> Iterator[dict]:
    """Evaluation items of one image: every checkpoint alone, then the ensemble."""
    seeds = None
    if InstancesConfig.coerce(instances).method == "distance":
        probs, prob, mask = ens.predict(image, pixel_size_um=pixel_size_um)
    else:  # interior / log_seeds: the 3-class ensemble's seed-class maps too
        probs, prob, mask, seeds = ens.predict(image, with_seed=True, pixel_size_um=pixel_size_um)
    truth = (truth_labels > 0).astype(np.uint8)
    for i, (name, p) in enumerate(zip(ens.names, probs, strict=True)):
        m = (p > 0.5).astype(np.uint8)
        yield dict(
            extra,
            model=name,
            pred=m,
            truth=truth,
            prob=p,
            pred_labels=split_with_config(
                m, pixel_size_um, instances, seed_prob=None if seeds is None else seeds[i]
            ),
            true_labels=truth_labels,
        )
    yield dict(
        extra,
        model=ENSEMBLE,
        pred=mask,
        truth=truth,
        prob=prob,
        pred_labels=split_with_config(
            mask, pixel_size_um, instances, seed_prob=None if seeds is None else seeds.mean(0)
        ),
        true_labels=truth_labels,
    )


def heldout_images(
    training_manifest: str,
    stores: dict[str, str],
    annotations: dict[str, str],
    training_plates: list[str],
) -> pd.DataFrame:
    """The held-out images: validation-split sources and every image of annotated,
    non-training plates. Columns plate, image_id, store, labels, source."""
    man = pd.read_parquet(training_manifest, columns=["source_image", "plate", "split"])
    val = man.loc[man["split"] == "val", ["plate", "source_image"]].drop_duplicates()
    # Validation sources without a plate store (pre-tiled patch sets) have no full-size
    # image to evaluate on: only plate images enter the held-out evaluation.
    val = val[val["plate"].isin(list(stores))]
    rows = [
        {"plate": r.plate, "image_id": r.source_image, "source": "validation split"}
        for r in val.itertuples(index=False)
    ]
    for plate, ann_manifest in annotations.items():
        if plate in training_plates:
            continue
        ann = pd.read_parquet(ann_manifest, columns=["stem"])
        rows += [{"plate": plate, "image_id": s, "source": "held-out plate"} for s in ann["stem"]]
    df = pd.DataFrame(rows, columns=["plate", "image_id", "source"])
    df["store"] = [stores[p] for p in df["plate"]]
    df["labels"] = [
        str(Path(annotations[p]).parent / f"{i}_labels.tif")
        for p, i in zip(df["plate"], df["image_id"], strict=True)
    ]
    return df.sort_values(["plate", "image_id"]).reset_index(drop=True)


def evaluate(
    ensemble_tsv: str,
    training_manifest: str,
    stores: dict[str, str],
    annotations: dict[str, str],
    training_plates: list[str],
    out_eval: str,
    out_ablation: str,
    out_ablation_md: str,
    overlay_stem: str | None = None,
    *,
    inference: dict,
    instances: dict,
) -> pd.DataFrame:
    """Rule ``evaluate``: per-image metrics of every checkpoint and the ensemble, ablation."""

    images = heldout_images(training_manifest, stores, annotations, training_plates)
    if images.empty:
        raise InputError(
            training_manifest, "no held-out images: no validation split and no annotated test plate"
        )
    ens = load_ensemble(ensemble_tsv, inference)

    first: dict = {}

    def items():
        for row in images.itertuples(index=False):
            ps = open_plate(row.store)
            truth = read_image(row.labels)
            image = ps.read(row.image_id)
            extra = {"image": row.image_id, "plate": row.plate, "source": row.source}
            for item in _items(
                ens, image, truth, pixel_size_um=ps.pixel_size_um, instances=instances, extra=extra
            ):
                if item["model"] == ENSEMBLE and not first:
                    first.update(
                        image=image,
                        pred=item["pred"],
                        truth=item["truth"],
                        name=row.image_id,
                        pixel_size_um=ps.pixel_size_um,
                    )
                yield item

    df = evaluate_pairs(items(), total=len(images) * (len(ens.names) + 1))
    write_parquet(df, out_eval)
    abl = ablation_table(df)
    write_parquet(abl, out_ablation)
    write_text(table_to_markdown(abl), out_ablation_md)
    log.info("ablation:\n%s", abl.to_string(index=False))
    if overlay_stem:
        fig = overlay_panel(
            display_plane(first["image"]),  # focal planes: the middle one
            first["pred"],
            first["truth"],
            title=f"ensemble: {first['name']}",
            pixel_size_um=first["pixel_size_um"],
        )
        save_figure(fig, overlay_counts(first["pred"], first["truth"]), overlay_stem)
    return df


# --- LIVECell ------------------------------------------------------------------------------


def livecell_import(
    annotations: list[str],
    images: str,
    out_index: str,
    out_qc: str,
    *,
    exclude: str,
    expected: str | None = None,
) -> None:
    """Rule ``livecell_import``: LIVECell COCO -> label images, masks, index, QC table.

    ``expected``: a TSV (``file``, ``reason``) of files known to be bad, such as the one the
    demo's synthetic fixture truncates on purpose: still skipped, logged as expected.
    """
    out_dir = Path(out_index).parent
    known = None
    if expected:
        table = pd.read_csv(expected, sep="\t", dtype=str, keep_default_na=False)
        known = dict(zip(table["file"], table["reason"], strict=True))
    imgs, qc = import_livecell(annotations, images, out_dir, exclude=exclude, expected=known)
    for produced, wanted in ((out_dir / "index.parquet", out_index), (out_dir / "qc.tsv", out_qc)):
        if produced.resolve() != Path(wanted).resolve():
            raise ValueError(f"{wanted}: livecell_import writes {produced.name} in {out_dir}")
    log.info("LIVECell: %d images imported, %d skipped", len(imgs), len(qc))


def livecell_predict(
    ensemble_tsv: str,
    index: str,
    out_per_image: str,
    out_ap: str,
    *,
    inference: dict,
    instances: dict,
    illumination: dict,
    pixel_size_um: float,
) -> None:
    """Rule ``livecell_predict``: ensemble on every imported LIVECell image, per-image metrics
    and COCO AP per cell line (LIVECell's evaluator settings)."""
    illum = IlluminationConfig.coerce(illumination)
    idx = pd.read_parquet(index)
    root = Path(index).parent
    ens = load_ensemble(ensemble_tsv, inference)
    radius = radius_to_px(illum.radius, illum.unit, pixel_size_um)
    ap_items = []

    def items():
        for row in idx.itertuples(index=False):
            raw = read_image(row.image_path).astype(np.float32)
            image = correct_illumination(
                raw,
                radius,
                mode=illum.mode,
                method=illum.method,
                percentiles=illum.percentiles,
                uncertain_mode=illum.uncertain_mode,
            )
            truth = read_image(root / row.labels_path)
            extra = {"image": row.image, "cell_line": row.cell_line, "group": row.group}
            for item in _items(
                ens, image, truth, pixel_size_um=pixel_size_um, instances=instances, extra=extra
            ):
                if item["model"] == ENSEMBLE:
                    ap_items.append(
                        {
                            "cell_line": row.cell_line,
                            "true_labels": item["true_labels"],
                            "pred_labels": item["pred_labels"],
                            "prob": item["prob"],
                        }
                    )
                    yield item

    df = evaluate_pairs(items(), total=len(idx))
    write_parquet(df, out_per_image)
    write_parquet(ap_per_cell_line(ap_items), out_ap)


def livecell_report(per_image: str, ap: str, outputs: dict, *, threshold: float) -> None:
    """Rule ``livecell_report``: paper Tables 3/4 (groups), 5 (summary) and AP vs published."""
    df = pd.read_parquet(per_image)
    tables = {
        "groups": group_table(df, threshold=threshold),
        "summary": summary_table(df),
        "ap": ap_table(pd.read_parquet(ap)),
    }
    for name, table in tables.items():
        write_parquet(table, outputs[f"{name}_parquet"])
        write_text(table_to_markdown(table), outputs[f"{name}_md"])
        write_text(table_to_latex(table), outputs[f"{name}_tex"])


# --- statistics and figures ------------------------------------------------------------------


def stats_report(per_image: str, out_json: str, out_md: str, out_tex: str, *, stats: dict) -> dict:
    """Rule ``stats_report``: the paper's Table 6 on the ensemble's per-image scores."""
    cfg = StatsConfig.coerce(stats)
    df = pd.read_parquet(per_image)
    model = cfg.model
    if "model" in df.columns:
        df = df[df["model"] == model]
    if df.empty:
        raise InputError(per_image, f"no rows for model {model!r}")
    tmp = Path(out_json).with_name(f".{Path(out_json).stem}.input.parquet")
    write_parquet(df, tmp)
    try:
        return stats_from_file(
            tmp,
            cfg.column,
            float(cfg.baseline),
            out_json=out_json,
            out_md=out_md,
            out_tex=out_tex,
            threshold=cfg.threshold,
            nan_policy=cfg.nan_policy,
        )
    finally:
        tmp.unlink(missing_ok=True)


def figures(inputs: dict, out_dir: str, *, seed: int = 0) -> list[str]:
    """Rule ``figures``: every paper figure as PNG + SVG + the plotted data as parquet."""
    out = Path(out_dir)
    written = []
    hist = stacked_histories(inputs["histories"])
    written += F.save_figure(F.training_curves(hist), hist, out / "training_curves")
    abl = pd.read_parquet(inputs["ablation"])
    written += F.save_figure(F.ensemble_ablation(abl), abl, out / "ensemble_ablation")
    params = {}
    for card in inputs["cards"]:
        info = json.loads(Path(card).read_text()).get("params", {})
        params[Path(card).parent.parent.name] = (info.get("total"), info.get("trainable"))
    runs = read_histories([Path(h).parent for h in inputs["histories"]])
    bt = backbone_table(runs, params)
    fig = F.backbone_comparison(bt, value="final_val_f1", hue="loss", error="val_f1_std")
    written += F.save_figure(fig, bt, out / "backbone_comparison")
    if inputs.get("livecell"):
        lc = pd.read_parquet(inputs["livecell"])
        written += F.save_figure(F.livecell_groups(lc, seed=seed), lc, out / "livecell_groups")
    cells = pd.concat([pd.read_parquet(p) for p in inputs["cells"]], ignore_index=True)
    fig = F.morphometry_distributions(cells, features=("area_um2", "circularity"), by="plate")
    written += F.save_figure(fig, cells, out / "morphometry")
    return [str(p) for p in written]
