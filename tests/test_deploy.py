"""TFLite export (brightseg.deploy): resizing, float16/int8 conversion, the Dice check."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from brightseg.deploy import (
    ExportCheckFailed,
    TFLiteModel,
    check_passed,
    export_tflite,
    fit_patches,
    pooled_dice,
    training_patches,
    with_input_size,
)
from brightseg.errors import InputError
from brightseg.models import build_model


def _disks(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey patches with 1-3 bright disks on a noisy background, and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        m = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(4, size - 4, 2)
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(3, 8) ** 2
        images[i] = np.clip(0.3 + 0.4 * m + rng.normal(0, 0.03, m.shape), 0, 1)
        masks[i] = m
    return images, masks


@pytest.fixture(scope="module")
def tiny():
    """A small_unet (4 filters, depth 2, unknown input size: a ResizeLike head) fitted
    to the disks until its outputs are decisive (40 steps; a low BatchNormalization
    momentum so that the moving statistics follow)."""
    keras.utils.set_random_seed(0)
    model = build_model("small_unet", (None, None, 3), "none", base_filters=4, depth=2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    x, y = _disks(64, 32, 0)
    x = np.tile(np.repeat(x[..., None], 3, -1), (10, 1, 1, 1))
    y = np.tile(y[..., None], (10, 1, 1, 1)).astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model


def test_with_input_size_keeps_outputs():
    keras.utils.set_random_seed(1)
    model = build_model("small_unet", (64, 64, 3), "none", base_filters=4, depth=2)
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    big = with_input_size(model, 96)
    assert big.input_shape == (None, 96, 96, 3)
    back = with_input_size(big, (64, 64))
    np.testing.assert_array_equal(model.predict(x, verbose=0), back.predict(x, verbose=0))
    assert with_input_size(model, 64) is model


def test_export_float16_int8_pass_the_dice_check(tiny, tmp_path):
    val, _ = _disks(6, 32, 1)
    rep, _ = _disks(12, 32, 2)
    table = export_tflite(
        tiny,
        tmp_path,
        stem="tiny",
        val_patches=val,
        representative=rep,
        size=32,
        forms=("float16", "int8"),
        repeats=2,
    )
    assert list(table["form"]) == ["keras", "float16", "int8"]
    assert table["passed"].all() and (table["dice_vs_keras"] >= 0.99).all()
    assert (table["latency_ms"] > 0).all() and (table["cpu_ms"] >= 0).all()
    check_passed(table)
    sizes = dict(zip(table["form"], table["size_mb"], strict=True))
    assert sizes["int8"] < sizes["float16"]
    for form in ("float16", "int8"):
        lite = TFLiteModel(tmp_path / f"tiny_{form}.tflite")
        assert lite.shape == (32, 32, 3)
        assert lite.input["dtype"] == np.float32 and lite.output["dtype"] == np.float32
        prob = lite.invoke(np.repeat(val[0][..., None], 3, -1))
        assert prob.shape == (32, 32) and 0 <= prob.min() and prob.max() <= 1
    written = pd.read_csv(tmp_path / "tiny_tflite.tsv", sep="\t")
    assert list(written["form"]) == ["keras", "float16", "int8"]
    assert "| form" in (tmp_path / "tiny_tflite.md").read_text()
    # a stricter check than the forms reach fails with the forms named
    table.loc[table["form"] == "int8", "dice_vs_keras"] = 0.95
    with pytest.raises(ExportCheckFailed, match="tiny int8 \\(Dice 0.9500\\)"):
        check_passed(table)


def test_export_rejects_unknown_form(tiny, tmp_path):
    val, _ = _disks(2, 32, 1)
    with pytest.raises(InputError, match="unknown TFLite forms"):
        export_tflite(
            tiny, tmp_path, stem="t", val_patches=val, representative=val, forms=("int4",)
        )


def test_fit_patches_pads_and_crops():
    patches = np.arange(2 * 20 * 24, dtype=np.float32).reshape(2, 20, 24) / 1000
    x, valid = fit_patches(patches, 32)
    assert x.shape == (2, 32, 32, 3) and valid.sum() == 20 * 24
    np.testing.assert_array_equal(x[:, :20, :24, 1], patches)
    x, valid = fit_patches(patches, 16)
    assert x.shape == (2, 16, 16, 3) and valid.all()
    np.testing.assert_array_equal(x[..., 0], patches[:, 2:18, 4:20])


def test_pooled_dice():
    a = np.zeros((2, 4, 4), bool)
    assert pooled_dice(a, a) == 1.0
    b = a.copy()
    a[0, :2] = True
    b[0, :1] = True
    assert pooled_dice(a, b) == pytest.approx(2 * 4 / (8 + 4))


def test_training_patches(tmp_path):
    import zarr

    n = 10
    root = zarr.open_group(str(tmp_path / "patches.zarr"), mode="w")
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[..., :] = (np.arange(n, dtype=np.uint8) * 20)[:, None, None, None]
    root.create_array("images", data=images)
    root.create_array("masks", data=np.zeros((n, 8, 8), np.uint8))
    manifest = pd.DataFrame(
        {
            "index": np.arange(n),
            "split": ["train"] * 6 + ["val"] * 4,
            "variant": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        }
    )
    manifest.to_parquet(tmp_path / "manifest.parquet")
    val, rep = training_patches(
        tmp_path / "patches.zarr", tmp_path / "manifest.parquet", n_representative=4
    )
    # validation: the un-augmented val patches 6 and 8; representative: 4 train patches
    np.testing.assert_allclose(val[:, 0, 0], np.array([120, 160]) / 255, rtol=1e-6)
    assert rep.shape == (4, 8, 8) and set(np.round(rep[:, 0, 0] * 255)) <= {0, 20, 40, 60, 80, 100}
    manifest.assign(split="train").to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(InputError, match="both the 'train' and the 'val' split"):
        training_patches(tmp_path / "patches.zarr", tmp_path / "manifest.parquet")


def test_cli_export_writes_table_and_fails_below_min_dice(tiny, tmp_path):
    import zarr
    from click.testing import CliRunner

    from brightseg.cli import main

    x, y = _disks(8, 32, 3)
    root = zarr.open_group(str(tmp_path / "patches.zarr"), mode="w")
    root.create_array("images", data=np.repeat((x * 255).astype(np.uint8)[..., None], 3, -1))
    root.create_array("masks", data=y.astype(np.uint8))
    pd.DataFrame({"index": np.arange(8), "split": ["train"] * 5 + ["val"] * 3}).to_parquet(
        tmp_path / "manifest.parquet"
    )
    ckpt = tmp_path / "tiny.keras"
    with_input_size(tiny, 32).save(ckpt)
    r = CliRunner().invoke(
        main,
        [
            "export-tflite",
            str(ckpt),
            "--out",
            str(tmp_path / "out"),
            "--patches",
            str(tmp_path / "patches.zarr"),
            "--manifest",
            str(tmp_path / "manifest.parquet"),
            "--form",
            "float16",
            "--repeats",
            "1",
            "--min-dice",
            "1.01",  # unreachable: the command must fail after writing the table
        ],
    )
    assert r.exit_code == 1, r.output
    assert "Dice < 1.01 for tiny float16" in r.output
    table = pd.read_csv(tmp_path / "out" / "tflite.tsv", sep="\t")
    assert list(table["form"]) == ["keras", "float16"]
    assert table.loc[1, "dice_vs_keras"] >= 0.99 and table.loc[0, "file"] == "tiny.keras"
    assert table.loc[0, "input"] == "32x32" and (tmp_path / "out" / "tiny_float16.tflite").is_file()
