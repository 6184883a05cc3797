from __future__ import annotations

import sys
import types
import weakref

import numpy as np
import pandas as pd
import pytest

from brightseg import ensemble
from brightseg.ensemble import (
    make_predictor,
    predict_image,
    predict_image_voted,
    predict_plate,
    read_ensemble,
)
from brightseg.errors import InputError
from brightseg.tiling import WINDOW_FLOOR, blend_window, tile_grid, tta_transforms, vote

# --------------------------------------------------------------------------- helpers


def identity(batch):
    """A "model" that returns its input's first channel."""
    return batch[..., :1].copy()


class Recorder:
    """Identity predictor that records every batch it is called with."""

    def __init__(self):
        self.batches = []

    def __call__(self, batch):
        self.batches.append(batch.copy())
        return identity(batch)


def position_model(batch):
    """A model that is not equivariant to flips/rotations (depends on x position)."""
    x = batch[..., 0]
    ramp = np.linspace(0.0, 1.0, x.shape[2], dtype=np.float32)
    return (0.5 * x + 0.5 * np.cumsum(x, axis=2) / x.shape[2] * ramp)[..., None]


class FakeStore:
    """In-memory stand-in for brightseg.platestore.PlateStore."""

    def __init__(self, images: dict[str, np.ndarray]):
        self.raw = {k: np.rint(v * 65535).astype(np.uint16) for k, v in images.items()}
        ids = list(images)
        self.images = pd.DataFrame(
            {
                "image_id": ids,
                "row": "A",
                "column": 1,
                "field": range(len(ids)),
                "timepoint": 0,
            }
        )
        self.labels: dict = {}
        self.complete: set = set()
        self.n_read = 0
        self.alive = 0
        self.max_alive = 0
        self.writes: list = []

    def _release(self):
        self.alive -= 1

    def read(self, image_id):
        arr = self.raw[image_id].astype(np.float32) / np.float32(65535)
        self.n_read += 1
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        weakref.finalize(arr, self._release)
        return arr

    def image_array(self, image_id):
        return self.raw[image_id][None, None], 0

    def create_label(self, image_id, name, dtype):
        self.labels[(image_id, name)] = np.zeros(self.raw[image_id].shape, dtype)
        self.complete.discard((image_id, name))

    def write_label(self, image_id, name, array):
        assert array.dtype == self.labels[(image_id, name)].dtype
        self.labels[(image_id, name)] = np.array(array)
        self.complete.add((image_id, name))
        self.writes.append((image_id, name))

    def has_label(self, image_id, name):
        return (image_id, name) in self.complete

    def read_label(self, image_id, name):
        return self.labels[(image_id, name)]


