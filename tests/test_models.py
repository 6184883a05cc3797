"""Model builders: shapes, dtypes, frozen encoders, serialisation, weights, precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from brightseg.errors import InputError, MissingDownload
from brightseg.losses import get_loss
from brightseg.models import (
    ARCHITECTURES,
    PAPER_PARAMS,
    ImageNetPreprocess,
    build_model,
    check_encoder_weights,
    count_params,
    cpu_supports_bf16,
    imagenet_weights_file,
    load_checkpoint,
    param_table,
    set_keras_home,
    set_precision,
)

PAPER_MODELS = ["small_unet", "densenet121_unet", "vgg16_attention_unet", "vgg16_attention_ia_unet"]
BACKBONE_MODELS = [n for n in ARCHITECTURES if n.startswith("unet_")]


@pytest.fixture(autouse=True)
def _restore_policy():
    old = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(old)


def _batch(size, n=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, 3), dtype=np.float32)
    y = (rng.random((n, size, size, 1)) > 0.7).astype(np.float32)
    return x, y


def _one_step(model, x, y):
    """One eager training step; returns (loss, trainable before/after, frozen before/after)."""
    enc = model.get_layer("encoder") if "encoder" in [lyr.name for lyr in model.layers] else None
    frozen0 = [w.numpy().copy() for w in enc.weights] if enc is not None else []
    train0 = [w.numpy().copy() for w in model.trainable_weights]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=get_loss("bce_dice"), run_eagerly=True
    )
    loss = float(model.train_on_batch(x, y))
    train1 = [w.numpy() for w in model.trainable_weights]
    frozen1 = [w.numpy() for w in enc.weights] if enc is not None else []
    return loss, train0, train1, frozen0, frozen1


@pytest.mark.parametrize(
    ("mode", "module"),
    [
        ("caffe", keras.applications.vgg16),
        ("caffe", keras.applications.resnet50),
        ("torch", keras.applications.densenet),
        ("tf", keras.applications.inception_v3),
        ("tf", keras.applications.mobilenet_v2),
        ("raw255", keras.applications.efficientnet),
    ],
)
def test_preprocess_matches_keras(mode, module):
    rng = np.random.default_rng(1)
    x = rng.random((2, 4, 5, 3), dtype=np.float32)  # distinct channels catch the BGR flip
    ours = keras.ops.convert_to_numpy(ImageNetPreprocess(mode)(x))
    ref = np.asarray(module.preprocess_input(x.copy() * 255.0))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_train_one_step(name):
    size = 32
    model = build_model(name, (size, size, 3), "none", freeze_encoder=True)
    x, y = _batch(size)
    loss, t0, t1, f0, f1 = _one_step(model, x, y)
    assert np.isfinite(loss)
    # the decoder trains, the encoder does not
    assert any(not np.array_equal(a, b) for a, b in zip(t0, t1, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(f0, f1, strict=True))
    p = keras.ops.convert_to_numpy(model(x, training=False))
    assert p.shape == (1, size, size, 1)
    assert p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONE_MODELS)
def test_backbone_models_train_one_step(name):
    # InceptionV3's valid convolutions need >= 75 px; 96 also exercises the odd-size resizes.
    size = 96 if "inception" in name else 32
    model = build_model(name, (size, size, 3), "none", freeze_encoder=True)
    x, y = _batch(size)
    loss, t0, t1, f0, f1 = _one_step(model, x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(t0, t1, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(f0, f1, strict=True))
    assert model(x, training=False).shape == (1, size, size, 1)


def test_encoder_frozen_and_excluded_from_trainable():
    model = build_model("vgg16_attention_unet", (32, 32, 3), "none", freeze_encoder=True)
    enc = model.get_layer("encoder")
    assert not enc.trainable
    enc_ids = {id(w) for w in enc.weights}
    assert enc_ids and not enc_ids & {id(w) for w in model.trainable_weights}
    total, trainable = count_params(model)
    # VGG16 notop has 14,714,688 parameters, all of them frozen here
    assert enc.count_params() == 14_714_688
    assert total - trainable >= 14_714_688


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vgg16_attention_unet", {}),
        ("vgg16_attention_ia_unet", {"norm": "instance"}),
        ("densenet121_unet", {}),
    ],
)
def test_paper_params_near_paper(name, kwargs):
    total, trainable = count_params(
        build_model(name, (32, 32, 3), "none", freeze_encoder=True, **kwargs)
    )
    paper_total, paper_trainable = PAPER_PARAMS[name]
    assert abs(total - paper_total) / paper_total < 0.03
    assert abs(trainable - paper_trainable) / paper_trainable < 0.03


def test_mixed_bfloat16_output_float32():
    assert set_precision("mixed_bfloat16") == "mixed_bfloat16"
    model = build_model("vgg16_attention_unet", (32, 32, 3), "none", freeze_encoder=True)
    assert model.get_layer("mask").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("dec1_c1_conv").compute_dtype == "bfloat16"
    x, _ = _batch(32, n=2)
    p = keras.ops.convert_to_numpy(model(x, training=False))
    assert p.shape == (2, 32, 32, 1)
    assert p.dtype == np.float32


def test_keras_round_trip_identical_predictions(tmp_path):
    # None spatial dims -> ResizeLike layers; instance norm -> GroupNormalization.
    model = build_model(
        "vgg16_attention_ia_unet", (None, None, 3), "none", norm="instance", freeze_encoder=True
    )
    assert any(type(lyr).__name__ == "ResizeLike" for lyr in model.layers)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_checkpoint(path)
    x = np.random.default_rng(3).random((1, 64, 32, 3), dtype=np.float32)
    p0 = keras.ops.convert_to_numpy(model(x, training=False))
    p1 = keras.ops.convert_to_numpy(loaded(x, training=False))
    assert p0.shape == (1, 64, 32, 1)
    np.testing.assert_array_equal(p0, p1)
    assert not loaded.get_layer("encoder").trainable


def test_encoder_weights_from_path(tmp_path):
    first = build_model("vgg16_attention_unet", (32, 32, 3), "none", freeze_encoder=True)
    path = tmp_path / "encoder.weights.h5"
    first.get_layer("encoder").save_weights(path)
    again = build_model("vgg16_attention_unet", (32, 32, 3), path)
    fresh = build_model("vgg16_attention_unet", (32, 32, 3), "none", freeze_encoder=True)
    w0 = first.get_layer("encoder").get_weights()
    w1 = again.get_layer("encoder").get_weights()
    w2 = fresh.get_layer("encoder").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(w0, w2, strict=True))
    with pytest.raises(InputError, match="does not exist"):
        build_model("vgg16_attention_unet", (32, 32, 3), tmp_path / "missing.weights.h5")


def test_imagenet_weights_read_from_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "elsewhere"))
    home = set_keras_home(tmp_path / "keras")
    # a stand-in for the real ImageNet file, in keras.applications' legacy h5 layout
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.save(home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    model = build_model("vgg16_attention_unet", (32, 32, 3), "imagenet", allow_download=False)
    got = model.get_layer("encoder").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), got, strict=True))


def test_imagenet_offline_error_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "elsewhere"))
    home = set_keras_home(tmp_path / "kh")
    fname = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(InputError) as err:
        build_model("densenet121_unet", (32, 32, 3), "imagenet", allow_download=False)
    assert fname in str(err.value)
    assert str(home / "models") in str(err.value)
    # not bad input: a download the user has to place (issue 13), named as such
    assert isinstance(err.value, MissingDownload) and err.value.kind == "missing download"
    assert "Place the file" in str(err.value)
    with pytest.raises(InputError, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        check_encoder_weights("vgg16_attention_unet", "imagenet", allow_download=False)
    check_encoder_weights("small_unet", "imagenet", allow_download=False)  # no encoder: fine


def test_imagenet_file_names():
    assert imagenet_weights_file("mobilenetv2", (128, 128, 3))[0] == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5"
    )
    assert imagenet_weights_file("mobilenetv2", (256, 256, 3))[0].endswith("_1.0_224_no_top.h5")
    assert imagenet_weights_file("efficientnetb0")[0] == "efficientnetb0_notop.h5"
    assert (
        imagenet_weights_file("resnet50")[0]
        == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


def test_set_precision_and_cpu_flags(tmp_path):
    assert set_precision("float32") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert set_precision("auto") in ("float32", "mixed_bfloat16", "mixed_float16")
    with pytest.raises(InputError):
        set_precision("float64")
    yes = tmp_path / "yes"
    yes.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    no = tmp_path / "no"
    no.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_supports_bf16(yes)
    assert not cpu_supports_bf16(no)
    assert not cpu_supports_bf16(tmp_path / "missing")


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("vgg16_attention_unet", (48, 48, 3))
    with pytest.raises(InputError, match="unknown architecture"):
        build_model("unet_alexnet")
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot load"):
        load_checkpoint(bad)


@pytest.mark.slow
def test_param_table():
    df = param_table()
    assert list(df.columns) == [
        "name",
        "total",
        "trainable",
        "gflops",
        "paper_total",
        "paper_trainable",
    ]
    assert (df["gflops"] > 0).all()
    assert set(df["name"]) == set(ARCHITECTURES)
    paper = df.dropna()
    assert len(paper) == 3
    rel = (paper["trainable"] - paper["paper_trainable"]).abs() / paper["paper_trainable"]
    assert (rel < 0.03).all()
    small = df.set_index("name").loc["small_unet", "total"]
    assert 0.5e6 <= small <= 2e6


def test_a_randomly_initialised_encoder_is_trained_not_frozen():
    """Without pretrained weights a frozen encoder would feed noise features to the decoder:
    it trains (issue 12); with weights, or on request, it stays frozen (the paper's setup)."""
    frozen = build_model("vgg16_attention_unet", (32, 32, 3), "none", freeze_encoder=True)
    free = build_model("vgg16_attention_unet", (32, 32, 3), "none")
    assert not frozen.get_layer("encoder").trainable
    assert free.get_layer("encoder").trainable
    total_f, trainable_f = count_params(frozen)
    total, trainable = count_params(free)
    assert total == total_f and trainable > trainable_f + 14_000_000  # + VGG16's 14.7 M
