"""Multi-focal-plane input: sheet columns, plane files and stacks, stores, training, prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from brightseg import augment
from brightseg.augment import (
    CHANNEL_MIXING,
    augment_variant,
    build_training_store,
    training_store_planes,
    variant_plan,
)
from brightseg.errors import InputError
from brightseg.focus import (
    Focus,
    annotations_to_images,
    check_training_channels,
    display_plane,
    group_planes,
    plate_focus,
    read_planes,
    split_plane_suffix,
)
from brightseg.illumination import correct_illumination as correct
from brightseg.io import read_image
from brightseg.platestore import create_label_store, open_plate, quantise
from brightseg.rules.preprocess import correct_illumination, import_annotations
from brightseg.sheet import compile_regex, plate_images, read_sheet
from brightseg.synth import focal_stack, synth_plate

RX = r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$"
HEADER = "plate\timages\tmodality\tpixel_size_um\tannotations\tuse_for_training"
ILL = {"radius": 12, "unit": "px", "mode": "black"}


def _planes(n, shape=(40, 48), seed=0):
    """``n`` distinct uint16 planes (plane k around 1000 * (k + 1))."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.integers(1000 * (k + 1), 1000 * (k + 1) + 500, shape, dtype=np.uint16)
            for k in range(n)
        ]
    )


def _write_files(folder, stem, stack):
    folder.mkdir(parents=True, exist_ok=True)
    for k, plane in enumerate(stack):
        tifffile.imwrite(folder / f"{stem}_z{k}.tif", plane)


def _write_stack(folder, stem, stack):
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / f"{stem}.tif", stack, photometric="minisblack")


# --------------------------------------------------------------------------- sheet


def test_plate_focus_reads_the_sheet_columns():
    assert plate_focus({"plate": "p"}) is None
    assert plate_focus({"plate": "p", "z_planes": "", "z_select": ""}) is None
    assert plate_focus({"plate": "p", "z_planes": float("nan")}) is None
    assert plate_focus({"plate": "p", "z_planes": "3"}) == Focus(3, (0, 1, 2))
    focus = plate_focus({"plate": "p", "z_planes": "5", "z_select": " 0, 2,4 "})
    assert focus == Focus(5, (0, 2, 4)) and focus.channels == 3
    assert plate_focus({"plate": "p", "z_planes": "7", "z_select": "3"}) == Focus(7, (3,))
    assert Focus.coerce(focus.as_dict()) == focus and Focus.coerce(None) is None


@pytest.mark.parametrize(
    "cells, needle",
    [
        ({"z_planes": "1"}, "integer >= 2"),
        ({"z_planes": "three"}, "integer >= 2"),
        ({"z_planes": "5"}, "5 planes selected"),
        ({"z_planes": "4", "z_select": "0,1"}, "1 plane or 3 planes"),
        ({"z_planes": "3", "z_select": "0,3,1"}, "[3] do not exist"),
        ({"z_planes": "3", "z_select": "0;1;2"}, "separated by commas"),
        ({"z_select": "0,1,2"}, "needs z_planes"),
    ],
)
def test_plate_focus_errors_name_the_sheet_and_plate(cells, needle):
    with pytest.raises(InputError) as err:
        plate_focus({"plate": "P7", **cells}, sheet="config/plates.tsv")
    assert err.value.path == "config/plates.tsv"
    assert "'P7'" in err.value.message and needle in err.value.message


def test_read_sheet_checks_the_focus_columns(tmp_path):
    sheet = tmp_path / "plates.tsv"
    sheet.write_text(
        f"{HEADER}\tz_planes\tz_select\n"
        "a\timgs\tbrightfield\t0.65\t\tfalse\t5\t1,2,3\n"
        "b\timgs\tbrightfield\t0.65\t\tfalse\t\t\n"
    )
    df = read_sheet(sheet)
    assert plate_focus(df.loc["a"]) == Focus(5, (1, 2, 3))
    assert plate_focus(df.loc["b"]) is None
    sheet.write_text(
        f"{HEADER}\tz_planes\tz_select\na\timgs\tbrightfield\t0.65\t\tfalse\t5\t1,7,3\n"
    )
    with pytest.raises(InputError, match="z_select plane") as err:
        read_sheet(sheet)
    assert err.value.path == str(sheet)


