"""Plate sheet parsing and the checks that run before any job."""

from __future__ import annotations

import pytest

from brightseg.errors import InputError
from brightseg.sheet import compile_regex, parse_name, plate_images, read_sheet

HEADER = "plate\timages\tmodality\tpixel_size_um\tannotations\tuse_for_training\n"
RX = r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$"


def write(tmp_path, body):
    p = tmp_path / "plates.tsv"
    p.write_text(HEADER + body)
    return p


def test_read_sheet_types(tmp_path):
    p = write(tmp_path, "p1\timgs\tbrightfield\t0.65\tx.xml\ttrue\np2\timgs2\tphase\t1\t\tno\n")
    df = read_sheet(p)
    assert list(df.index) == ["p1", "p2"]
    assert df.loc["p1", "pixel_size_um"] == pytest.approx(0.65)
    assert df.loc["p1", "use_for_training"] is True or df.loc["p1", "use_for_training"] == True  # noqa: E712
    assert not df.loc["p2", "use_for_training"]
    assert df.loc["p2", "annotations"] == ""


@pytest.mark.parametrize(
    "body, needle",
    [
        (
            "p1\ta\tbrightfield\t0.65\t\tfalse\np1\tb\tbrightfield\t0.65\t\tfalse\n",
            "duplicate plate",
        ),
        ("p1\ta\tbrightfield\tabc\t\tfalse\n", "pixel_size_um"),
        ("p1\ta\tbrightfield\t-1\t\tfalse\n", "pixel_size_um"),
        ("p1\ta\tfluorescence\t0.65\t\tfalse\n", "modality"),
        ("p1\ta\tbrightfield\t0.65\t\ttrue\n", "no annotations"),
        ("p/1\ta\tbrightfield\t0.65\t\tfalse\n", "invalid plate id"),
        ("p1\ta\tbrightfield\t0.65\t\tmaybe\n", "use_for_training"),
    ],
)
def test_read_sheet_errors_name_file(tmp_path, body, needle):
    p = write(tmp_path, body)
    with pytest.raises(InputError) as err:
        read_sheet(p)
    assert str(p) in str(err.value)
    assert needle in str(err.value)


def test_missing_columns(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_text("plate\timages\np1\ta\n")
    with pytest.raises(InputError, match="missing column"):
        read_sheet(p)


def test_parse_name_row_column_and_well():
    rx = compile_regex(RX)
    assert parse_name("plateA_B03_f02_t05", rx) == {
        "row": "B",
        "column": 3,
        "well": "B03",
        "field": 2,
        "timepoint": 5,
    }
    assert parse_name("nonsense", rx) is None
    rx2 = compile_regex(r"^(?P<well>[A-H]\d+)")
    assert parse_name("C7_whatever", rx2)["well"] == "C07"
    assert parse_name("C7_whatever", rx2)["field"] == 0


def test_regex_needs_groups():
    with pytest.raises(InputError, match="named groups"):
        compile_regex(r"(?P<field>\d+)")
    with pytest.raises(InputError, match="invalid regular expression"):
        compile_regex(r"(?P<row>[A-")


def touch(d, *names):
    d.mkdir(exist_ok=True)
    for n in names:
        (d / n).write_bytes(b"x")


def test_plate_images_table_and_errors(tmp_path):
    rx = compile_regex(RX)
    d = tmp_path / "imgs"
    touch(d, "p_A01_f00_t00.tif", "p_A02_f00_t00.tif", "p_B01_f01_t00.tif", "notes.txt")
    df, skipped = plate_images("p", str(d), rx)
    assert list(df["well"]) == ["A01", "A02", "B01"]
    assert skipped == []

    with pytest.raises(InputError, match="does not exist"):
        plate_images("p", str(tmp_path / "missing"), rx)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        plate_images("p", str(empty), rx)
    other = tmp_path / "other"
    touch(other, "a.tif", "b.png")
    with pytest.raises(InputError, match="matches none"):
        plate_images("p", str(other), rx)


def test_plate_images_unmatched_and_duplicates(tmp_path):
    rx = compile_regex(RX)
    d = tmp_path / "imgs"
    touch(d, "p_A01_f00_t00.tif", "p_A01_f00_t00.png", "odd.tif")
    with pytest.raises(InputError):
        plate_images("p", str(d), rx)
    df, skipped = plate_images("p", str(d), rx, on_bad_input="skip")
    assert len(df) == 1
    reasons = sorted(r for _, r in skipped)
    assert reasons == [
        "another image maps to the same well/field/timepoint",
        "file name does not match filename_regex",
    ]


def test_plate_images_glob(tmp_path):
    rx = compile_regex(RX)
    d = tmp_path / "imgs"
    touch(d, "p_A01_f00_t00.tif", "q_A02_f00_t00.tif")
    df, _ = plate_images("p", str(d / "p_*.tif"), rx)
    assert list(df["image_id"]) == ["p_A01_f00_t00"]
