"""Uncertainty maps, per-image QC scores, the review list and its CVAT/COCO export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_ensemble import FakeStore, identity, position_model, random_images

from brightseg import qc
from brightseg.annotations.cvat import import_cvat, load_annotations, rasterize
from brightseg.annotations.export import label_shapes, review_exports
from brightseg.config import QcConfig
from brightseg.ensemble import predict_image, predict_plate
from brightseg.errors import InputError
from brightseg.io import read_image, write_png, write_tiff
from brightseg.rules.qc import evalset_qc, export_review, qc_review
from brightseg.synth import render_scene

# --------------------------------------------------------------------------- maps


def test_binary_entropy_values():
    h = qc.binary_entropy(np.array([0.0, 0.5, 1.0, 0.25, 0.75, -0.1, 1.2]))
    expected_quarter = -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))
    np.testing.assert_allclose(h, [0, 1, 0, expected_quarter, expected_quarter, 0, 0], atol=1e-6)
    assert h.dtype == np.float32


def test_uncertainty_maps_variance_and_entropy():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 20, 30), dtype=np.float32)
    var, ent = qc.uncertainty_maps(probs)
    np.testing.assert_allclose(var, probs.var(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ent, qc.binary_entropy(probs.mean(axis=0)), atol=1e-6)
    one_var, _ = qc.uncertainty_maps(probs[:1])
    assert not one_var.any()  # one member: no disagreement
    with pytest.raises(ValueError):
        qc.uncertainty_maps(np.zeros((0, 4, 4)))


def test_uint8_codes_round_trip():
    v = np.linspace(0, 0.25, 101, dtype=np.float32)
    h = np.linspace(0, 1, 101, dtype=np.float32)
    assert qc.encode_variance(np.float32(0.25)) == 255
    assert np.abs(qc.decode_variance(qc.encode_variance(v)) - v).max() <= 0.5 / 1020 + 1e-7
    assert np.abs(qc.decode_entropy(qc.encode_entropy(h)) - h).max() <= 0.5 / 255 + 1e-7


def _disk(shape=(64, 64), centre=(32, 32), r=12):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= r * r


def test_image_qc_sharp_versus_blurred_prediction():
    from scipy import ndimage as ndi

    mask = _disk()
    sharp = np.where(mask, 0.98, 0.02).astype(np.float32)
    blurred = ndi.gaussian_filter(mask.astype(np.float32), 3)
    a = qc.image_qc(sharp, sharp > 0.5)
    b = qc.image_qc(blurred, blurred > 0.5, variance=np.full(mask.shape, 0.01))
    assert a["qc_uncertain_border"] == 0.0
    assert a["qc_mean_entropy"] == pytest.approx(float(qc.binary_entropy(np.float32(0.98))))
    assert np.isnan(a["qc_mean_variance"]) and b["qc_mean_variance"] == pytest.approx(0.01)
    assert b["qc_uncertain_border"] > 0.5 and b["qc_score"] > a["qc_score"]
    assert b["qc_score"] == pytest.approx(0.5 * (b["qc_mean_entropy"] + b["qc_uncertain_border"]))
    empty = qc.image_qc(np.zeros((8, 8)), np.zeros((8, 8)))
    assert empty["qc_score"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        qc.image_qc(np.zeros((8, 8)), np.zeros((8, 9)))


def test_border_band_both_sides_of_the_outline():
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    band = qc.border_band(mask, 1)
    assert band[3, 3] and band[2, 4] and not band[4, 4] and not band[0, 0]
    assert band.sum() == 16 - 4 + 16  # 12 inner outline pixels + 16 outer ones
    assert not qc.border_band(np.zeros((5, 5)), 2).any()


def test_predict_plate_writes_uncertainty_labels():
    images = random_images(2, (50, 40), seed=3)
    members = [identity, position_model]
    on, off = FakeStore(images), FakeStore(images)
    predict_plate(on, members, tile=32, overlap=8, batch_size=3, uncertainty=True)
    predict_plate(off, members, tile=32, overlap=8, batch_size=3)
    for image_id in images:
        img = on.raw[image_id].astype(np.float32) / np.float32(65535)
        probs = predict_image(img, members, tile=32, overlap=8)
        var, ent = qc.uncertainty_maps(probs)
        np.testing.assert_array_equal(on.labels[(image_id, "variance")], qc.encode_variance(var))
        np.testing.assert_array_equal(on.labels[(image_id, "entropy")], qc.encode_entropy(ent))
        assert on.labels[(image_id, "variance")].any()
        # the mask is still written last, and prob/mask are the same as without uncertainty
        assert on.writes.index((image_id, "entropy")) < on.writes.index((image_id, "mask"))
        for name in ("prob", "mask"):
            np.testing.assert_array_equal(on.labels[(image_id, name)], off.labels[(image_id, name)])
        assert (image_id, "variance") not in off.labels and (image_id, "entropy") not in off.labels


# --------------------------------------------------------------------------- review


def _images_table(scores):
    n = len(scores)
    return pd.DataFrame(
        {
            "plate": ["p1"] * (n - 1) + ["p2"],
            "image_id": [f"im{i}" for i in range(n)],
            "well": "A01",
            "field": list(range(n)),
            "timepoint": 0,
            "qc_mean_entropy": [s * 0.5 for s in scores],
            "qc_mean_variance": 0.0,
            "qc_uncertain_border": [s * 1.5 for s in scores],
            "qc_score": scores,
            "store_path": [f"results/plates/x.ome.zarr/A/1/{i}" for i in range(n)],
        }
    )


def test_review_table_flags_above_threshold_worst_first():
    df = _images_table([0.1, 0.5, 0.35, 0.9])
    review = qc.review_table(df, 0.35)
    assert list(review.columns) == qc.REVIEW_COLUMNS
    assert list(review["image_id"]) == ["im3", "im1"]  # 0.35 is not above 0.35
    assert review["reason"].iloc[0].startswith("qc_score 0.900 > 0.35: uncertain borders")
    assert review["path"].iloc[0].endswith("/A/1/3")
    with pytest.raises(ValueError, match="qc.uncertainty"):
        qc.review_table(df.drop(columns="qc_score"), 0.3)


def test_spearman():
    assert qc.spearman([1, 2, 3, 4], [8, 6, 4, 1])["rho"] == pytest.approx(-1.0)
    r = qc.spearman([1, 2, np.nan, 4, 5], [1, 3, 2, 4, 6])
    assert r["n"] == 4 and r["rho"] == pytest.approx(1.0)
    assert np.isnan(qc.spearman([1, 1, 1], [1, 2, 3])["rho"])


def test_qc_review_rule_writes_table_and_figure(tmp_path):
    df = _images_table([0.1, 0.5, 0.2, 0.9])
    df.to_parquet(tmp_path / "images.parquet")
    review = qc_review(
        str(tmp_path / "images.parquet"),
        str(tmp_path / "review.tsv"),
        str(tmp_path / "qc_scores"),
        qc={"review_threshold": 0.4},
    )
    back = pd.read_csv(tmp_path / "review.tsv", sep="\t")
    assert list(back["image_id"]) == list(review["image_id"]) == ["im3", "im1"]
    for ext in ("png", "svg", "parquet"):
        assert (tmp_path / f"qc_scores.{ext}").stat().st_size > 0
    assert pd.read_parquet(tmp_path / "qc_scores.parquet")["flagged"].sum() == 2


def test_evalset_qc_correlates_score_with_dice(tmp_path):
    """Blurrier (less certain) predictions of worse images: rho(QC score, Dice) = -1."""
    from scipy import ndimage as ndi

    pred = tmp_path / "ensemble"
    rows = []
    mask = _disk((48, 48), (24, 24), 10)
    for i, sigma in enumerate([0.5, 1.0, 2.0, 3.0, 4.0]):
        prob = ndi.gaussian_filter(mask.astype(np.float32), sigma) * 0.98 + 0.01
        var = np.full(mask.shape, 0.002 * i, np.float32)
        var_code, ent_code = qc.encode_variance(var), qc.encode_entropy(qc.binary_entropy(prob))
        write_png(np.rint(prob * 255).astype(np.uint8), pred / f"im{i}_prob.png")
        write_png(np.where(prob > 0.5, 255, 0).astype(np.uint8), pred / f"im{i}_mask.png")
        write_png(var_code, pred / f"im{i}_variance.png")
        write_png(ent_code, pred / f"im{i}_entropy.png")
        for method, value in (("ensemble", 0.95 - 0.1 * i), ("otsu", 0.5)):
            rows.append({"set": "s", "image": f"im{i}", "method": method, "metric": "dice"})
            rows[-1]["value"] = value
    pd.DataFrame(rows).to_parquet(tmp_path / "per_image.parquet")
    out = evalset_qc(
        str(pred),
        str(tmp_path / "per_image.parquet"),
        str(tmp_path / "qc.parquet"),
        str(tmp_path / "qc.json"),
        str(tmp_path / "qc_vs_dice"),
        qc={},
        name="s",
    )
    saved = json.loads((tmp_path / "qc.json").read_text())
    assert saved == json.loads(json.dumps(out))
    assert saved["n_images"] == 5
    assert saved["spearman"]["qc_score"]["rho"] == pytest.approx(-1.0)
    assert saved["spearman"]["qc_mean_variance"]["rho"] == pytest.approx(-1.0)
    assert (tmp_path / "qc_vs_dice.png").stat().st_size > 0
    (pred / "im0_variance.png").unlink()
    with pytest.raises(InputError, match="variance"):
        evalset_qc(
            str(pred),
            str(tmp_path / "per_image.parquet"),
            str(tmp_path / "qc2.parquet"),
            str(tmp_path / "qc2.json"),
            str(tmp_path / "fig2"),
            qc={},
            name="s",
        )


def test_qc_config_band_must_be_ordered():
    assert QcConfig.from_dict({}).uncertain_band == (0.2, 0.8)
    with pytest.raises(InputError, match="lo < hi"):
        QcConfig.from_dict({"uncertain_band": [0.7, 0.3]})


# --------------------------------------------------------------------------- CVAT export


def _match_ious(truth: np.ndarray, back: np.ndarray) -> np.ndarray:
    """IoU of each true cell with the re-imported cell that overlaps it most."""
    out = []
    for label in range(1, int(truth.max()) + 1):
        m = truth == label
        if not m.any():
            continue
        hits = np.bincount(back[m].astype(np.int64))
        hits[0] = 0
        other = back == int(hits.argmax())
        out.append((m & other).sum() / (m | other).sum())
    return np.array(out)


@pytest.fixture(scope="module")
def scenes():
    """Two synthetic scenes of realistic cells (radius 10 and 18 px), touching ones included."""
    out = []
    for seed, radius in ((1, 10.0), (2, 18.0)):
        sc = render_scene((160, 200), 14, np.random.default_rng(seed), mean_radius_px=radius)
        out.append({"name": f"scene{seed}.png", "labels": sc.labels, "image": sc.image})
    return out


@pytest.mark.parametrize("shapes", ["mask", "polygon"])
def test_export_round_trip_through_the_cvat_import(tmp_path, scenes, shapes):
    """Export, then import with the project's own CVAT import: the same label images."""
    counts = export_review(scenes, tmp_path / "task", qc={"export_shapes": shapes})
    n_cells = sum(int(len(np.unique(s["labels"])) - 1) for s in scenes)
    assert counts["n_cells"].sum() == n_cells
    if shapes == "mask":
        assert counts["polygons"].sum() == 0
    else:  # the default tolerance keeps (nearly) every cell a polygon
        assert counts["polygons"].sum() >= 0.9 * n_cells
    for export in ("cvat.xml", "coco.json"):
        out = tmp_path / f"imported_{export}"
        manifest, skipped = import_cvat(tmp_path / "task" / export, tmp_path / "task/images", out)
        assert len(manifest) == len(scenes) and skipped.empty
        for s in scenes:
            back = read_image(out / f"{s['name'][:-4]}_labels.tif")
            ious = _match_ious(s["labels"], back)
            assert len(ious) == int(back.max()) == s["labels"].max()
            if shapes == "mask":
                np.testing.assert_array_equal(back > 0, s["labels"] > 0)
                assert ious.min() == 1.0
            else:
                assert ious.min() >= 0.99


