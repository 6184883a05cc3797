"""Distillation: FLOPs, soft targets, a tiny student trained on them, predict with it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from brightseg import bundle as B
from brightseg import distill as D
from brightseg.config import Config, EnsembleConfig, StudentConfig, load_schema
from brightseg.errors import InputError

SIZE = 32
INFERENCE = {
    "tile": SIZE,
    "overlap": 8,
    "batch_size": 4,
    "vote": "mean",
    "threshold": 0.5,
    "tta": False,
    "precision": "float32",
}
STUDENT = {
    "architecture": "small_unet",
    "model_kwargs": {"base_filters": 2, "depth": 2},
    "epochs": 4,
    "steps_per_epoch": 8,
    "batch_size": 4,
    "learning_rate": 0.01,
    "unlabelled_tiles": 5,
    "max_flops_ratio": 1e6,
}


# --------------------------------------------------------------------------- FLOPs


def test_count_flops_hand_computed():
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)  # 2*8*8*4*9*3 = 13824
    y = keras.layers.Conv2D(4, 3, padding="same", groups=2, use_bias=False)(x)  # /2 by groups
    z = keras.layers.Conv2DTranspose(2, 2, strides=2)(y)  # 2*8*8*4*4*2 = 4096
    d = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(z))  # 2*2*5 = 20
    s = keras.layers.SeparableConv2D(3, 3, padding="same")(z)  # 2*256*2*9 + 2*256*2*3
    model = keras.Model(inp, [d, s])
    assert D.count_flops(model) == 13824 + 2 * 8 * 8 * 4 * 9 * 2 + 4096 + 20 + 9216 + 3072
    # nested models are counted layer by layer
    outer_in = keras.Input((8, 8, 3))
    outer = keras.Model(outer_in, keras.Model(inp, x)(outer_in))
    assert D.count_flops(outer) == 13824


def test_count_flops_scales_with_width_and_needs_static_shapes():
    from brightseg.models import build_model

    small = D.count_flops(build_model("small_unet", (64, 64, 3), base_filters=4, depth=2))
    wide = D.count_flops(build_model("small_unet", (64, 64, 3), base_filters=8, depth=2))
    assert 3.5 < wide / small < 4.0  # quadratic in the width, but the 3-channel input layer
    with pytest.raises(ValueError, match="unknown dimensions"):
        D.count_flops(build_model("small_unet", (None, None, 3), base_filters=2, depth=2))


# --------------------------------------------------------------------------- soft targets


def test_ensemble_votes_mean_majority_and_tta():
    rng = np.random.default_rng(0)
    x = rng.random((3, 16, 16, 3), dtype=np.float32)

    def member(scale):
        return lambda b: np.asarray(b)[..., :1] * scale

    preds = [member(1.0), member(0.5), member(0.9)]
    mean = D.ensemble_votes(preds, x, vote="mean")
    np.testing.assert_allclose(mean, x[..., 0] * (2.4 / 3), rtol=1e-6)
    majority = D.ensemble_votes(preds, x, vote="majority")
    expected = sum((x[..., 0] * s > 0.5).astype(np.float32) for s in (1.0, 0.5, 0.9)) / 3
    np.testing.assert_allclose(majority, expected)
    # a position-dependent member: TTA averages the exactly inverted transforms
    ramp = np.linspace(0, 1, 16, dtype=np.float32)[None, :, None, None]
    tta = D.ensemble_votes([lambda b: np.asarray(b)[..., :1] * 0 + ramp], x, tta=True)
    np.testing.assert_allclose(tta, np.full_like(tta, ramp.mean()), atol=1e-6)


class _Plate:
    def __init__(self, plate, images):
        self.plate = plate
        self.images_ = images
        self.images = pd.DataFrame({"image_id": list(images)})

    def read(self, image_id):
        return self.images_[image_id]


def test_sample_tiles_seeded_and_from_the_images():
    rng = np.random.default_rng(1)
    plates = [
        _Plate("A", {f"a{i}": rng.random((40, 50), dtype=np.float32) for i in range(3)}),
        _Plate("B", {"b0": rng.random((20, 20), dtype=np.float32)}),  # smaller: padded
    ]
    tiles, table = D.sample_tiles(plates, 7, 24, seed=3)
    again, table2 = D.sample_tiles(plates, 7, 24, seed=3)
    np.testing.assert_array_equal(tiles, again)
    pd.testing.assert_frame_equal(table, table2)
    assert tiles.shape == (7, 24, 24) and tiles.dtype == np.uint8
    assert list(table["plate"].value_counts().sort_index()) == [4, 3]
    for tile, row in zip(tiles, table.itertuples(), strict=True):
        if row.plate == "A":
            img = plates[0].read(row.image_id)
            want = np.rint(img[row.y : row.y + 24, row.x : row.x + 24] * 255)
            np.testing.assert_array_equal(tile, want)
    assert D.sample_tiles([], 7, 24, seed=3)[0].shape == (0, 24, 24)


def test_soft_loss_is_minimal_at_the_target():
    t = np.random.default_rng(2).random((2, 8, 8, 1)).astype(np.float32)
    loss = D.soft_loss(1.0)
    at = np.asarray(loss(t, t))
    off = np.asarray(loss(t, np.clip(t + 0.2, 0, 1)))
    assert at.shape == (2,) and (at < off).all()


# --------------------------------------------------------------------------- end to end


def _member(path, weight, bias):
    """A fixed 1x1 sigmoid 'model' of the grey value: a learnable target for a student."""
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.full((1, 1, 3, 1), weight / 3, np.float32), np.array([bias], np.float32)])
    model.save(path)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(5)
    n = 16
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):  # bright disks (cells) on a dark, noisy background
        for _ in range(2):
            cy, cx, r = rng.integers(6, SIZE - 6, 2).tolist() + [int(rng.integers(3, 7))]
            masks[i] |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
    grey = 0.2 + 0.55 * masks + rng.normal(0, 0.06, masks.shape)
    images = np.repeat(np.rint(np.clip(grey, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)
    group = zarr.open_group(str(root / "patches.zarr"), mode="w")
    group.create_array("images", data=images, chunks=(4, SIZE, SIZE, 3))
    group.create_array("masks", data=masks, chunks=(4, SIZE, SIZE))
    manifest = pd.DataFrame(
        {
            "index": np.arange(n),
            "split": ["train"] * 12 + ["val"] * 4,
            "variant": [0, 1] * 8,
            "foreground_fraction": masks.reshape(n, -1).mean(1),
            "source_image": [f"s{i // 2}" for i in range(n)],
        }
    )
    manifest.to_parquet(root / "manifest.parquet")
    (root / "ckpt").mkdir()
    rows = ["rank\tpath\tmodel\tloss\tepoch"]
    for i, (w, b) in enumerate([(8.0, -4.0), (6.0, -3.2)], start=1):
        _member(root / "ckpt" / f"e{i}.keras", w, b)
        rows.append(f"{i}\t{root}/ckpt/e{i}.keras\tm\tbce\t{i}")
    (root / "ensemble.tsv").write_text("\n".join(rows) + "\n")
    plate = _Plate("U1", {"u0": rng.random((48, 40), dtype=np.float32)})
    ens = B.load_ensemble(root / "ensemble.tsv", INFERENCE)
    out = root / "student"
    card = D.distill_ensemble(
        ens,
        root / "patches.zarr",
        root / "manifest.parquet",
        out / "student.keras",
        out / "card.json",
        out / "history.csv",
        out / "soft_targets.zarr",
        student=STUDENT,
        unlabelled_stores=[plate],
        seed=7,
    )
    return root, ens, card, images, manifest, plate


def test_soft_targets_are_the_ensemble_mean(setup):
    root, ens, _, images, manifest, plate = setup
    targets = zarr.open_group(str(root / "student" / "soft_targets.zarr"), mode="r")
    train = manifest.loc[manifest["split"] == "train", "index"].to_numpy()
    x = images[train].astype(np.float32) / 255
    g = x[..., 0]
    mean = (1 / (1 + np.exp(-(8 * g - 4))) + 1 / (1 + np.exp(-(6 * g - 3.2)))) / 2
    assert np.abs(targets["targets"][...].astype(float) - np.rint(mean * 255)).max() <= 1
    assert targets.attrs["train_index"] == train.tolist()
    # the unlabelled plate's tiles, labelled by the ensemble
    u = targets["unlabelled_images"][...].astype(np.float32) / 255
    assert u.shape == (5, SIZE, SIZE)
    um = (1 / (1 + np.exp(-(8 * u - 4))) + 1 / (1 + np.exp(-(6 * u - 3.2)))) / 2
    assert np.abs(targets["unlabelled_targets"][...].astype(float) - np.rint(um * 255)).max() <= 1
    assert [r["plate"] for r in targets.attrs["unlabelled"]] == ["U1"] * 5


def test_student_card_has_the_numbers(setup):
    root, ens, card, *_ = setup
    on_disk = json.loads((root / "student" / "card.json").read_text())
    assert on_disk == json.loads(json.dumps(card))
    flops = card["flops"]
    assert flops["members"] == [2 * SIZE * SIZE * 3] * 2  # a 1x1 conv of 3 channels
    assert flops["ratio"] == pytest.approx(flops["student"] / flops["ensemble"])
    val = card["validation"]
    assert val["n_patches"] == 2  # the validation originals (variant 0)
    assert val["dice_ratio"] == pytest.approx(val["student_dice"] / val["ensemble_dice"])
    assert 0 <= val["agreement_dice"] <= 1 and val["threshold"] == 0.5
    assert card["training"]["epochs_run"] == 4 and card["training"]["n_unlabelled_tiles"] == 5
    assert card["training"]["n_training_patches"] == 12
    assert card["targets"]["flops_ok"] and card["targets"]["met"] == card["targets"]["dice_ok"]
    history = pd.read_csv(root / "student" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4] and history["val_loss"].notna().all()
    # the student learnt the ensemble: its validation loss fell, its masks agree
    assert history["val_loss"].min() < history["val_loss"].iloc[0]
    assert card["training"]["best_val_loss"] == pytest.approx(history["val_loss"].min())
    assert val["agreement_dice"] > 0.8


def test_on_miss_warns_or_stops(setup, caplog):
    _, _, card, *_ = setup
    assert D.check_targets(card) is card["targets"]["met"]
    missed = json.loads(json.dumps(card))
    missed["targets"].update(flops_ok=False, met=False)
    assert D.check_targets(missed, where="c.json") is False
    assert "misses its targets" in caplog.text and "c.json" in caplog.text
    missed["targets"]["on_miss"] = "error"
    with pytest.raises(RuntimeError, match=r"misses its targets.*on_miss: error"):
        D.check_targets(missed)


# --------------------------------------------------------------------------- predict


def _plate_store(path, seed=9):
    from brightseg.platestore import write_plate

    rng = np.random.default_rng(seed)
    images = {f"im{i}": rng.random((40, 36), dtype=np.float32) for i in range(3)}
    table = pd.DataFrame(
        {"image_id": list(images), "row": "A", "column": 1, "field": [0, 1, 2], "timepoint": 0}
    )
    write_plate(
        path,
        "P1",
        table,
        load=lambda row: images[row["image_id"]],
        pixel_size_um=0.5,
        modality="brightfield",
    )
    return images


def test_predict_uses_the_student_and_reports_qc(setup, tmp_path):
    from brightseg.ensemble import SUMMARY_COLUMNS, predict_image
    from brightseg.models import load_checkpoint
    from brightseg.platestore import open_labels
    from brightseg.rules.inference import predict

    root, ens, *_ = setup
    store = tmp_path / "P1.ome.zarr"
    images = _plate_store(store)
    student = root / "student" / "student.keras"
    df = predict(
        str(store),
        str(root / "ensemble.tsv"),
        str(tmp_path / "pred.zarr"),
        str(tmp_path / "pred.tsv"),
        inference=INFERENCE,
        student=str(student),
        qc_images=2,
    )
    assert list(df.columns) == [
        *SUMMARY_COLUMNS,
        "predictor",
        "qc_ensemble_dice",
        "qc_ensemble_prob_mae",
    ]
    assert (df["n_models"] == 1).all() and (df["predictor"] == "student").all()
    assert df["qc_ensemble_dice"].notna().tolist() == [True, True, False]
    labels = open_labels(tmp_path / "pred.zarr", store)
    from brightseg.ensemble import make_predictor

    model = make_predictor(load_checkpoint(student), 4, SIZE)
    for image_id, image in images.items():
        prob = predict_image(image, [model], tile=SIZE, overlap=8, batch_size=4)[0]
        got = labels.read_label(image_id, "prob").astype(float)
        assert np.abs(got - np.rint(prob * 255)).max() <= 1
        np.testing.assert_array_equal(labels.read_label(image_id, "mask"), prob > 0.5)
    # without a student: the ensemble, and the summary as before
    plain = predict(
        str(store),
        str(root / "ensemble.tsv"),
        str(tmp_path / "ens.zarr"),
        str(tmp_path / "ens.tsv"),
        inference=INFERENCE,
    )
    assert list(plain.columns) == SUMMARY_COLUMNS and (plain["n_models"] == 2).all()


def test_bundle_carries_the_student(setup, tmp_path):
    root, ens, card, *_ = setup
    manifest = B.write_bundle(
        root / "ensemble.tsv",
        tmp_path / "bundle",
        tmp_path / "bundle.tar",
        illumination={
            "radius": 40,
            "unit": "px",
            "mode": "black",
            "method": "fast",
            "percentiles": [1, 99.8],
        },
        inference=INFERENCE,
        tile=SIZE,
        pixel_size_um=0.65,
        student=root / "student" / "student.keras",
        student_card=root / "student" / "card.json",
    )
    assert manifest["student"]["file"] == "student/student.keras"
    assert manifest["student"]["flops_ratio"] == pytest.approx(card["flops"]["ratio"])
    for source in (tmp_path / "bundle", tmp_path / "bundle.tar"):
        student = D.load_student(source, INFERENCE, threshold=0.5)
        assert student.names == ["student"] and len(student.predictors) == 1
    (tmp_path / "bundle" / "student" / "student.keras").write_bytes(b"changed")
    with pytest.raises(InputError, match="student"):
        D.load_student(tmp_path / "bundle", INFERENCE, threshold=0.5)


def test_load_student_refuses_a_bundle_without_one(tmp_path):
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp)).save(
        tmp_path / "m.keras"
    )
    (tmp_path / "e.tsv").write_text(f"path\n{tmp_path}/m.keras\n")
    B.write_bundle(
        tmp_path / "e.tsv",
        tmp_path / "bundle",
        illumination={
            "radius": 40,
            "unit": "px",
            "mode": "black",
            "method": "fast",
            "percentiles": [1, 99.8],
        },
        inference=INFERENCE,
        tile=SIZE,
        pixel_size_um=None,
    )
    with pytest.raises(InputError, match="no student"):
        D.load_student(tmp_path / "bundle", INFERENCE, threshold=0.5)


# --------------------------------------------------------------------------- config


def test_student_config_defaults_and_validation():
    default = EnsembleConfig.from_dict({})
    assert default.distill is False
    student = default.student_config
    assert student == StudentConfig.from_dict({})
    assert student.architecture == "small_unet" and student.min_dice_ratio == 0.99
    assert student.max_flops_ratio == 0.05 and student.on_miss == "warn"
    assert student.unlabelled_plates == ()
    schema = load_schema()["properties"]["ensemble"]["properties"]
    assert schema["distill"]["default"] is False
    with pytest.raises(InputError, match="on_miss"):
        StudentConfig.from_dict({"on_miss": "ignore"})
    with pytest.raises(InputError, match=r"did you mean 'ensemble\.student\.epochs'"):
        EnsembleConfig.from_dict({"student": {"epoch": 3}})
    with pytest.raises(InputError, match="distill"):
        EnsembleConfig.from_dict({"distill": "yes"})
    # the selection rule's params do not change with the distillation keys
    cfg = EnsembleConfig.from_dict({"top_k": 3, "distill": True})
    assert cfg.subset(cfg.SELECT_KEYS) == {"top_k": 3, "stability_window": 1}
    # nor do the distill rule's with the predict rule's qc_images
    assert set(student.as_dict()) - set(student.DISTILL_KEYS) == {"qc_images"}


def test_demo_config_keeps_distill_off():
    import yaml

    raw = yaml.safe_load(open("config/config.yaml"))
    assert Config.from_dict(raw).ensemble.distill is False


# --------------------------------------------------------------------------- benchmark


def test_bench_ensemble_reports_the_student(setup):
    from click.testing import CliRunner

    from brightseg.cli import main

    root, *_ = setup
    r = CliRunner().invoke(
        main,
        [
            "bench", "ensemble", "--n-images", "1", "--shape", "64", "64", "--tile", str(SIZE),
            "--overlap", "8", "--batch-size", "4", "--ensemble", str(root / "ensemble.tsv"),
            "--student", str(root / "student" / "student.keras"),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    last = dict(kv.split("=", 1) for kv in r.output.strip().splitlines()[-1].split())
    assert {"student_patches_per_s", "ensemble_patches_per_s", "speedup"} <= set(last)
    assert int(last["n_models"]) == 2 and int(last["ensemble_flops"]) == 2 * 2 * SIZE * SIZE * 3
    assert float(last["speedup"]) == pytest.approx(
        float(last["student_patches_per_s"]) / float(last["ensemble_patches_per_s"]), rel=1e-3
    )
    assert "student:" in r.output and "patches/s" in r.output