def random_images(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return {f"im{i:02d}": rng.random(shape, dtype=np.float32) for i in range(n)}


# --------------------------------------------------------------------------- tiling


def test_tile_grid_hand_computed():
    # 300 rows, tile 64, overlap 16: ceil(236 / 48) + 1 = 6 evenly spaced starts 0..236
    assert tile_grid(300, 64, 64, 16) == [(y, 0) for y in (0, 47, 94, 142, 189, 236)]
    assert tile_grid(512, 512, 256, 0) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    # 2048 x 1536 with tile 256 / overlap 32: stride 224 divides 1792 exactly
    grid = tile_grid(2048, 1536, 256, 32)
    assert sorted({y for y, _ in grid}) == list(range(0, 1793, 224))
    assert len(grid) == 9 * 7
    assert tile_grid(10, 300, 64, 16)[0] == (0, 0)
    assert {y for y, _ in tile_grid(10, 300, 64, 16)} == {0}


@pytest.mark.parametrize(
    "h,w,tile,overlap", [(257, 300, 64, 16), (100, 77, 64, 16), (64, 65, 64, 0)]
)
def test_tile_grid_covers_with_minimum_overlap(h, w, tile, overlap):
    grid = tile_grid(h, w, tile, overlap)
    covered = np.zeros((h, w), bool)
    for y, x in grid:
        assert 0 <= y <= h - tile and 0 <= x <= w - tile
        covered[y : y + tile, x : x + tile] = True
    assert covered.all()
    for starts in (sorted({y for y, _ in grid}), sorted({x for _, x in grid})):
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_tile_grid_rejects_bad_parameters():
    with pytest.raises(InputError, match="overlap"):
        tile_grid(100, 100, 64, 64)
    with pytest.raises(InputError, match="tile"):
        tile_grid(100, 100, 0, 0)


def test_blend_window_ramps_sum_to_one():
    tile, overlap = 64, 16
    w = blend_window(tile, overlap, floor=0.0)
    assert w.dtype == np.float32 and w.shape == (tile, tile)
    prof = w[tile // 2]  # middle row: the 1-D profile
    np.testing.assert_allclose(prof[overlap:-overlap], 1.0)
    # ramp of the left tile's right end + the right tile's left end == 1
    np.testing.assert_allclose(prof[tile - overlap :] + prof[:overlap], 1.0, atol=1e-6)
    np.testing.assert_allclose(w, w.T)  # separable and symmetric
    np.testing.assert_allclose(w, w[::-1, ::-1])
    # hand value: first pixel = sin^2(pi/2 * 0.5/16)
    assert prof[0] == pytest.approx(np.sin(np.pi / 64) ** 2, rel=1e-5)
    wf = blend_window(tile, overlap)
    assert wf.min() >= WINDOW_FLOOR**2 * 0.99 and wf.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(blend_window(32, 0), np.ones((32, 32), np.float32))


# --------------------------------------------------------------------------- identity / seams


@pytest.mark.parametrize(
    "shape,tta",
    [((257, 300), False), ((100, 77), False), ((100, 77), True), ((40, 50), False), ((5, 3), True)],
)
def test_identity_model_reproduces_input(shape, tta):
    rng = np.random.default_rng(3)
    img = rng.random(shape, dtype=np.float32)
    out = predict_image(img, [identity, identity], tile=64, overlap=16, batch_size=3, tta=tta)
    assert out.shape == (2, *shape) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], img, atol=1e-6)
    np.testing.assert_allclose(out[1], img, atol=1e-6)


def _gaussian_blur_model(sigma=1.5, radius=3):
    import keras

    ax = np.arange(-radius, radius + 1)
    g = np.exp(-(ax**2) / (2 * sigma**2))
    k2 = np.outer(g, g) / np.outer(g, g).sum()
    kernel = np.repeat(k2[:, :, None, None] / 3.0, 3, axis=2).astype(np.float32)
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(1, 2 * radius + 1, padding="same", use_bias=False)
    model = keras.Model(inp, conv(inp))
    conv.set_weights([kernel])
    return model


def test_no_seams_with_smooth_model():
    model = _gaussian_blur_model()
    rng = np.random.default_rng(4)
    img = rng.random((150, 170), dtype=np.float32)
    whole = np.asarray(model(np.repeat(img[None, :, :, None], 3, axis=-1)))[0, :, :, 0]
    tiled = predict_image(img, [make_predictor(model, 4, 64)], tile=64, overlap=16, batch_size=4)[0]
    inner = (slice(4, -4), slice(4, -4))
    err = np.abs(tiled - whole)[inner].max()
    assert err < 1e-2, err  # 4.3e-3 measured; 0.2 without overlap (below)
    # negative control: non-overlapping tiles have visible seams with this model
    naive = predict_image(img, [identity_blur(model)], tile=64, overlap=0, batch_size=4)[0]
    assert np.abs(naive - whole)[inner].max() > 0.05


def identity_blur(model):
    return lambda batch: np.asarray(model(batch))


# --------------------------------------------------------------------------- voting


