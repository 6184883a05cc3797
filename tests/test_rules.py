"""The rule layer (brightseg.rules) on bring-your-own data: mask-folder annotations, patch
sets, evaluation sets, and the domain helpers those rules use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from scipy import stats

import brightseg.rules.evalsets
from brightseg.annotations.maskfolder import (
    group_by_source,
    import_mask_annotations,
    patch_set_training_pairs,
    resolve_patch_sets,
)
from brightseg.errors import InputError
from brightseg.evalsets import comparison_tables, per_image_table, resolve_evaluation_sets
from brightseg.io import read_image
from brightseg.rules.evalsets import evalset_baseline, evalset_compare
from brightseg.rules.preprocess import correct_illumination, import_annotations
from brightseg.rules.training import augment, split
from brightseg.sheet import list_images
from brightseg.synth import synth_plate

REGEX = r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$"
ILLUMINATION = {"radius": 10, "unit": "px", "mode": "black", "method": "fast"}


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    """A 3-image synthetic plate with a CVAT export and ground-truth labels."""
    out = tmp_path_factory.mktemp("plate") / "p1"
    synth_plate(
        out, "p1", n_images=3, shape=(80, 96), seed=3, cells_per_image=(4, 6), mean_radius_px=9
    )
    return out


@pytest.fixture(scope="module")
def cvat_import(plate, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ann") / "cvat"
    import_annotations(
        str(plate / "cvat.xml"),
        str(plate / "images"),
        str(out / "manifest.parquet"),
        str(out / "skipped.tsv"),
        plate="p1",
        annotations={"labels": ["cell"]},
        on_bad_input="error",
    )
    return out


def _import_folder(
    masks: Path, images: str, out: Path, on_bad_input: str = "error", **kw
) -> pd.DataFrame:
    import_annotations(
        str(masks),
        images,
        str(out / "manifest.parquet"),
        str(out / "skipped.tsv"),
        plate="p1",
        annotations={"labels": ["cell"], **kw},
        on_bad_input=on_bad_input,
    )
    return pd.read_parquet(out / "manifest.parquet")


# --------------------------------------------------------------------------- annotations


def test_mask_folder_of_labels_imports_like_cvat(plate, cvat_import, tmp_path):
    ref = pd.read_parquet(cvat_import / "manifest.parquet")
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem in ref["stem"]:  # the CVAT import's instance labels, as a lab would export them
        tifffile.imwrite(masks / f"{stem}.tif", read_image(cvat_import / f"{stem}_labels.tif"))
    got = _import_folder(masks, str(plate / "images"), tmp_path / "out")

    assert list(got.columns) == list(ref.columns)
    assert list(got["stem"]) == list(ref["stem"])
    for col in ("image", "plate", "n_cells", "foreground_fraction", "width", "height"):
        assert got[col].tolist() == ref[col].tolist(), col
    assert set(got["source_format"]) == {"mask_labels"}
    for stem in ref["stem"]:
        for name in (f"{stem}_labels.tif", f"{stem}_mask.png"):
            np.testing.assert_array_equal(
                read_image(tmp_path / "out" / name), read_image(cvat_import / name)
            )
    skipped = pd.read_csv(tmp_path / "out/skipped.tsv", sep="\t")
    assert skipped.empty and list(skipped.columns) == ["stage", "plate", "file", "reason"]
    # no staging folder is left behind
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(".")]


def test_binary_png_masks_give_the_cvat_foreground(plate, cvat_import, tmp_path):
    ref = pd.read_parquet(cvat_import / "manifest.parquet")
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem in ref["stem"]:
        fg = read_image(cvat_import / f"{stem}_mask.png") > 0
        Image.fromarray(fg.astype(np.uint8)).save(masks / f"{stem}.png")  # 0/1 PNG
    got = _import_folder(masks, str(plate / "images"), tmp_path / "out")
    assert set(got["source_format"]) == {"mask_binary01"}
    for stem, n in zip(got["stem"], got["n_cells"], strict=True):
        fg = read_image(cvat_import / f"{stem}_mask.png") > 0
        np.testing.assert_array_equal(read_image(tmp_path / f"out/{stem}_mask.png") > 0, fg)
        # touching cells merge: instances are the 8-connected components
        assert n == ndi.label(fg, structure=np.ones((3, 3)))[1]


def _jpeg_masks(cvat_import: Path, folder: Path, stems, suffix="_mask") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        fg = read_image(cvat_import / f"{stem}_mask.png") > 0
        rgb = np.zeros((*fg.shape, 3), np.uint8)
        rgb[fg] = (255, 255, 255)
        Image.fromarray(rgb).save(folder / f"{stem}{suffix}.jpg", quality=90)


def test_jpeg_masks_for_some_images_with_a_suffix(plate, cvat_import, tmp_path):
    ref = pd.read_parquet(cvat_import / "manifest.parquet")
    stems = list(ref["stem"])[:2]  # the third image is not annotated: not an error
    _jpeg_masks(cvat_import, tmp_path / "masks", stems)
    got = _import_folder(
        tmp_path / "masks",
        str(plate / "images" / "*.tif"),  # a glob, as the plate sheet allows
        tmp_path / "out",
        mask_suffix="_mask",
        mask_threshold=127,
    )
    assert list(got["stem"]) == stems
    assert set(got["source_format"]) == {"mask_lossy"}
    assert got["image"].tolist() == [str(plate / "images" / f"{s}.tif") for s in stems]
    for stem in stems:
        fg = read_image(cvat_import / f"{stem}_mask.png") > 0
        mine = read_image(tmp_path / f"out/{stem}_mask.png") > 0
        assert (fg ^ mine).sum() <= 0.01 * fg.size  # JPEG ringing at the edges only
    assert pd.read_csv(tmp_path / "out/skipped.tsv", sep="\t").empty


def test_mask_without_image_names_the_mask(plate, cvat_import, tmp_path):
    ref = pd.read_parquet(cvat_import / "manifest.parquet")
    _jpeg_masks(cvat_import, tmp_path / "masks", list(ref["stem"]), suffix="")
    stray = tmp_path / "masks" / "p1_H12_f00_t00.jpg"
    Image.new("L", (96, 80)).save(stray)
    with pytest.raises(
        InputError, match="p1_H12_f00_t00.jpg: no image for this mask in plate .p1."
    ):
        _import_folder(tmp_path / "masks", str(plate / "images"), tmp_path / "out")
    assert not (tmp_path / "out/manifest.parquet").exists()

    got = _import_folder(
        tmp_path / "masks", str(plate / "images"), tmp_path / "skip", on_bad_input="skip"
    )
    assert len(got) == 3
    skipped = pd.read_csv(tmp_path / "skip/skipped.tsv", sep="\t")
    assert skipped["file"].tolist() == [str(stray)]


def test_mask_size_mismatch_error_names_the_users_file(plate, cvat_import, tmp_path):
    ref = pd.read_parquet(cvat_import / "manifest.parquet")
    masks = tmp_path / "masks"
    _jpeg_masks(cvat_import, masks, list(ref["stem"]), suffix="")
    bad = masks / f"{ref['stem'][0]}.jpg"
    Image.new("L", (50, 40)).save(bad)
    with pytest.raises(InputError) as err:
        import_mask_annotations(
            masks,
            list_images(str(plate / "images")),
            tmp_path / "out",
            plate="p1",
            images_where=str(plate / "images"),
        )
    assert err.value.path == str(bad)
    assert ".mask-import-" not in str(err.value)
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(".")]


def test_correct_plate_reads_tiff_png_jpeg_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :72]
    base = 120 + 40 * np.sin(xx / 9.0) + rng.normal(0, 3, (64, 72))
    base[20:34, 25:40] -= 60  # a dark cell
    grey8 = np.clip(base, 0, 255).astype(np.uint8)
    d = tmp_path / "imgs"
    d.mkdir()
    tifffile.imwrite(d / "q_A01_f00_t00.tif", grey8.astype(np.uint16) * 257)  # 16-bit
    Image.fromarray(grey8).save(d / "q_A02_f00_t00.png")  # 8-bit grey
    Image.fromarray(np.dstack([grey8] * 3)).save(d / "q_A03_f00_t00.png")  # grey stored as RGB
    Image.fromarray(np.dstack([grey8] * 3)).save(d / "q_A04_f00_t00.jpg", quality=95)
    tint = np.dstack([grey8, (grey8 * 0.8).astype(np.uint8), (grey8 * 0.6).astype(np.uint8)])
    tifffile.imwrite(d / "q_A05_f00_t00.tif", tint, photometric="rgb")  # RGB: luminance
    correct_illumination(
        str(d),
        str(tmp_path / "q.ome.zarr"),
        str(tmp_path / "skipped.tsv"),
        plate="q",
        regex=REGEX,
        modality="brightfield",
        pixel_size_um=0.65,
        illumination=ILLUMINATION,
        chunk=256,
    )
    from brightseg.platestore import open_plate

    ps = open_plate(tmp_path / "q.ome.zarr")
    imgs = {i: ps.read(i) for i in ps.images["image_id"]}
    assert len(imgs) == 5
    for img in imgs.values():
        assert img.shape == (64, 72) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
    # 16-bit, 8-bit and RGB-with-equal-channels copies of one image correct identically
    # (stored as uint16, so equal to 1/65535)
    np.testing.assert_allclose(imgs["q_A01_f00_t00"], imgs["q_A02_f00_t00"], atol=2e-5)
    np.testing.assert_array_equal(imgs["q_A02_f00_t00"], imgs["q_A03_f00_t00"])
    assert np.corrcoef(imgs["q_A02_f00_t00"].ravel(), imgs["q_A04_f00_t00"].ravel())[0, 1] > 0.9
    from brightseg.illumination import correct_illumination as tophat_correct

    lum = np.round(tint.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.float32)
    want = tophat_correct(lum, 10, mode="black", method="fast")
    np.testing.assert_allclose(imgs["q_A05_f00_t00"], want, atol=1e-4)
    cell = imgs["q_A05_f00_t00"][22:32, 27:38].mean()
    assert cell > imgs["q_A05_f00_t00"][45:60, 5:20].mean()  # black top-hat: the cell is bright


# --------------------------------------------------------------------------- patch sets


def _patch_set(root: Path, n_sources=4, size=32, grid=2, seed=0) -> tuple[Path, Path, dict]:
    """Sources of (grid*size)^2 cut into grid x grid patches ``src<i>_<row>_<col>``."""
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    originals = {}
    for i in range(n_sources):
        img = rng.integers(0, 256, (grid * size, grid * size), dtype=np.uint8)
        fg = np.zeros(img.shape, bool)
        fg[5:20, 8:30] = True
        fg[40:60, 33:50] = True
        for r in range(grid):
            for c in range(grid):
                stem = f"src{i}_{r * size}_{c * size}"
                sl = np.s_[r * size : (r + 1) * size, c * size : (c + 1) * size]
                Image.fromarray(img[sl]).save(images / f"{stem}.png")
                Image.fromarray((fg[sl] * 255).astype(np.uint8)).save(masks / f"{stem}.png")
                originals[stem] = (img[sl], fg[sl])
    return images, masks, originals


def test_patch_set_training_store_groups_by_source(tmp_path):
    images, masks, originals = _patch_set(tmp_path / "ps")
    training = {
        "patch_size": 32,
        "n_variants": 2,
        "val_fraction": 0.25,
        "patch_sets": [
            {
                "name": "lab",
                "images": str(images),
                "masks": str(masks),
                "modality": "phase",
                "correct_illumination": False,
            }
        ],
    }
    zarr_path, unsplit = tmp_path / "patches.zarr", tmp_path / "unsplit.parquet"
    patch_sets = resolve_patch_sets(training.pop("patch_sets"))
    augment([], [], str(zarr_path), str(unsplit), training=training, patch_sets=patch_sets, seed=1)
    man = pd.read_parquet(unsplit)
    assert len(man) == 16 * 2  # 16 patches, each one tile (patch_size), 2 variants
    assert set(man["source_image"]) == {"src0", "src1", "src2", "src3"}
    assert (man["patch_row"] == 0).all() and (man["patch_col"] == 0).all()
    assert set(man["plate"]) == {"lab"} and set(man["modality"]) == {"phase"}

    # variant 0 is the untouched patch: the stored pixels are the file's (no re-tiling,
    # no correction when correct_illumination is false: uint8 / 255 -> * 255)
    import zarr

    root = zarr.open_group(str(zarr_path), mode="r")
    for row in man[man["variant"] == 0].itertuples():
        stem = row.patch_id.removeprefix("lab:").removesuffix("_r0_c0_v00")
        img, fg = originals[stem]
        stored = np.asarray(root["images"][row.index])
        np.testing.assert_array_equal(stored, np.dstack([img] * 3))
        np.testing.assert_array_equal(np.asarray(root["masks"][row.index]), fg.astype(np.uint8))

    split_path = tmp_path / "manifest.parquet"
    split(str(unsplit), str(split_path), str(tmp_path / "summary.tsv"), val_fraction=0.25, seed=1)
    df = pd.read_parquet(split_path)
    sides = df.groupby("source_image")["split"].nunique()
    assert (sides == 1).all()  # no source image on both sides
    per_side = df.groupby("split")["source_image"].nunique().to_dict()
    assert per_side == {"train": 3, "val": 1}
    summary = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert summary.set_index("split")["groups"].to_dict() == {"train": 3, "val": 1}


def test_patch_set_illumination_correction_is_applied(tmp_path):
    images, masks, originals = _patch_set(tmp_path / "ps", n_sources=1)
    spec = {"name": "lab", "images": str(images), "masks": str(masks)}
    resolved = resolve_patch_sets([spec], illumination=ILLUMINATION)
    assert resolved[0]["illumination"] == ILLUMINATION and resolved[0]["plate"] == "lab"
    assert resolve_patch_sets(resolved) == resolved  # idempotent
    groups: dict[str, str] = {}
    pairs = list(patch_set_training_pairs(resolved, groups=groups))
    assert groups == {f"lab:{s}": "src0" for s in originals}
    from brightseg.illumination import correct_illumination as tophat_correct

    # Preprocessing parity (issue 12): the source's field of view is reassembled from the
    # positions in the names and corrected whole, so each patch equals the window of the
    # corrected full image (tolerance 1e-6, i.e. exact up to float32 rounding) -- what
    # full-image inference sees -- and not the patch corrected on its own.
    full = np.zeros((64, 64), np.uint8)
    for stem, (img, _) in originals.items():
        r, c = (int(v) for v in stem.split("_")[1:])
        full[r : r + 32, c : c + 32] = img
    whole = tophat_correct(full.astype(np.float32), 10, mode="black", method="fast")
    differs = []
    for pair in pairs:
        stem = pair["image_id"].removeprefix("lab:")
        r, c = (int(v) for v in stem.split("_")[1:])
        np.testing.assert_allclose(pair["image"], whole[r : r + 32, c : c + 32], atol=1e-6)
        alone = tophat_correct(originals[stem][0].astype(np.float32), 10, mode="black")
        differs.append(not np.allclose(pair["image"], alone, atol=1e-6))
    assert all(differs)  # per-patch correction (the old path) gives other pixels


def test_resolve_patch_sets_errors(tmp_path):
    with pytest.raises(InputError, match="no .*source"):
        resolve_patch_sets(
            [{"images": str(tmp_path), "masks": str(tmp_path), "name_regex": r"^(?P<x>.+)$"}]
        )
    with pytest.raises(InputError, match="does not exist"):
        resolve_patch_sets([{"images": str(tmp_path / "nope"), "masks": str(tmp_path)}])
    with pytest.raises(InputError, match="unique"):
        spec = {"name": "a", "images": str(tmp_path), "masks": str(tmp_path)}
        resolve_patch_sets([spec, spec])


def test_group_by_source_keeps_plate_images():
    man = pd.DataFrame({"source_image": ["img1", "lab:a_0_0", "lab:a_0_32", "lab:b_0_0"]})
    groups = {"lab:a_0_0": "a", "lab:a_0_32": "a", "lab:b_0_0": "b"}
    assert group_by_source(man, groups)["source_image"].tolist() == ["img1", "a", "a", "b"]


# --------------------------------------------------------------------------- evaluation sets


def _long(values: dict[str, list[float]]) -> pd.DataFrame:
    """A long per-image table with given F1 values per method (other metrics 0)."""
    rows = []
    for method, vals in values.items():
        for i, v in enumerate(vals):
            rows += [
                {"set": "s", "image": f"im{i}", "method": method, "metric": m, "value": v}
                for m in ("dice", "f1")
            ]
    return pd.DataFrame(rows)


def test_comparison_tables_pair_against_baselines_only():
    ens = [0.9, 0.8, 0.85, 0.95]
    otsu = [0.7, 0.75, 0.6, 0.9]
    long_df = _long({"ensemble": ens, "otsu": otsu, "unet/bce/e03": [0.5, 0.6, 0.7, 0.8]})
    t = comparison_tables(long_df, baselines=["otsu"], paired_metrics=["f1", "dice"])
    paired = t["paired"]
    assert paired["baseline"].tolist() == ["otsu", "otsu"]  # no checkpoint rows
    assert paired["metric"].tolist() == ["f1", "dice"]
    diff = np.subtract(ens, otsu)
    row = paired.iloc[0]
    assert row["n"] == 4
    assert row["mean_diff"] == pytest.approx(diff.mean())
    assert row["t"] == pytest.approx(stats.ttest_rel(ens, otsu).statistic)
    assert row["p_value"] == pytest.approx(stats.ttest_rel(ens, otsu).pvalue)
    assert row["wilcoxon_p_value"] == pytest.approx(stats.wilcoxon(ens, otsu).pvalue)
    assert row["cohens_dz"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    table2 = t["table2"]
    assert table2["method"].tolist()[-1] == "ensemble"
    f1 = table2.set_index("method").loc["ensemble", "f1"]
    assert f1 == f"{np.mean(ens):.3f} ± {np.std(ens, ddof=1):.3f}"
    summary = t["summary"].set_index(["method", "metric"])
    assert summary.loc[("otsu", "f1"), "mean"] == pytest.approx(np.mean(otsu))

    none = comparison_tables(long_df, baselines=[])["paired"]
    assert none.empty and "cohens_dz" in none.columns


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class _FakeEnsemble:
    """Stands in for brightseg.ensemble.Ensemble: predictions fixed per image shape."""

    by_shape: dict = {}

    def __init__(self):
        self.names = ["m/a/e01", "m/b/e02"]

    @classmethod
    def load(cls, ensemble_tsv, inference):
        return cls()

    def predict(self, image, pixel_size_um=None):
        assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1  # corrected
        pred = self.by_shape[image.shape]
        probs = np.stack([pred * 0.9, np.zeros(image.shape, np.float32)])
        return probs, probs.mean(0), pred.astype(np.uint8)


def _eval_set(root: Path) -> tuple[dict, dict]:
    """Two images of different shapes; truth disks; ensemble and 'other' predictions."""
    truths, preds, others = {}, {}, {}
    for name, shape in (("a", (40, 48)), ("b", (44, 52))):
        t = _disk(shape, 20, 24, 9)
        truths[name] = t
        preds[name] = _disk(shape, 21, 24, 9).astype(np.float32)
        others[name] = _disk(shape, 20, 28, 7)
        raw = np.full(shape, 30000, np.uint16)
        raw[t] = 12000
        for sub, arr in (("images", raw), ("masks", t * 255), ("other", others[name] * 255)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            if sub == "images":
                tifffile.imwrite(root / sub / f"{name}.tif", arr)
            else:
                Image.fromarray(arr.astype(np.uint8)).save(root / sub / f"{name}.png")
        _FakeEnsemble.by_shape[shape] = preds[name]
    spec = resolve_evaluation_sets(
        [
            {
                "name": "toy",
                "images": str(root / "images"),
                "masks": str(root / "masks"),
                "baselines": {"other": str(root / "other")},
            }
        ]
    )["toy"]
    return spec, {"truth": truths, "ensemble": preds, "other": others}


def _f1(p, t) -> float:
    p, t = np.asarray(p) != 0, np.asarray(t) != 0
    tp = (p & t).sum()
    return 2 * tp / (p.sum() + t.sum())


def _outputs(d: Path) -> dict:
    return {
        "per_image": d / "per_image.parquet",
        "summary": d / "summary.parquet",
        "table2_md": d / "table2.md",
        "table2_tex": d / "table2.tex",
        "paired": d / "paired.parquet",
        "paired_md": d / "paired.md",
        "metrics_png": d / "fig/metrics.png",
        "overlays": d / "fig/overlays",
        "overlay_counts": d / "fig/overlays.parquet",
        "predictions": d / "ensemble",
    }


def test_evaluate_set_scores_every_method_and_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(brightseg.rules.evalsets, "load_ensemble", _FakeEnsemble.load)
    spec, masks = _eval_set(tmp_path / "set")
    kw = dict(inference={}, illumination=ILLUMINATION, paired_metrics=["f1"])
    long_df = evalset_compare("unused.tsv", spec, _outputs(tmp_path / "o1"), **kw)
    evalset_compare("unused.tsv", spec, _outputs(tmp_path / "o2"), **kw)

    assert set(long_df["method"]) == {"ensemble", "m/a/e01", "m/b/e02", "other"}
    assert set(long_df["image"]) == {"a", "b"} and set(long_df["set"]) == {"toy"}
    f1 = long_df[long_df["metric"] == "f1"].set_index(["method", "image"])["value"]
    for image in ("a", "b"):
        t = masks["truth"][image]
        assert f1["ensemble", image] == pytest.approx(_f1(masks["ensemble"][image], t))
        assert f1["m/a/e01", image] == pytest.approx(_f1(masks["ensemble"][image], t))
        assert f1["m/b/e02", image] == pytest.approx(0.0)
        assert f1["other", image] == pytest.approx(_f1(masks["other"][image], t))
    paired = pd.read_parquet(tmp_path / "o1/paired.parquet")
    assert paired["baseline"].tolist() == ["other"]
    want = np.mean([_f1(masks["ensemble"][i], masks["truth"][i]) for i in "ab"])
    assert paired["mean_ours"].iloc[0] == pytest.approx(want)
    assert (tmp_path / "o1/table2.md").read_text().splitlines()[-1].startswith("| toy | ensemble")
    assr = sorted(p.name for p in (tmp_path / "o1/fig/overlays").iterdir())
    assert assr == ["a.png", "b.png"]
    counts = pd.read_parquet(tmp_path / "o1/fig/overlays.parquet")
    tp = counts.query("image == 'a' and method == 'other' and `class` == 'tp'")["pixels"]
    assert tp.item() == (masks["other"]["a"] & masks["truth"]["a"]).sum()

    def digest(root: Path) -> dict:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    d1, d2 = digest(tmp_path / "o1"), digest(tmp_path / "o2")
    assert len(d1) == 16 and d1 == d2
    # the ensemble's masks and probabilities are saved per image, to inspect and reuse
    for stem in "ab":
        saved = read_image(tmp_path / "o1/ensemble" / f"{stem}_mask.png")
        shape = saved.shape
        np.testing.assert_array_equal(saved > 0, _FakeEnsemble.by_shape[shape] > 0)
        prob = read_image(tmp_path / "o1/ensemble" / f"{stem}_prob.png")
        np.testing.assert_array_equal(
            prob, np.rint(_FakeEnsemble.by_shape[shape] * 0.45 * 255).astype(np.uint8)
        )


def test_evaluate_set_rejects_a_baseline_named_like_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(brightseg.rules.evalsets, "load_ensemble", _FakeEnsemble.load)
    spec, _ = _eval_set(tmp_path / "set")
    spec = dict(spec, baselines={"m/a/e01": spec["baselines"]["other"]})
    with pytest.raises(InputError, match="taken"):
        evalset_compare(
            "x.tsv", spec, _outputs(tmp_path / "o"), inference={}, illumination=ILLUMINATION
        )


def test_resolve_evaluation_sets(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    sets = resolve_evaluation_sets(
        [
            {"name": "demo", "synth": True, "baselines": {"otsu": "results/evalsets/demo/otsu/"}},
            {"name": "real", "images": str(tmp_path / "i"), "masks": str(tmp_path / "m")},
        ],
        produced=["results/evalsets/demo/otsu"],
    )
    assert list(sets) == ["demo", "real"]
    assert sets["demo"]["images"] == "results/demo/evalset/images"
    assert sets["demo"]["baselines"] == {"otsu": "results/evalsets/demo/otsu"}
    assert sets["real"]["pixel_size_um"] == 0.65 and sets["real"]["baselines"] == {}
    for bad, match in (
        ([{"name": "a b", "synth": True}], "must match"),
        ([{"name": "x", "synth": True}, {"name": "x", "synth": True}], "twice"),
        ([{"name": "x", "images": str(tmp_path / "nope"), "masks": "m"}], "does not exist"),
        ([{"name": "x", "synth": True, "baselines": {"ensemble": str(tmp_path)}}], "reserved"),
        ([{"name": "x", "synth": True, "baselines": {"cp": str(tmp_path / "no")}}], "cp"),
    ):
        with pytest.raises(InputError, match=match):
            resolve_evaluation_sets(bad)


def test_otsu_baseline_for_set_and_per_image_table(tmp_path):
    spec, masks = _eval_set(tmp_path / "set")
    df = evalset_baseline(
        spec["images"], str(tmp_path / "otsu"), otsu={"radius_px": 15, "sigma": 1.0}
    )
    assert sorted(p.name for p in (tmp_path / "otsu").iterdir()) == ["a.png", "b.png"]
    assert df["mask"].tolist() == [str(tmp_path / "otsu" / f"{s}.png") for s in "ab"]
    # the dark disk on a flat background is found almost exactly
    for s in "ab":
        got = read_image(tmp_path / "otsu" / f"{s}.png") > 0
        assert _f1(got, masks["truth"][s]) > 0.95
    long_df = per_image_table(
        {"image": s, "method": "otsu", "pred": read_image(p) > 0, "truth": masks["truth"][s]}
        for s, p in zip("ab", df["mask"], strict=True)
    )
    assert len(long_df) == 2 * 9


def test_mask_mode_reaches_patch_sets_and_evaluation_sets(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    spec = {"images": str(tmp_path / "i"), "masks": str(tmp_path / "m")}
    assert resolve_patch_sets([spec])[0]["mask_mode"] == "auto"
    assert resolve_patch_sets([spec], mask_mode="binary")[0]["mask_mode"] == "binary"
    assert (
        resolve_patch_sets([dict(spec, mask_mode="labels")], mask_mode="binary")[0]["mask_mode"]
        == "labels"
    )
    sets = resolve_evaluation_sets([dict(spec, name="e", mask_mode="binary")])
    assert sets["e"]["mask_mode"] == "binary"
