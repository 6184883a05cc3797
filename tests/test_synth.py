"""Tests for the synthetic plate generator (the suite's ground truth)."""

from __future__ import annotations

import hashlib
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from skimage import draw

from brightseg import synth
from brightseg.annotations import export
from brightseg.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

SMALL = (128, 128)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def _sha_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _decode_cvat_rle(runs: list[int], width: int, height: int) -> np.ndarray:
    """Independent decoder: runs alternate bg/fg from bg, row-major in the box."""
    assert sum(runs) == width * height
    values = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
    return values.reshape(height, width)


def _points(text: str) -> np.ndarray:
    return np.array([[float(v) for v in p.split(",")] for p in text.split(";")])


def _centre_raster(xy: np.ndarray, shape) -> np.ndarray:
    """Pixel (r, c) is inside when its centre (c + .5, r + .5) is inside the polygon."""
    rr, cc = draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
    out = np.zeros(shape, bool)
    out[rr, cc] = True
    return out


def _fillpoly(xy: np.ndarray, shape) -> np.ndarray:
    """A naive importer: cv2.fillPoly on the vertices as given."""
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(xy).astype(np.int32)], 1)
    return out.astype(bool)


@pytest.fixture(scope="module")
def plate_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plate")
    df = synth.synth_plate(
        out, "P1", n_images=5, shape=SMALL, seed=7, n_fields=2, cells_per_image=(6, 10)
    )
    df.to_csv(out / "manifest.csv", index=False)
    return out


# --------------------------------------------------------------------------- render


def test_render_cells_dtype_labels_and_determinism():
    img, lab = synth.render_cells(SMALL, 8, np.random.default_rng(3))
    img2, lab2 = synth.render_cells(SMALL, 8, np.random.default_rng(3))
    img3, _ = synth.render_cells(SMALL, 8, np.random.default_rng(4))
    assert img.dtype == np.uint16 and lab.dtype == np.uint16
    assert img.shape == lab.shape == SMALL
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    assert not np.array_equal(img, img3)
    ids = np.unique(lab[lab > 0])
    assert len(ids) >= 4
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))  # consecutive, paint order
    for i in ids:  # a proper instance image: every cell one 4-connected region
        assert ndi.label(lab == i)[1] == 1


def test_scene_polygons_rasterise_to_masks_and_paint_labels():
    scene = synth.render_scene((512, 512), 30, np.random.default_rng(11))
    assert len(scene.cells) >= 20
    painted = np.zeros(scene.labels.shape, np.uint16)
    overlaps = 0
    for cell in scene.cells:
        full = _centre_raster(cell.polygon, scene.labels.shape)
        assert np.array_equal(full, cell.full_mask(scene.labels.shape))
        overlaps += int((painted[full] > 0).any())
        painted[full] = cell.label
    assert np.array_equal(painted, scene.labels)
    assert overlaps >= 1  # some cells touch/overlap an earlier one
    kinds = {c.kind for c in scene.cells}
    assert kinds == {"round", "elongated", "irregular"}


@pytest.mark.parametrize("seed", range(6))
def test_star_shapes_trace_exactly(seed):
    # Crowded, mostly star-like cells: the traced polygon must rasterise to the mask.
    scene = synth.render_scene(
        SMALL, 12, np.random.default_rng(seed), mean_radius_px=12, shape_mix=(0, 0.2, 0.8)
    )
    for cell in scene.cells:
        full = _centre_raster(cell.polygon, SMALL)
        assert np.array_equal(full, cell.full_mask(SMALL))


def test_debris_not_in_labels():
    scene = synth.render_scene(SMALL, 6, np.random.default_rng(5), debris=6)
    assert len(scene.debris) >= 3
    dm = scene.debris_mask
    assert dm.sum() > 0 and not (scene.labels[dm] > 0).any()
    # Debris is bright: its pixels are above the local background.
    img = scene.image.astype(float) / scene.illumination
    bg = np.median(img[(scene.labels == 0) & ~ndi.binary_dilation(dm, iterations=5)])
    for d in scene.debris:
        r0, c0, r1, c1 = d.box
        assert img[r0:r1, c0:c1][d.mask].mean() > bg * 1.005


