"""ResNet18 encoder, unet_resnet18, the fpn_<backbone> decoders and FLOP counts."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from brightseg.errors import InputError, MissingDownload
from brightseg.losses import get_loss
from brightseg.models import (
    ARCHITECTURES,
    BACKBONES,
    build_model,
    check_encoder_weights,
    count_flops,
    count_params,
    load_checkpoint,
    set_keras_home,
)
from brightseg.models.flops import layer_macs
from brightseg.models.resnet import IMAGENET_FILE, resnet18, save_torchvision_weights

NEW = [
    "unet_resnet18",
    "fpn_resnet18",
    pytest.param("fpn_vgg16", marks=pytest.mark.slow),
]


def _batch(size, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, 3), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).astype(np.float32)
    y = np.repeat(disc[None, :, :, None], n, axis=0)
    return x, y


def test_registry_has_the_new_architectures():
    assert "resnet18" in BACKBONES
    for b in BACKBONES:
        assert f"unet_{b}" in ARCHITECTURES and f"fpn_{b}" in ARCHITECTURES


def test_resnet18_encoder_matches_torchvision_counts():
    base = resnet18((64, 64, 3))
    trainable = sum(int(np.prod(w.shape)) for w in base.trainable_weights)
    # torchvision resnet18: 11,689,512 parameters, less fc (512 x 1000 + 1000)
    assert trainable == 11_689_512 - 513_000 == 11_176_512
    # Keras also counts the BN moving mean and variance: 2 x 4,800 channels
    assert base.count_params() == 11_176_512 + 9_600
    model = build_model("unet_resnet18", (64, 64, 3), "none", freeze_encoder=True)
    enc = model.get_layer("encoder")
    assert not enc.trainable and enc.count_params() == 11_186_112
    # skips at strides 2, 4, 8, 16, 32 with 64, 64, 128, 256, 512 channels
    shapes = [tuple(t.shape[1:]) for t in enc.outputs]
    assert shapes == [(32, 32, 64), (16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]


def test_resnet18_flops_match_torchvision():
    # torchvision's table: ResNet18 1.81 "GFLOPS" (multiply-adds) at 224 x 224, with fc
    macs = count_flops(resnet18((224, 224, 3))) // 2 + 512 * 1000
    assert abs(macs / 1e9 - 1.81) < 0.01
    conv = keras.layers.Conv2D(8, 3, strides=2, padding="same")
    keras.Sequential([keras.Input((16, 16, 4)), conv])
    assert layer_macs(conv) == 8 * 8 * 3 * 3 * 4 * 8
    up = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")
    keras.Sequential([keras.Input((4, 4, 5)), up])
    assert layer_macs(up) == 4 * 4 * 3 * 3 * 5 * 2
    with pytest.raises(ValueError, match="static input size"):
        count_flops(build_model("small_unet", (None, None, 3), "none"))


@pytest.mark.parametrize("name", NEW)
def test_new_models_build_and_train(name):
    size = 64
    keras.utils.set_random_seed(0)
    model = build_model(name, (size, size, 3), "none", freeze_encoder=True)
    x, y = _batch(size)
    p = keras.ops.convert_to_numpy(model(x, training=False))
    assert p.shape == (2, size, size, 1) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    enc = model.get_layer("encoder")
    frozen = [w.numpy().copy() for w in enc.weights]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"), run_eagerly=True
    )
    losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(frozen, enc.weights, strict=True))
    total, trainable = count_params(model)
    assert total - trainable >= enc.count_params()


def test_fpn_options_and_odd_sized_features():
    # InceptionV3's valid convolutions give odd feature sizes: the pyramid is resized
    model = build_model("fpn_inceptionv3", (96, 96, 3), "none", freeze_encoder=True)
    assert model(np.zeros((1, 96, 96, 3), np.float32)).shape == (1, 96, 96, 1)
    summed = build_model("fpn_resnet18", (64, 64, 3), "none", merge="sum", dropout=0.0)
    concat = build_model("fpn_resnet18", (64, 64, 3), "none")
    assert count_params(summed)[0] < count_params(concat)[0]
    assert "seg_dropout" not in [lyr.name for lyr in summed.layers]
    with pytest.raises(ValueError, match="merge"):
        build_model("fpn_resnet18", (64, 64, 3), "none", merge="max")


@pytest.mark.parametrize("name", ["unet_resnet18", "fpn_resnet18"])
def test_keras_round_trip_safe_mode(tmp_path, name):
    model = build_model(name, (None, None, 3), "none", freeze_encoder=True)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    again = load_checkpoint(path)
    x = np.random.default_rng(3).random((1, 64, 96, 3), dtype=np.float32)
    p0 = keras.ops.convert_to_numpy(model(x, training=False))
    assert p0.shape == (1, 64, 96, 1)
    np.testing.assert_array_equal(p0, keras.ops.convert_to_numpy(loaded(x, training=False)))
    np.testing.assert_array_equal(p0, keras.ops.convert_to_numpy(again(x, training=False)))
    assert not again.get_layer("encoder").trainable


def test_resnet18_weights_from_a_file_and_from_the_keras_cache(tmp_path, monkeypatch):
    first = build_model("unet_resnet18", (64, 64, 3), "none", freeze_encoder=True)
    w0 = first.get_layer("encoder").get_weights()
    # a path: the encoder's own .weights.h5, as for every other backbone
    path = tmp_path / "encoder.weights.h5"
    first.get_layer("encoder").save_weights(path)
    again = build_model("unet_resnet18", (64, 64, 3), path)
    w1 = again.get_layer("encoder").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert not again.get_layer("encoder").trainable  # loaded weights: frozen
    # "imagenet": resnet18_imagenet_notop.weights.h5 in $KERAS_HOME/models
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "elsewhere"))
    home = set_keras_home(tmp_path / "keras")
    base = resnet18((64, 64, 3))
    base.set_weights([np.full(w.shape, i / 100, np.float32) for i, w in enumerate(base.weights)])
    base.save_weights(home / "models" / IMAGENET_FILE)
    check_encoder_weights("fpn_resnet18", "imagenet", allow_download=False)
    model = build_model("fpn_resnet18", (64, 64, 3), "imagenet", allow_download=False)
    got = model.get_layer("encoder").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), got, strict=True))


def test_resnet18_missing_imagenet_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "elsewhere"))
    home = set_keras_home(tmp_path / "kh")
    for call in (
        lambda: build_model("unet_resnet18", (64, 64, 3), "imagenet", allow_download=True),
        lambda: check_encoder_weights("fpn_resnet18", "imagenet", allow_download=True),
    ):
        with pytest.raises(MissingDownload) as err:
            call()
        msg = str(err.value)
        assert IMAGENET_FILE in msg and str(home / "models") in msg
        assert "Place the file" in msg and "save_torchvision_weights" in msg
        assert "there is no download for it" in msg


def test_torchvision_state_dict_conversion(tmp_path, monkeypatch):
    """torchvision names and layouts -> our layers (conv kernels transposed to HWIO)."""
    rng = np.random.default_rng(5)
    ref = resnet18((224, 224, 3))
    sd = {}
    for layer in ref.layers:
        w = layer.get_weights()
        if not w:
            continue
        name = layer.name
        if name.startswith("conv1_"):
            prefix = "conv1" if name.endswith("conv") else "bn1"
        else:
            stage, block, part = int(name[4]), int(name[11]), name[13:]
            t = f"layer{stage - 1}.{block - 1}"
            prefix = {
                "1_conv": f"{t}.conv1",
                "1_bn": f"{t}.bn1",
                "2_conv": f"{t}.conv2",
                "2_bn": f"{t}.bn2",
                "0_conv": f"{t}.downsample.0",
                "0_bn": f"{t}.downsample.1",
            }[part]
        if len(w) == 1:
            sd[f"{prefix}.weight"] = rng.standard_normal(w[0].shape[::-1]).transpose(0, 1, 3, 2)
        else:
            for key in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{prefix}.{key}"] = rng.random(w[0].shape)
            sd[f"{prefix}.num_batches_tracked"] = np.array(1)
    sd["fc.weight"], sd["fc.bias"] = np.zeros((1000, 512)), np.zeros(1000)
    assert len([k for k in sd if k.endswith("weight") and sd[k].ndim == 4]) == 20
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    written = save_torchvision_weights(sd)
    assert written == tmp_path / "keras" / "models" / IMAGENET_FILE
    model = build_model("unet_resnet18", (64, 64, 3), "imagenet", allow_download=False)
    enc = model.get_layer("encoder")
    np.testing.assert_array_equal(
        enc.get_layer("conv1_conv").get_weights()[0],
        sd["conv1.weight"].transpose(2, 3, 1, 0).astype(np.float32),
    )
    bn = enc.get_layer("conv4_block1_0_bn").get_weights()
    np.testing.assert_allclose(bn[3], sd["layer3.0.downsample.1.running_var"], rtol=1e-6)
    bad = dict(sd)
    del bad["layer2.0.conv1.weight"]
    with pytest.raises(InputError, match=r"layer2\.0\.conv1\.weight"):
        save_torchvision_weights(bad, tmp_path / "x.weights.h5")
    with pytest.raises(InputError, match="weights.h5"):
        save_torchvision_weights(sd, tmp_path / "x.h5")
