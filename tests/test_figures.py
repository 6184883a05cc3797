"""Tests of brightseg.figures: byte-identical reruns, overlay colours, tables."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from brightseg import figures as F


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def history_table() -> pd.DataFrame:
    rows = []
    for model in ("resnet34", "vgg16"):
        for loss_fn in ("bce", "dice"):
            for epoch in range(1, 6):
                rows.append(
                    {
                        "model": model,
                        "loss_fn": loss_fn,
                        "epoch": epoch,
                        "loss": 1 / epoch,
                        "val_loss": 1.2 / epoch,
                        "val_f1": 0.6 + 0.05 * epoch + (0.01 if model == "vgg16" else 0),
                    }
                )
    return pd.DataFrame(rows)


def tables() -> dict:
    rng = np.random.default_rng(0)
    per_image = pd.DataFrame(
        {
            "image": [f"im{i}" for i in range(40)],
            "cell_line": np.repeat(["A172", "BT474", "SHSY5Y", "SkBr3"], 10),
            "f1": rng.uniform(0.7, 0.99, 40),
        }
    )
    ablation = pd.DataFrame(
        {
            "model": ["m1", "m2", "ensemble"],
            "n_images": [5, 5, 5],
            "f1": [0.85, 0.87, 0.9],
            "precision": [0.8, 0.9, 0.91],
            "recall": [0.9, 0.85, 0.89],
            "accuracy": [0.95, 0.96, 0.97],
        }
    )
    backbones = pd.DataFrame(
        {
            "model": ["resnet34", "vgg16", "resnet34", "vgg16"],
            "loss_fn": ["bce", "bce", "dice", "dice"],
            "f1": [0.88, 0.86, 0.89, 0.87],
            "f1_std": [0.02, 0.03, 0.02, 0.01],
        }
    )
    cells = pd.DataFrame(
        {
            "plate": np.repeat(["P1", "P2"], 30),
            "well": np.tile(np.repeat(["A01", "B02", "C03"], 10), 2),
            "area": rng.gamma(5, 60, 60),
            "circularity": rng.uniform(0.4, 1.0, 60),
        }
    )
    return {
        "training_curves": (F.training_curves, history_table()),
        "backbone_comparison": (F.backbone_comparison, backbones),
        "livecell_groups": (F.livecell_groups, per_image),
        "ensemble_ablation": (F.ensemble_ablation, ablation),
        "morphometry_distributions": (F.morphometry_distributions, cells),
    }


def overlay_inputs():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 4000, size=(40, 56)).astype(np.uint16)
    truth = np.zeros((40, 56), np.uint8)
    truth[5:25, 5:30] = 1
    pred = np.zeros_like(truth)
    pred[10:30, 10:40] = 1
    return image, pred, truth


def build_all(out_dir):
    hashes = {}
    for name, (func, table) in tables().items():
        fig = func(table)
        for p in F.save_figure(fig, table, out_dir / name):
            hashes[p.name] = sha(p)
    image, pred, truth = overlay_inputs()
    fig = F.overlay_panel(image, pred, truth, title="A172_Phase_A7_1_00d00h00m_1")
    for p in F.save_figure(fig, F.overlay_counts(pred, truth), out_dir / "overlay"):
        hashes[p.name] = sha(p)
    return hashes


def test_figures_are_byte_identical_on_rerun(tmp_path):
    first = build_all(tmp_path / "a")
    second = build_all(tmp_path / "b")
    assert len(first) == 6 * 3
    assert first == second
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert all(n.endswith((".png", ".svg", ".parquet")) for n in names)  # no temp files
    svg = (tmp_path / "a" / "training_curves.svg").read_text()
    assert "<dc:date>" not in svg and "Matplotlib v" not in svg
    assert "DejaVu Sans" in svg
    png = (tmp_path / "a" / "training_curves.png").read_bytes()
    assert b"matplotlib" not in png.lower()
    back = pd.read_parquet(tmp_path / "a" / "ensemble_ablation.parquet")
    pd.testing.assert_frame_equal(back, tables()["ensemble_ablation"][1])


def test_rerun_in_same_directory_overwrites_identically(tmp_path):
    func, table = tables()["livecell_groups"]
    F.save_figure(func(table), table, tmp_path / "g")
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    F.save_figure(func(table), table, tmp_path / "g")
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before


def test_overlay_rgb_colours():
    image, pred, truth = overlay_inputs()
    rgb = F.overlay_rgb(image, pred, truth, alpha=1.0)
    assert rgb.shape == (40, 56, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[15, 15]) == F.OVERLAY_COLOURS["tp"]
    assert tuple(rgb[6, 6]) == F.OVERLAY_COLOURS["fn"]
    assert tuple(rgb[28, 35]) == F.OVERLAY_COLOURS["fp"]
    # true negatives stay grey (R = G = B), scaled from the image
    tn = rgb[38, 50]
    assert tn[0] == tn[1] == tn[2]
    grey = (image[38, 50] - image.min()) / (image.max() - image.min()) * 255
    assert abs(int(tn[0]) - grey) <= 0.5
    half = F.overlay_rgb(image, pred, truth, alpha=0.5)
    g = (image[15, 15] - image.min()) / (image.max() - image.min()) * 255
    expect = np.round(0.5 * g + 0.5 * np.array(F.OVERLAY_COLOURS["tp"], float))
    assert np.array_equal(half[15, 15], expect.astype(np.uint8))
    counts = F.overlay_counts(pred, truth).set_index("class")["pixels"]
    assert counts["tp"] == 15 * 20 and counts["fn"] == 500 - 300
    assert counts.sum() == 40 * 56
    with pytest.raises(ValueError, match="differ"):
        F.overlay_rgb(image, pred[:, :5], truth)


def test_missing_columns_are_reported():
    with pytest.raises(ValueError, match=r"lacks columns \['val_f1'\]"):
        F.training_curves(history_table().drop(columns="val_f1"))
    with pytest.raises(ValueError, match="lacks columns"):
        F.livecell_groups(pd.DataFrame({"f1": [0.5]}))


def test_tables():
    df = pd.DataFrame(
        {
            "cell_line": ["A172", "SK_OV3"],
            "n": [3, 4],
            "f1": [0.912345, np.nan],
            "ok": [True, False],
        }
    )
    md = F.table_to_markdown(df)
    assert md == (
        "| cell_line | n | f1 | ok |\n"
        "|---|---:|---:|---|\n"
        "| A172 | 3 | 0.9123 | True |\n"
        "| SK_OV3 | 4 | nan | False |\n"
    )
    tex = F.table_to_latex(df, floatfmt=".2f")
    assert tex.splitlines() == [
        r"\begin{tabular}{lrrl}",
        r"\toprule",
        r"cell\_line & n & f1 & ok \\",
        r"\midrule",
        r"A172 & 3 & 0.91 & True \\",
        r"SK\_OV3 & 4 & nan & False \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]
    assert F.table_to_latex(df, caption="x").startswith("\\begin{table}")


def _bars(fig):
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == "scale_bar"]


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_image_panels_have_scale_bars_only_with_a_pixel_size():
    image, pred, truth = overlay_inputs()
    fig = F.overlay_panel(image, pred, truth, pixel_size_um=0.5)
    bars = _bars(fig)
    # 56 px * 0.5 um = 28 um wide: a fifth is 5.6 um, the bar 5 um = 10 px
    assert len(bars) == 2
    assert all(abs(b.get_width() - round(5 / 0.5)) <= 1 for b in bars)
    assert all(b.get_x() + b.get_width() <= 56 for b in bars)
    assert "5 µm" in _texts(fig)
    assert _bars(F.overlay_panel(image, pred, truth)) == []
    preds = {"ensemble": pred, "otsu": truth}
    fig = F.method_overlays(image, truth, preds, title="im", pixel_size_um=0.65)
    bars = _bars(fig)
    assert len(bars) == 3  # the image and both methods
    length = F.scale_bar_length_um(56, 0.65)
    assert all(abs(b.get_width() - round(length / 0.65)) <= 1 for b in bars)
    assert _bars(F.method_overlays(image, truth, preds, title="im")) == []


def test_add_scale_bar_length_and_label():
    fig = F._figure(3, 3)
    ax = fig.subplots()
    ax.imshow(np.zeros((100, 1000)))
    bar = F.add_scale_bar(ax, 0.65, 1000)
    assert abs(bar.get_width() - round(100 / 0.65)) <= 1  # 650 um wide: 100 um
    assert [t.get_text() for t in ax.texts] == ["100 µm"]
    assert F.add_scale_bar(ax, None, 1000) is None


def test_axis_labels_have_words_and_units():
    assert F.axis_label("hd95") == "HD95 (px)"
    assert F.axis_label("hausdorff") == "Hausdorff distance (px)"
    assert F.axis_label("area_um2") == "area (µm²)"
    assert F.axis_label("perimeter_um") == "perimeter (µm)"
    assert F.axis_label("val_f1") == "validation F1"
    assert F.axis_label("final_val_f1") == "final validation F1"
    cells = tables()["morphometry_distributions"][1].rename(columns={"area": "area_um2"})
    fig = F.morphometry_distributions(cells, features=("area_um2", "circularity"), by="plate")
    area_ax, circ_ax = fig.axes
    assert area_ax.get_ylabel() == "area (µm²)"
    assert circ_ax.get_ylabel().startswith("circularity")
    assert circ_ax.get_ylim()[0] == 0  # bounded feature
    ticks = [t.get_text() for t in circ_ax.get_xticklabels()]
    assert ticks == ["P1 (n=30)", "P2 (n=30)"]


def _wide():
    rng = np.random.default_rng(0)
    wide = pd.DataFrame(
        {
            "method": np.repeat(["ensemble", "otsu"], 6),
            **{m: rng.uniform(0.6, 0.9, 12) for m in ("dice", "iou", "precision", "recall", "f1")},
            "hd95": rng.uniform(3, 30, 12),
        }
    )
    wide.loc[11, "hd95"] = np.inf  # left out: n=5 for otsu's HD95
    return wide


def test_bounded_metric_axes_start_at_zero_and_show_n():
    fig = F.metric_distributions(_wide(), order=["ensemble", "otsu"])
    axes = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
    assert set(axes) == {"Dice", "IoU", "precision", "recall", "F1", "HD95 (px)"}
    for label, ax in axes.items():
        assert ax.get_ylim()[0] == 0, label
        if label != "HD95 (px)":
            assert ax.get_ylim()[1] >= 1, label
    ticks = [t.get_text() for t in axes["HD95 (px)"].get_xticklabels()]
    assert ticks == ["ensemble (n=6)", "otsu (n=5)"]
    assert [t.get_text() for t in axes["F1"].get_xticklabels()] == [
        "ensemble (n=6)",
        "otsu (n=6)",
    ]

    ablation = tables()["ensemble_ablation"][1]
    ax = F.ensemble_ablation(ablation).axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 1
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["m1 (n=5)", "m2 (n=5)", "ensemble (n=5)"]

    per_image = tables()["livecell_groups"][1]
    ax = F.livecell_groups(per_image).axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylabel() == "F1 per image"
    assert ax.get_xticklabels()[0].get_text() == "A172 (n=10)"

    backbones = tables()["backbone_comparison"][1]
    ax = F.backbone_comparison(backbones).axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylabel() == "F1"

    ax_m = F.training_curves(history_table()).axes[0]
    assert ax_m.get_ylabel() == "validation F1" and ax_m.get_ylim()[0] == 0
