"""Training: mining weights, metrics, patch store pipeline, train_model end to end."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pandas as pd
import pytest
import zarr

from brightseg.bench.train import bench_train
from brightseg.errors import InputError
from brightseg.models import load_checkpoint
from brightseg.train import (
    HISTORY_COLUMNS,
    ConfusionMetric,
    PatchData,
    _MiningCallback,
    _Sampler,
    make_dataset,
    mining_weights,
    train_model,
    validation_order,
)


@pytest.fixture(autouse=True)
def _restore_policy():
    old = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(old)


def make_store(tmp_path, n=12, size=32, n_val=3, seed=0):
    """Tiny patch store: bright blobs are the foreground."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    masks = (grey > 180).astype(np.uint8)
    store = tmp_path / "patches.zarr"
    g = zarr.open_group(str(store), mode="w")
    g.create_array("images", shape=(n, size, size, 3), chunks=(2, size, size, 3), dtype="uint8")[
        ...
    ] = np.repeat(grey[..., None], 3, axis=-1)
    g.create_array("masks", shape=(n, size, size), chunks=(2, size, size), dtype="uint8")[...] = (
        masks
    )
    manifest = tmp_path / "manifest.parquet"
    split = ["train"] * (n - n_val) + ["val"] * n_val
    pd.DataFrame(
        {
            "index": np.arange(n),
            "split": split,
            "foreground_fraction": masks.reshape(n, -1).mean(axis=1),
            "source_image": [f"im{i}" for i in range(n)],
        }
    ).to_parquet(manifest, index=False)
    return store, manifest, grey, masks


# --------------------------------------------------------------------------- mining
def test_mining_weights_follow_loss():
    losses = np.array([1.0, 1.0, 1.0, 5.0])
    fg = np.array([0.5, 0.5, 0.5, 0.5])  # all equal -> all "rare", same factor
    w = mining_weights(losses, fg, mix=0.5)
    assert w.sum() == pytest.approx(1.0)
    # hand value: 0.5 * 5/8 + 0.5/4 = 0.4375 for the hard sample
    assert w[3] == pytest.approx(0.4375)
    assert w[0] == pytest.approx(0.5 * 1 / 8 + 0.5 / 4)
    # more hardness weight -> more mass on the hard sample; mix=1 is uniform
    assert mining_weights(losses, fg, mix=0.2)[3] > w[3]
    np.testing.assert_allclose(mining_weights(losses, fg, mix=1.0), 0.25)
    # nothing starves
    assert mining_weights(np.array([0.0, 0.0, 10.0]), np.ones(3), mix=0.3).min() >= 0.1 - 1e-12


def test_mining_weights_rare_oversampling():
    losses = np.ones(5)
    fg = np.array([0.01, 0.3, 0.4, 0.5, 0.6])
    w = mining_weights(losses, fg, mix=0.5, rare_quantile=0.2, rare_factor=2.0)
    # patch 0 is the only one at/below the 20 % quantile: 2 / (2 + 4)
    assert w[0] == pytest.approx(2 / 6)
    np.testing.assert_allclose(w[1:], 1 / 6)
    assert mining_weights(losses, fg, rare_factor=1.0) == pytest.approx(np.full(5, 0.2))


def test_mining_weights_degenerate_inputs():
    w = mining_weights([0.0, 0.0], [0.1, 0.2], rare_factor=1.0)
    np.testing.assert_allclose(w, 0.5)
    w = mining_weights([1.0, np.nan], [0.1, 0.2], rare_factor=1.0, mix=0.0)
    np.testing.assert_allclose(w, 0.5)  # NaN treated as the largest finite loss
    with pytest.raises(ValueError):
        mining_weights([1.0], [0.1, 0.2])


# --------------------------------------------------------------------------- metrics
def test_confusion_metric_hand_counts():
    y = np.array([1, 1, 0, 0, 1], np.float32).reshape(1, 1, 5, 1)
    p = np.array([0.9, 0.2, 0.7, 0.1, 0.5], np.float32).reshape(1, 1, 5, 1)
    # threshold 0.5: TP=2 (0.9, 0.5), FN=1, FP=1, TN=1
    expected = {"f1": 4 / 6, "iou": 2 / 4, "precision": 2 / 3, "recall": 2 / 3, "accuracy": 3 / 5}
    for kind, value in expected.items():
        m = ConfusionMetric(kind)
        m.update_state(y[:, :, :2], p[:, :, :2])  # pooled over two updates
        m.update_state(y[:, :, 2:], p[:, :, 2:])
        assert float(m.result()) == pytest.approx(value, rel=1e-6), kind
    m = ConfusionMetric("f1")
    m.update_state(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)))
    assert float(m.result()) == 1.0