def test_vote_mean_and_majority_hand_computed():
    probs = np.array(
        [
            [[0.9, 0.99, 0.55, 0.2]],
            [[0.8, 0.3, 0.55, 0.3]],
            [[0.1, 0.4, 0.0, 0.9]],
        ],
        dtype=np.float32,
    )
    # means: 0.6, 0.5633, 0.3667, 0.4667; votes > 0.5: 2/3, 1/3, 2/3, 1/3
    prob, mask = vote(probs, "mean", 0.5)
    np.testing.assert_allclose(prob, [[0.6, 1.69 / 3, 1.1 / 3, 1.4 / 3]], atol=1e-6)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0]])
    prob_m, mask_m = vote(probs, "majority", 0.5)
    np.testing.assert_array_equal(prob_m, prob)
    np.testing.assert_array_equal(mask_m, [[1, 0, 1, 0]])
    np.testing.assert_array_equal(vote(probs, "majority", 0.3)[1], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(vote(probs, "mean", 0.45)[1], [[1, 1, 0, 1]])
    # two models: a 1-1 split is not a majority; mean exactly at the threshold is background
    two = np.array([[0.6, 0.7], [0.4, 0.4]], dtype=np.float32)
    np.testing.assert_array_equal(vote(two, "majority")[1], [0, 0])
    np.testing.assert_array_equal(vote(two, "mean")[1], [0, 1])
    with pytest.raises(InputError, match="vote"):
        vote(probs, "median")


def test_predict_image_voted_matches_vote_of_per_model_maps():
    rng = np.random.default_rng(5)
    img = rng.random((90, 70), dtype=np.float32)
    preds = [identity, position_model, lambda b: 1.0 - b[..., :1]]
    probs = predict_image(img, preds, tile=32, overlap=8, batch_size=5)
    for method in ("mean", "majority"):
        prob, mask = predict_image_voted(
            img, preds, tile=32, overlap=8, batch_size=5, vote=method, threshold=0.5
        )
        exp_prob, exp_mask = vote(probs, method, 0.5)
        np.testing.assert_allclose(prob, exp_prob, atol=1e-6)
        np.testing.assert_array_equal(mask, exp_mask)


# --------------------------------------------------------------------------- TTA


def test_tta_inverse_transforms_are_exact():
    rng = np.random.default_rng(6)
    a = rng.random((5, 7))
    transforms = tta_transforms()
    assert len(transforms) == 8 and transforms[0].name == "rot0"
    seen = set()
    for t in transforms:
        np.testing.assert_array_equal(t.inverse(t.forward(a)), a)
        seen.add(np.ascontiguousarray(t.forward(a)).tobytes())
    assert len(seen) == 8  # 8 distinct transforms
    np.testing.assert_array_equal(transforms[0].forward(a), a)
    b = rng.random((2, 6, 6, 1))
    for t in tta_transforms(axes=(1, 2)):
        np.testing.assert_array_equal(t.inverse(t.forward(b)), b)


def test_tta_average_of_non_symmetric_model():
    rng = np.random.default_rng(7)
    img = rng.random((32, 32), dtype=np.float32)
    out = predict_image(img, [position_model], tile=32, overlap=8, batch_size=3, tta=True)[0]

    def model2d(a):
        return position_model(np.repeat(a[None, :, :, None], 3, axis=-1))[0, :, :, 0]

    expected = np.zeros_like(img)
    for flip in (False, True):
        for k in range(4):
            a = img[:, ::-1] if flip else img
            y = np.rot90(model2d(np.rot90(a, k)), -k)
            expected += y[:, ::-1] if flip else y
    expected /= 8
    np.testing.assert_allclose(out, expected, atol=1e-6)
    plain = predict_image(img, [position_model], tile=32, overlap=8, batch_size=3)[0]
    assert np.abs(plain - expected).max() > 1e-2  # the model really is not symmetric


# --------------------------------------------------------------------------- batching


def test_last_batch_is_zero_padded():
    rng = np.random.default_rng(8)
    img = rng.random((64, 256), dtype=np.float32)  # 5 tiles of 64 (x: 0, 48, ..., 192)
    rec = Recorder()
    out = predict_image(img, [rec], tile=64, overlap=16, batch_size=4)[0]
    np.testing.assert_allclose(out, img, atol=1e-6)
    assert [b.shape for b in rec.batches] == [(4, 64, 64, 3)] * 2
    last = rec.batches[1]
    np.testing.assert_array_equal(last[0, ..., 0], img[:, 192:256])
    np.testing.assert_array_equal(last[0, ..., 1], last[0, ..., 2])  # grey replicated
    assert not last[1:].any()


def test_batches_are_filled_across_images():
    store = FakeStore(random_images(5, (30, 20), seed=9))  # one (padded) tile per image
    rec = Recorder()
    df = predict_plate(store, [rec], tile=32, overlap=8, batch_size=2)
    assert len(rec.batches) == 3  # ceil(5 / 2): no per-image padding
    assert df.attrs["engine"]["n_padded_slots"] == 1
    for image_id, raw in store.raw.items():  # reflection-padded tile, cropped back
        img = raw.astype(np.float32) / np.float32(65535)
        expected = np.rint(img * np.float32(255)).astype(int)
        got = store.labels[(image_id, "prob")].astype(int)
        assert got.shape == (30, 20) and np.abs(got - expected).max() <= 1
        assert (got == expected).mean() > 0.99


def test_make_predictor_fixed_shape_and_padding():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp))
    f = make_predictor(model, batch_size=4, tile=16)
    rng = np.random.default_rng(10)
    x = rng.random((9, 16, 16, 3), dtype=np.float32)
    ref = np.asarray(model(x))
    for n in (3, 4, 9):
        out = np.asarray(f(x[:n]))
        assert out.shape == (n, 16, 16, 1) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref[:n], atol=1e-5)
    assert f.forward.experimental_get_tracing_count() == 1
    with pytest.raises(ValueError, match="shape"):
        f(x[:, :8])


