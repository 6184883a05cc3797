"""Border weight map, 3-class targets, their losses, store and training path (issue 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brightseg.config import validate_config
from brightseg.errors import InputError
from brightseg.targets import (
    border3_classes,
    border_weight_map,
    foreground_probability,
    make_target,
    nucleus3_classes,
    seed_probability,
    separate_touching,
)


def _two_squares():
    lab = np.zeros((64, 64), np.uint16)
    lab[10:20, 10:20] = 1
    lab[10:20, 20:30] = 2
    return lab


def test_separate_touching_opens_a_two_pixel_gap():
    sep = separate_touching(_two_squares())
    assert (sep[10:20, 19:21] == 0).all()
    assert (sep[10:20, 10:19] == 1).all() and (sep[10:20, 21:30] == 2).all()
    # a lone object keeps its edge
    lone = np.zeros((8, 8), np.uint8)
    lone[2:6, 2:6] = 3
    assert (separate_touching(lone) == lone).all()


def test_weight_map_matches_the_formula_by_hand():
    sep = separate_touching(_two_squares())
    w = border_weight_map(sep, w0=10.0, sigma_px=5.0, class_weights=(1.0, 2.0))
    # gap pixel (15, 19): 1 px from square 1 (col 18), 2 px from square 2 (col 21)
    assert w[15, 19] == pytest.approx(1.0 + 10.0 * math.exp(-(3.0**2) / 50.0), rel=1e-5)
    assert w[15, 19] > 1.0 + 0.8 * 10.0  # about w_c + w0 in the gap
    # far from every cell: w_c of background; inside a cell: w_c of foreground
    assert w[55, 55] == pytest.approx(1.0)
    assert w[15, 14] == pytest.approx(2.0)
    # beside a single cell only (no second cell near): w_c + a small term
    assert w[15, 5] < 1.0 + 10.0 * math.exp(-((5.0 + 15.0) ** 2) / 50.0) + 1e-3


def test_weight_map_with_one_cell_is_the_class_weight():
    lab = np.zeros((32, 32), np.int32)
    lab[8:16, 8:16] = 1
    w = border_weight_map(lab, class_weights=(1.0, 3.0))
    assert set(np.unique(w)) == {1.0, 3.0}


def test_border3_and_nucleus3_classes():
    lab = _two_squares()
    cls = border3_classes(lab, border_px=2)
    assert cls[0, 0] == 0
    assert cls[15, 15] == 1 and cls[15, 25] == 1
    assert (cls[10:12, 12:18] == 2).all()  # outer edge, 2 px
    assert (cls[15, 18:22] == 2).all()  # where the squares touch: border on both sides
    assert ((cls > 0) == (lab > 0)).all()
    comp_count = __import__("scipy").ndimage.label(cls == 1)[1]
    assert comp_count == 2  # one interior blob per cell
    nuc = np.zeros_like(lab)
    nuc[13:16, 13:16] = 1
    c3 = nucleus3_classes(lab, nuc)
    assert c3[14, 14] == 2 and c3[11, 11] == 1 and c3[40, 40] == 0


def test_make_target_channels():
    lab = _two_squares()
    t = make_target("binary", lab)
    assert t.shape == (64, 64, 1) and t[15, 19, 0] == 1
    tw = make_target("binary", lab, border_weight={"w0": 10, "sigma_px": 5})
    assert tw.shape == (64, 64, 2) and tw[15, 19, 0] == 0 and tw[15, 19, 1] > 9
    t3 = make_target("border3", lab, border_weight={"w0": 10, "sigma_px": 5})
    assert t3.shape == (64, 64, 4)
    assert np.allclose(t3[..., :3].sum(-1), 1.0)
    with pytest.raises(InputError, match="nucleus"):
        make_target("nucleus3", lab)
    with pytest.raises(InputError, match="unknown target"):
        make_target("fourclass", lab)
    with pytest.raises(InputError, match="unknown keys"):
        make_target("binary", lab, border_weight={"w1": 3})


def test_foreground_and_seed_probability():
    p = np.zeros((4, 4, 3), np.float32)
    p[..., 0], p[..., 1], p[..., 2] = 0.2, 0.5, 0.3
    assert np.allclose(foreground_probability(p), 0.8)
    assert np.allclose(seed_probability(p, "border3"), 0.5)
    assert np.allclose(seed_probability(p, "nucleus3"), 0.3)
    assert seed_probability(p[..., 0], "binary") is None
    with pytest.raises(InputError):
        seed_probability(p[..., 0], "border3")


# --------------------------------------------------------------------------- config
def _cfg(models, annotations=None, **instances):
    cfg = {"illumination": {"radius": 50}, "models": models, "instances": instances}
    if annotations is not None:
        cfg["annotations"] = annotations
    return cfg


def test_config_target_checks():
    ok = validate_config(
        _cfg(
            [{"architecture": "small_unet", "loss": "cce_dice", "target": "border3"}],
            method="interior",
        )
    )
    assert ok["models"][0]["target"] == "border3"
    assert (
        validate_config(_cfg([{"architecture": "small_unet", "loss": "bce_dice"}]))["models"][0][
            "target"
        ]
        == "binary"
    )
    with pytest.raises(InputError, match="cannot train with loss 'bce_dice'"):
        validate_config(
            _cfg([{"architecture": "small_unet", "loss": "bce_dice", "target": "border3"}])
        )
    with pytest.raises(InputError, match="cannot train with loss 'cce_dice'"):
        validate_config(_cfg([{"architecture": "small_unet", "loss": "cce_dice"}]))
    with pytest.raises(InputError, match="mix the targets"):
        validate_config(
            _cfg(
                [
                    {"architecture": "small_unet", "loss": "bce_dice"},
                    {"architecture": "small_unet", "loss": "cce_dice", "target": "border3"},
                ]
            )
        )
    with pytest.raises(InputError, match="needs models with target 'border3'"):
        validate_config(
            _cfg([{"architecture": "small_unet", "loss": "bce_dice"}], method="interior")
        )
    nucleus3 = [{"architecture": "small_unet", "loss": "cce_dice", "target": "nucleus3"}]
    nuclei = {"labels": ["cell"], "nucleus_labels": ["nucleus"]}
    with pytest.raises(InputError, match="nucleus_diameter_um"):
        validate_config(_cfg(nucleus3, annotations=nuclei, method="log_seeds"))
    # nucleus3 trains on the nuclei of the CVAT/COCO exports: their label must be named
    with pytest.raises(InputError, match="annotations.nucleus_labels"):
        validate_config(_cfg(nucleus3, method="log_seeds", nucleus_diameter_um=8.0))
    ok = validate_config(
        _cfg(nucleus3, annotations=nuclei, method="log_seeds", nucleus_diameter_um=8.0)
    )
    assert ok["annotations"]["nucleus_labels"] == ["nucleus"]
    with pytest.raises(InputError):
        validate_config(_cfg([], method="watershed"))


# --------------------------------------------------------------------------- losses
def test_losses_use_weight_channel_and_classes():
    from brightseg.losses import bce_dice_per_sample, cce_dice_per_sample

    y = np.zeros((1, 8, 8, 1), np.float32)
    y[0, 2:6, 2:6] = 1
    p = np.full_like(y, 0.5)
    w1 = np.concatenate([y, np.ones_like(y)], -1)
    w5 = np.concatenate([y, 5 * np.ones_like(y)], -1)
    plain = float(bce_dice_per_sample(y, p, fg_weight=1.0)[0])
    assert float(bce_dice_per_sample(w1, p, weighted=True)[0]) == pytest.approx(plain, rel=1e-5)
    dice_part = plain - math.log(2.0)
    assert float(bce_dice_per_sample(w5, p, weighted=True)[0]) == pytest.approx(
        5 * math.log(2.0) + dice_part, rel=1e-4
    )
    onehot = np.zeros((1, 8, 8, 3), np.float32)
    onehot[..., 0] = 1
    onehot[0, 2:6, 2:6, 0], onehot[0, 2:6, 2:6, 1] = 0, 1
    onehot[0, 3:5, 3:5, 1], onehot[0, 3:5, 3:5, 2] = 0, 1
    assert float(cce_dice_per_sample(onehot, onehot)[0]) == pytest.approx(0.0, abs=1e-4)
    uniform = np.full_like(onehot, 1 / 3)
    assert float(cce_dice_per_sample(onehot, uniform)[0]) > 1.0


# --------------------------------------------------------------------------- store + training
def _scenes(n=3, size=64):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        lab = np.zeros((size, size), np.uint16)
        k = 1
        for cy, cx in ((16, 14), (16, 30), (46, 40)):
            lab[((yy - cy - i) ** 2 + (xx - cx) ** 2 < 81) & (lab == 0)] = k
            k += 1
        nuc = np.where((lab > 0) & (ndi_erode(lab) > 0), lab, 0).astype(np.uint16)
        img = np.where(lab > 0, 0.6, 0.2) + rng.normal(0, 0.03, lab.shape)
        img = np.where(nuc > 0, 0.9, img)
        out.append(
            {
                "image_id": f"s{i}",
                "plate": "p",
                "modality": "fluorescence",
                "image": np.clip(img, 0, 1).astype(np.float32),
                "mask": (lab > 0).astype(np.uint8),
                "labels": lab,
                "nuclei": nuc,
            }
        )
    return out


def ndi_erode(lab):
    from scipy import ndimage as ndi

    return ndi.binary_erosion(lab > 0, iterations=5)


def _store(tmp_path, **kw):
    from brightseg.augment import build_training_store
    from brightseg.split import apply_split

    build_training_store(
        iter(_scenes()),
        tmp_path / "p.zarr",
        tmp_path / "all.parquet",
        patch_size=32,
        stride=32,
        n_variants=3,
        seed=1,
        **kw,
    )
    apply_split(tmp_path / "all.parquet", tmp_path / "m.parquet", val_fraction=0.34, seed=0)
    return tmp_path / "p.zarr", tmp_path / "m.parquet"


def test_store_carries_labels_warped_like_the_masks(tmp_path):
    import zarr

    store, _ = _store(tmp_path, with_labels=True, with_nuclei=True)
    g = zarr.open_group(str(store), mode="r")
    masks, labels, nuclei = g["masks"][...], g["labels"][...], g["nuclei"][...]
    assert labels.dtype == np.uint16 and labels.shape == masks.shape
    assert ((labels > 0) == (masks > 0)).all()  # nearest warping keeps them aligned
    assert labels.max() == 3 and nuclei.max() > 0
    # without the options: no extra arrays, masks unchanged
    other = tmp_path / "plain"
    other.mkdir()
    plain, _ = _store(other)
    gp = zarr.open_group(str(plain), mode="r")
    assert "labels" not in gp and (gp["masks"][...] == masks).all()
    assert (gp["images"][...] == g["images"][...]).all()


def test_patchdata_needs_labels_for_3class(tmp_path):
    from brightseg.train import PatchData

    store, manifest = _store(tmp_path)
    with pytest.raises(InputError, match="labels"):
        PatchData(store, manifest, target="border3")
    with pytest.raises(InputError, match="labels"):
        PatchData(store, manifest, border_weight={"w0": 10, "sigma_px": 5})


def test_3class_model_trains_and_predicts_through_the_ensemble(tmp_path):
    from brightseg.ensemble import channel_predictors, make_predictor, predict_image
    from brightseg.models.runtime import load_checkpoint
    from brightseg.train import PatchData, train_model

    store, manifest = _store(tmp_path, with_labels=True, with_nuclei=True)
    data = PatchData(store, manifest, target="nucleus3", border_weight={"w0": 10, "sigma_px": 5})
    x, y = data.read(np.array([[0, 0, 0], [1, 0, 0]]), 32)
    assert y.shape == (2, 32, 32, 4) and np.allclose(y[..., :3].sum(-1), 1.0)
    card = train_model(
        store,
        manifest,
        tmp_path / "run",
        spec={
            "architecture": "small_unet",
            "loss": "cce_dice",
            "target": "border3",
            "loss_kwargs": {"border_weight": {"w0": 10, "sigma_px": 5}},
            "model_kwargs": {"base_filters": 4, "depth": 2},
        },
        training={
            "epochs": 1,
            "batch_size": 2,
            "steps_per_epoch": 2,
            "val_steps": 1,
            "encoder_weights": "none",
            "precision": "float32",
            "patience": 1,
        },
        seed=0,
    )
    assert card["config"]["target"] == "border3" and card["epochs_run"] == 1
    model = load_checkpoint(tmp_path / "run" / card["best_checkpoint"])
    assert model.output_shape[-1] == 3
    preds = channel_predictors(make_predictor(model, batch_size=2, tile=32), 3)
    out = predict_image(_scenes(1)[0]["image"], preds, tile=32, overlap=8, batch_size=2)
    assert out.shape == (3, 64, 64)
    assert np.allclose(out.sum(0), 1.0, atol=1e-4)


# --------------------------------------------------------------------------- plate path
def _softmax_model(batch):
    """A fake 3-class predictor: background 1 - x, interior 0.75 x, border 0.25 x."""
    x = np.asarray(batch, np.float32)[..., :1]
    return np.concatenate([1.0 - x, 0.75 * x, 0.25 * x], axis=-1)


def test_predict_plate_writes_the_seed_label_of_a_3class_ensemble():
    from test_ensemble import FakeStore, random_images

    from brightseg.ensemble import class_views, predict_image, predict_plate

    calls = []

    def counted(batch):
        calls.append(1)
        return _softmax_model(batch)

    fg, seed = class_views(counted, "border3")
    images = random_images(2, (40, 36), seed=3)
    store = FakeStore(images)
    predict_plate(store, [fg], tile=32, overlap=8, batch_size=4, seed_predictors=[seed])
    for image_id in images:
        img = store.raw[image_id].astype(np.float32) / np.float32(65535)
        ref = predict_image(img, [lambda b: np.asarray(b)[..., :1]], tile=32, overlap=8)[0]
        np.testing.assert_allclose(store.labels[(image_id, "prob")], np.rint(ref * 255), atol=1)
        np.testing.assert_allclose(
            store.labels[(image_id, "seed")], np.rint(0.75 * ref * 255), atol=1
        )
    n_batches = len(calls)
    # the model ran once per batch although two views read it
    calls.clear()
    predict_plate(FakeStore(images), [fg], tile=32, overlap=8, batch_size=4)
    assert len(calls) == n_batches
