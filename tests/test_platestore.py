"""Tests for brightseg.platestore (OME-NGFF HCS plate store)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from brightseg.errors import InputError
from brightseg.platestore import open_plate, write_plate

H, W = 300, 260  # not multiples of 256: partial edge chunks


def _table() -> pd.DataFrame:
    recs = []
    for row in ("B", "C"):
        for field in (0, 1):
            for tp in (5, 20):  # timepoints need not start at 0
                stem = f"{row}03_f{field}_t{tp}"
                recs.append(
                    dict(
                        image_id=stem,
                        row=row,
                        column=3,
                        field=field,
                        timepoint=tp,
                        path=f"/raw/{stem}.tif",
                    )
                )
    # shuffled on purpose: the store orders images itself
    return pd.DataFrame(recs).sample(frac=1.0, random_state=1).reset_index(drop=True)


def _images(df: pd.DataFrame) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i in sorted(df["image_id"]):
        img = rng.random((H, W)).astype(np.float32)
        img[0, 0], img[-1, -1] = 0.0, 1.0
        out[i] = img
    return out


@pytest.fixture()
def plate(tmp_path):
    df = _table()
    imgs = _images(df)
    calls = []

    def load(row):
        calls.append(row["image_id"])
        assert row["path"] == f"/raw/{row['image_id']}.tif"  # the caller's own row
        return imgs[row["image_id"]]

    store = tmp_path / "plates" / "P1.ome.zarr"
    write_plate(
        store,
        "P1",
        df,
        load=load,
        pixel_size_um=0.65,
        modality="brightfield",
        metadata={"objective": "10x"},
    )
    assert sorted(calls) == sorted(df["image_id"])  # each image loaded exactly once
    return store, df, imgs


def test_round_trip_through_api(plate):
    store, df, imgs = plate
    s = open_plate(store)
    assert s.plate == "P1" and s.pixel_size_um == 0.65 and s.modality == "brightfield"
    assert s.metadata == {"objective": "10x"}
    assert set(s.images["image_id"]) == set(df["image_id"])
    rec = s.images.set_index("image_id").loc["C03_f1_t20"]
    assert (rec["row"], rec["column"], rec["field"], rec["timepoint"], rec["t"]) == (
        "C",
        3,
        1,
        20,
        1,
    )
    assert rec["path"] == "C/3/1" and rec["source_path"] == "/raw/C03_f1_t20.tif"
    for image_id, img in imgs.items():
        got = s.read(image_id)
        assert got.dtype == np.float32 and got.shape == (H, W)
        assert np.abs(got - img).max() <= 0.5 / 65535 + 1e-7
        assert s.shape(image_id) == (H, W)
    arr, t = s.image_array("B03_f0_t20")
    assert arr.shape == (2, 1, H, W) and arr.chunks == (1, 1, 256, 256) and t == 1
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(
        arr[t, 0], np.round(imgs["B03_f0_t20"].astype(np.float64) * 65535).astype(np.uint16)
    )
    # chunk files on disk: 2 x 2 chunks per plane (partial edge chunks), 2 planes
    chunk_files = [p for p in (store / "B/3/0/0/c").rglob("*") if p.is_file()]
    assert len(chunk_files) == 2 * 2 * 2


def test_metadata_is_ngff_05(plate):
    store, _, _ = plate
    root = json.loads((store / "zarr.json").read_text())
    ome = root["attributes"]["ome"]
    assert ome["version"] == "0.5"
    assert [r["name"] for r in ome["plate"]["rows"]] == ["B", "C"]
    assert [c["name"] for c in ome["plate"]["columns"]] == ["3"]
    assert [w["path"] for w in ome["plate"]["wells"]] == ["B/3", "C/3"]
    assert root["attributes"]["brightseg"]["images"]["B03_f1_t5"]["t"] == 0
    field = json.loads((store / "B/3/1/zarr.json").read_text())["attributes"]["ome"]
    ms = field["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 0.65, 0.65]


def test_readable_by_ome_zarr_reader(plate):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Plate, Reader, Well

    store, _, imgs = plate
    s = open_plate(store)
    s.write_label("B03_f0_t5", "mask", (imgs["B03_f0_t5"] > 0.5).astype(np.uint8))

    nodes = list(Reader(parse_url(str(store)))())
    assert nodes[0].first(Plate) is not None
    assert nodes[0].metadata["metadata"]["plate"]["name"] == "P1"
    # the plate view stitches 2 rows x 1 column of wells, each the first field
    assert nodes[0].data[0].shape == (2, 1, 2 * H, W)

    well = list(Reader(parse_url(str(store / "B" / "3")))())[0]
    assert well.first(Well) is not None

    image_nodes = list(Reader(parse_url(str(store / "B" / "3" / "0")))())
    image = image_nodes[0]
    assert image.first(Multiscales) is not None
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [1.0, 1.0, 0.65, 0.65]
    assert [a["name"] for a in image.metadata["axes"]] == ["t", "c", "y", "x"]
    data = np.asarray(image.data[0])
    assert data.shape == (2, 1, H, W)
    expected = np.round(imgs["B03_f0_t20"].astype(np.float64) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(data[1, 0], expected)
    label_nodes = [n for n in image_nodes if n.first(Label) is not None]
    assert len(label_nodes) == 1 and label_nodes[0].metadata["name"] == "mask"
    np.testing.assert_array_equal(
        np.asarray(label_nodes[0].data[0])[0, 0], (imgs["B03_f0_t5"] > 0.5).astype(np.uint8)
    )


def test_labels_round_trip_and_completion(plate):
    store, _, _ = plate
    s = open_plate(store)
    rng = np.random.default_rng(2)
    cells = rng.integers(0, 70000, size=(H, W)).astype(np.uint32)
    assert not s.has_label("C03_f1_t20", "cells")
    assert s.label_names() == []
    s.write_label("C03_f1_t20", "cells", cells)
    assert s.has_label("C03_f1_t20", "cells")
    assert not s.has_label("C03_f1_t5", "cells")  # same field, other timepoint
    np.testing.assert_array_equal(s.read_label("C03_f1_t20", "cells"), cells)
    assert s.label_names() == ["cells"] and s.label_names("B03_f0_t5") == []
    with pytest.raises(InputError, match="missing or incomplete"):
        s.read_label("C03_f1_t5", "cells")

    # rerun overwrites in place and keeps the other timepoint's label
    s.write_label("C03_f1_t5", "cells", cells[::-1].copy())
    s.write_label("C03_f1_t20", "cells", np.zeros_like(cells))
    assert not s.read_label("C03_f1_t20", "cells").any()
    np.testing.assert_array_equal(s.read_label("C03_f1_t5", "cells"), cells[::-1])
    labels_meta = json.loads((store / "C/3/1/labels/zarr.json").read_text())
    assert labels_meta["attributes"]["ome"]["labels"] == ["cells"]  # not duplicated

    # a chunked writer: create_label clears the image's marker until marked complete
    arr = s.create_label("C03_f1_t5", "cells", np.uint32)
    assert arr.shape == (2, 1, H, W) and arr.chunks == (1, 1, 256, 256)
    assert not s.has_label("C03_f1_t5", "cells")
    _, t = s.image_array("C03_f1_t5")
    arr[t, 0, :128] = 7  # "killed" before the marker: still incomplete
    s2 = open_plate(store, mode="r")
    assert not s2.has_label("C03_f1_t5", "cells")
    arr[t, 0, 128:] = 7
    s.mark_label_complete("C03_f1_t5", "cells")
    assert (open_plate(store).read_label("C03_f1_t5", "cells") == 7).all()

    # another dtype recreates the label; overwrite=False refuses an existing one
    s.write_label("C03_f1_t5", "cells", np.ones((H, W), np.uint16))
    assert s.label_array("C03_f1_t5", "cells")[0].dtype == np.uint16
    assert not s.has_label("C03_f1_t20", "cells")  # its data went with the old array
    with pytest.raises(InputError, match="already exists"):
        s.create_label("C/3/1", "cells", np.uint16, overwrite=False)
    with pytest.raises(InputError):
        s.write_label("C03_f1_t5", "cells", np.ones((H, W + 1), np.uint16))
    with pytest.raises(InputError, match="read-only"):
        s2.write_label("C03_f1_t5", "mask", np.ones((H, W), np.uint8))
    with pytest.raises(InputError, match="no image"):
        s.read("nope")


def test_failed_load_leaves_nothing(tmp_path):
    df = _table()
    imgs = _images(df)
    store = tmp_path / "P1.ome.zarr"
    n = 0

    def load(row):
        nonlocal n
        n += 1
        if n == 5:
            raise RuntimeError("killed")
        return imgs[row["image_id"]]

    with pytest.raises(RuntimeError, match="killed"):
        write_plate(store, "P1", df, load=load, pixel_size_um=0.65, modality="brightfield")
    assert n == 5
    assert list(tmp_path.iterdir()) == []  # no store, no temporary directory


def test_existing_store_replaced_only_on_success(tmp_path):
    df = _table()
    imgs = _images(df)
    store = tmp_path / "P1.ome.zarr"
    write_plate(
        store,
        "P1",
        df,
        load=lambda r: imgs[r["image_id"]],
        pixel_size_um=0.65,
        modality="brightfield",
    )
    before = open_plate(store).read("B03_f0_t5")

    def bad(row):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_plate(store, "P1", df, load=bad, pixel_size_um=0.5, modality="phase")
    s = open_plate(store)
    assert s.modality == "brightfield" and s.pixel_size_um == 0.65
    np.testing.assert_array_equal(s.read("B03_f0_t5"), before)
    assert [p.name for p in tmp_path.iterdir()] == ["P1.ome.zarr"]

    write_plate(
        store,
        "P1",
        df,
        load=lambda r: 1.0 - imgs[r["image_id"]],
        pixel_size_um=0.5,
        modality="phase",
    )
    s = open_plate(store)
    assert s.modality == "phase" and s.pixel_size_um == 0.5
    assert np.abs(s.read("B03_f0_t5") - (1.0 - imgs["B03_f0_t5"])).max() <= 0.5 / 65535 + 1e-7
    assert [p.name for p in tmp_path.iterdir()] == ["P1.ome.zarr"]


def test_shape_mismatch_names_the_image(tmp_path):
    df = _table()
    imgs = _images(df)
    odd = sorted(df["image_id"])[3]
    imgs[odd] = imgs[odd][:, :-1]
    store = tmp_path / "P1.ome.zarr"
    with pytest.raises(InputError, match=odd) as exc:
        write_plate(
            store,
            "P1",
            df,
            load=lambda r: imgs[r["image_id"]],
            pixel_size_um=0.65,
            modality="brightfield",
        )
    assert exc.value.path.endswith(f"{odd}.tif")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.drop(columns="field"), "lacks columns"),
        (lambda d: d.assign(image_id="same"), "duplicate image_id"),
        (lambda d: d.assign(timepoint=0), "share the same"),
        (lambda d: d.assign(row="B-"), "alphanumeric"),
        (lambda d: d.assign(column=1.5), "integer"),
        (lambda d: d.iloc[:0], "empty"),
    ],
)
def test_bad_images_table(tmp_path, mutate, match):
    df = mutate(_table())
    with pytest.raises(InputError, match=match):
        write_plate(
            tmp_path / "P.ome.zarr",
            "P",
            df,
            load=lambda r: np.zeros((4, 4), np.float32),
            pixel_size_um=1.0,
            modality="brightfield",
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_loaded_images_and_arguments(tmp_path):
    df = _table().iloc[:1]
    store = tmp_path / "P.ome.zarr"
    for bad, match in [
        (np.full((4, 4), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((4, 4), np.uint16), "float"),
        (np.zeros((2, 4, 4), np.float32), "2-D"),
        (np.array([[np.nan, 0.0]], np.float32), "NaN"),
    ]:
        with pytest.raises(InputError, match=match):
            write_plate(store, "P", df, load=lambda r, b=bad: b, pixel_size_um=1.0, modality="bf")
    with pytest.raises(InputError, match="pixel size"):
        write_plate(
            store,
            "P",
            df,
            load=lambda r: np.zeros((4, 4), np.float32),
            pixel_size_um=0,
            modality="bf",
        )
    with pytest.raises(InputError, match="JSON"):
        write_plate(
            store,
            "P",
            df,
            load=lambda r: np.zeros((4, 4), np.float32),
            pixel_size_um=1,
            modality="bf",
            metadata={"x": object()},
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="does not exist"):
        open_plate(tmp_path / "missing.ome.zarr")