# --------------------------------------------------------------------------- files


def test_split_plane_suffix():
    assert split_plane_suffix("P1_B03_f00_t00_z2") == ("P1_B03_f00_t00", 2)
    assert split_plane_suffix("P1_B03_f00_t00_Z10") == ("P1_B03_f00_t00", 10)
    assert split_plane_suffix("P1_B03_f00_t00") == ("P1_B03_f00_t00", None)
    assert split_plane_suffix("zebra_z") == ("zebra_z", None)


def test_plate_images_groups_plane_files_and_stacks(tmp_path):
    imgs = tmp_path / "imgs"
    _write_files(imgs, "P1_B03_f00_t00", _planes(3, seed=1))
    _write_files(imgs, "P1_B04_f00_t00", _planes(3, seed=2))
    _write_stack(imgs, "P1_C01_f01_t00", _planes(3, seed=3))
    df, skipped = plate_images("P1", str(imgs), compile_regex(RX), focus=Focus(3, (0, 1, 2)))
    assert skipped == []
    assert df["image_id"].tolist() == ["P1_B03_f00_t00", "P1_B04_f00_t00", "P1_C01_f01_t00"]
    assert df["well"].tolist() == ["B03", "B04", "C01"] and df["field"].tolist() == [0, 0, 1]
    assert [len(p) for p in df["planes"]] == [3, 3, 1]
    assert df["planes"][0][2].endswith("P1_B03_f00_t00_z2.tif")
    assert df["path"][0].endswith("P1_B03_f00_t00_z0.tif")
    # single-plane plates are listed as before: no planes column
    flat, _ = plate_images("P1", str(imgs / "*_z0.tif"), compile_regex(RX[:-1] + "_z0$"))
    assert "planes" not in flat.columns


def test_missing_plane_file_is_named(tmp_path):
    imgs = tmp_path / "imgs"
    _write_files(imgs, "P1_B03_f00_t00", _planes(3))
    (imgs / "P1_B03_f00_t00_z1.tif").unlink()
    with pytest.raises(InputError, match="plane file missing") as err:
        plate_images("P1", str(imgs), compile_regex(RX), focus=Focus(3, (0, 1, 2)))
    assert err.value.path == str(imgs / "P1_B03_f00_t00_z1.tif")
    assert "'P1'" in err.value.message


def test_bad_plane_groups_are_skipped_and_listed_under_skip(tmp_path):
    imgs = tmp_path / "imgs"
    _write_files(imgs, "P1_B03_f00_t00", _planes(3))
    _write_files(imgs, "P1_B04_f00_t00", _planes(3))
    _write_stack(imgs, "P1_B05_f00_t00", _planes(2))
    (imgs / "P1_B04_f00_t00_z0.tif").unlink()
    df, skipped = plate_images(
        "P1", str(imgs), compile_regex(RX), focus=Focus(3, (0, 1, 2)), on_bad_input="skip"
    )
    assert df["image_id"].tolist() == ["P1_B03_f00_t00"]
    assert [(f.rsplit("/", 1)[1], r.split(":")[0]) for f, r in skipped] == [
        ("P1_B04_f00_t00_z0.tif", "plane file missing"),
        ("P1_B05_f00_t00.tif", "2 page(s) but z_planes is 3"),
    ]