def test_image_statistics_brightfield_and_phase():
    shape = (512, 512)
    rng = np.random.default_rng(21)
    scene = synth.render_scene(shape, 25, rng, blur_prob=0.0)
    img = scene.image.astype(np.float64)
    lab = scene.labels
    bg_mask = ~ndi.binary_dilation(lab > 0, iterations=6) & ~scene.debris_mask
    bg = img[bg_mask].mean()
    assert 18_000 < bg < 32_000  # raw counts with a realistic offset
    # Low contrast: cells differ from the background by less than 10 %.
    flat = img / scene.illumination
    cell_mean = flat[lab > 0].mean()
    bg_flat = flat[bg_mask].mean()
    assert abs(cell_mean - bg_flat) / bg_flat < 0.10
    # Thin bright halo at the border, darker interior (brightfield).
    border = (lab > 0) & ~ndi.binary_erosion(lab > 0, iterations=1)
    interior = ndi.binary_erosion(lab > 0, iterations=4)
    assert flat[border].mean() > bg_flat * 1.005
    assert flat[interior].mean() < bg_flat * 0.999
    # Uneven illumination: the corners differ from the centre by several per cent.
    sm = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 20)
    centre = sm[236:276, 236:276].mean()
    corners = [
        sm[:40, :40].mean(),
        sm[:40, -40:].mean(),
        sm[-40:, :40].mean(),
        sm[-40:, -40:].mean(),
    ]
    assert max(abs(c - centre) / centre for c in corners) > 0.03
    # Phase contrast: dark cells with a bright halo just outside.
    ph = synth.render_scene(shape, 25, np.random.default_rng(22), modality="phase", blur_prob=0)
    fl = ph.image.astype(np.float64) / ph.illumination
    inside = ndi.binary_erosion(ph.labels > 0, iterations=3)
    ring = ndi.binary_dilation(ph.labels > 0, iterations=2) & (ph.labels == 0)
    far = ~ndi.binary_dilation(ph.labels > 0, iterations=8) & ~ph.debris_mask
    assert fl[inside].mean() < fl[far].mean() * 0.98
    assert fl[ring].mean() > fl[far].mean() * 1.02


def test_invalid_arguments(tmp_path):
    with pytest.raises(InputError, match="modality"):
        synth.render_cells(SMALL, 3, np.random.default_rng(0), modality="dic")
    with pytest.raises(InputError, match="shape"):
        synth.synth_plate(tmp_path, "P", shape=(8, 8))
    with pytest.raises(InputError, match="cell lines"):
        synth.synth_livecell(tmp_path, cell_lines=["HeLa"])


def test_well_names():
    assert [synth.well_name(i) for i in (0, 1, 11, 12, 95)] == ["A01", "A02", "A12", "B01", "H12"]


def test_rle_encoders_match_reference_examples():
    # CVAT's XML-format documentation example (a filled disc in a 13x15 box).
    doc = [3, 5, 7, 7, 5, 9, 3, 11, 2, 11, 2, 12, 1, 12, 1, 26, 1, 12, 1, 12, 2, 11, 3, 9, 5, 7, 7]
    doc += [5, 3]
    disc = _decode_cvat_rle(doc, 13, 15)
    assert disc[7].all() and not disc[0, :3].any() and disc[0, 3:8].all()
    assert export.cvat_mask_rle(disc) == doc
    # A box whose first pixel is foreground starts with an empty background run.
    m = np.array([[1, 1, 0], [0, 1, 1]], bool)
    assert export.cvat_mask_rle(m) == [0, 2, 2, 2]
    # Datumaro's COCO example: {"counts": [0, 20, 30], "size": [10, 5]}, column-major.
    coco_mask = np.zeros((10, 5), bool)
    coco_mask[:, :2] = True
    assert export.coco_rle(coco_mask) == {"counts": [0, 20, 30], "size": [10, 5]}
    m2 = np.zeros((3, 2), bool)
    m2[2, 0] = m2[0, 1] = True
    assert export.coco_rle(m2) == {"counts": [2, 2, 2], "size": [3, 2]}


# --------------------------------------------------------------------------- plate


def test_plate_is_deterministic(tmp_path):
    kw = dict(n_images=3, shape=SMALL, seed=3, n_timepoints=2, cells_per_image=(4, 8))
    synth.synth_plate(tmp_path / "a", "PX", **kw)
    synth.synth_plate(tmp_path / "b", "PX", **kw)
    a, b = _sha_tree(tmp_path / "a"), _sha_tree(tmp_path / "b")
    assert a == b
    assert sorted(a) == [
        "coco.json",
        "cvat.xml",
        "images/PX_A01_f00_t00.tif",
        "images/PX_A01_f00_t01.tif",
        "images/PX_A02_f00_t00.tif",
        "labels/PX_A01_f00_t00_labels.tif",
        "labels/PX_A01_f00_t01_labels.tif",
        "labels/PX_A02_f00_t00_labels.tif",
    ]
    synth.synth_plate(tmp_path / "c", "PX", **{**kw, "seed": 4})
    assert _sha_tree(tmp_path / "c")["images/PX_A01_f00_t00.tif"] != a["images/PX_A01_f00_t00.tif"]


