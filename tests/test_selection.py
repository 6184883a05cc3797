"""Checkpoint selection and the backbone table on hand-built histories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brightseg.errors import InputError
from brightseg.selection import (
    ENSEMBLE_COLUMNS,
    backbone_table,
    read_histories,
    select_checkpoints,
    write_ensemble_tsv,
)


def run(model, loss, f1s, val_losses=None):
    n = len(f1s)
    val_losses = val_losses or [1.0 - f for f in f1s]
    return pd.DataFrame(
        {
            "model": model,
            "loss": loss,
            "epoch": np.arange(1, n + 1),
            "path": [f"{model}/{loss}/epoch_{e:02d}.keras" for e in range(1, n + 1)],
            "val_f1": f1s,
            "val_loss": val_losses,
            "val_iou": [f / 2 for f in f1s],
        }
    )


def test_stable_plateau_beats_noisy_spike():
    spiky = run("m1", "bce_dice", [0.50, 0.90, 0.50, 0.52])
    plateau = run("m2", "bce_dice", [0.80, 0.89, 0.90, 0.90, 0.90])
    sel = select_checkpoints(pd.concat([spiky, plateau]), k=2, window=1, stability_weight=1.0)
    assert list(sel.columns) == ENSEMBLE_COLUMNS
    # both have an epoch at F1 0.90; the plateau's epoch 4 (neighbours 0.90, 0.90) wins
    assert sel.loc[0, ["model", "epoch"]].tolist() == ["m2", 4]
    assert sel.loc[0, "stability"] == pytest.approx(0.0)
    assert sel["rank"].tolist() == [1, 2]
    assert "m1" not in set(sel["model"])
    # hand value for the spike: std([0.5, 0.9, 0.5]) = 0.4 * sqrt(2) / 3
    full = select_checkpoints(pd.concat([spiky, plateau]), k=100)
    spike = full[(full["model"] == "m1") & (full["epoch"] == 2)].iloc[0]
    assert spike["stability"] == pytest.approx(0.4 * math.sqrt(2) / 3)
    assert spike["score"] == pytest.approx(0.9 - 0.4 * math.sqrt(2) / 3)
    # without the stability penalty the tie at 0.90 falls to val_loss, then model name
    raw = select_checkpoints(pd.concat([spiky, plateau]), k=4, stability_weight=0.0)
    assert raw["val_f1"].tolist() == [0.9, 0.9, 0.9, 0.9]
    assert raw[["model", "epoch"]].values.tolist() == [["m1", 2], ["m2", 3], ["m2", 4], ["m2", 5]]


def test_selection_k_and_missing_columns(tmp_path):
    h = run("m", "l", [0.1, 0.2, 0.3])
    sel = select_checkpoints(h, k=14)
    assert len(sel) == 3
    assert np.isnan(sel["val_precision"]).all()  # absent metric -> NaN column
    with pytest.raises(InputError, match="val_f1"):
        select_checkpoints(h.drop(columns="val_f1"))
    path = tmp_path / "models" / "ensemble.tsv"
    write_ensemble_tsv(sel, path)
    back = pd.read_csv(path, sep="\t")
    assert list(back.columns) == ENSEMBLE_COLUMNS
    assert back["path"].tolist() == sel["path"].tolist()
    assert not list(path.parent.glob(".*tmp*"))


def test_read_histories(tmp_path):
    for model, loss in [
        ("vgg16_attention_unet", "bce_dice"),
        ("small_unet", "focal_dice_boundary"),
    ]:
        d = tmp_path / model / loss
        d.mkdir(parents=True)
        pd.DataFrame(
            {
                "epoch": [1, 2],
                "loss": [0.9, 0.8],
                "f1": [0.3, 0.4],
                "val_loss": [1.0, 0.9],
                "val_f1": [0.2, 0.3],
            }
        ).to_csv(d / "history.csv", index=False)
    h = read_histories(sorted(tmp_path.glob("*/*")))
    assert set(h["loss"]) == {"bce_dice", "focal_dice_boundary"}
    assert h["train_loss"].tolist()[:2] == [0.9, 0.8]
    assert h["path"].iloc[0].endswith("checkpoints/epoch_01.keras")
    sel = select_checkpoints(h, k=1)
    # identical runs: full tie on score, F1 and loss -> model name decides
    assert sel.loc[0, ["model", "epoch"]].tolist() == ["small_unet", 2]
    with pytest.raises(InputError, match="does not exist"):
        read_histories([tmp_path / "nothing"])


def test_backbone_table_hand_values():
    h = pd.DataFrame(
        {
            "model": "unet_vgg16",
            "epoch": [1, 2, 3, 4],
            "train_loss": [1.0, 0.6, 0.4, 0.2],
            "val_loss": [1.2, 0.8, 0.6, 0.7],
            "f1": [0.2, 0.5, 0.7, 0.8],
            "val_f1": [0.2, 0.4, 0.6, 0.6],
        }
    )
    t = backbone_table(h, {"unet_vgg16": (100, 40)}, last_n=2).iloc[0]
    assert t["epochs_run"] == 4
    assert t["best_epoch"] == 3
    assert t["final_train_loss"] == 0.2 and t["final_val_loss"] == 0.7
    assert t["loss_gap"] == pytest.approx(0.5)
    assert t["convergence_rate"] == pytest.approx((1.2 - 0.6) / 2)
    assert t["f1_gap"] == pytest.approx(0.2)
    assert t["overfitting_index"] == pytest.approx((0.7 - 0.2) / 0.2)
    assert t["val_f1_std"] == pytest.approx(np.std([0.2, 0.4, 0.6, 0.6]))
    assert t["stability_f1"] == pytest.approx(1.0)  # last two val F1 equal
    assert t["stability_loss"] == pytest.approx(1 - np.std([0.6, 0.7]) / 0.65)
    assert (t["params_total"], t["params_trainable"]) == (100, 40)
    params = pd.DataFrame({"name": ["unet_vgg16"], "total": [5], "trainable": [2]})
    assert backbone_table(h, params).iloc[0]["params_total"] == 5
    with pytest.raises(InputError, match="val_f1"):
        backbone_table(h.drop(columns="val_f1"))


def test_select_checkpoints_rule_writes_per_model_tta(tmp_path):
    """models[].tta reaches ensemble.tsv as a tta column (empty: inference.tta)."""
    from brightseg.ensemble import _table_tta, read_ensemble
    from brightseg.rules.training import select_checkpoints as select_rule

    histories = []
    for model in ("fpn_resnet18", "unet_resnet18", "small_unet"):
        d = tmp_path / model / "bce_dice"
        (d / "checkpoints").mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2], "val_loss": [1.0, 0.9], "val_f1": [0.2, 0.3]}).to_csv(
            d / "history.csv", index=False
        )
        for e in (1, 2):
            (d / "checkpoints" / f"epoch_{e:02d}.keras").write_bytes(b"x")
        (d / "card.json").write_text(json.dumps({"data": {}}))
        histories.append(str(d / "history.csv"))
    out = tmp_path / "ensemble.tsv"
    tta = {"fpn_resnet18/bce_dice": True, "unet_resnet18/bce_dice": False}
    select_rule(histories, str(out), ensemble={"top_k": 6}, tta=tta)
    table = read_ensemble(out)
    assert list(table.columns) == [*ENSEMBLE_COLUMNS, "tta"]
    want = {"fpn_resnet18": True, "unet_resnet18": False}
    for default in (False, True):
        flags = _table_tta(table, default, "test")
        assert flags == [want.get(m, default) for m in table["model"]]
    # no per-model setting: the table is what it always was
    select_rule(histories, str(out), ensemble={"top_k": 6}, tta={})
    assert list(pd.read_csv(out, sep="\t").columns) == ENSEMBLE_COLUMNS
    # models trained at a working pixel size (their cards say so): a column for inference
    for h in histories:
        card = Path(h).parent / "card.json"
        card.write_text(json.dumps({"data": {"working_pixel_size_um": 1.3}}))
    select_rule(histories, str(out), ensemble={"top_k": 6}, tta={})
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == [*ENSEMBLE_COLUMNS, "working_pixel_size_um"]
    assert (table["working_pixel_size_um"] == 1.3).all()
    Path(histories[0]).with_name("card.json").unlink()
    with pytest.raises(InputError, match="card.json"):
        select_rule(histories, str(out), ensemble={"top_k": 6}, tta={})