def test_inconsistent_plane_counts_are_errors(tmp_path):
    imgs = tmp_path / "imgs"
    _write_files(imgs, "P1_B03_f00_t00", _planes(4))
    with pytest.raises(InputError, match="beyond the plate's z_planes 3") as err:
        group_planes(sorted(imgs.iterdir()), 3)
    assert err.value.path.endswith("_z3.tif")
    other = tmp_path / "stacks"
    _write_stack(other, "P1_B03_f00_t00", _planes(4))
    with pytest.raises(InputError, match="4 page") as err:
        plate_images("P1", str(other), compile_regex(RX), focus=Focus(3, (0, 1, 2)))
    assert err.value.path == str(other / "P1_B03_f00_t00.tif")
    with pytest.raises(InputError, match="4 page"):
        read_planes([other / "P1_B03_f00_t00.tif"], Focus(3, (0, 1, 2)))
    _write_files(other, "P1_B03_f00_t00", _planes(3))
    with pytest.raises(InputError, match="both as one file and as _z<k> planes"):
        group_planes(sorted(other.iterdir()), 3)


def test_read_planes_keeps_the_selected_planes_in_order(tmp_path):
    stack = _planes(5, seed=4)
    _write_stack(tmp_path / "s", "im", stack)
    _write_files(tmp_path / "f", "im", stack)
    focus = Focus(5, (3, 1, 2))
    from_stack = read_planes([tmp_path / "s" / "im.tif"], focus)
    files = [tmp_path / "f" / f"im_z{k}.tif" for k in range(5)]
    from_files = read_planes(files, focus)
    assert from_stack.shape == (3, 40, 48) and from_stack.dtype == np.uint16
    np.testing.assert_array_equal(from_stack, stack[[3, 1, 2]])
    np.testing.assert_array_equal(from_files, stack[[3, 1, 2]])
    # a plane of another size is named
    tifffile.imwrite(files[1], stack[1][:30])
    with pytest.raises(InputError, match="plane z1 is 48x30") as err:
        read_planes(files, focus)
    assert err.value.path == str(files[1])


# --------------------------------------------------------------------------- synth + store


def test_focal_stack_is_the_scene_at_focus_and_inverts_below():
    rng = np.random.default_rng(0)
    scene = np.full((64, 64), 20000, np.uint16)
    scene[24:40, 24:40] = 15000  # a dark cell
    stack = focal_stack(scene, 3, rng, read_noise=0.0)
    np.testing.assert_array_equal(stack[1], scene)
    centre = (slice(28, 36), slice(28, 36))
    assert stack[0][centre].mean() > 20000 > stack[2][centre].mean()  # contrast reverses
    assert np.abs(np.diff(stack[2].astype(float), axis=1)).max() < 5000  # blurred


@pytest.fixture(scope="module")
def mf_plate(tmp_path_factory):
    """A 3-plane synthetic plate (one file per plane, annotated on z1), corrected."""
    root = tmp_path_factory.mktemp("mf")
    synth_plate(
        root / "mf1",
        "mf1",
        n_images=3,
        shape=(96, 96),
        seed=5,
        cells_per_image=(4, 6),
        mean_radius_px=9,
        planes=3,
        plane_files=True,
    )
    store = root / "mf1.ome.zarr"
    focus = {"planes": 3, "select": [0, 1, 2]}
    correct_illumination(
        str(root / "mf1" / "images"),
        str(store),
        str(root / "skipped.tsv"),
        plate="mf1",
        regex=RX,
        modality="brightfield",
        pixel_size_um=0.65,
        illumination=ILL,
        chunk=64,
        focus=focus,
    )
    manifest = root / "ann" / "manifest.parquet"
    import_annotations(
        str(root / "mf1" / "cvat.xml"),
        str(root / "mf1" / "images"),
        str(manifest),
        str(root / "ann_skipped.tsv"),
        plate="mf1",
        annotations={"labels": ["cell"]},
        on_bad_input="error",
        focus=focus,
    )
    return root, store, manifest


