"""Tests for brightseg.instances (distance-watershed instance splitting)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile

from brightseg.bench.instances import bench_instances, touching_disks
from brightseg.errors import InputError
from brightseg.instances import (
    matched_f_score,
    split_instances,
    split_instances_file,
    write_cellpose_masks,
    write_imagej_rois,
)


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _cc(mask):
    from scipy import ndimage as ndi

    return ndi.label(mask, structure=np.ones((3, 3)))[0]


@pytest.fixture(scope="module")
def crowd():
    """60 touching round cells (radii 10-16 px, up to 20 % overlap) in 512 x 512."""
    return touching_disks((512, 512), 60, (10, 16), 0, overlap=0.2)


# ------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------
def test_touching_disks_ground_truth(crowd):
    mask, truth = crowd
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert truth.dtype == np.uint16
    np.testing.assert_array_equal(mask, truth > 0)
    assert np.array_equal(np.unique(truth)[1:], np.arange(1, 61))
    # most cells touch another one: far fewer connected components than cells
    assert _cc(mask).max() < 30
    # each ground-truth instance is one connected piece
    for lab in range(1, 61):
        assert _cc(truth == lab).max() == 1
    # deterministic
    m2, t2 = touching_disks((512, 512), 60, (10, 16), 0, overlap=0.2)
    assert np.array_equal(t2, truth)


def test_touching_disks_rejects_impossible():
    with pytest.raises(ValueError, match="could only place"):
        touching_disks((64, 64), 50, (10, 12), 0)
    with pytest.raises(ValueError, match="overlap"):
        touching_disks((64, 64), 1, (5, 6), 0, overlap=1.0)


# ------------------------------------------------------------------------------------
# matched F-score
# ------------------------------------------------------------------------------------
def test_matched_f_score_hand_computed():
    true = np.zeros((20, 40), np.int32)
    true[0:10, 0:10] = 1  # matched exactly by pred 5
    true[0:10, 20:30] = 2  # pred 7 covers 40 of its pixels plus 60 others: IoU 40/160
    true[12:20, 0:8] = 3  # missed
    pred = np.zeros_like(true)
    pred[0:10, 0:10] = 5
    pred[0:10, 26:36] = 7  # overlaps true 2 in columns 26..29 -> 40 px, IoU 40/160 = 0.25
    r = matched_f_score(pred, true)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 2)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f"] == pytest.approx(1 / 4)  # TP / (TP + FP + FN)
    assert r["f1"] == pytest.approx(2 / 5)  # 2TP / (2TP + FP + FN)
    # at IoU threshold 0.2 the second pair matches too
    r = matched_f_score(pred, true, iou=0.2)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 1)


def test_matched_f_score_iou_is_strict_and_one_to_one():
    true = np.zeros((10, 20), np.int32)
    true[:, :10] = 1
    pred = np.zeros_like(true)
    pred[:, :5] = 1  # IoU exactly 0.5 with true 1
    pred[:, 5:10] = 2  # IoU exactly 0.5 as well
    r = matched_f_score(pred, true, iou=0.5)
    assert r["tp"] == 0  # strict ">" threshold
    r = matched_f_score(pred, true, iou=0.4)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)  # one-to-one


def test_matched_f_score_against_brute_force(crowd):
    _, truth = crowd
    # perturb: shift, drop some labels, merge two
    pred = np.roll(truth, 3, axis=1).astype(np.int64) * 7
    pred[np.isin(pred, [7 * 3, 7 * 9])] = 0
    pred[pred == 7 * 5] = 7 * 6
    ious = {}
    for p in np.unique(pred)[1:]:
        for t in np.unique(truth[pred == p]):
            if t == 0:
                continue
            inter = np.sum((pred == p) & (truth == t))
            union = np.sum((pred == p) | (truth == t))
            ious[(p, t)] = inter / union
    tp = sum(v > 0.5 for v in ious.values())
    n_pred, n_true = len(np.unique(pred)) - 1, len(np.unique(truth)) - 1
    r = matched_f_score(pred, truth)
    assert r["tp"] == tp
    assert r["fp"] == n_pred - tp and r["fn"] == n_true - tp


def test_matched_f_score_empty():
    z = np.zeros((5, 5), np.uint16)
    assert matched_f_score(z, z)["f"] == 1.0
    one = z.copy()
    one[1:3, 1:3] = 1
    r = matched_f_score(z, one)
    assert (r["tp"], r["fp"], r["fn"], r["f"]) == (0, 0, 1, 0.0)


# ------------------------------------------------------------------------------------
# splitting quality
# ------------------------------------------------------------------------------------
def test_watershed_splits_better_than_connected_components(crowd):
    mask, truth = crowd
    f_cc = matched_f_score(_cc(mask), truth)["f"]
    fast = split_instances(mask)
    plain = split_instances(mask, method="plain")
    f_fast = matched_f_score(fast, truth)["f"]
    f_plain = matched_f_score(plain, truth)["f"]
    # measured: CC 0.25, fast 0.95, plain 0.95
    assert f_cc < 0.4
    assert f_fast > 0.9
    assert f_fast >= f_plain - 0.01


def test_fast_does_not_oversplit_elongated_cells():
    """Rasterised ellipses have equal EDT maxima along their ridge (dynamic < 1 px)."""
    import cv2

    truth = np.zeros((400, 400), np.int32)
    k = 0
    for i, (a, b, ang) in enumerate([(30, 9, 35), (26, 8, 60), (34, 10, 20), (28, 9, 140)]):
        for j in range(3):
            k += 1
            cv2.ellipse(truth, (60 + 130 * j, 50 + 95 * i), (a, b), ang + 7 * j, 0, 360, k, -1)
    lab = split_instances(truth > 0, pixel_size_um=0.5)
    assert lab.max() == k
    assert matched_f_score(lab, truth)["f"] == 1.0


def test_prob_landscape_keeps_split(crowd):
    mask, truth = crowd
    prob = np.where(mask > 0, 0.9, 0.1).astype(np.float32)
    lab = split_instances(mask, prob=prob)
    assert matched_f_score(lab, truth)["f"] > 0.85
    with pytest.raises(ValueError, match="shape"):
        split_instances(mask, prob=prob[:10])


def test_label_image_input_is_resplit(crowd):
    mask, truth = crowd
    a = split_instances(mask)
    b = split_instances(truth)  # any non-zero pixel is foreground
    assert np.array_equal(a, b)


def test_labels_sequential_dtype_and_deterministic(crowd):
    mask, _ = crowd
    lab = split_instances(mask)
    assert lab.dtype == np.uint16
    assert np.array_equal(np.unique(lab), np.arange(lab.max() + 1))
    assert np.array_equal(lab, split_instances(mask.copy()))


def test_many_objects_use_uint32():
    mask = np.zeros((600, 480), np.uint8)
    mask[::2, ::2] = 1  # 72,000 isolated pixels
    lab = split_instances(mask, min_area_um2=0, fill_holes=False)
    assert lab.dtype == np.uint32
    assert lab.max() == 72000


def test_empty_mask():
    lab = split_instances(np.zeros((32, 48), np.uint8))
    assert lab.shape == (32, 48) and lab.dtype == np.uint16 and not lab.any()


def test_area_filters_use_pixel_size():
    shape = (200, 200)
    mask = _disk(shape, 50, 50, 10) | _disk(shape, 130, 130, 20)  # 317 and 1257 px
    small, large = int(_disk(shape, 50, 50, 10).sum()), int(_disk(shape, 130, 130, 20).sum())
    # 0.5 um pixels: 79 and 314 um^2
    lab = split_instances(mask, pixel_size_um=0.5, min_area_um2=100)
    assert lab.max() == 1 and (lab > 0).sum() == large
    lab = split_instances(mask, pixel_size_um=0.5, min_area_um2=10, max_area_um2=200)
    assert lab.max() == 1 and (lab > 0).sum() == small
    # 1 um pixels: 317 and 1257 um^2, both above 100
    lab = split_instances(mask, pixel_size_um=1.0, min_area_um2=100)
    assert lab.max() == 2
    # the area threshold is applied in um^2: exactly at the small disk's area
    lab = split_instances(mask, pixel_size_um=0.5, min_area_um2=small * 0.25)
    assert lab.max() == 2
    lab = split_instances(mask, pixel_size_um=0.5, min_area_um2=small * 0.25 + 0.1)
    assert lab.max() == 1


def test_remove_border():
    shape = (100, 100)
    mask = _disk(shape, 50, 50, 10) | _disk(shape, 5, 50, 12) | _disk(shape, 50, 95, 8)
    assert split_instances(mask).max() == 3
    lab = split_instances(mask, remove_border=True)
    assert lab.max() == 1
    assert lab[50, 50] == 1 and lab[0, 50] == 0


def test_fill_holes_inside_one_cell_only():
    shape = (120, 200)
    ring = _disk(shape, 60, 50, 25) & ~_disk(shape, 60, 50, 3)  # cell with a small hole
    # ring of touching cells enclosing a background gap
    gap = np.zeros(shape, bool)
    for ang in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        gap |= _disk(shape, 60 + 28 * np.sin(ang), 145 + 28 * np.cos(ang), 13)
    mask = ring | gap
    lab = split_instances(mask)
    assert lab[60, 50] != 0 and lab[60, 50] == lab[60, 40]
    assert lab[60, 145] == 0  # the gap between several cells stays background
    lab = split_instances(mask, fill_holes=False)
    assert lab[60, 50] == 0


def test_invalid_arguments():
    m = np.ones((10, 10), np.uint8)
    with pytest.raises(ValueError, match="pixel_size_um"):
        split_instances(m, pixel_size_um=0)
    with pytest.raises(ValueError, match="h_um"):
        split_instances(m, h_um=0)
    with pytest.raises(ValueError, match="method"):
        split_instances(m, method="magic")
    with pytest.raises(ValueError, match="2-D"):
        split_instances(np.ones((2, 10, 10)))


# ------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------
def test_split_instances_file_png_and_tiff(tmp_path, crowd):
    from PIL import Image

    mask, truth = crowd
    png = tmp_path / "a_mask.png"
    Image.fromarray(mask * 255).save(png)
    out = tmp_path / "out" / "a_labels.tif"
    lab = split_instances_file(png, out, pixel_size_um=1.0)
    back = tifffile.imread(out)
    assert back.dtype == np.uint16
    assert np.array_equal(back, lab)
    assert np.array_equal(lab, split_instances(mask))
    # label TIFF in, probability as uint8 PNG
    tif = tmp_path / "labels_in.tif"
    tifffile.imwrite(tif, truth)
    prob = tmp_path / "prob.png"
    Image.fromarray(np.where(mask > 0, 230, 10).astype(np.uint8)).save(prob)
    lab2 = split_instances_file(tif, tmp_path / "b.tif", prob_path=prob)
    assert matched_f_score(lab2, truth)["f"] > 0.85


def test_split_instances_file_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        split_instances_file(tmp_path / "missing.png", tmp_path / "o.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="bad.tif"):
        split_instances_file(bad, tmp_path / "o.tif")
    ok = tmp_path / "ok.tif"
    tifffile.imwrite(ok, np.ones((16, 16), np.uint8))
    prob = tmp_path / "prob.tif"
    tifffile.imwrite(prob, np.ones((8, 8), np.float32))
    with pytest.raises(InputError, match="shape"):
        split_instances_file(ok, tmp_path / "o.tif", prob_path=prob)
    assert not (tmp_path / "o.tif").exists()


def test_write_cellpose_masks(tmp_path, crowd):
    _, truth = crowd
    path = tmp_path / "img_masks.tif"
    write_cellpose_masks(truth.astype(np.int64), path)
    back = tifffile.imread(path)
    assert back.dtype == np.uint16 and np.array_equal(back, truth)
    big = np.zeros((2, 3), np.int64)
    big[0, 0] = 70000
    write_cellpose_masks(big, tmp_path / "big_masks.tif")
    assert tifffile.imread(tmp_path / "big_masks.tif").dtype == np.uint32


def test_write_imagej_rois_roundtrip(tmp_path, crowd):
    import cv2
    import roifile

    _, truth = crowd
    lab = split_instances(truth)
    path = tmp_path / "rois.zip"
    n = write_imagej_rois(lab, path)
    rois = roifile.roiread(path)
    assert n == len(rois) == lab.max()
    assert [int(r.name) for r in rois] == list(range(1, lab.max() + 1))
    assert all(r.roitype == roifile.ROI_TYPE.POLYGON for r in rois)
    # each polygon encloses (about) its instance: fill it and compare areas
    for r in rois[:10]:
        lab_id = int(r.name)
        poly = np.zeros(lab.shape, np.uint8)
        cv2.fillPoly(poly, [np.round(r.coordinates()).astype(np.int32)], 1)
        inst = lab == lab_id
        iou = np.sum((poly > 0) & inst) / np.sum((poly > 0) | inst)
        assert iou > 0.95
    # no instances -> an empty zip, still readable as a zip
    write_imagej_rois(np.zeros((5, 5), np.uint16), tmp_path / "empty.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip") as zf:
        assert zf.namelist() == []


# ------------------------------------------------------------------------------------
# benchmark (small and quick here; the full-size numbers are in the report)
# ------------------------------------------------------------------------------------
def test_bench_instances_small():
    r = bench_instances(shape=(256, 256), n=20, seed=0, repeats=1)
    for key in ("ratio", "matched_f", "plain_matched_f", "fast_mpx_s", "plain_mpx_s"):
        assert np.isfinite(r[key]) and r[key] > 0
    assert r["matched_f"] >= r["plain_matched_f"] - 0.01
    assert r["matched_f"] > r["cc_matched_f"]


@pytest.mark.slow
def test_bench_instances_full_size():
    r = bench_instances(repeats=2)
    assert r["ratio"] >= 3
    assert r["matched_f"] >= r["plain_matched_f"] - 0.01