# --------------------------------------------------------------------------- data
def test_patch_data_read_and_validation(tmp_path):
    store, manifest, grey, masks = make_store(tmp_path)
    for in_memory in (True, False):
        data = PatchData(store, manifest, in_memory=in_memory)
        assert data.train_index.tolist() == list(range(9))
        x, y = data.read(np.array([[5, 0, 0], [2, 3, 4]]), 16)
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.shape == (2, 16, 16, 3) and y.shape == (2, 16, 16, 1)
        np.testing.assert_allclose(x[0, :, :, 1], grey[5, :16, :16] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y[1, :, :, 0], masks[2, 3:19, 4:20])
    bad = tmp_path / "bad.parquet"
    pd.DataFrame(
        {"index": [0, 99], "split": ["train", "val"], "foreground_fraction": [0, 0]}
    ).to_parquet(bad)
    with pytest.raises(InputError, match="outside"):
        PatchData(store, bad)
    pd.DataFrame({"index": [0], "split": ["train"]}).to_parquet(bad)
    with pytest.raises(InputError, match="foreground_fraction"):
        PatchData(store, bad)
    pd.DataFrame(
        {"index": [0, 1], "split": ["train", "train"], "foreground_fraction": [0, 0]}
    ).to_parquet(bad)
    with pytest.raises(InputError, match="no patches with split 'val'"):
        PatchData(store, bad)
    with pytest.raises(InputError, match="does not exist"):
        PatchData(tmp_path / "nope.zarr", manifest)


def test_sampler_and_dataset(tmp_path):
    store, manifest, grey, _ = make_store(tmp_path)
    data = PatchData(store, manifest)
    s1 = _Sampler(data, 4, 2, 32, seed=7, wait=False)
    s2 = _Sampler(data, 4, 2, 32, seed=7, wait=False)
    e0 = s1.epoch_specs(0, None)
    np.testing.assert_array_equal(e0, s2.epoch_specs(0, None))
    assert not np.array_equal(e0, s1.epoch_specs(1, None))
    assert e0.shape == (2, 4, 3)
    assert (np.diff(e0[:, :, 0], axis=1) >= 0).all()  # sorted within each batch
    assert len(set(e0[:, :, 0].ravel())) == 8  # a permutation: no repeats within an epoch
    # with weights, all mass on one sample
    w = np.zeros(9)
    w[4] = 1.0
    assert (s1.epoch_specs(1, w)[:, :, 0] == 4).all()
    # the tf.data pipeline delivers exactly what the sampler asked for
    ds = make_dataset(data, s1, 32)
    x, y = next(iter(ds))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(x.numpy()[:, :, :, 0], grey[e0[0, :, 0]] / 255.0, rtol=1e-6)
    s1.close()


def test_validation_order_is_stratified_originals_first_and_seeded():
    rows = []
    for src, n_patches in (("a", 3), ("b", 1), ("c", 2)):
        for patch in range(n_patches):
            for variant in range(3):
                rows.append({"source_image": src, "patch": patch, "variant": variant})
    df = pd.DataFrame(rows).assign(index=lambda d: np.arange(len(d)), split="val")
    df = pd.concat([df, pd.DataFrame({"index": [99], "split": ["train"], "variant": [0]})])
    order = validation_order(df, seed=3)
    by_index = df.set_index("index")
    assert sorted(order) == sorted(df.loc[df["split"] == "val", "index"])  # each val patch once
    variants = by_index.loc[order, "variant"].to_numpy()
    assert (variants[:6] == 0).all() and (variants[6:] != 0).all()  # originals first
    # the first three batches of one: one original of each source (not three of source a)
    assert set(by_index.loc[order[:3], "source_image"]) == {"a", "b", "c"}
    np.testing.assert_array_equal(order, validation_order(df, seed=3))
    assert not np.array_equal(order, validation_order(df, seed=4))
    # without variant/source columns: every validation patch, in a seeded order
    plain = pd.DataFrame({"index": np.arange(5), "split": ["val"] * 5})
    assert sorted(validation_order(plain, seed=0)) == list(range(5))


def test_mining_budget_scores_a_seeded_subset_and_keeps_the_other_losses(tmp_path):
    store, manifest, _, _ = make_store(tmp_path)  # 9 training patches
    data = PatchData(store, manifest)
    sampler = _Sampler(data, 2, 1, 32, seed=0, wait=True)
    calls = []

    def loss_fn(y, p):  # per-sample loss: the mean target, so each patch has its own value
        calls.append(len(y))
        return np.asarray(y).reshape(len(y), -1).mean(axis=1)

    class _Model:
        def predict_on_batch(self, x):
            return np.zeros(x.shape[:3] + (1,), np.float32)

    cb = _MiningCallback(data, sampler, loss_fn, 32, 2, {}, budget=4, seed=5)
    cb.set_model(_Model())
    first = cb.scored_positions(0)
    assert first.size == 4 and len(set(first)) == 4
    np.testing.assert_array_equal(first, cb.scored_positions(0))  # seeded
    cb.on_epoch_end(0)
    assert sum(calls) == 4  # the budget, not every patch
    assert np.isfinite(cb.losses).sum() == 4 and cb.last_weights.size == 9
    cb.on_epoch_end(1)
    assert np.isfinite(cb.losses).sum() >= 4 and sum(calls) == 8
    assert 1 in sampler.weights and 2 in sampler.weights
    everyone = _MiningCallback(data, sampler, loss_fn, 32, 2, {}, budget=None)
    assert everyone.scored_positions(0).size == 9
    sampler.close()