# --------------------------------------------------------------------------- plates


def test_predict_plate_writes_labels_and_summary():
    images = random_images(3, (50, 40), seed=11)
    store = FakeStore(images)
    df = predict_plate(store, [identity, position_model], tile=32, overlap=8, batch_size=3)
    assert list(df.columns) == ensemble.SUMMARY_COLUMNS
    assert list(df["image_id"]) == list(images) and df.attrs["resumed"] == 0
    assert (df["n_models"] == 2).all() and (df["vote"] == "mean").all()
    for image_id in images:
        img = store.raw[image_id].astype(np.float32) / np.float32(65535)
        probs = predict_image(img, [identity, position_model], tile=32, overlap=8)
        prob, mask = vote(probs, "mean", 0.5)
        got_mask = store.labels[(image_id, "mask")]
        np.testing.assert_array_equal(got_mask, mask)
        assert got_mask.dtype == np.uint8 and set(np.unique(got_mask)) <= {0, 1}
        np.testing.assert_array_equal(
            store.labels[(image_id, "prob")], np.rint(prob * 255).astype(np.uint8)
        )
        row = df.set_index("image_id").loc[image_id]
        assert row["foreground_fraction"] == pytest.approx(mask.mean())
    # mask is written after prob for every image (so "mask complete" == image complete)
    for image_id in images:
        assert store.writes.index((image_id, "prob")) < store.writes.index((image_id, "mask"))


