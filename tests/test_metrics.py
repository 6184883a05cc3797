"""Tests of brightseg.metrics against independent references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_util
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist, directed_hausdorff
from skimage.metrics import structural_similarity
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from brightseg import metrics as M


def blob_mask(rng: np.random.Generator, shape=(48, 64), sigma=3.0, level=0.6) -> np.ndarray:
    """Random blobby binary mask (smoothed noise thresholded)."""
    noise = ndi.gaussian_filter(rng.random(shape), sigma)
    return (noise > np.quantile(noise, level)).astype(np.uint8)


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask (numpy, pad = background)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1]
    all_nb = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return np.argwhere(inner & ~all_nb).astype(float)


@pytest.mark.parametrize("seed", range(6))
def test_pixel_metrics_match_sklearn_scipy_skimage(seed):
    rng = np.random.default_rng(seed)
    truth = blob_mask(rng)
    if seed % 2:
        pred = blob_mask(rng, level=0.5)  # unrelated prediction
    else:  # a noisy version of the truth
        pred = truth.copy()
        flip = rng.random(truth.shape) < 0.05
        pred[flip] = 1 - pred[flip]
    got = M.pixel_metrics(pred, truth)
    t, p = truth.ravel(), pred.ravel()
    assert got["tp"] == int(np.sum((p == 1) & (t == 1)))
    assert got["fp"] == int(np.sum((p == 1) & (t == 0)))
    assert got["fn"] == int(np.sum((p == 0) & (t == 1)))
    assert got["tn"] == int(np.sum((p == 0) & (t == 0)))
    assert got["f1"] == pytest.approx(f1_score(t, p), abs=1e-6)
    assert got["dice"] == pytest.approx(f1_score(t, p), abs=1e-6)
    assert got["iou"] == pytest.approx(jaccard_score(t, p), abs=1e-6)
    assert got["precision"] == pytest.approx(precision_score(t, p), abs=1e-6)
    assert got["recall"] == pytest.approx(recall_score(t, p), abs=1e-6)
    assert got["accuracy"] == pytest.approx(accuracy_score(t, p), abs=1e-6)
    ref_ssim = structural_similarity(
        pred.astype(float), truth.astype(float), data_range=1.0, win_size=7
    )
    assert got["ssim"] == pytest.approx(ref_ssim, abs=1e-6)
    a, b = boundary_points(pred), boundary_points(truth)
    ref_hd = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert got["hausdorff"] == pytest.approx(ref_hd, abs=1e-6)
    d = cdist(a, b)
    pooled = np.concatenate([d.min(axis=1), d.min(axis=0)])
    assert got["hd95"] == pytest.approx(np.percentile(pooled, 95), abs=1e-6)
    assert got["hd95"] <= got["hausdorff"]
    assert M.hausdorff_distance(pred, truth) == pytest.approx(ref_hd, abs=1e-6)
    assert M.hausdorff_distance(pred, truth, 95) == pytest.approx(got["hd95"], abs=1e-12)


def test_ssim_prob_and_hand_hausdorff():
    truth = np.zeros((20, 30), np.uint8)
    truth[5:10, 5:10] = 1
    pred = np.zeros_like(truth)
    pred[5:10, 15:20] = 1  # shifted by 10 columns
    got = M.pixel_metrics(pred, truth, prob=pred * 0.8)
    assert got["hausdorff"] == pytest.approx(10.0)
    assert got["dice"] == 0.0
    ref = structural_similarity(pred * 0.8, truth.astype(float), data_range=1.0)
    assert got["ssim_prob"] == pytest.approx(ref, abs=1e-6)


def test_edge_cases():
    shape = (30, 41)
    empty = np.zeros(shape, np.uint8)
    full = np.zeros(shape, np.uint8)
    full[3:8, 4:9] = 1
    both = M.pixel_metrics(empty, empty)
    for key in ("dice", "iou", "precision", "recall", "f1", "accuracy", "ssim"):
        assert both[key] == 1.0, key
    assert both["hausdorff"] == 0.0 and both["hd95"] == 0.0
    diag = math.hypot(29, 40)
    for pred, truth in ((empty, full), (full, empty)):
        one = M.pixel_metrics(pred, truth)
        for key in ("dice", "iou", "precision", "recall", "f1"):
            assert one[key] == 0.0, key
        # scikit-learn with zero_division=0 agrees on the one-empty cases
        t, p = truth.ravel(), pred.ravel()
        assert one["precision"] == precision_score(t, p, zero_division=0)
        assert one["recall"] == recall_score(t, p, zero_division=0)
        assert one["hausdorff"] == pytest.approx(diag)
        assert one["hd95"] == pytest.approx(diag)
        assert one["accuracy"] == pytest.approx(1 - 25 / (30 * 41))
    with pytest.raises(ValueError, match="shape"):
        M.pixel_metrics(empty, empty[:, :5])


def random_labels(rng, shape=(60, 80), n=12) -> np.ndarray:
    """Random non-overlapping rectangles, some touching the image border."""
    lab = np.zeros(shape, np.uint16)
    for i in range(1, n + 1):
        h, w = rng.integers(2, 12, size=2)
        y = rng.integers(0, shape[0] - h + 1)
        x = rng.integers(0, shape[1] - w + 1)
        region = lab[y : y + h, x : x + w]
        region[region == 0] = i
    lab[-3:, -4:] = n + 2  # touches the last pixel (run to the end)
    lab[0, 0] = n + 3  # first pixel
    return lab


@pytest.mark.parametrize("seed", range(3))
def test_rle_matches_pycocotools(seed):
    lab = random_labels(np.random.default_rng(seed))
    objs = M.labels_to_rles(lab)
    assert [o[0] for o in objs] == sorted(int(v) for v in np.unique(lab) if v)
    for value, rle, area, bbox in objs:
        ref = mask_util.encode(np.asfortranarray((lab == value).astype(np.uint8)))
        assert rle["counts"] == ref["counts"].decode()
        assert rle["size"] == [60, 80]
        assert area == int(mask_util.area(ref))
        assert bbox == mask_util.toBbox(ref).tolist()


def test_coco_ap_perfect_and_hand_built():
    lab = random_labels(np.random.default_rng(5))
    gt = M.labels_to_coco([lab, lab[::-1]], image_ids=[3, 7])
    dt = M.labels_to_detections(lab, 3) + M.labels_to_detections(lab[::-1], 7)
    perfect = M.coco_ap(gt, dt)
    for key in ("AP", "AP50", "AP75", "AR"):
        assert perfect[key] == pytest.approx(1.0, abs=1e-6)

    # 3 true 10x10 squares A, B, C.  Detections: A exact (score .9), a false
    # positive (.8), a 62-pixel part of B (.7, IoU .62); C missed.
    truth = np.zeros((40, 60), np.uint16)
    truth[2:12, 2:12] = 1  # A
    truth[20:30, 2:12] = 2  # B
    truth[2:12, 30:40] = 3  # C
    pred = np.zeros_like(truth)
    pred[2:12, 2:12] = 1
    pred[25:35, 45:55] = 2  # false positive
    pred[20:30, 2:8] = 3  # 60 px of B
    pred[20:22, 8] = 3  # + 2 px = 62 px, IoU 0.62
    assert M.match_instances(pred, truth)["mean_matched_iou@0.5"] == pytest.approx((1 + 0.62) / 2)
    gt = M.labels_to_coco([truth])
    dt = M.labels_to_detections(pred, 1, scores={1: 0.9, 2: 0.8, 3: 0.7})
    got = M.coco_ap(gt, dt)
    # IoU >= .5: TP, FP, TP -> 101-point interpolated AP = (34 * 1 + 33 * 2/3) / 101
    assert got["AP50"] == pytest.approx(56 / 101, abs=1e-6)
    # IoU >= .65: only A matches -> (34 * 1) / 101
    assert got["AP75"] == pytest.approx(34 / 101, abs=1e-6)
    # thresholds .50, .55, .60 see two matches, the other seven one
    assert got["AP"] == pytest.approx((3 * 56 + 7 * 34) / 1010, abs=1e-6)
    # scores from a probability map: mean probability inside each object
    prob = np.where(pred == 1, 0.9, np.where(pred == 2, 0.8, 0.7))
    by_prob = M.labels_to_detections(pred, 1, prob=prob)
    assert [d["score"] for d in by_prob] == pytest.approx([0.9, 0.8, 0.7])
    assert M.coco_ap(gt, by_prob)["AP50"] == pytest.approx(56 / 101, abs=1e-6)
    # no detection at all
    assert M.coco_ap(gt, [])["AP"] == 0.0


def test_coco_ap_reads_largest_maxdets():
    # 150 true and 150 perfectly predicted tiny objects in one image: with
    # maxDets=100 recall would be capped at 2/3; AP must read maxDets=2000.
    truth = np.zeros((60, 100), np.uint16)
    k = 0
    for y in range(0, 60, 4):
        for x in range(0, 40, 4):
            k += 1
            truth[y : y + 2, x : x + 2] = k
    assert k == 150
    got = M.coco_ap(M.labels_to_coco([truth]), M.labels_to_detections(truth, 1))
    assert got["AP"] == pytest.approx(1.0)
    capped = M.coco_ap(
        M.labels_to_coco([truth]), M.labels_to_detections(truth, 1), max_dets=(1, 10, 100)
    )
    assert capped["AP"] < 0.7


def test_match_instances_hand_built():
    truth = np.zeros((30, 30), np.uint16)
    truth[0:10, 0:10] = 1  # matched exactly
    truth[0:10, 15:25] = 2  # pred covers 40 % -> IoU .4, no match at .5
    truth[20:30, 0:10] = 3  # missed
    pred = np.zeros_like(truth)
    pred[0:10, 0:10] = 7
    pred[0:10, 15:19] = 8
    pred[20:25, 20:25] = 9  # false positive
    got = M.match_instances(pred, truth, thresholds=(0.5, 0.3))
    assert (got["n_true"], got["n_pred"]) == (3, 3)
    assert (got["tp@0.5"], got["fp@0.5"], got["fn@0.5"]) == (1, 2, 2)
    assert got["precision@0.5"] == pytest.approx(1 / 3)
    assert got["recall@0.5"] == pytest.approx(1 / 3)
    assert got["f1@0.5"] == pytest.approx(2 / 6)
    assert got["match_score@0.5"] == pytest.approx(1 / 5)
    assert (got["tp@0.3"], got["fp@0.3"], got["fn@0.3"]) == (2, 1, 1)
    assert got["match_score@0.3"] == pytest.approx(2 / 4)
    assert got["mean_matched_iou@0.3"] == pytest.approx((1 + 0.4) / 2)
    empty = M.match_instances(np.zeros_like(truth), np.zeros_like(truth))
    assert empty["f1@0.5"] == 1.0 and empty["match_score@0.5"] == 1.0
    none_found = M.match_instances(np.zeros_like(truth), truth)
    assert none_found["precision@0.5"] == 0.0 and none_found["recall@0.5"] == 0.0


def test_match_instances_is_one_to_one():
    # one true object split exactly in half by two predictions: both IoU .5,
    # only one may match; at threshold .2 the matching must maximise the count
    truth = np.zeros((10, 20), np.uint16)
    truth[:, 0:10] = 1
    truth[:, 10:20] = 2
    pred = np.zeros_like(truth)
    pred[:, 0:5] = 1
    pred[:, 5:10] = 2
    pred[:, 10:20] = 3
    got = M.match_instances(pred, truth, thresholds=(0.5,))
    assert got["tp@0.5"] == 2 and got["fp@0.5"] == 1 and got["fn@0.5"] == 0
    # at a low threshold greedy matching by IoU would pair (T1, P1) only; the
    # maximum one-to-one matching pairs (T1, P2) and (T2, P1)
    truth2 = np.zeros((10, 20), np.uint16)
    truth2[:, 0:10] = 1
    truth2[:, 10:20] = 2
    pred2 = np.zeros_like(truth2)
    pred2[:, 3:14] = 1  # IoU with T1: 7/14 = .5, with T2: 4/17
    pred2[:, 0:3] = 2  # IoU with T1: 3/10
    got = M.match_instances(pred2, truth2, thresholds=(0.2, 0.4))
    assert got["tp@0.2"] == 2 and got["fp@0.2"] == 0 and got["fn@0.2"] == 0
    assert got["mean_matched_iou@0.2"] == pytest.approx((0.3 + 4 / 17) / 2)
    assert got["tp@0.4"] == 1 and got["mean_matched_iou@0.4"] == pytest.approx(0.5)


def test_k_overlap_similarity_hand_built():
    truth = np.zeros((20, 40), np.uint16)
    truth[0:10, 0:10] = 1  # pred covers 70 % (> .6): J = 70 / 100
    truth[0:10, 20:30] = 2  # pred covers 50 % (<= .6): 0
    truth[12:20, 0:10] = 3  # pred covers all and 20 extra pixels: J = 80 / 100
    pred = np.zeros_like(truth)
    pred[0:10, 0:7] = 4
    pred[0:10, 20:25] = 5
    pred[12:20, 0:10] = 6
    pred[10:12, 0:10] = 6  # 20 extra pixels outside every true object
    pred[15:20, 30:40] = 9  # false positive: does not lower SM
    assert M.k_overlap_similarity(pred, truth, k=0.6) == pytest.approx((0.7 + 0 + 0.8) / 3)
    assert M.k_overlap_similarity(pred, truth, k=0.4) == pytest.approx((0.7 + 0.5 + 0.8) / 3)
    z = np.zeros_like(truth)
    assert M.k_overlap_similarity(z, z) == 1.0
    assert M.k_overlap_similarity(pred, z) == 0.0
    assert M.k_overlap_similarity(z, truth) == 0.0


def test_evaluate_pairs_and_ablation_table():
    rng = np.random.default_rng(1)
    truths = [blob_mask(rng) for _ in range(3)]
    items = []
    for i, truth in enumerate(truths):
        labels = ndi.label(truth)[0].astype(np.uint16)
        for model, noise in (("unet_a", 0.02), ("unet_b", 0.1), ("ensemble", 0.0)):
            pred = truth.copy()
            flip = rng.random(truth.shape) < noise
            pred[flip] = 1 - pred[flip]
            items.append(
                {
                    "image": f"img{i}",
                    "model": model,
                    "pred": pred,
                    "truth": truth,
                    "pred_labels": ndi.label(pred)[0],
                    "true_labels": labels,
                    "cell_line": "A172",
                }
            )
    df = M.evaluate_pairs(items)
    assert len(df) == 9
    assert list(df["model"]) == ["ensemble"] * 3 + ["unet_a"] * 3 + ["unet_b"] * 3
    for col in ("image", "cell_line", *M.PIXEL_METRICS, "inst_f1@0.5", "sm", "n_true"):
        assert col in df.columns, col
    ens = df[df["model"] == "ensemble"]
    assert np.allclose(ens["f1"], 1.0) and np.allclose(ens["sm"], 1.0)
    row = df[(df["model"] == "unet_b") & (df["image"] == "img1")].iloc[0]
    item = next(it for it in items if it["model"] == "unet_b" and it["image"] == "img1")
    assert row["f1"] == pytest.approx(f1_score(item["truth"].ravel(), item["pred"].ravel()))

    table = M.ablation_table(df)
    assert list(table["model"]) == ["unet_a", "unet_b", "ensemble"]
    assert list(table.columns) == ["model", "n_images", "f1", "precision", "recall", "accuracy"]
    expected = df[df["model"] == "unet_b"]["precision"].mean()
    assert table.loc[table["model"] == "unet_b", "precision"].item() == pytest.approx(expected)
    assert (table["n_images"] == 3).all()
    with pytest.raises(ValueError, match="lacks columns"):
        M.ablation_table(pd.DataFrame({"model": ["a"]}))
