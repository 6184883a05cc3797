from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brightseg.errors import InputError
from brightseg.split import (
    apply_split,
    group_from_name,
    grouped_split,
    kfold_split,
    split_summary,
)


def fake_manifest(n_bf=10, n_ph=5, patches=3, variants=4, seed=0):
    """Rows for n_bf brightfield and n_ph phase source images, shuffled."""
    rows = []
    for modality, n in (("brightfield", n_bf), ("phase", n_ph)):
        for i in range(n):
            src = f"{modality[:2]}{i:02d}"
            for p in range(patches):
                for v in range(variants):
                    rows.append(
                        {
                            "patch_id": f"{src}_r{p}_c0_v{v:02d}",
                            "source_image": src,
                            "modality": modality,
                            "patch_row": p,
                            "variant": v,
                            "split": "",
                        }
                    )
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_grouped_split_never_straddles_and_is_stratified():
    m = fake_manifest()
    split = grouped_split(m, val_fraction=0.2, seed=1)
    assert split.index.equals(m.index)
    assert set(split) == {"train", "val"}
    per_group = split.groupby(m["source_image"]).nunique()
    assert (per_group == 1).all(), "a source image is in both train and val"
    val_groups = m.loc[split == "val"].groupby("modality")["source_image"].nunique()
    # round(0.2 * 10) = 2 brightfield, round(0.2 * 5) = 1 phase
    assert val_groups.to_dict() == {"brightfield": 2, "phase": 1}


def test_grouped_split_deterministic_and_row_order_independent():
    m = fake_manifest(seed=0)
    a = grouped_split(m, seed=3)
    b = grouped_split(m, seed=3)
    pd.testing.assert_series_equal(a, b)
    m2 = fake_manifest(seed=99)  # same rows, other order
    c = grouped_split(m2, seed=3)
    val_a = set(m.loc[a == "val", "source_image"])
    assert val_a == set(m2.loc[c == "val", "source_image"])
    others = {frozenset(m.loc[grouped_split(m, seed=s) == "val", "source_image"]) for s in range(8)}
    assert len(others) > 1, "the seed has no effect"


def test_small_strata():
    # a 2-group stratum gets exactly one val group; a single-group stratum trains
    m = fake_manifest(n_bf=2, n_ph=1)
    split = grouped_split(m, val_fraction=0.2)
    bf = m["modality"] == "brightfield"
    assert m.loc[bf & (split == "val"), "source_image"].nunique() == 1
    assert (split[~bf] == "train").all()


def test_grouped_split_without_strata_and_bad_args():
    m = fake_manifest(n_bf=10, n_ph=10)
    split = grouped_split(m, strata_col=None, val_fraction=0.3)
    assert m.loc[split == "val", "source_image"].nunique() == 6
    with pytest.raises(InputError, match="val_fraction"):
        grouped_split(m, val_fraction=1.0)
    with pytest.raises(InputError, match="no column"):
        grouped_split(m, group_col="nope")
    with pytest.raises(InputError, match="empty"):
        grouped_split(m.iloc[:0])


def test_kfold_grouped_and_balanced():
    m = fake_manifest(n_bf=10, n_ph=5)
    folds = kfold_split(m, k=5, seed=2)
    assert folds.index.equals(m.index)
    assert (folds.groupby(m["source_image"]).nunique() == 1).all()
    groups_per_fold = m.groupby(folds)["source_image"].nunique()
    assert groups_per_fold.to_dict() == {f: 3 for f in range(5)}
    # every brightfield fold has exactly 2 of the 10 brightfield groups
    bf = m["modality"] == "brightfield"
    assert (m[bf].groupby(folds[bf])["source_image"].nunique() == 2).all()
    with pytest.raises(InputError, match="folds need"):
        kfold_split(fake_manifest(n_bf=2, n_ph=1), k=5)


def test_split_summary_counts():
    m = fake_manifest(n_bf=10, n_ph=5, patches=3, variants=4)
    m["split"] = grouped_split(m, seed=0)
    s = split_summary(m).set_index(["split", "modality"])
    assert s.loc[("val", "brightfield"), "groups"] == 2
    assert s.loc[("val", "brightfield"), "patches"] == 2 * 3
    assert s.loc[("val", "brightfield"), "samples"] == 2 * 3 * 4
    assert s.loc[("train", "all"), "groups"] == 12
    assert s.loc[("train", "all"), "samples"] == 12 * 12
    assert s["samples"].xs("all", level="modality").sum() == len(m)


def test_group_from_name():
    names = pd.Series(["A01_f1_t0_512_256.png", "dir/B02_x_0_0.tif", "C3_10_20"], index=[5, 6, 7])
    out = group_from_name(names)
    assert out.tolist() == ["A01_f1_t0", "B02_x", "C3"]
    assert out.index.tolist() == [5, 6, 7]
    custom = group_from_name(["img7-tile3.png"], r"^(?P<source>img\d+)-tile\d+")
    assert custom.tolist() == ["img7"]
    with pytest.raises(InputError, match="does not match"):
        group_from_name(["noindex.png"])
    with pytest.raises(InputError, match="source"):
        group_from_name(["a_1_2.png"], r"(?P<src>.+)_\d+_\d+")


def test_apply_split_roundtrip(tmp_path):
    m = fake_manifest()
    src = tmp_path / "manifest.parquet"
    m.to_parquet(src, index=False)
    out = apply_split(src, tmp_path / "split.parquet", val_fraction=0.2, seed=1)
    back = pd.read_parquet(tmp_path / "split.parquet")
    pd.testing.assert_frame_equal(back, out)
    np.testing.assert_array_equal(back["split"].to_numpy(), grouped_split(m, seed=1).to_numpy())
    assert list(back.columns) == list(m.columns)
    # in place works too
    apply_split(src, src, seed=1)
    assert set(pd.read_parquet(src)["split"]) == {"train", "val"}
    with pytest.raises(InputError, match="does not exist"):
        apply_split(tmp_path / "missing.parquet", tmp_path / "x.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="bad.parquet"):
        apply_split(tmp_path / "bad.parquet", tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_apply_split_pretiled_names(tmp_path):
    names = [f"src{i}_{r}_{c}.png" for i in range(10) for r in (0, 256) for c in (0, 256)]
    m = pd.DataFrame({"file": names, "modality": "brightfield", "split": ""})
    m.to_parquet(tmp_path / "m.parquet", index=False)
    out = apply_split(
        tmp_path / "m.parquet",
        tmp_path / "o.parquet",
        group_regex=r"^(?P<source>.+)_(?P<row>\d+)_(?P<col>\d+)\.png$",
        name_col="file",
    )
    source = out["file"].str.split("_").str[0]
    assert (out.groupby(source)["split"].nunique() == 1).all()
    assert source[out["split"] == "val"].nunique() == 2
