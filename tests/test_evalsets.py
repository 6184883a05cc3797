"""Tests of held-out evaluation sets and the method comparison (brightseg.evalsets)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import stats

from brightseg.errors import InputError
from brightseg.evalsets import (
    METRICS,
    baseline_methods,
    compare_from_dirs,
    compare_methods,
    load_eval_set,
    otsu_baseline,
    paired_comparison_table,
    per_image_table,
    summary_table,
    table2_layout,
    wide_table,
    write_otsu_baseline,
)

H, W = 96, 112


def disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def blobs(shape=(H, W), seed=0, n=6, r=(6, 10)) -> np.ndarray:
    """Non-overlapping disks (bool)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    placed = 0
    while placed < n:
        rad = rng.uniform(*r)
        cy, cx = rng.uniform(rad + 2, shape[0] - rad - 2), rng.uniform(rad + 2, shape[1] - rad - 2)
        d = disk(shape, cy, cx, rad)
        if (d & disk(shape, cy, cx, rad + 3) & mask).any():
            continue
        mask |= d
        placed += 1
    return mask


def iou(a, b) -> float:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    return float((a & b).sum() / (a | b).sum())


def microscope(mask, *, sign: float, seed=0) -> np.ndarray:
    """uint16 image: tilted uneven background, blobs of contrast ``sign``, noise."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    bg = 20000 + 3000 * xx / w + 2000 * yy / h
    img = bg + sign * 4000 * mask + rng.normal(0, 300, mask.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_set(root: Path, n: int = 3, baselines=("cellpose",)) -> dict[str, np.ndarray]:
    truths = {}
    for sub in ("images", "masks", *baselines):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stem = f"eval_{i:03d}"
        truth = blobs(seed=i)
        truths[stem] = truth
        tifffile.imwrite(root / "images" / f"{stem}.tif", microscope(truth, sign=-1, seed=i))
        Image.fromarray((truth * 255).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
        for b in baselines:
            pred = np.roll(truth, 2 + i, axis=1)  # a shifted (worse) prediction
            Image.fromarray((pred * 255).astype(np.uint8)).save(root / b / f"{stem}.png")
    return truths


def spec(root: Path, baselines=("cellpose",)) -> dict:
    return {
        "name": "heldout",
        "images": str(root / "images"),
        "masks": str(root / "masks"),
        "baselines": {b: str(root / b) for b in baselines},
    }


# --------------------------------------------------------------------------- eval sets


def test_load_eval_set(tmp_path):
    write_set(tmp_path, baselines=("cellpose", "stardist"))
    df = load_eval_set(spec(tmp_path, ("cellpose", "stardist")))
    assert list(df.columns) == [
        "set",
        "image_id",
        "image",
        "mask",
        "baseline_cellpose",
        "baseline_stardist",
    ]
    assert df["image_id"].tolist() == ["eval_000", "eval_001", "eval_002"]
    assert set(df["set"]) == {"heldout"}
    assert df["baseline_stardist"].iloc[1] == str(tmp_path / "stardist" / "eval_001.png")
    assert baseline_methods(df) == ["cellpose", "stardist"]
    # relative paths with base
    rel = {"name": "r", "images": "images", "masks": "masks"}
    assert len(load_eval_set(rel, base=tmp_path)) == 3


def test_load_eval_set_errors(tmp_path):
    write_set(tmp_path)
    s = spec(tmp_path)
    with pytest.raises(InputError, match="nowhere"):
        load_eval_set({**s, "masks": str(tmp_path / "nowhere")})
    with pytest.raises(InputError, match="images"):
        load_eval_set({k: v for k, v in s.items() if k != "images"})
    (tmp_path / "cellpose" / "eval_001.png").unlink()
    with pytest.raises(InputError) as err:
        load_eval_set(s)
    msg = str(err.value)
    assert "cellpose" in msg and "eval_001.tif" in msg  # names the baseline and the image
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "cellpose" / "eval_001.png")
    (tmp_path / "masks" / "eval_002.png").unlink()
    with pytest.raises(InputError, match="eval_002.tif: no mask"):
        load_eval_set(s)
    Image.fromarray(np.zeros((H, W + 4), np.uint8)).save(tmp_path / "masks" / "eval_002.png")
    with pytest.raises(InputError, match="eval_002.png: mask is 116x96"):
        load_eval_set(s)


# --------------------------------------------------------------------------- Otsu baseline


@pytest.mark.parametrize(("sign", "mode"), [(1, "white"), (-1, "black")])
def test_otsu_baseline_finds_blobs(sign, mode):
    truth = blobs((128, 160), seed=4, n=8)
    img = microscope(truth, sign=sign, seed=1)
    mask = otsu_baseline(img, radius_px=25, mode=mode)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert iou(mask, truth) > 0.8
    # the wrong polarity finds (almost) nothing of the cells
    other = otsu_baseline(img, radius_px=25, mode="white" if mode == "black" else "black")
    assert iou(other, truth) < 0.3


def test_otsu_baseline_without_illumination_module(monkeypatch):
    truth = blobs((128, 160), seed=5, n=8)
    img = microscope(truth, sign=-1, seed=2).astype(np.float32) / 65535
    monkeypatch.setitem(sys.modules, "brightseg.illumination", None)  # import fails
    mask = otsu_baseline(img, radius_px=25, mode="black")
    assert iou(mask, truth) > 0.8


def test_otsu_baseline_edge_cases():
    assert not otsu_baseline(np.full((40, 40), 7.0), radius_px=5).any()
    with pytest.raises(InputError):
        otsu_baseline(np.zeros((4, 4, 4)))
    with pytest.raises(InputError, match="mode"):
        otsu_baseline(np.zeros((8, 8)), mode="grey")


def test_write_otsu_baseline(tmp_path):
    truths = write_set(tmp_path, baselines=())
    df = write_otsu_baseline(tmp_path / "images", tmp_path / "otsu", radius_px=20)
    assert df["image_id"].tolist() == sorted(truths)
    for stem, truth in truths.items():
        arr = np.asarray(Image.open(tmp_path / "otsu" / f"{stem}.png"))
        assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 255}
        assert iou(arr, truth) > 0.8


# --------------------------------------------------------------------------- tables


def test_per_image_table_values():
    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 2:6] = 1  # 16 px
    pred = np.zeros((10, 10), np.uint8)
    pred[3:7, 2:6] = 1  # 16 px, 12 overlap
    df = per_image_table(
        [
            {"set": "s", "image": "a", "method": "m1", "pred": pred, "truth": truth},
            {"set": "s", "image": "a", "method": "m2", "pred": truth, "truth": truth},
        ]
    )
    assert list(df.columns) == ["set", "image", "method", "metric", "value"]
    assert len(df) == 2 * len(METRICS)
    v = df[df["method"] == "m1"].set_index("metric")["value"]
    tp, fp, fn, tn = 12, 4, 4, 80
    assert v["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert v["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert v["accuracy"] == pytest.approx((tp + tn) / 100)
    assert v["precision"] == pytest.approx(0.75) and v["recall"] == pytest.approx(0.75)
    assert v["f1"] == pytest.approx(0.75)
    # one-row shift: every boundary pixel is within 1 px of the other boundary
    assert v["hausdorff"] == pytest.approx(1.0)
    perfect = df[df["method"] == "m2"].set_index("metric")["value"]
    assert perfect["dice"] == 1.0 and perfect["hausdorff"] == 0.0 and perfect["ssim"] == 1.0
    wide = wide_table(df)
    assert list(wide.columns) == ["set", "image", "method", *METRICS]
    assert wide.set_index("method").loc["m1", "iou"] == pytest.approx(0.6)


def long_from(values: dict[str, np.ndarray], metric="f1") -> pd.DataFrame:
    rows = []
    for method, vals in values.items():
        for i, v in enumerate(vals):
            rows.append({"image": f"im{i:02d}", "method": method, "metric": metric, "value": v})
    return pd.DataFrame(rows)


def test_summary_and_table2():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.6, 0.9, 7), rng.uniform(0.5, 0.8, 7)
    long_df = pd.concat(
        [long_from({"ensemble": a, "otsu": b}), long_from({"ensemble": a * 2}, "hd95")]
    )
    s = summary_table(long_df)
    assert list(s.columns) == ["method", "metric", "n", "mean", "std"]
    row = s[(s["method"] == "otsu") & (s["metric"] == "f1")].iloc[0]
    assert row["n"] == 7 and row["mean"] == pytest.approx(b.mean())
    assert row["std"] == pytest.approx(b.std(ddof=1))
    t2 = table2_layout(s, ours="ensemble")
    assert t2["method"].tolist() == ["otsu", "ensemble"]
    assert list(t2.columns) == ["method", "f1", "hd95"]
    assert t2.loc[0, "f1"] == f"{b.mean():.3f} ± {b.std(ddof=1):.3f}"


def test_paired_comparison_matches_scipy():
    rng = np.random.default_rng(42)
    n = 15
    ours = rng.uniform(0.7, 0.95, n)
    base1 = ours - rng.normal(0.05, 0.04, n)
    base2 = ours + rng.normal(0.0, 0.05, n)
    long_df = long_from({"ensemble": ours, "cellpose": base1, "stardist": base2})
    table = paired_comparison_table(long_df, ours="ensemble", metric="f1")
    assert table["baseline"].tolist() == ["cellpose", "stardist"]
    for other, theirs in (("cellpose", base1), ("stardist", base2)):
        row = table.set_index("baseline").loc[other]
        t = stats.ttest_rel(ours, theirs)
        w = stats.wilcoxon(ours, theirs)
        d = ours - theirs
        assert row["n"] == n
        assert row["mean_diff"] == pytest.approx(d.mean())
        assert row["t"] == pytest.approx(t.statistic) and row["p_value"] == pytest.approx(t.pvalue)
        assert row["wilcoxon_statistic"] == pytest.approx(w.statistic)
        assert row["wilcoxon_p_value"] == pytest.approx(w.pvalue)
        assert row["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
        assert row["note"] == ""
    # d_z relates to t: t = d_z * sqrt(n)
    r0 = table.iloc[0]
    assert r0["t"] == pytest.approx(r0["cohens_dz"] * math.sqrt(n))


def test_paired_comparison_edge_cases():
    same = np.array([0.8, 0.7, 0.9, 0.6])
    table = paired_comparison_table(long_from({"ensemble": same, "copy": same.copy()}))
    row = table.iloc[0]
    assert row["n"] == 4 and math.isnan(row["t"]) and math.isnan(row["wilcoxon_p_value"])
    assert math.isnan(row["cohens_dz"]) and "all differences are zero" in row["note"]
    one = paired_comparison_table(long_from({"ensemble": [0.9], "otsu": [0.5]}))
    assert one.iloc[0]["n"] == 1 and math.isnan(one.iloc[0]["p_value"])
    assert "at least 2" in one.iloc[0]["note"]
    assert one.iloc[0]["mean_diff"] == pytest.approx(0.4)
    # constant non-zero differences: t and d_z undefined, Wilcoxon defined
    const = paired_comparison_table(long_from({"ensemble": same, "otsu": same - 0.1}))
    r = const.iloc[0]
    assert math.isnan(r["t"]) and math.isnan(r["cohens_dz"]) and "constant" in r["note"]
    assert r["wilcoxon_p_value"] == pytest.approx(stats.wilcoxon(same, same - 0.1).pvalue)
    # an image scored by only one method is left out
    uneven = long_from({"ensemble": [0.9, 0.8, 0.7, 0.6], "otsu": [0.5, 0.6, 0.4]})
    r = paired_comparison_table(uneven).iloc[0]
    assert r["n"] == 3 and "1 image(s) not scored by both" in r["note"]
    assert r["t"] == pytest.approx(stats.ttest_rel([0.9, 0.8, 0.7], [0.5, 0.6, 0.4]).statistic)
    with pytest.raises(InputError, match="ensemble"):
        paired_comparison_table(long_from({"otsu": same}))


# --------------------------------------------------------------------------- orchestration


def test_compare_methods_end_to_end(tmp_path):
    truths = write_set(tmp_path)
    write_otsu_baseline(tmp_path / "images", tmp_path / "otsu", radius_px=20)
    s = spec(tmp_path)
    s["baselines"]["otsu"] = str(tmp_path / "otsu")
    eval_df = load_eval_set(s)
    preds = {"ensemble": {k: v.astype(np.float32) * 0.9 for k, v in truths.items()}}
    long_df = compare_methods(eval_df, preds)
    assert set(long_df["method"]) == {"ensemble", "cellpose", "otsu"}
    assert len(long_df) == 3 * 3 * len(METRICS)
    wide = wide_table(long_df).set_index(["image", "method"])
    for stem, truth in truths.items():
        assert wide.loc[(stem, "ensemble"), "dice"] == 1.0  # probabilities 0.9 > 0.5
        shifted = np.roll(truth, 2 + int(stem[-1]), axis=1)
        assert wide.loc[(stem, "cellpose"), "iou"] == pytest.approx(iou(shifted, truth))
    paired = paired_comparison_table(long_df, ours="ensemble", metric="dice")
    assert paired["baseline"].tolist() == ["cellpose", "otsu"]
    assert (paired["mean_diff"] > 0).all()
    # the same through folders
    (tmp_path / "ens").mkdir()
    for stem, truth in truths.items():
        Image.fromarray((truth * 255).astype(np.uint8)).save(tmp_path / "ens" / f"{stem}.png")
    again = compare_from_dirs(s, {"ensemble": tmp_path / "ens"})
    pd.testing.assert_frame_equal(again, long_df)


def test_compare_methods_errors(tmp_path):
    truths = write_set(tmp_path)
    eval_df = load_eval_set(spec(tmp_path))
    partial = {k: v for k, v in truths.items() if k != "eval_001"}
    with pytest.raises(InputError, match="'ensemble' has no prediction for image 'eval_001'"):
        compare_methods(eval_df, {"ensemble": partial})
    wrong = dict(truths, eval_002=np.zeros((H, W + 1)))
    with pytest.raises(InputError, match="eval_002"):
        compare_methods(eval_df, {"ensemble": wrong})
    with pytest.raises(InputError, match="cellpose"):
        compare_methods(eval_df, {"cellpose": truths})
