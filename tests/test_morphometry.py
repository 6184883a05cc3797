"""Tests for brightseg.morphometry (per-cell measurements and their tables)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from brightseg.errors import InputError
from brightseg.morphometry import (
    CELL_SCHEMA,
    IMAGE_SCHEMA,
    CellTableWriter,
    aggregate_tables,
    contour_overlay,
    crofton_perimeters,
    measure_cells,
    summarise_image,
    write_image_table,
)

META = {
    "plate": "P001",
    "well": "B03",
    "row": "B",
    "column": 3,
    "field": 2,
    "timepoint": 0,
    "image_id": "P001_B03_f2_t0",
}


def _ellipse(shape, cy, cx, a, b):
    """Axis-aligned ellipse: semi-axis ``a`` along x (columns), ``b`` along y."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / b) ** 2 + ((xx - cx) / a) ** 2 <= 1


def _ramanujan(a, b):
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


@pytest.fixture()
def two_cells():
    lab = np.zeros((200, 300), np.uint16)
    lab[_ellipse(lab.shape, 60, 60, 30, 30)] = 1  # disk radius 30
    lab[_ellipse(lab.shape, 140, 180, 80, 20)] = 2  # 1:4 ellipse
    return lab


def test_disk_and_ellipse_shape_descriptors(two_cells):
    df = measure_cells(two_cells, pixel_size_um=1.0, meta=META)
    disk, ell = df.iloc[0], df.iloc[1]
    assert list(df["label"]) == [1, 2]
    assert disk["circularity"] == pytest.approx(1.0, abs=0.05)
    expected = 4 * math.pi * (math.pi * 80 * 20) / _ramanujan(80, 20) ** 2  # 0.536
    assert ell["circularity"] == pytest.approx(expected, rel=0.03)
    assert ell["perimeter_px"] == pytest.approx(_ramanujan(80, 20), rel=0.02)
    assert disk["perimeter_px"] == pytest.approx(2 * math.pi * 30, rel=0.02)
    assert ell["aspect_ratio"] == pytest.approx(4.0, rel=0.03)
    # moment axes are the full axes of the equivalent ellipse: 160 and 40 px
    assert ell["major_axis_um"] == pytest.approx(160, rel=0.02)
    assert ell["minor_axis_um"] == pytest.approx(40, rel=0.03)
    assert ell["eccentricity"] == pytest.approx(math.sqrt(1 - 1 / 16), abs=0.01)
    # major axis along the columns: 90 degrees from the rows axis
    assert abs(ell["orientation_deg"]) == pytest.approx(90, abs=1)
    # convex shapes: solidity and convexity about 1
    for row in (disk, ell):
        assert row["solidity"] == pytest.approx(1.0, abs=0.01)
        assert row["convexity"] == pytest.approx(1.0, abs=0.04)
    assert (disk["centroid_y"], disk["centroid_x"]) == pytest.approx((60, 60), abs=1e-9)
    assert (disk["bbox_y0"], disk["bbox_x0"], disk["bbox_y1"], disk["bbox_x1"]) == (30, 30, 91, 91)
    assert not disk["touches_border"]


def test_non_convex_cell():
    lab = np.zeros((100, 100), np.uint8)
    lab[20:80, 20:80] = 1
    lab[35:80, 40:60] = 0  # a U shape: notch of 45 x 20 px
    row = measure_cells(lab, pixel_size_um=1.0).iloc[0]
    area = 60 * 60 - 45 * 20
    assert row["area_px"] == area
    assert row["solidity"] == pytest.approx(area / 3600, abs=1e-9)  # hull is the square
    assert row["convexity"] < 0.8


def test_against_regionprops(two_cells):
    from skimage.measure import regionprops

    rng = np.random.default_rng(0)
    lab = two_cells.astype(np.int32) * 5  # non-sequential labels 5, 10
    lab[150:170, 10:30] = 7
    img = rng.random(lab.shape).astype(np.float32)
    df = measure_cells(lab, img, pixel_size_um=1.0)
    assert list(df["label"]) == [5, 7, 10]
    for p, (_, r) in zip(regionprops(lab, intensity_image=img), df.iterrows(), strict=True):
        assert r["label"] == p.label
        assert r["area_px"] == p.area
        assert r["perimeter_px"] == pytest.approx(p.perimeter_crofton, rel=1e-9)
        assert r["major_axis_um"] == pytest.approx(p.axis_major_length, rel=1e-9)
        assert r["minor_axis_um"] == pytest.approx(p.axis_minor_length, rel=1e-9)
        assert r["eccentricity"] == pytest.approx(p.eccentricity, abs=1e-9)
        d = (r["orientation_deg"] - math.degrees(p.orientation)) % 180  # same axis
        assert min(d, 180 - d) < 1e-6
        assert (r["centroid_y"], r["centroid_x"]) == pytest.approx(p.centroid)
        assert (r["bbox_y0"], r["bbox_x0"], r["bbox_y1"], r["bbox_x1"]) == p.bbox
        assert r["mean_intensity"] == pytest.approx(p.intensity_mean, rel=1e-5)
        assert r["std_intensity"] == pytest.approx(p.intensity_std, rel=1e-4)