def test_plate_manifest_and_files(plate_dir):
    import pandas as pd

    df = pd.read_csv(plate_dir / "manifest.csv")
    assert list(df.columns) == [
        "image",
        "stem",
        "plate",
        "well",
        "row",
        "column",
        "field",
        "timepoint",
        "n_cells",
        "foreground_fraction",
        "modality",
        "pixel_size_um",
    ]
    assert df["well"].tolist() == ["A01", "A01", "A02", "A02", "A03"]
    assert df["field"].tolist() == [0, 1, 0, 1, 0]
    assert df["column"].tolist() == [1, 1, 2, 2, 3]
    assert (df["row"] == "A").all() and (df["timepoint"] == 0).all()
    for row in df.itertuples():
        img = tifffile.imread(plate_dir / "images" / row.image)
        lab = tifffile.imread(plate_dir / "labels" / f"{row.stem}_labels.tif")
        assert img.dtype == np.uint16 and img.shape == SMALL and img.min() > 10_000
        assert lab.dtype == np.uint16
        assert lab.max() == row.n_cells
        assert (lab > 0).mean() == pytest.approx(row.foreground_fraction)
    with tifffile.TiffFile(plate_dir / "images" / df["image"][0]) as tf:
        xres = tf.pages[0].tags["XResolution"].value
        assert 1e4 * xres[1] / xres[0] == pytest.approx(0.65, rel=1e-6)


def test_cvat_xml_matches_labels(plate_dir):
    root = ET.parse(plate_dir / "cvat.xml").getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task is not None and task.findtext("size") == "5"
    assert [lab.findtext("name") for lab in task.findall("labels/label")] == ["cell", "debris"]
    images = root.findall("image")
    assert [im.get("id") for im in images] == ["0", "1", "2", "3", "4"]
    n_poly = n_mask = n_debris = 0
    for im in images:
        lab = tifffile.imread(plate_dir / "labels" / im.get("name").replace(".tif", "_labels.tif"))
        h, w = int(im.get("height")), int(im.get("width"))
        assert (h, w) == lab.shape
        assert len(im.findall("box")) == 1 and len(im.findall("points")) == 1
        assert all(s.get("label") == "cell" for s in im.findall("box") + im.findall("points"))
        shapes = []  # (z, kind, full mask, naive-importer mask)
        for el in im:
            if el.tag not in ("polygon", "mask"):
                continue
            assert el.get("source") == "manual" and el.get("occluded") == "0"
            if el.get("label") == "debris":
                n_debris += 1
                assert not (lab[_centre_raster(_points(el.get("points")), lab.shape)] > 0).any()
                continue
            assert el.get("label") == "cell"
            if el.tag == "polygon":
                xy = _points(el.get("points"))
                assert all(
                    len(v.split(".")[1]) == 2 for v in el.get("points").replace(";", ",").split(",")
                )
                full, naive = _centre_raster(xy, lab.shape), _fillpoly(xy, lab.shape)
                n_poly += 1
            else:
                left, top = int(el.get("left")), int(el.get("top"))
                bw, bh = int(el.get("width")), int(el.get("height"))
                box = _decode_cvat_rle([int(r) for r in el.get("rle").split(",")], bw, bh)
                assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
                full = np.zeros(lab.shape, bool)
                full[top : top + bh, left : left + bw] = box
                naive = full
                n_mask += 1
            shapes.append((int(el.get("z_order")), el.tag, full, naive))
        shapes.sort(key=lambda s: s[0])
        assert len(shapes) == lab.max()
        painted = np.zeros(lab.shape, np.uint16)
        naive_painted = np.zeros(lab.shape, np.uint16)
        for k, (_, _, full, naive) in enumerate(shapes, 1):
            painted[full] = k
            naive_painted[naive] = k
        assert np.array_equal(painted, lab)  # exact with the pixel-centre convention
        ious = [_iou(naive_painted == k, lab == k) for k in range(1, len(shapes) + 1)]
        assert min(ious) > 0.75 and np.median(ious) > 0.9  # a naive importer is close
    assert n_poly > 10 and n_mask > 10 and n_debris >= 4
    # The last image of the plate is debris-free.
    assert not [el for el in images[-1] if el.get("label") == "debris"]