def test_store_keeps_the_corrected_planes_as_channels(mf_plate):
    root, store, _ = mf_plate
    ps = open_plate(store, mode="r")
    assert ps.channels == 3 and ps.metadata["focus"] == {"planes": 3, "select": [0, 1, 2]}
    image_id = "mf1_A01_f00_t00"
    assert ps.images["image_id"].tolist() == [
        "mf1_A01_f00_t00",
        "mf1_A02_f00_t00",
        "mf1_A03_f00_t00",
    ]
    arr, t = ps.image_array(image_id)
    assert arr.shape == (1, 3, 96, 96) and arr.chunks == (1, 1, 64, 64)
    img = ps.read(image_id)
    assert img.shape == (96, 96, 3) and img.dtype == np.float32
    for k in range(3):  # each plane corrected like a single image
        raw = read_image(root / "mf1" / "images" / f"{image_id}_z{k}.tif").astype("float32")
        np.testing.assert_array_equal(img[..., k], quantise(correct(raw, 12, mode="black")))
    assert not np.array_equal(img[..., 0], img[..., 2])
    np.testing.assert_array_equal(display_plane(img), img[..., 1])
    # one label plane per image, whatever the channels
    labels = create_label_store(root / "labels.zarr", ps)
    labels.write_label(image_id, "mask", np.ones((96, 96), np.uint8))
    arr, _ = labels.label_array(image_id, "mask")
    assert arr.shape == (1, 1, 96, 96)
    np.testing.assert_array_equal(labels.read_label(image_id, "mask"), 1)