def test_polygon_tolerance_and_fallback_to_masks(scenes):
    labels = scenes[1]["labels"]
    default = label_shapes(labels)
    raw = label_shapes(labels, tolerance_px=0.0)
    coarse = label_shapes(labels, tolerance_px=3.0)
    poly = [c for c in default if c["kind"] == "polygon"]
    raw_poly = {c["label"]: c for c in raw if c["kind"] == "polygon"}
    assert poly and all(len(c["xy"]) < len(raw_poly[c["label"]]["xy"]) for c in poly)
    # a 3 px tolerance loses more than 1 % of a cell: those cells become exact masks
    assert sum(c["kind"] == "mask" for c in coarse) > sum(c["kind"] == "mask" for c in default)
    xml, coco, counts = review_exports(
        [{"name": "a.png", "labels": labels}], tolerance_px=3.0, min_iou=0.99
    )
    assert counts["masks"] > 0
    back = rasterize(load_annotations_from_text(xml)["a.png"])
    assert _match_ious(labels, back).min() >= 0.99
    assert len(coco["annotations"]) == labels.max()
    with pytest.raises(ValueError, match="shapes"):
        label_shapes(labels, shapes="box")


def load_annotations_from_text(xml: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.xml"
        p.write_text(xml)
        return load_annotations(p)


def test_cells_with_holes_or_two_parts_are_masks():
    labels = np.zeros((40, 40), np.uint16)
    labels[5:20, 5:20] = 1
    labels[10:14, 10:14] = 0  # a hole
    labels[25:30, 5:10] = 2
    labels[25:30, 20:25] = 2  # two parts
    labels[25:35, 28:38] = 3
    kinds = {c["label"]: c["kind"] for c in label_shapes(labels)}
    assert kinds == {1: "mask", 2: "mask", 3: "polygon"}


def test_export_cvat_command(tmp_path, scenes):
    from brightseg.cli import main

    paths = []
    for s in scenes:
        p = tmp_path / "in" / f"{s['name'][:-4]}_labels.tif"
        write_tiff(s["labels"], p)
        write_tiff(s["image"], tmp_path / "img" / f"{s['name'][:-4]}.tif")
        paths.append(str(p))
    args = ["--out", str(tmp_path / "out"), "--shapes", "mask", "--images", str(tmp_path / "img")]
    res = CliRunner().invoke(main, ["export-cvat", *paths, *args])
    assert res.exit_code == 0, res.output
    ann = load_annotations(tmp_path / "out" / "cvat.xml")
    assert sorted(ann) == ["scene1.png", "scene2.png"]
    back = rasterize(ann["scene2.png"])
    np.testing.assert_array_equal(back > 0, scenes[1]["labels"] > 0)
    assert json.loads((tmp_path / "out" / "coco.json").read_text())["images"][0]["width"] == 200
    bad = CliRunner().invoke(main, ["export-cvat", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "LABELS" in bad.output
    img = read_image(tmp_path / "out" / "images" / "scene1.png")
    assert img.shape == (160, 200)


# --------------------------------------------------------------------------- rule layer


def test_measure_cells_qc_columns_review_and_export_from_stores(tmp_path):
    """Plate store -> prediction labels -> images.parquet QC columns -> review -> CVAT export."""
    from brightseg.morphometry import IMAGE_SCHEMA
    from brightseg.platestore import create_label_store, open_plate, write_plate
    from brightseg.rules.inference import measure_cells
    from brightseg.rules.qc import qc_export_cvat

    scenes = {}
    for i, (sigma, seed) in enumerate(((0.5, 4), (3.0, 5))):
        sc = render_scene((96, 112), 6, np.random.default_rng(seed), mean_radius_px=12.0)
        scenes[f"P1_A01_f{i}_t0"] = (sc, sigma)
    meta = pd.DataFrame(
        {"image_id": list(scenes), "row": "A", "column": 1, "field": [0, 1], "timepoint": 0}
    )
    store = tmp_path / "results/plates/P1.ome.zarr"
    write_plate(
        store,
        "P1",
        meta,
        load=lambda r: scenes[r["image_id"]][0].image / 65535.0,
        pixel_size_um=0.65,
        modality="brightfield",
    )
    plate = open_plate(store, mode="r")
    preds = create_label_store(tmp_path / "pred.zarr", plate)
    inst = create_label_store(tmp_path / "results/instances/P1.zarr", plate)
    from scipy import ndimage as ndi

    for image_id, (sc, sigma) in scenes.items():
        fg = (sc.labels > 0).astype(np.float32)
        probs = np.stack([ndi.gaussian_filter(fg, sigma), ndi.gaussian_filter(fg, sigma + 0.5)])
        var, ent = qc.uncertainty_maps(probs)
        for name, arr in (
            ("prob", np.rint(probs.mean(0) * 255).astype(np.uint8)),
            ("variance", qc.encode_variance(var)),
            ("entropy", qc.encode_entropy(ent)),
            ("mask", (probs.mean(0) > 0.5).astype(np.uint8)),
        ):
            preds.create_label(image_id, name, np.uint8)
            preds.write_label(image_id, name, arr)
        inst.create_label(image_id, "cells", np.uint16)
        inst.write_label(image_id, "cells", sc.labels.astype(np.uint16))

    def measure(name, **kw):
        measure_cells(
            str(store),
            str(tmp_path / "results/instances/P1.zarr"),
            str(tmp_path / f"{name}_cells.parquet"),
            str(tmp_path / f"{name}_images.parquet"),
            str(tmp_path / f"{name}_overlays"),
            str(tmp_path / f"{name}_exports"),
            morphometry={"n_overlays": 0, "export": {"cellpose": False, "imagej_rois": False}},
            **kw,
        )
        return pd.read_parquet(tmp_path / f"{name}_images.parquet")

    off = measure("off")
    assert list(off.columns) == IMAGE_SCHEMA.names  # unchanged without qc.uncertainty
    on = measure("on", predictions=str(tmp_path / "pred.zarr"), qc={"uncertainty": True})
    assert list(on.columns) == IMAGE_SCHEMA.names + qc.QC_COLUMNS
    pd.testing.assert_frame_equal(on[IMAGE_SCHEMA.names], off)
    sharp, blurred = on["qc_score"]
    assert blurred > sharp and on["qc_mean_variance"].gt(0).all()
    assert on["store_path"].iloc[1] == f"{store}/A/1/1"
    with pytest.raises(InputError, match="predictions"):
        measure("bad", qc={"uncertainty": True})

    threshold = float(on["qc_score"].mean())
    review = qc.review_table(on, threshold)
    assert list(review["image_id"]) == ["P1_A01_f1_t0"]
    review.to_csv(tmp_path / "review.tsv", sep="\t", index=False)
    out = tmp_path / "review"
    manifest = qc_export_cvat(
        str(tmp_path / "review.tsv"),
        {"P1": str(store)},
        {"P1": str(tmp_path / "results/instances/P1.zarr")},
        str(out),
        qc={},
    )
    assert list(manifest["image_id"]) == ["P1_A01_f1_t0"]
    assert (out / "manifest.tsv").is_file()
    imported, _ = import_cvat(out / "P1" / "cvat.xml", out / "P1" / "images", tmp_path / "back")
    back = read_image(tmp_path / "back" / "P1_A01_f1_t0_labels.tif")
    assert _match_ious(scenes["P1_A01_f1_t0"][0].labels, back).min() >= 0.99

    # the same from the command line, with masks: exact
    from brightseg.cli import main

    args = ["--review", str(tmp_path / "review.tsv"), "--results", str(tmp_path / "results")]
    res = CliRunner().invoke(main, ["export-cvat", *args, "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        main, ["export-cvat", *args, "--out", str(tmp_path / "cli2"), "--shapes", "mask"]
    )
    assert res.exit_code == 0, res.output
    ann = load_annotations(tmp_path / "cli2" / "P1" / "coco.json")
    np.testing.assert_array_equal(
        rasterize(ann["P1_A01_f1_t0.png"]) > 0, scenes["P1_A01_f1_t0"][0].labels > 0
    )
    assert (tmp_path / "cli" / "P1" / "images" / "P1_A01_f1_t0.png").is_file()