def test_crofton_matches_skimage_per_label():
    from skimage.measure import perimeter_crofton

    rng = np.random.default_rng(3)
    lab = rng.integers(0, 4, (40, 50))
    per = crofton_perimeters(lab, 3)
    for i in (1, 2, 3):
        assert per[i] == pytest.approx(perimeter_crofton(lab == i, 4), rel=1e-12)


def test_areas_use_pixel_size(two_cells):
    df1 = measure_cells(two_cells, pixel_size_um=1.0)
    df05 = measure_cells(two_cells, pixel_size_um=0.5)
    np.testing.assert_array_equal(df05["area_px"], df1["area_px"])
    np.testing.assert_allclose(df05["area_um2"], df05["area_px"] * 0.25)
    np.testing.assert_allclose(df05["perimeter_um"], df05["perimeter_px"] * 0.5)
    np.testing.assert_allclose(df05["major_axis_um"], df1["major_axis_um"] * 0.5)
    np.testing.assert_allclose(df05["circularity"], df1["circularity"])  # dimensionless


def test_schema_dtypes_and_meta(two_cells):
    df = measure_cells(two_cells, pixel_size_um=0.65, meta=META)
    assert list(df.columns) == CELL_SCHEMA.names
    assert (df["well"] == "B03").all() and (df["column"] == 3).all()
    assert df["field"].dtype == np.int32 and df["label"].dtype == np.int64
    assert df["area_um2"].dtype == np.float64 and df["touches_border"].dtype == bool
    assert df["mean_intensity"].isna().all()  # no intensity image given
    empty = measure_cells(np.zeros((10, 10), np.uint16), pixel_size_um=1.0, meta=META)
    assert len(empty) == 0
    assert list(empty.columns) == CELL_SCHEMA.names
    assert empty.dtypes.equals(df.dtypes)
    with pytest.raises(ValueError, match="unknown meta"):
        measure_cells(two_cells, pixel_size_um=1.0, meta={"wel": "B03"})
    partial = measure_cells(two_cells, pixel_size_um=1.0, meta={"plate": "P9"})
    assert (partial["plate"] == "P9").all() and (partial["column"] == -1).all()


def test_touches_border():
    lab = np.zeros((50, 50), np.uint8)
    lab[0:10, 20:30] = 1
    lab[20:30, 20:30] = 2
    lab[40:50, 40:50] = 3
    assert list(measure_cells(lab, pixel_size_um=1.0)["touches_border"]) == [True, False, True]


def test_summarise_image(two_cells):
    df = measure_cells(two_cells, pixel_size_um=0.5, meta=META)
    row = summarise_image(df, two_cells, pixel_size_um=0.5, meta=META)
    assert row["n_cells"] == 2
    fg = np.count_nonzero(two_cells)
    assert row["confluence_pct"] == pytest.approx(100 * fg / two_cells.size)
    assert row["median_area_um2"] == pytest.approx(np.median(df["area_px"]) * 0.25)
    assert row["image_id"] == META["image_id"]
    assert set(row) == set(IMAGE_SCHEMA.names)
    empty = np.zeros((10, 10), np.uint8)
    row = summarise_image(measure_cells(empty, pixel_size_um=1), empty, pixel_size_um=1)
    assert row["n_cells"] == 0 and row["confluence_pct"] == 0 and math.isnan(row["median_area_um2"])


# ------------------------------------------------------------------------------------
# parquet tables
# ------------------------------------------------------------------------------------
def _frames(two_cells):
    a = measure_cells(two_cells, pixel_size_um=1.0, meta={**META, "image_id": "a"})
    b = measure_cells(two_cells[:, :150], pixel_size_um=1.0, meta={**META, "image_id": "b"})
    c = measure_cells(two_cells[:100, :100], pixel_size_um=1.0, meta={**META, "image_id": "c"})
    return a, b, c