def test_single_plane_store_has_no_channel_key(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    tifffile.imwrite(imgs / "P_B03_f00_t00.tif", _planes(1)[0])
    store = tmp_path / "p.ome.zarr"
    correct_illumination(
        str(imgs), str(store), str(tmp_path / "s.tsv"), plate="P", regex=RX,
        modality="brightfield", pixel_size_um=0.65, illumination=ILL, chunk=64,
    )  # fmt: skip
    ps = open_plate(store, mode="r")
    assert ps.channels == 1 and "channels" not in ps._info and "focus" not in ps.metadata
    assert ps.read("P_B03_f00_t00").shape == (40, 48)


def test_annotation_of_a_plane_becomes_the_image_mask(mf_plate):
    root, store, manifest = mf_plate
    df = pd.read_parquet(manifest)
    assert df["stem"].tolist() == ["mf1_A01_f00_t00", "mf1_A02_f00_t00", "mf1_A03_f00_t00"]
    assert df["image"].str.endswith("_z1.tif").all()  # drawn on the in-focus plane
    names = sorted(p.name for p in manifest.parent.iterdir())
    assert "mf1_A01_f00_t00_mask.png" in names and not any("_z1_" in n for n in names)
    truth = read_image(root / "mf1" / "labels" / "mf1_A01_f00_t00_labels.tif")
    got = read_image(manifest.parent / "mf1_A01_f00_t00_labels.tif")
    np.testing.assert_array_equal(got > 0, truth > 0)


def test_two_annotated_planes_of_one_image_are_an_error(tmp_path):
    man = tmp_path / "manifest.parquet"
    pd.DataFrame({"stem": ["im_z0", "im_z2"], "image": ["a", "b"]}).to_parquet(man)
    with pytest.raises(InputError, match="annotated twice") as err:
        annotations_to_images(man)
    assert err.value.path == str(man)


# --------------------------------------------------------------------------- training


def test_primaries_of_planes_leave_the_channels_apart():
    drawn = {p for i in range(60) for _, p, _ in variant_plan(f"im{i}", 3, planes=3)}
    assert drawn and not drawn & set(CHANNEL_MIXING)
    grey = {p for i in range(60) for _, p, _ in variant_plan(f"im{i}", 3)}
    assert grey & set(CHANNEL_MIXING)  # grey images keep the whole pool
    assert variant_plan("im0", 3) == variant_plan("im0", 3, planes=1)


@pytest.mark.parametrize("secondary", ["Affine", "ElasticTransform", "RandomResizedCrop"])
def test_a_geometric_transform_moves_every_plane_alike(secondary):
    rng = np.random.default_rng(1)
    planes = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = (rng.random((64, 64)) > 0.7).astype(np.uint8)
    img, m = augment_variant(planes, mask, "none", secondary, seed=9)
    for k in range(3):
        alone, m_alone = augment_variant(
            np.repeat(planes[..., k : k + 1], 3, axis=2), mask, "none", secondary, seed=9
        )
        np.testing.assert_array_equal(img[..., k], alone[..., 0])
        np.testing.assert_array_equal(m, m_alone)


def _pair(image_id, image, plate="p"):
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[8:24, 8:24] = 1
    return {
        "image_id": image_id,
        "plate": plate,
        "modality": "brightfield",
        "image": image,
        "mask": mask,
    }


def test_training_store_of_planes_and_mixtures(tmp_path):
    rng = np.random.default_rng(2)
    planes = rng.random((32, 32, 3)).astype(np.float32)
    df = build_training_store(
        [_pair("a", planes)],
        tmp_path / "s.zarr",
        tmp_path / "m.parquet",
        patch_size=32,
        n_variants=4,
    )
    images, _ = augment.open_training_store(tmp_path / "s.zarr")
    assert training_store_planes(tmp_path / "s.zarr") == 3
    np.testing.assert_array_equal(images[0], np.rint(planes * 255).astype(np.uint8))
    assert not set(df["primary"]) & set(CHANNEL_MIXING)
    build_training_store(
        [_pair("g", planes[..., 0])],
        tmp_path / "g.zarr",
        tmp_path / "g.parquet",
        patch_size=32,
        n_variants=2,
    )
    assert training_store_planes(tmp_path / "g.zarr") == 1
    with pytest.raises(InputError, match="differ in focal planes") as err:
        build_training_store(
            [_pair("a", planes, "mf"), _pair("g", planes[..., 0], "flat")],
            tmp_path / "x.zarr",
            tmp_path / "x.parquet",
            patch_size=32,
            n_variants=2,
        )
    assert "3 plane(s) e.g. a (plate mf)" in str(err.value)
    assert not (tmp_path / "x.zarr").exists()


def test_check_training_channels():
    assert check_training_channels({}) == 1
    assert check_training_channels({"a": 3, "b": 3}) == 3
    assert check_training_channels({"a": 1}, patch_sets=2) == 1
    with pytest.raises(InputError, match="1 plane\\(s\\): b; 3 plane\\(s\\): a") as err:
        check_training_channels({"a": 3, "b": 1}, where="plates.tsv")
    assert err.value.path == "plates.tsv"
    with pytest.raises(InputError, match="2 patch set"):
        check_training_channels({"a": 3}, patch_sets=2)


def test_tiny_model_trains_on_planes_and_predicts_a_plate(mf_plate, tmp_path):
    """Augment from the plate store, train 2 steps, predict the plate through the ensemble."""
    keras = pytest.importorskip("keras")
    from brightseg.ensemble import make_predictor, predict_plate
    from brightseg.rules.training import augment as augment_rule
    from brightseg.split import apply_split
    from brightseg.train import train_model

    _, store, manifest = mf_plate
    augment_rule(
        [str(store)],
        [str(manifest)],
        str(tmp_path / "patches.zarr"),
        str(tmp_path / "raw.parquet"),
        training={"patch_size": 64, "stride": 32, "n_variants": 2},
        patch_sets=[],
        seed=1,
    )
    assert training_store_planes(tmp_path / "patches.zarr") == 3
    apply_split(tmp_path / "raw.parquet", tmp_path / "m.parquet", val_fraction=0.34, seed=1)
    old = keras.mixed_precision.global_policy().name
    try:
        train_model(
            tmp_path / "patches.zarr",
            tmp_path / "m.parquet",
            tmp_path / "run",
            spec={
                "architecture": "small_unet",
                "loss": "bce_dice",
                "model_kwargs": {"base_filters": 4},
            },
            training={
                "epochs": 1,
                "batch_size": 2,
                "steps_per_epoch": 2,
                "val_steps": 1,
                "precision": "float32",
                "encoder_weights": "none",
                "patch_size": 64,
            },
            seed=1,
        )
    finally:
        keras.mixed_precision.set_global_policy(old)
    from brightseg.models import load_checkpoint

    model = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_01.keras")
    seen = []

    def recording(batch):
        seen.append(np.array(batch))
        return predictor(batch)

    predictor = make_predictor(model, batch_size=4, tile=64)
    ps = open_plate(store, mode="r")
    for name, max_pixels in (("whole.zarr", None), ("bands.zarr", 1000)):
        labels = create_label_store(tmp_path / name, ps)
        df = predict_plate(
            labels, [recording], tile=64, overlap=16, batch_size=4, max_image_pixels=max_pixels
        )
        assert len(df) == 3 and df.attrs["engine"]["n_images"] == 3
        mask = labels.read_label("mf1_A01_f00_t00", "mask")
        assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 1}
    # the models saw the three planes, not one replicated
    first = seen[0][0]
    np.testing.assert_array_equal(first, ps.read("mf1_A01_f00_t00")[:64, :64])
    assert not np.array_equal(first[..., 0], first[..., 2])