def test_coco_matches_labels(plate_dir):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    data = json.loads((plate_dir / "coco.json").read_text())
    assert set(data) == {"licenses", "info", "categories", "images", "annotations"}
    assert data["categories"] == [{"id": 1, "name": "cell", "supercategory": ""}]
    coco = COCO(str(plate_dir / "coco.json"))
    n_rle = n_poly = 0
    for img in data["images"]:
        assert set(img) == {
            "id", "width", "height", "file_name", "license", "flickr_url", "coco_url", "date_captured"
        }  # fmt: skip
        lab = tifffile.imread(
            plate_dir / "labels" / img["file_name"].replace(".tif", "_labels.tif")
        )
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(anns) == lab.max()
        seen = np.zeros(lab.shape, bool)
        for k, ann in enumerate(anns, 1):
            m = coco.annToMask(ann).astype(bool)
            assert not (m & seen).any()  # visible regions: no overlaps
            seen |= m
            assert ann["area"] == m.sum()
            if ann["iscrowd"]:
                n_rle += 1
                seg = ann["segmentation"]
                assert isinstance(seg["counts"], list) and seg["size"] == list(lab.shape)
                assert sum(seg["counts"]) == lab.size
                # Column-major, starting with background: check against a direct decode.
                direct = np.repeat(np.arange(len(seg["counts"])) % 2, seg["counts"])
                assert np.array_equal(direct.reshape(lab.shape[::-1]).T.astype(bool), m)
                assert np.array_equal(m, lab == k)
                expected = mask_utils.toBbox(coco.annToRLE(ann))
            else:
                n_poly += 1
                assert len(ann["segmentation"]) == 1 and len(ann["segmentation"][0]) % 2 == 0
                xy = np.reshape(ann["segmentation"][0], (-1, 2))
                assert _iou(m, lab == k) > 0.9
                # Rasterised by pixel centres, the polygon is exactly the visible cell.
                assert np.array_equal(_centre_raster(xy, lab.shape), lab == k)
                lo, hi = xy.min(axis=0), xy.max(axis=0)
                expected = [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]]
            assert np.allclose(ann["bbox"], expected)
    assert n_rle >= 5 and n_poly >= 15


# --------------------------------------------------------------------------- LIVECell / eval


def test_livecell_fixture(tmp_path):
    paths = synth.synth_livecell(tmp_path, n_per_line=2, seed=1)
    full = json.loads(paths["annotations"].read_text())
    assert paths["annotations"] == tmp_path / "annotations" / "livecell_coco_test.json"
    assert isinstance(full["annotations"], list) and full["categories"][0]["name"] == "cell"
    assert len(full["images"]) == 6
    names = {im["file_name"] for im in full["images"]}
    assert "A172_Phase_A7_1_01d04h00m_3.tif" in names
    assert paths["excluded"].name == "A172_Phase_A7_1_01d04h00m_3.tif"
    pattern = r"^(A172|BT474|SKOV3)_Phase_[A-H]\d{1,2}_\d_\d\dd\d\dh\d\dm_\d\.tif$"
    assert all(__import__("re").match(pattern, n) for n in names)
    for im in full["images"]:
        assert {"id", "file_name", "width", "height"} <= set(im)
        assert (im["width"], im["height"]) == (704, 520)
    for ann in full["annotations"]:
        assert {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"} <= set(
            ann
        )
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"], list)
    single = json.loads((tmp_path / "annotations/LIVECell_single_cells/a172/test.json").read_text())
    assert isinstance(single["annotations"], dict)
    assert all(k == str(v["id"]) for k, v in single["annotations"].items())
    a172_ids = {im["id"] for im in single["images"]}
    assert {a["image_id"] for a in single["annotations"].values()} == a172_ids
    assert all(im["file_name"].startswith("A172_") for im in single["images"])
    truncated = paths["truncated"]
    assert truncated is not None and truncated.parent.name == "BT474"
    with pytest.raises(Exception):  # noqa: B017 - any tifffile error counts
        tifffile.imread(truncated)
    n_ok = 0
    for p in paths["images"]:
        assert p.parent.parent == tmp_path / "images" / "livecell_test_images"
        if p == truncated:
            continue
        arr = tifffile.imread(p)
        assert arr.dtype == np.uint8 and arr.shape == (520, 704)
        assert 90 < np.median(arr) < 170
        n_ok += 1
    assert n_ok == 5
    # the deliberately truncated image is named for the import, which logs it as expected
    expected = (tmp_path / synth.EXPECTED_SKIPS).read_text().splitlines()
    assert expected[0] == "file\treason" and expected[1].startswith(truncated.name + "\t")
    # Polygons rasterise close to their stated areas.
    from pycocotools import mask as mask_utils

    for ann in full["annotations"][:20]:
        rle = mask_utils.frPyObjects(ann["segmentation"], 520, 704)
        area = float(mask_utils.area(mask_utils.merge(rle)))
        assert abs(area - ann["area"]) <= 0.2 * ann["area"] + 4