def test_cell_table_writer_row_groups_and_schema(tmp_path, two_cells):
    a, b, c = _frames(two_cells)
    path = tmp_path / "tables" / "cells.parquet"
    with CellTableWriter(path) as w:
        for df in (a, b, c):
            w.write(df)
        w.write(measure_cells(np.zeros((5, 5), np.uint8), pixel_size_um=1.0))  # no cells
        assert not path.exists()  # only renamed into place on close
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.equals(CELL_SCHEMA)
    assert pf.metadata.num_row_groups == 3
    assert [pf.metadata.row_group(i).num_rows for i in range(3)] == [len(a), len(b), len(c)]
    back = pd.read_parquet(path)
    expected = pd.concat([a, b, c], ignore_index=True)
    pd.testing.assert_frame_equal(back, expected)
    assert list(tmp_path.joinpath("tables").iterdir()) == [path]  # no temp files left


def test_cell_table_writer_is_atomic(tmp_path, two_cells):
    a, _, _ = _frames(two_cells)
    path = tmp_path / "cells.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with CellTableWriter(path) as w:
            w.write(a)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # an existing table survives a failed rewrite untouched
    with CellTableWriter(path) as w:
        w.write(a)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="missing columns"):
        with CellTableWriter(path) as w:
            w.write(a.drop(columns=["area_um2"]))
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_write_image_table_and_aggregate(tmp_path, two_cells):
    rows1 = []
    crops = (two_cells, two_cells[:, :150], two_cells[:100, :100])
    for df, lab in zip(_frames(two_cells), crops, strict=True):
        rows1.append(summarise_image(df, lab, pixel_size_um=1.0, meta={**META, "plate": "P1"}))
    rows2 = [
        summarise_image(_frames(two_cells)[0], two_cells, pixel_size_um=1.0, meta={"plate": "P2"})
    ]
    p1, p2 = tmp_path / "P1" / "images.parquet", tmp_path / "P2" / "images.parquet"
    write_image_table(rows1, p1)
    write_image_table(rows2, p2)
    assert pq.ParquetFile(p1).schema_arrow.equals(IMAGE_SCHEMA)
    out = tmp_path / "all" / "images.parquet"
    n = aggregate_tables([p1, p2], out, row_group_rows=2)
    assert n == 4
    back = pd.read_parquet(out)
    assert list(back["plate"]) == ["P1", "P1", "P1", "P2"]
    assert list(back["n_cells"]) == [r["n_cells"] for r in rows1 + rows2]
    assert pq.ParquetFile(out).schema_arrow.equals(IMAGE_SCHEMA)
    # empty image table is still a valid table with the schema
    write_image_table([], tmp_path / "empty.parquet")
    assert pq.read_table(tmp_path / "empty.parquet").schema.equals(IMAGE_SCHEMA)