def test_predict_plate_is_resumable():
    store = FakeStore(random_images(4, (40, 40), seed=12))
    rec = Recorder()
    first = predict_plate(store, [rec], tile=32, overlap=8, batch_size=4)
    n_calls = len(rec.batches)
    masks = {k: v.copy() for k, v in store.labels.items()}
    second = predict_plate(store, [rec], tile=32, overlap=8, batch_size=4)
    assert len(rec.batches) == n_calls  # nothing recomputed
    assert second.attrs["resumed"] == 4 and first.attrs["resumed"] == 0
    pd.testing.assert_frame_equal(second, first)  # a resumed run's table equals a clean one
    np.testing.assert_allclose(second["foreground_fraction"], first["foreground_fraction"])
    # an interrupted image: prob written, mask created but never completed
    store.create_label("im02", "mask", np.uint8)
    third = predict_plate(store, [rec], tile=32, overlap=8, batch_size=4)
    assert third.attrs["resumed"] == 3
    assert len(rec.batches) == n_calls + 1  # 4 tiles of one image = one batch
    np.testing.assert_array_equal(store.labels[("im02", "mask")], masks[("im02", "mask")])
    # skip_existing=False redoes everything
    predict_plate(store, [rec], tile=32, overlap=8, batch_size=4, skip_existing=False)
    assert len(rec.batches) == n_calls + 1 + 4


def test_streaming_memory_is_per_image_not_per_plate():
    stats = []
    for n in (2, 16):
        store = FakeStore(random_images(n, (96, 80), seed=13))
        df = predict_plate(store, [identity, identity, identity], tile=32, overlap=8, batch_size=2)
        eng = df.attrs["engine"]
        assert eng["max_live_accumulators"] == 1
        # one band of 32 rows x 80 columns for 3 models + the weight sum
        assert eng["peak_accumulator_bytes"] == (3 + 1) * 32 * 80 * 4
        assert store.max_alive <= 2  # current + prefetched input image
        stats.append(eng)
    assert stats[1]["max_images_in_flight"] <= 8 < 16


def test_large_images_are_read_band_by_band():
    images = random_images(2, (100, 90), seed=14)
    whole, banded = FakeStore(images), FakeStore(images)
    predict_plate(whole, [position_model], tile=32, overlap=8, max_image_pixels=None)
    predict_plate(banded, [position_model], tile=32, overlap=8, max_image_pixels=100)
    assert whole.n_read == 2 and banded.n_read == 0  # banded never called read()
    for key in whole.labels:
        np.testing.assert_array_equal(whole.labels[key], banded.labels[key])


def test_errors_propagate_and_leave_no_complete_mask():
    store = FakeStore(random_images(3, (40, 40), seed=15))
    calls = []

    def flaky(batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return identity(batch)

    with pytest.raises(RuntimeError, match="device lost"):
        predict_plate(store, [flaky], tile=32, overlap=8, batch_size=4)
    assert not store.has_label("im01", "mask") and not store.has_label("im02", "mask")
    bad = FakeStore(random_images(1, (40, 40)))
    with pytest.raises(ValueError, match="predictor returned shape"):
        predict_plate(bad, [lambda b: b[:, :8]], tile=32, overlap=8)
    nan = FakeStore(random_images(1, (40, 40)))
    nan.read = lambda image_id: np.full((40, 40), np.nan, np.float32)
    with pytest.raises(InputError, match="NaN"):
        predict_plate(nan, [identity], tile=32, overlap=8)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        predict_image(np.full((40, 40), 300.0, np.float32), [identity], tile=32, overlap=8)


# --------------------------------------------------------------------------- from paths


def _tiny_checkpoint(path, seed):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((32, 32, 3))
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)
    keras.Model(inp, out).save(path)


