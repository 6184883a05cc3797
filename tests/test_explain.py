"""Grad-CAM maps (brightseg.explain): shape, range, localisation, layer names, files."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from brightseg.errors import InputError
from brightseg.explain import default_layer, explain_images, feature_layers, gradcam
from brightseg.models import ImageNetPreprocess, build_model


def _bright_detector(size: int = 64) -> keras.Model:
    """A hand-set segmenter: foreground where the image is bright, seen at 1/4 resolution.

    ``feat`` has two channels: channel 0 is the brightness above 0.5 (ReLU), channel 1
    a constant that does not depend on the image.  The 1/4-resolution ``down`` map is
    upsampled and thresholded by a sigmoid, so only bright regions drive the output.
    """
    inputs = keras.Input((size, size, 3), name="image")
    x = ImageNetPreprocess("identity", name="preprocess")(inputs)
    feat = layers.Conv2D(2, 1, activation="relu", name="feat")(x)
    down = layers.AveragePooling2D(4, name="down")(feat)
    up = layers.UpSampling2D(4, interpolation="bilinear", name="up")(down)
    out = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(up)
    model = keras.Model(inputs, out, name="bright_detector")
    model.get_layer("feat").set_weights(
        [
            np.array([[[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]], np.float32),
            np.array([-0.5, 1.0], np.float32),
        ]
    )
    model.get_layer("mask").set_weights(
        [np.array([[[[40.0], [0.0]]]], np.float32), np.array([-4.0], np.float32)]
    )
    return model


def _scene(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((size, size), 0.3, np.float32)
    square = np.zeros((size, size), bool)
    square[8:28, 36:56] = True
    image[square] = 0.9
    return image, square


def test_gradcam_is_high_where_the_output_comes_from():
    model = _bright_detector()
    image, square = _scene()
    cam, prob, used = gradcam(model, image, layer="down")
    assert used == "down"
    assert cam.shape == image.shape and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    assert cam.std() > 0.05  # not constant
    assert (prob > 0.5)[square].mean() > 0.9 and (prob > 0.5)[~square].mean() < 0.05
    # the square (plus the blur of the 1/4-resolution map) drives the output: the map's
    # mass is there, not in the far background
    far = np.ones_like(square)
    far[:36, 28:] = False
    assert cam[square].mean() > 0.5
    assert cam[far].max() < 0.05
    assert cam[square].sum() / cam.sum() > 0.6


def test_gradcam_without_evidence_is_zero():
    # nothing bright: no predicted foreground, the target falls back to the whole image,
    # and the only channel that matters is zero everywhere
    model = _bright_detector()
    cam, prob, _ = gradcam(model, np.full((64, 64), 0.3, np.float32), layer="down")
    assert prob.max() < 0.5
    assert not cam.any()


def test_gradcam_bad_layer_lists_valid_names():
    model = _bright_detector()
    image, _ = _scene()
    with pytest.raises(InputError, match="no feature layer 'nope'.*feat, down, up"):
        gradcam(model, image, layer="nope")


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("small_unet", {"base_filters": 4, "depth": 2}, "bridge_c2_relu"),
        ("unet_mobilenetv2", {}, "encoder/out_relu"),
    ],
)
def test_gradcam_on_project_architectures(name, kwargs, expected):
    keras.utils.set_random_seed(0)
    model = build_model(name, (64, 64, 3), "none", **kwargs)
    assert default_layer(model) == expected
    names = [f.name for f in feature_layers(model)]
    assert expected in names and "mask" not in names
    rng = np.random.default_rng(0)
    image = rng.random((70, 50), dtype=np.float32)  # not a multiple of 32: padded, cropped
    cam, prob, used = gradcam(model, image)
    assert used == expected
    assert cam.shape == prob.shape == image.shape
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    assert np.isfinite(cam).all() and cam.std() > 0


def test_gradcam_rejects_a_bad_region_and_image():
    model = _bright_detector()
    image, _ = _scene()
    with pytest.raises(InputError, match="region shape"):
        gradcam(model, image, layer="feat", region=np.ones((3, 3), bool))
    with pytest.raises(InputError, match="2-D grey image"):
        gradcam(model, np.zeros((64, 64, 3), np.float32))


def test_explain_images_writes_overlay_and_map(tmp_path):
    model = _bright_detector()
    image, square = _scene()
    rows = explain_images(
        [image],
        ["img1"],
        [model],
        ["bright/bce/e01"],
        tmp_path,
        layer="down",
        pixel_size_um=0.65,
    )
    assert [r["png"] for r in rows] == ["img1_gradcam_bright_bce_e01.png"]
    png, npy = tmp_path / rows[0]["png"], tmp_path / rows[0]["npy"]
    assert png.stat().st_size > 1000
    cam = np.load(npy)
    assert cam.shape == image.shape and cam[square].mean() > 0.5
    assert rows[0]["cam_in_mask"] > 0.6
    assert rows[0]["foreground_fraction"] == pytest.approx(square.mean(), abs=0.02)


def test_cli_explain_and_bad_layer(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from brightseg.cli import main

    keras.utils.set_random_seed(0)
    model = build_model("small_unet", (32, 32, 3), "none", base_filters=4, depth=2)
    ckpt = tmp_path / "m" / "tiny" / "bce" / "checkpoints" / "epoch_03.keras"
    ckpt.parent.mkdir(parents=True)
    model.save(ckpt)
    image, _ = _scene(48)
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "img1.png")
    runner = CliRunner()
    r = runner.invoke(
        main,
        ["explain", str(tmp_path / "img1.png"), "--model", str(ckpt), "--out", str(tmp_path / "o")],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "img1_gradcam_tiny_bce_e03.png").is_file()
    cam = np.load(tmp_path / "o" / "img1_gradcam_tiny_bce_e03.npy")
    assert cam.shape == (48, 48)
    assert "bridge_c2_relu" in (tmp_path / "o" / "explain.tsv").read_text()
    r = runner.invoke(
        main, ["explain", "x.png", "--model", str(ckpt), "--out", "o", "--list-layers"]
    )
    assert r.exit_code == 0 and "tiny/bce/e03 (default bridge_c2_relu)" in r.output
    r = runner.invoke(
        main,
        [
            "explain",
            str(tmp_path / "img1.png"),
            "--model",
            str(ckpt),
            "--out",
            str(tmp_path / "o2"),
            "--layer",
            "nope",
        ],
    )
    assert r.exit_code == 2
    assert "no feature layer 'nope'" in r.output and "enc0_c1_conv" in r.output


def test_explain_config_block():
    from pathlib import Path

    import yaml

    from brightseg.config import Config

    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/config.yaml").read_text())
    cfg = Config.from_dict(demo)
    assert cfg.explain.enabled is False and cfg.explain.layer is None and cfg.explain.images == 2
    cfg = Config.from_dict({**demo, "explain": {"enabled": True, "layer": "enc3_c2_relu"}})
    assert cfg.explain.enabled and cfg.explain.layer == "enc3_c2_relu"
    assert cfg.explain.threshold == 0.5  # the schema's default
    with pytest.raises(InputError, match="explain.images"):
        Config.from_dict({**demo, "explain": {"images": 0}})
    with pytest.raises(InputError, match="did you mean 'explain.layer'"):
        Config.from_dict({**demo, "explain": {"layers": "x"}})


def test_explain_at_a_working_pixel_size(tmp_path):
    """Models trained at a working pixel size see the resampled image; the map and mask
    come back on the image's own grid; the table's column reaches the caller."""
    import pandas as pd

    from brightseg.explain import load_voting_models

    model = _bright_detector()
    image, square = _scene(128)
    rows = explain_images([image], ["img1"], [model], ["bright/bce/e01"], tmp_path,
                          layer="down", pixel_size_um=0.65, working_pixel_size_um=1.3)  # fmt: skip
    cam = np.load(tmp_path / rows[0]["npy"])
    assert cam.shape == image.shape and cam[square].mean() > 0.5
    assert rows[0]["foreground_fraction"] == pytest.approx(square.mean(), abs=0.03)
    with pytest.raises(InputError, match="pixel size"):
        explain_images([image], ["x"], [model], ["m"], tmp_path / "x", working_pixel_size_um=1.3)
    ckpt = tmp_path / "ckpt.keras"
    model.save(ckpt)
    table = pd.DataFrame({"path": [str(ckpt)], "working_pixel_size_um": [1.3]})
    table.to_csv(tmp_path / "ensemble.tsv", sep="\t", index=False)
    names, models, working = load_voting_models(tmp_path / "ensemble.tsv", with_working=True)
    assert working == 1.3 and len(models) == 1
    assert load_voting_models(ckpt, with_working=True)[2] is None