def test_aggregate_cells_and_bad_inputs(tmp_path, two_cells):
    a, b, c = _frames(two_cells)
    paths = []
    for i, df in enumerate((a, b, c)):
        p = tmp_path / f"p{i}" / "cells.parquet"
        with CellTableWriter(p) as w:
            w.write(df)
        paths.append(p)
    out = tmp_path / "cells_all.parquet"
    assert aggregate_tables(paths, out) == len(a) + len(b) + len(c)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.concat([a, b, c], ignore_index=True))
    images = tmp_path / "images.parquet"
    write_image_table([], images)
    with pytest.raises(InputError, match="schema differs"):
        aggregate_tables([paths[0], images], tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="does not exist"):
        aggregate_tables([tmp_path / "nope.parquet"], tmp_path / "bad.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="garbage.parquet"):
        aggregate_tables([garbage], tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


# ------------------------------------------------------------------------------------
# overlay
# ------------------------------------------------------------------------------------
def test_contour_overlay(two_cells):
    img = np.linspace(0, 1, two_cells.size, dtype=np.float32).reshape(two_cells.shape)
    ov = contour_overlay(img, two_cells, seed=0)
    assert ov.shape == (*two_cells.shape, 3) and ov.dtype == np.uint8
    # interior and background are grey, contours are coloured, one colour per cell
    grey = (ov[..., 0] == ov[..., 1]) & (ov[..., 1] == ov[..., 2])
    assert grey[60, 60] and grey[0, 0]
    assert not grey[30, 60]  # top pixel of the disk lies on its contour
    c1 = {tuple(v) for v in ov[(two_cells == 1) & ~grey]}
    c2 = {tuple(v) for v in ov[(two_cells == 2) & ~grey]}
    assert len(c1) == 1 and len(c2) == 1 and c1 != c2
    assert not (~grey & (two_cells == 0)).any()
    # deterministic; the seed changes colours
    assert np.array_equal(ov, contour_overlay(img, two_cells, seed=0))
    assert not np.array_equal(ov, contour_overlay(img, two_cells, seed=1))
    empty = contour_overlay(img, np.zeros_like(two_cells))
    assert (empty[..., 0] == empty[..., 2]).all()


def test_bounded_measurements_stay_in_bounds_for_tiny_cells():
    """A few-pixel object's raster perimeter underestimates P, so 4 pi A / P^2 came out as
    1.02 for one demo cell: circularity and convexity are capped at 1."""
    from brightseg.morphometry import measure_cells

    lab = np.zeros((40, 40), np.uint16)
    k = 1
    for r in range(2, 38, 6):
        for c in range(2, 38, 6):
            size = 1 + (k % 4)
            lab[r : r + size, c : c + size] = k
            k += 1
    df = measure_cells(lab, np.ones(lab.shape, np.float32) * 0.5, pixel_size_um=1.0)
    for col in ("circularity", "convexity", "solidity"):
        assert df[col].between(0, 1).all(), df[col].max()
    assert df["mean_intensity"].eq(0.5).all()


def _bar_pixels(ov, plain, g):
    """Columns of the scale bar's rows that changed and are white."""
    rows = ov[g["y0"] : g["y1"]]
    white = (rows == 255).all(axis=2).all(axis=0)
    changed = (ov != plain)[g["y0"] : g["y1"]].any(axis=2).any(axis=0)
    return white, changed


def test_contour_overlay_scale_bar(two_cells):
    from brightseg.morphometry import scale_bar_geometry

    img = np.linspace(0, 1, two_cells.size, dtype=np.float32).reshape(two_cells.shape)
    plain = contour_overlay(img, two_cells, cell_ids=False)
    ov = contour_overlay(img, two_cells, cell_ids=False, pixel_size_um=0.5)
    g = scale_bar_geometry(two_cells.shape, 0.5)
    # 300 px * 0.5 um = 150 um wide: a fifth is 30 um, the round length below it 20 um
    assert g["length_um"] == 20.0 and g["label"] == "20 um"
    assert g["x1"] <= two_cells.shape[1] and g["y1"] <= two_cells.shape[0]
    white, changed = _bar_pixels(ov, plain, g)
    assert abs(int(white.sum()) - round(20.0 / 0.5)) <= 1
    assert white[g["x0"] : g["x1"]].all() and changed[g["x0"] : g["x1"]].any()
    # the label sits above the bar: pixels there changed too
    above = (ov != plain)[: g["y0"], g["x0"] : g["x1"]].any(axis=2)
    assert above[-30:].any()
    # no pixel size: no bar; inputs untouched, output deterministic
    assert np.array_equal(contour_overlay(img, two_cells, cell_ids=False), plain)
    assert np.array_equal(ov, contour_overlay(img, two_cells, cell_ids=False, pixel_size_um=0.5))
    with pytest.raises(ValueError, match="pixel_size_um"):
        contour_overlay(img, two_cells, pixel_size_um=0.0)


def test_contour_overlay_bar_length_follows_pixel_size():
    from brightseg.morphometry import scale_bar_geometry

    lab = np.zeros((120, 400), np.uint16)
    img = np.zeros(lab.shape, np.float32)
    plain = contour_overlay(img, lab)
    for px in (0.65, 1.3, 0.1):
        g = scale_bar_geometry(lab.shape, px)
        assert g["length_um"] <= 0.2 * 400 * px < 2.5 * g["length_um"]
        white, _ = _bar_pixels(contour_overlay(img, lab, pixel_size_um=px), plain, g)
        assert abs(int(white.sum()) - round(g["length_um"] / px)) <= 1


def test_contour_overlay_title_and_cell_ids(two_cells):
    img = np.full(two_cells.shape, 0.5, np.float32)
    plain = contour_overlay(img, two_cells, cell_ids=False)
    titled = contour_overlay(img, two_cells, cell_ids=False, title="P001_B03_f2_t0")
    diff = (titled != plain).any(axis=2)
    ys, xs = np.nonzero(diff)
    assert diff.any() and ys.max() < 40 and xs.min() < 10  # top-left corner only
    assert titled.shape == plain.shape
    ids = contour_overlay(img, two_cells)
    diff = (ids != plain).any(axis=2)
    # each number is drawn at its cell's centroid: (60, 60) and (140, 180)
    assert diff[50:70, 50:70].any() and diff[130:150, 170:190].any()
    assert not diff[:, 100:140].any()  # nothing between the cells
    # more cells than max_ids: no numbers
    assert np.array_equal(contour_overlay(img, two_cells, max_ids=1), plain)