def test_read_ensemble(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    _tiny_checkpoint(tmp_path / "models" / "a.keras", 0)
    tsv = tmp_path / "models" / "ensemble.tsv"
    tsv.write_text(
        "rank\tpath\tmodel\tloss\tepoch\tval_f1\n2\ta.keras\tu\tbce\t3\t0.8\n1\tmodels/a.keras\tu\tdice\t4\t0.9\n"
    )
    df = read_ensemble(tsv)
    assert list(df["rank"]) == [1, 2] and list(df["loss"]) == ["dice", "bce"]
    tsv.write_text("rank\tpath\n1\tmissing.keras\n")
    with pytest.raises(InputError, match="missing.keras"):
        read_ensemble(tsv)
    tsv.write_text("rank\tfile\n1\ta.keras\n")
    with pytest.raises(InputError, match="path"):
        read_ensemble(tsv)
    with pytest.raises(InputError, match="does not exist"):
        read_ensemble(tmp_path / "nope.tsv")


def test_predict_plate_from_paths_loads_each_checkpoint_once(tmp_path, monkeypatch):
    import keras

    for i in range(2):
        _tiny_checkpoint(tmp_path / f"m{i}.keras", i)
    tsv = tmp_path / "ensemble.tsv"
    tsv.write_text(
        "rank\tpath\tmodel\tloss\tepoch\tval_f1\n"
        f"1\t{tmp_path / 'm0.keras'}\tu\tbce\t1\t0.9\n2\t{tmp_path / 'm1.keras'}\tu\tdice\t2\t0.8\n"
    )
    store = FakeStore(random_images(3, (70, 50), seed=16))
    loads = []

    def load_checkpoint(path):
        loads.append(str(path))
        return keras.models.load_model(path, compile=False)

    fake_ps = types.ModuleType("brightseg.platestore")
    fake_ps.open_plate = lambda path: store
    monkeypatch.setitem(sys.modules, "brightseg.platestore", fake_ps)
    import brightseg.models

    monkeypatch.setattr(brightseg.models, "load_checkpoint", load_checkpoint, raising=False)
    out = tmp_path / "pred.tsv"
    ens = ensemble.Ensemble.load(tsv, {"overlap": 8, "batch_size": 4, "vote": "majority"})
    df = ens.predict_plate(store)
    df.to_csv(out, sep="\t", index=False)
    assert loads == [str(tmp_path / "m0.keras"), str(tmp_path / "m1.keras")]
    assert (df["n_models"] == 2).all() and (df["vote"] == "majority").all()
    assert df.attrs["engine"]["n_tiles"] == 3 * 3 * 2  # tile 32 from the model input
    back = pd.read_csv(out, sep="\t")
    assert list(back["image_id"]) == list(store.raw)
    models = [keras.models.load_model(p, compile=False) for p in loads]
    img = store.raw["im01"].astype(np.float32) / np.float32(65535)
    probs = predict_image(img, [make_predictor(m, 4, 32) for m in models], tile=32, overlap=8)
    prob, mask = vote(probs, "majority")
    got = store.labels[("im01", "prob")].astype(int)
    assert np.abs(got - np.rint(prob * 255)).max() <= 1
    assert (store.labels[("im01", "mask")] != mask).mean() < 1e-3


# --------------------------------------------------------------------------- real plate store


def test_predict_plate_on_platestore(tmp_path):
    platestore = pytest.importorskip("brightseg.platestore")
    images = random_images(3, (70, 50), seed=17)
    table = pd.DataFrame(
        {"image_id": list(images), "row": "B", "column": 3, "field": 0, "timepoint": [0, 1, 2]}
    )
    path = tmp_path / "P1.ome.zarr"
    platestore.write_plate(
        path,
        "P1",
        table,
        load=lambda row: images[row["image_id"]],
        pixel_size_um=0.5,
        modality="brightfield",
    )
    store = platestore.open_plate(path)
    preds = [identity, position_model]
    df = predict_plate(store, preds, tile=32, overlap=8, batch_size=4, vote="majority")
    assert df.attrs["resumed"] == 0 and "skipped" not in df
    labels = {}
    for image_id in images:
        probs = predict_image(store.read(image_id), preds, tile=32, overlap=8)
        prob, mask = vote(probs, "majority")
        labels[image_id] = store.read_label(image_id, "mask")
        np.testing.assert_array_equal(labels[image_id], mask)
        np.testing.assert_array_equal(
            store.read_label(image_id, "prob"), np.rint(prob * 255).astype(np.uint8)
        )
    # band-wise reading of the (T, 1, H, W) array gives the same result for every timepoint
    predict_plate(
        store, preds, tile=32, overlap=8, vote="majority", skip_existing=False, max_image_pixels=10
    )
    for image_id in images:
        np.testing.assert_array_equal(store.read_label(image_id, "mask"), labels[image_id])
    # a fresh process (new store object) skips the completed images
    rec = Recorder()
    again = predict_plate(platestore.open_plate(path), [rec, rec], tile=32, overlap=8)
    assert again.attrs["resumed"] == 3 and rec.batches == []
    np.testing.assert_allclose(again["foreground_fraction"], df["foreground_fraction"])


# --------------------------------------------------------------------------- per-model TTA


class Counter:
    """Wraps a predictor and counts the tiles (not padding) it is asked to predict."""

    def __init__(self, fn):
        self.fn = fn
        self.tiles = 0

    def __call__(self, batch):
        self.tiles += int(np.count_nonzero(batch.reshape(len(batch), -1).any(axis=1)))
        return self.fn(batch)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_per_model_tta_changes_only_that_models_maps(batch_size):
    """models[].tta: one flag per model; each model's map is the one it gives alone."""
    rng = np.random.default_rng(11)
    img = rng.uniform(0.05, 1.0, (80, 72)).astype(np.float32)  # no all-zero tile
    kw = {"tile": 32, "overlap": 8, "batch_size": batch_size}
    alone_tta = predict_image(img, [position_model], tta=True, **kw)[0]
    alone_plain = predict_image(img, [position_model], tta=False, **kw)[0]
    assert np.abs(alone_tta - alone_plain).max() > 1e-2  # not flip-equivariant
    with_tta, without = Counter(position_model), Counter(position_model)
    mixed = predict_image(img, [with_tta, without], tta=[True, False], **kw)
    np.testing.assert_allclose(mixed[0], alone_tta, atol=1e-6)
    np.testing.assert_allclose(mixed[1], alone_plain, atol=1e-6)
    # the model without TTA predicts each tile once, the other one 8 times
    n_tiles = len(tile_grid(80, 72, 32, 8))
    assert without.tiles == n_tiles and with_tta.tiles == 8 * n_tiles
    swapped = predict_image(img, [position_model, position_model], tta=[False, True], **kw)
    np.testing.assert_allclose(swapped[0], alone_plain, atol=1e-6)
    np.testing.assert_allclose(swapped[1], alone_tta, atol=1e-6)
    # uniform flags are the plain bool
    both = predict_image(img, [position_model, identity], tta=[True, True], **kw)
    np.testing.assert_array_equal(
        both, predict_image(img, [position_model, identity], tta=True, **kw)
    )
    with pytest.raises(InputError, match="2 TTA flags for 1 models"):
        predict_image(img, [position_model], tta=[True, False], **kw)


def test_per_model_tta_on_a_plate_and_in_the_summary():
    rng = np.random.default_rng(12)
    images = {
        f"im{i}": rng.uniform(0.05, 1.0, (40 + 8 * i, 56)).astype(np.float32) for i in range(3)
    }
    kw = {"tile": 32, "overlap": 8, "batch_size": 3}
    store = FakeStore(images)
    df = predict_plate(store, [position_model, identity], tta=[True, False], **kw)
    assert list(df["tta"]) == ["10"] * 3
    for key in images:
        img = store.read(key)
        probs = predict_image(img, [position_model, identity], tta=[True, False], **kw)
        expected = np.rint(255 * probs.mean(axis=0)).astype(np.uint8)
        np.testing.assert_array_equal(store.read_label(key, "prob"), expected)


def test_ensemble_reads_per_model_tta_from_its_table(tmp_path):
    """The tta column of ensemble.tsv (models[].tta) overrides inference.tta per checkpoint."""
    keras = pytest.importorskip("keras")
    from brightseg.config import InferenceConfig

    inputs = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, conv)
    model.set_weights([np.arange(27, dtype=np.float32).reshape(3, 3, 3, 1) / 27 - 0.5, np.zeros(1)])
    table = pd.DataFrame({"path": ["a.keras", "b.keras", "c.keras"], "tta": [True, np.nan, False]})
    inf = InferenceConfig.coerce({"tta": False, "overlap": 8, "batch_size": 4})
    ens = ensemble.Ensemble(table, [model] * 3, inf)
    assert ens.tta == [True, False, False]
    assert ensemble.Ensemble(table, [model] * 3, inf.replace(tta=True)).tta == [True, True, False]
    img = np.random.default_rng(13).random((48, 40), dtype=np.float32)
    probs, _, _ = ens.predict(img)
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # the asymmetric kernel: TTA matters
    np.testing.assert_array_equal(probs[1], probs[2])
    plain = ensemble.Ensemble(table.drop(columns="tta"), [model] * 3, inf)
    assert plain.tta == [False] * 3
    np.testing.assert_array_equal(plain.predict(img)[0][1], probs[1])
    bad = table.assign(tta=["maybe", "", ""])
    with pytest.raises(InputError, match="tta column"):
        ensemble.Ensemble(bad, [model] * 3, inf)