def test_livecell_fixture_import_logs_the_truncated_image_as_expected(tmp_path, caplog):
    import logging

    from brightseg.rules.evaluation import livecell_import

    paths = synth.synth_livecell(tmp_path / "fx", n_per_line=1, seed=1)
    out = tmp_path / "imported"
    out.mkdir()
    ann = [str(p) for p in sorted(paths["single_cells"].values())]
    args = (ann, str(paths["images_dir"]), str(out / "index.parquet"), str(out / "qc.tsv"))
    excluded = str(ROOT / "resources" / "livecell_excluded.txt")
    with caplog.at_level(logging.INFO, logger="brightseg"):
        livecell_import(*args, exclude=excluded)
    assert any(
        r.levelno == logging.WARNING and paths["truncated"].name in r.getMessage()
        for r in caplog.records
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="brightseg"):
        livecell_import(
            *args, exclude=excluded, expected=str(tmp_path / "fx" / synth.EXPECTED_SKIPS)
        )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    text = caplog.text
    assert f"expected: {paths['truncated'].name} skipped (truncated on purpose" in text
    assert "1 known bad files skipped; 0 other files skipped" in text
    assert paths["truncated"].name in (out / "qc.tsv").read_text()  # still skipped, listed


def test_eval_set(tmp_path):
    df = synth.synth_eval_set(tmp_path, n_images=2, shape=SMALL, seed=2)
    assert df["stem"].tolist() == ["eval_000", "eval_001"]
    for row in df.itertuples():
        img = tifffile.imread(tmp_path / row.image)
        mask = np.asarray(Image.open(tmp_path / row.mask))
        assert img.dtype == np.uint16 and img.shape == SMALL
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert (mask == 255).mean() == pytest.approx(row.foreground_fraction)
        assert row.n_cells > 0


@pytest.mark.slow
def test_paper_size_is_fast(tmp_path):
    t0 = time.perf_counter()
    df = synth.synth_plate(tmp_path, "BIG", n_images=2, shape=(1536, 2048), mean_radius_px=40,
                           cells_per_image=(60, 80))  # fmt: skip
    per_image = (time.perf_counter() - t0) / 2
    assert per_image < 6.0  # ~1-2 s on one core; generous for a shared machine
    assert (df["n_cells"] >= 40).all()


def test_eval_set_difficulty(tmp_path):
    """Graded difficulty: image 0 (level 0) is the plain image, the last one is the hardest
    (less cell contrast, defocused), and the level is in the table."""
    kw = dict(n_images=3, shape=SMALL, seed=4)
    plain = synth.synth_eval_set(tmp_path / "plain", **kw)
    hard = synth.synth_eval_set(tmp_path / "hard", difficulty=(0.0, 1.0), **kw)
    assert np.isnan(plain["difficulty"]).all()
    assert hard["difficulty"].tolist() == [0.0, 0.5, 1.0]
    first = [
        tifffile.imread(p / "images" / "eval_000.tif")
        for p in (tmp_path / "plain", tmp_path / "hard")
    ]
    np.testing.assert_array_equal(first[0], first[1])

    def edge_contrast(i):
        img = tifffile.imread(tmp_path / "hard" / "images" / f"eval_{i:03d}.tif").astype(float)
        rel = img / ndi.gaussian_filter(img, 40)
        return float(np.abs(ndi.sobel(ndi.gaussian_filter(rel, 1.0))).mean())

    assert edge_contrast(2) < 0.7 * edge_contrast(0)
    with pytest.raises(InputError, match="difficulty"):
        synth.synth_eval_set(tmp_path / "bad", difficulty=(0.0, 1.5), **kw)


def test_defocus_and_noise_keeps_dtype_and_level_zero():
    img = np.full((32, 32), 1000, np.uint16)
    img[8:16, 8:16] = 60000
    rng = np.random.default_rng(0)
    assert synth.defocus_and_noise(img, 0.0, rng) is img
    out = synth.defocus_and_noise(img, 1.0, rng)
    assert out.dtype == np.uint16 and out.max() < 60000 and out[12, 12] > 1000