def test_loss_kwargs_reach_the_loss_and_bad_ones_are_input_errors():
    from brightseg.losses import get_loss

    assert get_loss("bce_dice", fg_weight=1.0).fg_weight == 1.0
    with pytest.raises(InputError, match="bad loss_kwargs"):
        get_loss("bce_dice", fg_wieght=1.0)


def test_class_weighted_bce_inflates_probabilities():
    """Why the 10:1 BCE of the paper marks too much foreground (issue 12).

    For pixels that are foreground with frequency q, the constant prediction p minimising
    w q (-log p) + (1 - q) (-log(1 - p)) is w q / (w q + 1 - q): q = 0.1 (a faint halo, a
    gap between cells) gives 0.53 with w = 10 (above 0.5: marked as cell) and 0.1 with w = 1.
    """
    from brightseg.losses import bce_dice_per_sample

    q = 0.1
    y = np.zeros((1, 10, 10, 1), np.float32)
    y.reshape(-1)[:10] = 1.0  # 10 % foreground
    grid = np.linspace(0.01, 0.99, 99)

    def best_p(w):
        # the Dice term is the same for both weights; compare the BCE parts alone
        losses = [
            float(bce_dice_per_sample(y, np.full_like(y, p), fg_weight=w)[0])
            - float(bce_dice_per_sample(y, np.full_like(y, p), fg_weight=0.0, bg_weight=0.0)[0])
            for p in grid
        ]
        return grid[int(np.argmin(losses))]

    assert best_p(10.0) == pytest.approx(10 * q / (10 * q + 1 - q), abs=0.011)
    assert best_p(10.0) > 0.5
    assert best_p(1.0) == pytest.approx(q, abs=0.011)


# --------------------------------------------------------------------------- end to end
def test_train_model_end_to_end(tmp_path, caplog, capfd):
    store, manifest, _, _ = make_store(tmp_path)
    out = tmp_path / "models" / "small_unet" / "bce_dice"
    out.mkdir(parents=True)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "epoch_09.keras").write_text("stale")
    kwargs = dict(
        spec={
            "architecture": "small_unet",
            "loss": "bce_dice",
            "hard_mining": True,
            "model_kwargs": {"base_filters": 4},
        },
        training=dict(
            epochs=2,
            batch_size=2,
            steps_per_epoch=2,
            learning_rate=1e-3,
            precision="float32",
            encoder_weights="none",
        ),
    )
    with caplog.at_level(logging.INFO, logger="brightseg"):
        card = train_model(store, manifest, out, **kwargs)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["card.json", "checkpoints", "history.csv", "tensorboard"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_01.keras",
        "epoch_02.keras",
    ]
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == HISTORY_COLUMNS
    assert hist["epoch"].tolist() == [1, 2]
    assert hist["lr"].iloc[0] == pytest.approx(1e-3)
    assert (
        hist[["val_f1", "val_iou", "val_precision", "val_recall", "val_accuracy"]]
        .notna()
        .all()
        .all()
    )
    on_disk = json.loads((out / "card.json").read_text())
    assert on_disk == card
    assert card["epochs_run"] == 2
    assert card["best_epoch"] in (1, 2)
    assert card["params"]["trainable"] < card["params"]["total"]  # BN moving stats
    assert len(card["data"]["manifest_sha256"]) == 64
    assert set(card["versions"]) == {"brightseg", "tensorflow", "keras", "numpy"}
    assert card["precision_policy"] == "float32"
    assert "100% (epoch 2/2)" in caplog.text
    assert "hard-example mining" in caplog.text
    model = load_checkpoint(out / "checkpoints" / "epoch_02.keras")
    x = np.zeros((1, 32, 32, 3), np.float32)
    assert model(x, training=False).shape == (1, 32, 32, 1)
    # deterministic: the same run again gives the same history
    out2 = tmp_path / "again"
    train_model(store, manifest, out2, **kwargs)
    pd.testing.assert_frame_equal(hist, pd.read_csv(out2 / "history.csv"))
    # op determinism made TF 2.21 rewrite the parallel map and log this on stderr
    assert "use_unbounded_threadpool" not in capfd.readouterr().err