# --------------------------------------------------------------------------- working pixel size


def _smooth(shape, seed=0):
    from scipy import ndimage as ndi

    img = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 6)
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)


def test_predict_image_at_a_working_scale_returns_the_native_grid():
    img = _smooth((200, 180))
    rec = Recorder()
    out = predict_image(img, [rec], tile=64, overlap=16, batch_size=4, scale=0.5)
    assert out.shape == (1, 200, 180) and out.dtype == np.float32
    assert np.abs(out[0] - img).max() < 0.05  # identity model: down and up again
    native = Recorder()
    predict_image(img, [native], tile=64, overlap=16, batch_size=4)
    # the models saw the 100 x 90 working image: 2 x 2 tiles instead of 4 x 4
    assert sum(len(b) for b in rec.batches) < sum(len(b) for b in native.batches)
    prob, mask = predict_image_voted(img, [identity], tile=64, overlap=16, scale=0.5)
    assert prob.shape == mask.shape == (200, 180)


def test_predict_plate_at_a_working_scale_writes_native_labels():
    images = {"a": _smooth((150, 170), 1), "b": _smooth((96, 100), 2)}
    kw = dict(tile=64, overlap=16, batch_size=4, threshold=0.5, uncertainty=True)
    scaled, plain = FakeStore(images), FakeStore(images)
    predict_plate(scaled, [identity, identity], scale=0.5, **kw)
    predict_plate(plain, [identity, identity], **kw)
    for image_id, img in images.items():
        for name in ("prob", "mask", "variance", "entropy"):
            assert scaled.labels[(image_id, name)].shape == img.shape
        agree = scaled.labels[(image_id, "mask")] == plain.labels[(image_id, "mask")]
        assert agree.mean() > 0.97


def test_table_working_pixel_size():
    from brightseg.ensemble import _table_working_pixel_size

    table = pd.DataFrame({"path": ["a", "b"]})
    assert _table_working_pixel_size(table, "t") is None
    assert _table_working_pixel_size(table.assign(working_pixel_size_um=1.3), "t") == 1.3
    with pytest.raises(InputError, match="different working pixel sizes"):
        _table_working_pixel_size(table.assign(working_pixel_size_um=[1.3, 0.65]), "t")
    with pytest.raises(InputError, match="different working pixel sizes"):
        _table_working_pixel_size(table.assign(working_pixel_size_um=[1.3, None]), "t")
