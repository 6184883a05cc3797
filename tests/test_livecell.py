"""Tests of brightseg.annotations.livecell on a tiny LIVECell-format fixture built here."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from brightseg.annotations import livecell as L
from brightseg.errors import InputError
from brightseg.io import read_image

# pycocotools' annToMask (used for the reference labels) warns under numpy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 52, 70  # small stand-in for LIVECell's 520 x 704

EXCLUDED = "A172_Phase_A7_1_01d04h00m_3"  # on the paper's list of corrupt images
IMAGES = {
    # name: cell line folder, split folder
    "A172_Phase_A7_1_00d00h00m_1.tif": ("A172", "livecell_test_images"),
    "A172_Phase_C7_2_01d12h00m_4.tif": ("A172", "livecell_test_images"),
    f"{EXCLUDED}.tif": ("A172", "livecell_test_images"),
    "SkBr3_Phase_E3_1_00d04h00m_2.tif": ("SkBr3", "livecell_train_val_images"),
    "SkBr3_Phase_E3_2_00d08h00m_1.tif": ("SkBr3", "livecell_train_val_images"),  # truncated
}
TRUNCATED = "SkBr3_Phase_E3_2_00d08h00m_1.tif"


def square(x0, y0, size):
    x1, y1 = x0 + size, y0 + size
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def annotations_for(i: int) -> list[list[list[float]]]:
    """Polygons of image i: two squares overlapping, a triangle, one at the border."""
    return [
        square(5 + i, 5, 10),
        square(12 + i, 8, 10),  # overlaps the first (first annotation wins)
        [[40.0, 10.0, 55.5, 12.2, 47.3, 30.9]],
        square(60, 40, 15),  # runs past the image border
    ]


@pytest.fixture
def fixture(tmp_path):
    root = tmp_path / "livecell"
    rng = np.random.default_rng(0)
    list_style = {
        "info": {},
        "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
        "images": [],
        "annotations": [],
    }
    dict_style = {"categories": list_style["categories"], "images": [], "annotations": {}}
    ann_id = 1
    for i, (name, (line, split)) in enumerate(sorted(IMAGES.items())):
        path = root / "images" / split / line / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, rng.integers(90, 160, size=(H, W), dtype=np.uint8))
        if name == TRUNCATED:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        img = {"id": 100 + i, "file_name": name, "width": W, "height": H}
        target = list_style if line == "A172" else dict_style
        target["images"].append(img)
        for poly in annotations_for(i):
            xs, ys = poly[0][0::2], poly[0][1::2]
            ann = {
                "id": ann_id,
                "image_id": img["id"],
                "category_id": 1,
                "segmentation": poly,
                "area": 0.0,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "iscrowd": 0,
            }
            if target is list_style:
                list_style["annotations"].append(ann)
            else:
                dict_style["annotations"][str(ann_id)] = ann
            ann_id += 1
    ann_dir = root / "annotations"
    ann_dir.mkdir()
    (ann_dir / "livecell_coco_test.json").write_text(json.dumps(list_style))
    (ann_dir / "skbr3_train.json").write_text(json.dumps(dict_style))
    excl = root / "excluded.txt"
    excl.write_text(f"# corrupt files\n{EXCLUDED}\nSHSY5Y_Phase_D10_1_00d00h00m_1.tif\n\n")
    return {
        "root": root,
        "images": root / "images",
        "annotations": [ann_dir / "livecell_coco_test.json", ann_dir / "skbr3_train.json"],
        "excluded": excl,
        "list": list_style,
        "dict": dict_style,
    }


def reference_labels(dataset: dict, image_id: int) -> np.ndarray:
    """pycocotools annToMask, painted in id order, first annotation wins."""
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))
    if isinstance(coco.dataset["annotations"], dict):  # per-cell-type style
        coco.dataset["annotations"] = list(coco.dataset["annotations"].values())
    coco.createIndex()
    labels = np.zeros((H, W), np.uint16)
    k = 0
    for ann in sorted(coco.imgToAnns[image_id], key=lambda a: a["id"]):
        m = coco.annToMask(ann).astype(bool) & (labels == 0)
        if m.any():
            k += 1
            labels[m] = k
    return labels


def test_parse_name():
    got = L.parse_name("A172_Phase_A7_1_00d04h00m_2.tif")
    assert got == {
        "cell_line": "A172",
        "well": "A7",
        "location": 1,
        "timestamp": "00d04h00m",
        "crop": 2,
        "group": "A172_Phase_A7",
    }
    assert L.parse_name("SHSY5Y_Phase_D10_3_02d20h00m_4")["group"] == "SHSY5Y_Phase_D10"
    with pytest.raises(InputError, match="not a LIVECell image name"):
        L.parse_name("plate1_A01_f1.tif")


def test_load_excluded_with_and_without_extension(fixture):
    ex = L.load_excluded(fixture["excluded"])
    assert ex == {EXCLUDED, "SHSY5Y_Phase_D10_1_00d00h00m_1"}
    assert L.is_excluded(f"{EXCLUDED}.tif", ex)
    assert L.is_excluded(EXCLUDED, ex)
    assert L.is_excluded("SHSY5Y_Phase_D10_1_00d00h00m_1", ex)
    assert not L.is_excluded("A172_Phase_A7_1_00d00h00m_1.tif", ex)
    with pytest.raises(InputError, match="does not exist"):
        L.load_excluded(fixture["root"] / "nope.txt")


def test_read_annotations_accepts_list_and_dict(fixture):
    a = L.read_annotations(fixture["annotations"][0])
    b = L.read_annotations(fixture["annotations"][1])
    assert isinstance(a["annotations"], list) and isinstance(b["annotations"], list)
    assert [x["id"] for x in b["annotations"]] == sorted(
        int(k) for k in fixture["dict"]["annotations"]
    )
    coco = L.coco_from_annotations(b)
    assert len(coco.getAnnIds()) == 8 and len(coco.getImgIds()) == 2
    bad = fixture["root"] / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(
        InputError, match=r"bad\.json.*missing keys \['annotations', 'categories'\]"
    ):
        L.read_annotations(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="JSON is not valid at line 1, column 2"):
        L.read_annotations(bad)


def test_find_image(fixture):
    p = L.find_image(fixture["images"], "SkBr3_Phase_E3_1_00d04h00m_2.tif")
    assert p.parts[-3:] == (
        "livecell_train_val_images",
        "SkBr3",
        "SkBr3_Phase_E3_1_00d04h00m_2.tif",
    )
    assert L.find_image(fixture["root"], "A172_Phase_A7_1_00d00h00m_1.tif").is_file()
    with pytest.raises(InputError, match="not found"):
        L.find_image(fixture["images"], "A172_Phase_B1_1_00d00h00m_1.tif")


def test_labels_match_pycocotools():
    # many random polygons: fast RLE path == annToMask painted in id order
    rng = np.random.default_rng(4)
    anns = []
    for i in range(60):
        cx, cy, r = rng.uniform(-5, W + 5), rng.uniform(-5, H + 5), rng.uniform(2, 9)
        t = np.sort(rng.uniform(0, 2 * np.pi, 9))
        rad = r * rng.uniform(0.6, 1.0, 9)
        poly = np.ravel(np.c_[cx + rad * np.cos(t), cy + rad * np.sin(t)]).round(2).tolist()
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": [poly]})
    data = {
        "images": [{"id": 1, "file_name": "x", "width": W, "height": H}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cell"}],
    }
    labels, info = L.annotations_to_labels(L.coco_from_annotations(data), 1)
    ref = reference_labels(data, 1)
    assert np.array_equal(labels, ref)
    assert info["n_cells"] == int(ref.max()) and info["n_annotations"] == 60
    assert info["n_cells"] + info["n_empty"] == 60


def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(1)
    m = np.asfortranarray((rng.random((300, 400)) < 0.3).astype(np.uint8))
    rle = mask_util.encode(m)
    idx = L._rle_foreground(rle)
    flat = np.zeros(m.size, np.uint8)
    flat[idx] = 1
    assert np.array_equal(flat.reshape(400, 300).T, m)


def test_import_livecell(fixture, tmp_path):
    out = tmp_path / "out"
    images_df, qc_df = L.import_livecell(
        fixture["annotations"], fixture["images"], out, exclude=fixture["excluded"]
    )
    # 5 images: 1 excluded, 1 truncated -> 3 imported, nothing else lost
    assert len(images_df) == 3
    assert set(images_df["file_name"]) | set(qc_df["file"]) == set(IMAGES)
    assert sorted(images_df["cell_line"]) == ["A172", "A172", "SkBr3"]
    assert set(images_df["group"]) == {"A172_Phase_A7", "A172_Phase_C7", "SkBr3_Phase_E3"}
    qc = qc_df.set_index("file")["reason"]
    assert qc[f"{EXCLUDED}.tif"].startswith("excluded")
    assert "cannot read image" in qc[TRUNCATED] and TRUNCATED in qc[TRUNCATED]
    with pytest.raises(InputError):  # the reason really is read_image's
        read_image(fixture["images"] / "livecell_train_val_images" / "SkBr3" / TRUNCATED)
    # labels and masks on disk equal pycocotools' rasterisation
    for row in images_df.itertuples():
        labels = tifffile.imread(out / row.labels_path)
        assert labels.dtype == np.uint16 and labels.shape == (H, W)
        source = fixture["list"] if row.cell_line == "A172" else fixture["dict"]
        assert np.array_equal(labels, reference_labels(source, row.image_id))
        mask = read_image(out / row.mask_path)
        assert np.array_equal(mask, (labels > 0).astype(np.uint8) * 255)
        assert row.n_annotations == 4 and row.n_cells == 4 and row.overlap_pixels > 0
    index = pd.read_parquet(out / "index.parquet")
    pd.testing.assert_frame_equal(index, images_df)
    qc_file = pd.read_csv(out / "qc.tsv", sep="\t")
    assert list(qc_file["file"]) == list(qc_df["file"])
    # exclusion given as names, with the extension this time
    df2, qc2 = L.import_livecell(
        fixture["annotations"][0], fixture["images"], tmp_path / "o2", exclude=[f"{EXCLUDED}.tif"]
    )
    assert len(df2) == 2 and list(qc2["file"]) == [f"{EXCLUDED}.tif"]
    # without an exclusion list the excluded (readable) image is imported
    df3, qc3 = L.import_livecell(fixture["annotations"][0], fixture["images"], tmp_path / "o3")
    assert len(df3) == 3 and qc3.empty


def test_import_reports_size_mismatch_and_missing(fixture, tmp_path):
    data = json.loads(fixture["annotations"][0].read_text())
    data["images"][0]["height"] = 520
    data["images"].append(
        {"id": 999, "file_name": "A172_Phase_B2_1_00d00h00m_1.tif", "width": W, "height": H}
    )
    p = tmp_path / "mod.json"
    p.write_text(json.dumps(data))
    df, qc = L.import_livecell(p, fixture["images"], tmp_path / "o")
    reasons = qc.set_index("file")["reason"]
    assert "annotated as 520x70" in reasons[data["images"][0]["file_name"]]
    assert "not found" in reasons["A172_Phase_B2_1_00d00h00m_1.tif"]
    assert len(df) == 2


def per_image_frame() -> pd.DataFrame:
    rows = [
        ("A172_Phase_A7_1_00d00h00m_1", 0.95, 3.0),
        ("A172_Phase_A7_1_00d04h00m_1", 0.91, 4.0),
        ("A172_Phase_C7_1_00d00h00m_2", 0.80, 10.0),
        ("A172_Phase_C7_2_00d00h00m_2", 0.84, math.inf),
        ("SkBr3_Phase_E3_1_00d00h00m_1", 0.90, 2.0),
    ]
    df = pd.DataFrame(rows, columns=["image", "f1", "hausdorff"])
    df["dice"] = df["f1"]
    df["iou"] = df["f1"] / (2 - df["f1"])
    return df


def test_group_table():
    t = L.group_table(per_image_frame(), threshold=0.888)
    assert list(t.columns) == ["group", "cell_line", "n", "mean", "std", "side"]
    assert list(t["group"]) == ["A172_Phase_A7", "SkBr3_Phase_E3", "A172_Phase_C7"]
    assert list(t["side"]) == ["above", "above", "below"]
    assert list(t["n"]) == [2, 1, 2]
    assert t["mean"].tolist() == pytest.approx([0.93, 0.90, 0.82])
    assert t.loc[0, "std"] == pytest.approx(np.std([0.95, 0.91], ddof=1))
    assert math.isnan(t.loc[1, "std"])
    t2 = L.group_table(per_image_frame(), threshold=0.92)
    assert list(t2["side"]) == ["above", "below", "below"]


def test_summary_table():
    t = L.summary_table(per_image_frame())
    assert list(t["metric"]) == ["Dice", "IoU", "F1", "Hausdorff"]
    assert list(t.columns) == ["metric", "mean", "std", "n"]
    f1 = per_image_frame()["f1"]
    row = t.set_index("metric")
    assert row.loc["F1", "mean"] == pytest.approx(f1.mean())
    assert row.loc["F1", "std"] == pytest.approx(f1.std(ddof=1))
    # the infinite Hausdorff distance is left out, and counted
    assert row.loc["Hausdorff", "n"] == 4
    assert row.loc["Hausdorff", "mean"] == pytest.approx(np.mean([3.0, 4.0, 10.0, 2.0]))


def test_ap_table():
    t = L.ap_table({"a172": 0.40, "SKBR3": 0.6, "all": 0.5, "Other": 0.1})
    assert list(t["cell_line"]) == ["A172", "SkBr3", "Other", "all"]
    row = t.set_index("cell_line")
    assert row.loc["A172", "ap"] == pytest.approx(40.0)
    assert row.loc["A172", "anchor_free"] == 34.57 and row.loc["A172", "anchor_based"] == 38.02
    assert row.loc["A172", "diff_anchor_based"] == pytest.approx(40.0 - 38.02)
    assert row.loc["all", "anchor_free"] == 47.78
    assert math.isnan(row.loc["Other", "anchor_free"])
    assert len(L.LIVECELL_PUBLISHED_AP) == 9
    frame = pd.DataFrame({"cell_line": ["BV2"], "AP": [0.5]})
    assert L.ap_table(frame).loc[0, "diff_anchor_free"] == pytest.approx(50 - 45.69)


def test_ap_per_cell_line():
    truth = np.zeros((40, 60), np.uint16)
    truth[2:12, 2:12] = 1
    truth[20:30, 2:12] = 2
    missed = truth.copy()
    missed[20:30, 2:12] = 0
    items = [
        {"cell_line": "A172", "true_labels": truth, "pred_labels": truth},
        {"cell_line": "BV2", "true_labels": truth, "pred_labels": missed},
    ]
    t = L.ap_per_cell_line(items)
    assert list(t["cell_line"]) == ["A172", "BV2", "all"]
    ap = t.set_index("cell_line")["AP"]
    assert ap["A172"] == pytest.approx(1.0)
    # BV2: one of two objects found with precision 1 -> 51 of 101 recall points
    assert ap["BV2"] == pytest.approx(51 / 101)
    # all: 3 of 4 objects found, all with score 1 -> 76 of 101 recall points
    assert ap["all"] == pytest.approx(76 / 101)
    assert list(t["n_images"]) == [1, 1, 2]