def test_one_selected_plane_is_a_single_plane_plate(tmp_path):
    imgs = tmp_path / "imgs"
    stack = _planes(5, seed=6)
    _write_stack(imgs, "P_B03_f00_t00", stack)
    store = tmp_path / "p.ome.zarr"
    correct_illumination(
        str(imgs), str(store), str(tmp_path / "s.tsv"), plate="P", regex=RX,
        modality="brightfield", pixel_size_um=0.65, illumination=ILL, chunk=64,
        focus={"planes": 5, "select": [3]},
    )  # fmt: skip
    ps = open_plate(store, mode="r")
    assert ps.channels == 1 and ps.metadata["focus"] == {"planes": 5, "select": [3]}
    np.testing.assert_array_equal(
        ps.read("P_B03_f00_t00"), quantise(correct(stack[3].astype("float32"), 12, mode="black"))
    )


def test_bundle_records_the_planes_and_segment_refuses_them(tmp_path):
    keras = pytest.importorskip("keras")
    from brightseg import bundle as B
    from brightseg.segment import segment_images

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)).save(
        tmp_path / "e1.keras"
    )
    tsv = tmp_path / "ensemble.tsv"
    tsv.write_text(
        f"rank\tpath\tmodel\tloss\tepoch\tval_f1\n1\t{tmp_path}/e1.keras\tu\tbce\t1\t0.8\n"
    )
    ill = {"radius": 12, "unit": "px", "mode": "black", "method": "fast", "percentiles": [1, 99.8]}
    inf = {"tile": 32, "overlap": 8, "vote": "mean", "threshold": 0.5, "tta": False}
    kwargs = dict(illumination=ill, inference=inf, tile=32, pixel_size_um=0.65)
    flat = B.write_bundle(tsv, tmp_path / "flat", **kwargs)
    planes = B.write_bundle(tsv, tmp_path / "planes", **kwargs, input_planes=3)
    assert "input_planes" not in flat["preprocessing"]  # grey bundles are written as before
    assert planes["preprocessing"]["input_planes"] == 3
    with B.open_bundle(tmp_path / "planes") as bundle:
        assert bundle.input_planes == 3
    with B.open_bundle(tmp_path / "flat") as bundle:
        assert bundle.input_planes == 1
    image = tmp_path / "im.tif"
    tifffile.imwrite(image, _planes(1)[0])
    with pytest.raises(InputError, match="take 3 focal planes") as err:
        segment_images([image], tmp_path / "planes", tmp_path / "out")
    assert err.value.path == str(tmp_path / "planes")