def test_early_stopping_stops(tmp_path):
    store, manifest, _, _ = make_store(tmp_path)
    out = tmp_path / "es"
    # min_delta=1 makes every epoch after the first a non-improvement
    card = train_model(
        store,
        manifest,
        out,
        spec={
            "architecture": "small_unet",
            "loss": "focal_dice_boundary",
            "model_kwargs": {"base_filters": 4},
        },
        training=dict(
            epochs=6,
            batch_size=2,
            steps_per_epoch=1,
            patience=1,
            precision="float32",
            encoder_weights="none",
        ),
        min_delta=1.0,
        input_size=16,
        run_eagerly=True,
    )
    assert card["epochs_run"] == 2
    assert card["stopped_early"]
    assert sorted(p.name for p in out.glob("checkpoints/epoch_*.keras")) == [
        "epoch_01.keras",
        "epoch_02.keras",
    ]


def test_train_model_bad_config(tmp_path):
    store, manifest, _, _ = make_store(tmp_path)
    with pytest.raises(InputError, match="unknown architecture"):
        train_model(
            store,
            manifest,
            tmp_path / "o",
            spec={"architecture": "nope", "loss": "bce_dice"},
            training={},
        )
    with pytest.raises(InputError, match="exceeds the patch size"):
        train_model(
            store,
            manifest,
            tmp_path / "o",
            spec={"architecture": "small_unet", "loss": "bce_dice"},
            training={"precision": "float32", "encoder_weights": "none"},
            input_size=64,
        )
    assert not (tmp_path / "o" / "card.json").exists()


def test_bench_train_tiny():
    df = bench_train(
        architectures=("small_unet",),
        precisions=("float32",),
        batch=2,
        size=32,
        steps=1,
        pipeline_batches=3,
    )
    assert len(df) == 1
    row = df.iloc[0]
    assert row["step_s"] > 0 and row["pipeline_batches_per_s"] > 0
    assert row["pipeline_over_model"] == pytest.approx(
        row["pipeline_batches_per_s"] * row["step_s"]
    )


def test_checkpoint_archive_is_byte_identical_and_loads(tmp_path):
    import time

    from brightseg.models import build_model, load_checkpoint
    from brightseg.train import canonicalize_keras_archive

    model = build_model("small_unet", input_shape=(32, 32, 3), base_filters=4)
    paths = []
    for i in range(2):
        p = tmp_path / f"m{i}.keras"
        model.save(p)
        canonicalize_keras_archive(p)
        paths.append(p)
        time.sleep(1.1)  # a different save time
    assert paths[0].read_bytes() == paths[1].read_bytes()
    x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(
        np.asarray(load_checkpoint(paths[0])(x)), np.asarray(model(x, training=False))
    )


def test_lr_schedules_and_a_cosine_run(tmp_path):
    from brightseg.config import TrainingConfig
    from brightseg.train import lr_schedule

    cos = lr_schedule("cosine", 1e-2, 100, decay_steps=10, decay_rate=0.5)
    assert float(cos(0)) == pytest.approx(1e-2)
    assert float(cos(50)) == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5), rel=1e-4)
    assert float(cos(100)) == pytest.approx(1e-4) and float(cos(500)) == pytest.approx(1e-4)
    exp = lr_schedule("exponential", 1e-2, 100, decay_steps=10, decay_rate=0.5)
    assert float(exp(9)) == pytest.approx(1e-2) and float(exp(25)) == pytest.approx(2.5e-3)
    with pytest.raises(InputError, match="lr_schedule"):
        lr_schedule("linear", 1e-2, 100, 10, 0.5)
    # the train rule's params name the schedule only when it is not the default
    assert "lr_schedule" not in TrainingConfig.from_dict({}).train_params()
    assert TrainingConfig.from_dict({"lr_schedule": "cosine"}).train_params()["lr_schedule"] == (
        "cosine"
    )
    store, manifest, _, _ = make_store(tmp_path)
    card = train_model(
        store,
        manifest,
        tmp_path / "cos",
        spec={
            "architecture": "small_unet",
            "loss": "bce_dice",
            "model_kwargs": {"base_filters": 4},
        },
        training=dict(
            epochs=3,
            batch_size=2,
            steps_per_epoch=2,
            learning_rate=1e-2,
            lr_schedule="cosine",
            patience=5,
            precision="float32",
            encoder_weights="none",
        ),
        input_size=16,
        run_eagerly=True,
    )
    assert card["config"]["lr_schedule"] == "cosine"
    lrs = pd.read_csv(tmp_path / "cos" / "history.csv")["lr"].to_numpy()
    assert (np.diff(lrs) < 0).all() and lrs[-1] == pytest.approx(1e-4, rel=1e-3)
