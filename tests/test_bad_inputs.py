"""The bad-input corpus of issue #7, each entry through the function that reads it.

Behaviour per entry (the corpus is written by ``tests/badinputs.py``):

=================================  ==========================================================
entry                              behaviour
=================================  ==========================================================
truncated TIFF                     error | skip ("file is truncated: ... up to byte N")
zero-byte PNG                      error | skip ("file is empty (0 bytes)")
TIFF header 16-bit, 8-bit strips   error | skip ("TIFF header says 16-bit ... strips hold")
uint16 TIFF with values 0..255     read as is; ``io.warn_low_bit_depth`` logs a warning
RGB where grey is expected         luminance 0.299 R + 0.587 G + 0.114 B, logged warning
grey where RGB is expected         accepted: 2-D as stored; the model stage replicates grey
3-D stack where 2-D is expected    error | skip ("expected a 2-D image, got ... shape")
float TIFF with NaN / inf          error | skip ("image contains NaN or infinite values")
mask size differs from its image   error | skip (names the mask, both sizes)
CVAT XML not well-formed           error in both modes (line and column of the fault)
CVAT RLE runs != width*height      error | skip the image (names export, image, mask box)
COCO annotation -> missing image   error | skip the annotation
sheet: duplicate plate id          error in both modes (before any job)
sheet: missing directory           error in both modes (before any job)
sheet: non-numeric pixel size      error in both modes (before any job)
empty plate directory              error in both modes (before any job)
two images on one well/field/tp    error | skip the second (the first in name order is kept)
config value outside its schema    error (Snakemake's schema validation names the key)
=================================  ==========================================================

"error | skip": an :class:`InputError` whose ``path`` is the bad file and whose message
says what is wrong under ``on_bad_input="error"``; under ``"skip"`` exactly that item is
left out, listed with the reason, and every other output is byte-identical to a run
without the bad item.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import badinputs as bi
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image

from brightseg.cvat import import_cvat, load_annotations
from brightseg.errors import InputError
from brightseg.io import read_image, warn_low_bit_depth
from brightseg.maskfolder import import_mask_folder
from brightseg.patches import to_rgb_uint8
from brightseg.platestore import open_plate
from brightseg.rules.preprocess import correct_illumination as correct_plate
from brightseg.sheet import compile_regex, plate_images, read_sheet

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
ILLUMINATION = {
    "radius": 10,
    "unit": "px",
    "mode": "black",
    "method": "fast",
    "percentiles": [1.0, 99.8],
}
REGEX = compile_regex(bi.FILENAME_REGEX)


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (a store or an output folder), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_skipped(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def correct(images: Path, out: Path, on_bad_input: str = "error") -> tuple[Path, Path]:
    store, skipped = out / "P.ome.zarr", out / "skipped.tsv"
    correct_plate(
        str(images),
        str(store),
        str(skipped),
        plate="P",
        regex=bi.FILENAME_REGEX,
        modality="brightfield",
        pixel_size_um=0.65,
        illumination=ILLUMINATION,
        chunk=32,
        on_bad_input=on_bad_input,
    )
    return store, skipped


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary files or stores left behind by an atomic write."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture
def plate(tmp_path) -> Path:
    """A clean 3-image plate (wells A01..A03); returns its root (images/, cvat.xml, coco.json)."""
    return bi.clean_plate(tmp_path / "plate", "P", n_images=3, seed=1)


# --------------------------------------------------------------------------- unreadable images

UNREADABLE = {
    "truncated_tiff": (
        lambda d: bi.write_truncated_tiff(d, "P_A04_f00_t00.tif"),
        r"cannot read image \(file is truncated: the TIFF header places pixel data up to "
        r"byte \d+, but the file has \d+ bytes\)",
    ),
    "truncated_tiff_header": (
        lambda d: bi.write_truncated_tiff(d, "P_A04_f00_t00.tif", keep=0.005),
        r"cannot read image \(TiffFileError|TIFF holds no image",
    ),
    "zero_byte_png": (
        lambda d: bi.write_zero_byte_png(d, "P_A04_f00_t00.png"),
        r"file is empty \(0 bytes\)",
    ),
    "tiff_16bit_header_8bit_data": (
        lambda d: bi.write_tiff_16bit_header_8bit_data(d, "P_A04_f00_t00.tif"),
        r"cannot read image \(TIFF header says 16-bit 64x64 x 1 sample\(s\), 8192 bytes of "
        r"pixel data, but its strips hold 4096 bytes",
    ),
    "tiff_16bit_header_8bit_data_at_end": (
        lambda d: bi.write_tiff_16bit_header_8bit_data(d, "P_A04_f00_t00.tif", trailing=False),
        r"strips hold 4096 bytes|file is truncated",
    ),
    "stack_where_2d_expected": (
        lambda d: bi.write_stack(d, "P_A04_f00_t00.tif", planes=3),
        r"expected a 2-D image, got an array of shape \(3, 64, 64\)",
    ),
    "nan_float_tiff": (
        lambda d: bi.write_nonfinite_tiff(d, "P_A04_f00_t00.tif"),
        r"image contains NaN or infinite values",
    ),
    "inf_float_tiff": (
        lambda d: bi.write_nonfinite_tiff(d, "P_A04_f00_t00.tif", value=-np.inf),
        r"image contains NaN or infinite values",
    ),
}


@pytest.mark.parametrize("entry", sorted(UNREADABLE))
def test_read_image_rejects(tmp_path, entry):
    write, problem = UNREADABLE[entry]
    path = write(tmp_path)
    with pytest.raises(InputError, match=problem) as exc:
        read_image(path)
    assert exc.value.path == str(path)
    assert str(exc.value).startswith(f"{path}: ")


def test_tiff_16bit_header_would_decode_garbage_without_the_check(tmp_path):
    # Why read_image checks strip sizes: tifffile trusts the header and, when the file
    # goes on after the strips, silently returns a 16-bit image made of 8-bit pairs.
    path = bi.write_tiff_16bit_header_8bit_data(tmp_path, "x.tif")
    arr = tifffile.imread(path)
    assert arr.dtype == np.uint16 and arr.shape == (64, 64)
    expected8 = (bi.raw_image(0) >> 8).astype(np.uint8)
    assert not np.array_equal(arr, expected8)


def test_single_plane_stack_is_accepted(tmp_path):
    img = bi.raw_image(3)
    tifffile.imwrite(tmp_path / "one.tif", img[None], metadata=None)
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif"), img)


@pytest.mark.parametrize("entry", sorted(UNREADABLE))
def test_correct_plate_error_and_skip(plate, tmp_path, entry):
    write, problem = UNREADABLE[entry]
    images = plate / "images"
    clean_store, clean_skipped = correct(images, tmp_path / "clean")
    bad = write(images)  # an extra well, A04

    out = tmp_path / "error"
    with pytest.raises(InputError, match=problem) as exc:
        correct(images, out)
    assert exc.value.path == str(bad)
    assert not (out / "P.ome.zarr").exists() and not (out / "skipped.tsv").exists()
    assert leftovers(out) == []

    store, skipped = correct(images, tmp_path / "skip", on_bad_input="skip")
    rows = read_skipped(skipped)
    assert rows[["stage", "plate", "file"]].values.tolist() == [
        ["correct_illumination", "P", str(bad)]
    ]
    assert pd.Series(rows["reason"]).str.contains(problem).all()
    # Everything else exactly as in the run without the bad image.
    assert digest(store) == digest(clean_store)
    assert len(read_skipped(clean_skipped)) == 0


def test_correct_plate_all_images_bad(tmp_path):
    images = tmp_path / "images"
    bi.write_truncated_tiff(images, "P_A01_f00_t00.tif")
    bi.write_zero_byte_png(images, "P_A02_f00_t00.png")
    with pytest.raises(InputError, match="no readable images") as exc:
        correct(images, tmp_path / "out", on_bad_input="skip")
    assert exc.value.path == str(images)
    assert not (tmp_path / "out" / "P.ome.zarr").exists()


# --------------------------------------------------------------------------- readable oddities


def test_8bit_values_in_uint16_read_as_is_with_warning(tmp_path, caplog):
    path = bi.write_8bit_values_in_uint16(tmp_path, "P_A01_f00_t00.tif")
    img = read_image(path)
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img, bi.raw_image(0) >> 8)
    assert img.max() <= 255
    with caplog.at_level(logging.WARNING, logger="brightseg.io"):
        assert warn_low_bit_depth(img, path) is True
    assert f"{path}: 16-bit image holds only 8-bit values" in caplog.text
    caplog.clear()
    assert warn_low_bit_depth(bi.raw_image(0), path) is False  # real 16-bit data
    assert warn_low_bit_depth(img.astype(np.uint8), path) is False  # 8-bit file
    assert caplog.text == ""


def test_8bit_values_in_uint16_correct_like_full_range(tmp_path):
    # Percentile normalisation makes the correction scale-free: the 8-bit image and the
    # same image scaled to 16 bits (x 257) give the same corrected plate (1 LSB rounding).
    low, full = tmp_path / "low", tmp_path / "full"
    base = (bi.raw_image(0) >> 8).astype(np.uint16)
    low.mkdir()
    full.mkdir()
    for i in range(2):
        img = np.roll(base, 9 * i, axis=1)
        tifffile.imwrite(low / f"P_A0{i + 1}_f00_t00.tif", img, metadata=None)
        tifffile.imwrite(full / f"P_A0{i + 1}_f00_t00.tif", img * 257, metadata=None)
    a, _ = correct(low, tmp_path / "a")
    b, _ = correct(full, tmp_path / "b")
    sa, sb = open_plate(a, mode="r"), open_plate(b, mode="r")
    for image_id in ("P_A01_f00_t00", "P_A02_f00_t00"):
        x, y = sa.read(image_id), sb.read(image_id)
        assert x.std() > 0.05  # a real image, not zeros
        np.testing.assert_allclose(x, y, atol=1.5 / 65535)


def test_correct_plate_warns_on_8bit_values_in_uint16(plate, tmp_path, caplog):
    bad = bi.write_8bit_values_in_uint16(plate / "images", "P_A04_f00_t00.tif")
    with caplog.at_level(logging.WARNING):
        store, skipped = correct(plate / "images", tmp_path / "out")
    assert f"{bad}: 16-bit image holds only 8-bit values" in caplog.text
    assert "P_A04_f00_t00" in set(open_plate(store, mode="r").images["image_id"])
    assert len(read_skipped(skipped)) == 0


@pytest.mark.parametrize("name", ["rgb.png", "rgb.tif"])
def test_rgb_where_grey_expected_becomes_luminance(tmp_path, caplog, name):
    path = bi.write_rgb(tmp_path, name)
    rgb = bi.rgb_array(0).astype(np.float64)
    # ITU-R 601-2 luma, computed here independently of the reader.
    expected = np.round(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    with caplog.at_level(logging.WARNING, logger="brightseg.io"):
        grey = read_image(path)
    assert grey.shape == (64, 64) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, expected.astype(np.uint8))
    assert f"{path}: RGB image converted to luminance" in caplog.text
    # Pillow's own 'L' conversion agrees to within rounding.
    pil = np.asarray(Image.fromarray(bi.rgb_array(0)).convert("L")).astype(int)
    assert np.abs(pil - grey.astype(int)).max() <= 1


def test_grey_stored_as_rgb_is_exact_and_silent(tmp_path, caplog):
    path = bi.write_grey_as_rgb(tmp_path, "g.png")
    with caplog.at_level(logging.WARNING):
        grey = read_image(path)
    np.testing.assert_array_equal(grey, (bi.raw_image(0) >> 8).astype(np.uint8))
    assert caplog.text == ""


def test_rgb_image_in_a_plate_is_corrected_from_its_luminance(plate, tmp_path, caplog):
    bad = bi.write_rgb(plate / "images", "P_A04_f00_t00.png")
    with caplog.at_level(logging.WARNING):
        store, skipped = correct(plate / "images", tmp_path / "out", on_bad_input="skip")
    assert f"{bad}: RGB image converted to luminance" in caplog.text
    assert len(read_skipped(skipped)) == 0
    ps = open_plate(store, mode="r")
    assert "P_A04_f00_t00" in set(ps.images["image_id"])
    assert ps.read("P_A04_f00_t00").std() > 0.05


def test_grey_where_rgb_expected_is_kept_2d(tmp_path):
    path = bi.write_grey_png(tmp_path, "g.png")
    written = (bi.raw_image(0) >> 8).astype(np.uint8)
    arr = read_image(path, grey=False)
    assert arr.shape == (64, 64)
    np.testing.assert_array_equal(arr, written)
    # RGB stays RGB when asked for ...
    rgb = read_image(bi.write_rgb(tmp_path, "c.png"), grey=False)
    np.testing.assert_array_equal(rgb, bi.rgb_array(0))
    # ... and the model stage turns grey into its 3 equal channels itself.
    three = to_rgb_uint8(arr / 255.0)
    assert three.shape == (64, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], written)


# --------------------------------------------------------------------------- masks


def test_mask_size_differs_error_and_skip(tmp_path):
    images, masks = bi.write_mask_folder(tmp_path / "mf")
    clean_manifest, _ = import_mask_folder(images, masks, tmp_path / "clean", plate="P")
    bad = masks / "img1.png"
    Image.fromarray(np.asarray(Image.open(bad))[:, :48]).save(bad)

    with pytest.raises(InputError) as exc:
        import_mask_folder(images, masks, tmp_path / "error", plate="P")
    assert exc.value.path == str(bad)
    assert f"mask is 48x64 (width x height) but its image {images / 'img1.tif'} is 64x64" in str(
        exc.value
    )
    assert not (tmp_path / "error" / "manifest.parquet").exists()

    manifest, skipped = import_mask_folder(
        images, masks, tmp_path / "skip", plate="P", on_bad_input="skip"
    )
    assert skipped["file"].tolist() == [str(bad)]
    assert "mask is 48x64" in skipped["reason"][0]
    assert manifest["stem"].tolist() == ["img0", "img2"]
    pd.testing.assert_frame_equal(
        manifest, clean_manifest[clean_manifest["stem"] != "img1"].reset_index(drop=True)
    )
    clean, got = digest(tmp_path / "clean"), digest(tmp_path / "skip")
    del clean["manifest.parquet"], got["manifest.parquet"]
    assert got == {k: v for k, v in clean.items() if not k.startswith("img1_")}


# --------------------------------------------------------------------------- CVAT / COCO


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_cvat_xml_not_well_formed(plate, tmp_path, mode):
    bad, line = bi.write_malformed_xml(plate / "cvat.xml", tmp_path / "bad.xml")
    with pytest.raises(InputError, match=rf"XML is not well-formed at line {line}, column \d+"):
        load_annotations(bad, on_bad_input=mode)
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_cvat(bad, plate / "images", out, plate="P", on_bad_input=mode)
    assert exc.value.path == str(bad)
    assert not (out / "manifest.parquet").exists()


def test_cvat_rle_bad_sum_error_and_skip(plate, tmp_path):
    images = plate / "images"
    clean, _ = import_cvat(plate / "cvat.xml", images, tmp_path / "clean", plate="P")
    bad, box = bi.write_bad_rle_xml(
        plate / "cvat.xml", tmp_path / "bad.xml", image="P_A02_f00_t00.tif"
    )
    w, h = (int(v.split("=")[1]) for v in box.split()[2:])

    # Parsing alone does not decode masks; import checks every shape before writing.
    assert len(load_annotations(bad)) == 3
    with pytest.raises(InputError) as exc:
        import_cvat(bad, images, tmp_path / "error", plate="P")
    msg = str(exc.value)
    assert exc.value.path == str(bad)
    assert "image 'P_A02_f00_t00.tif'" in msg and f"box {box}" in msg
    assert f"expected width*height = {w}*{h} = {w * h}" in msg
    assert not (tmp_path / "error").exists() or not any((tmp_path / "error").iterdir())

    manifest, skipped = import_cvat(bad, images, tmp_path / "skip", plate="P", on_bad_input="skip")
    assert skipped["file"].tolist() == ["P_A02_f00_t00.tif"]
    assert "runs sum to" in skipped["reason"][0] and str(bad) in skipped["reason"][0]
    pd.testing.assert_frame_equal(
        manifest, clean[clean["stem"] != "P_A02_f00_t00"].reset_index(drop=True)
    )
    c, got = digest(tmp_path / "clean"), digest(tmp_path / "skip")
    del c["manifest.parquet"], got["manifest.parquet"]
    assert got == {k: v for k, v in c.items() if not k.startswith("P_A02_")}


def test_cvat_missing_image_error_and_skip(plate, tmp_path):
    images = plate / "images"
    import_cvat(plate / "cvat.xml", images, tmp_path / "clean", plate="P")
    bad = bi.write_xml_missing_image(
        plate / "cvat.xml", tmp_path / "bad.xml", name="P_A09_f00_t00.tif"
    )
    with pytest.raises(
        InputError, match=r"image 'P_A09_f00_t00.tif' listed in .* is missing"
    ) as exc:
        import_cvat(bad, images, tmp_path / "error", plate="P")
    assert exc.value.path == str(images / "P_A09_f00_t00.tif")
    assert not (tmp_path / "error" / "manifest.parquet").exists()

    _, skipped = import_cvat(bad, images, tmp_path / "skip", plate="P", on_bad_input="skip")
    assert skipped["file"].tolist() == ["P_A09_f00_t00.tif"]
    assert "is missing from" in skipped["reason"][0]
    assert digest(tmp_path / "skip") == digest(tmp_path / "clean")  # manifest included


def test_coco_missing_image_id_error_and_skip(plate, tmp_path):
    images = plate / "images"
    import_cvat(plate / "coco.json", images, tmp_path / "clean", plate="P")
    bad, aid = bi.write_coco_missing_image_id(plate / "coco.json", tmp_path / "bad.json")
    problem = f"annotation id {aid} refers to image id 999, which is not in 'images'"
    with pytest.raises(InputError, match=problem) as exc:
        load_annotations(bad)
    assert exc.value.path == str(bad)
    with pytest.raises(InputError, match=problem):
        import_cvat(bad, images, tmp_path / "error", plate="P")
    assert not (tmp_path / "error" / "manifest.parquet").exists()

    _, skipped = import_cvat(bad, images, tmp_path / "skip", plate="P", on_bad_input="skip")
    assert skipped["file"].tolist() == [f"{bad} annotation id {aid}"]
    assert problem in skipped["reason"][0]
    assert digest(tmp_path / "skip") == digest(tmp_path / "clean")


# --------------------------------------------------------------------------- plate sheet


def test_sheet_duplicate_plate_id(tmp_path):
    sheet = bi.write_sheet_duplicate_plate(tmp_path / "plates.tsv", tmp_path)
    with pytest.raises(InputError, match=r"duplicate plate id\(s\): \['P1'\]") as exc:
        read_sheet(sheet)
    assert exc.value.path == str(sheet)


def test_sheet_non_numeric_pixel_size(tmp_path):
    sheet = bi.write_sheet_bad_pixel_size(tmp_path / "plates.tsv", tmp_path)
    with pytest.raises(
        InputError, match=r"plate\(s\) \['P1'\]: pixel_size_um must be a positive number"
    ) as exc:
        read_sheet(sheet)
    assert exc.value.path == str(sheet)


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_sheet_missing_directory(plate, tmp_path, mode):
    missing = tmp_path / "nowhere"
    sheet = bi.write_sheet_missing_dir(tmp_path / "plates.tsv", plate / "images", missing)
    df = read_sheet(sheet)  # the sheet itself is well-formed
    table, skipped = plate_images("P1", df.loc["P1", "images"], REGEX, sheet_path=str(sheet))
    assert len(table) == 3 and skipped == []
    with pytest.raises(InputError) as exc:
        plate_images("P2", df.loc["P2", "images"], REGEX, sheet_path=str(sheet), on_bad_input=mode)
    assert exc.value.path == str(missing)
    assert f"plate 'P2': image directory does not exist ({sheet})" in str(exc.value)


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_empty_plate_directory(tmp_path, mode):
    empty = bi.write_empty_plate_dir(tmp_path / "empty")
    with pytest.raises(InputError, match=r"plate 'P': no images \(.tif, .tiff, .png") as exc:
        plate_images("P", str(empty), REGEX, on_bad_input=mode)
    assert exc.value.path == str(empty)


def test_duplicate_well_field_timepoint_error_and_skip(plate, tmp_path):
    images = plate / "images"
    clean_store, _ = correct(images, tmp_path / "clean")
    dup = bi.write_duplicate_well(images)
    original = images / "P_A01_f00_t00.tif"
    with pytest.raises(InputError, match="images map to the same well/field/timepoint") as exc:
        plate_images("P", str(images), REGEX)
    assert str(original) in exc.value.path and str(dup) in exc.value.path

    table, skipped = plate_images("P", str(images), REGEX, on_bad_input="skip")
    assert table["path"].tolist() == [str(images / f"P_A0{i}_f00_t00.tif") for i in (1, 2, 3)]
    assert skipped == [(str(dup), "another image maps to the same well/field/timepoint")]

    with pytest.raises(InputError, match="same well/field/timepoint"):
        correct(images, tmp_path / "error")
    store, skipped_tsv = correct(images, tmp_path / "skip", on_bad_input="skip")
    assert read_skipped(skipped_tsv)["file"].tolist() == [str(dup)]
    assert digest(store) == digest(clean_store)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("key", sorted(bi.BAD_CONFIG))
def test_config_value_outside_schema(key):
    from brightseg.config import validate_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate_config(config)  # the shipped config is valid
    bad = bi.patch_config(config, bi.BAD_CONFIG[key])
    with pytest.raises(InputError) as exc:
        validate_config(bad, source="config/config.yaml")
    msg = str(exc.value)
    assert msg.startswith("config/config.yaml: ") and f"config key '{key}'" in msg
    value = bi.BAD_CONFIG[key]
    for part in key.split("."):
        value = value[part]
    assert repr(value) in msg or str(value) in msg


# --------------------------------------------------------------------------- the corpus itself


def test_corpus_writes_every_entry(tmp_path):
    paths = bi.write_corpus(tmp_path)
    assert set(paths) == {e.name for e in bi.CORPUS}
    assert len(bi.CORPUS) >= 19
    for name, path in paths.items():
        assert path.exists(), name
    assert paths["zero_byte_png"].stat().st_size == 0
    # Deterministic: the same corpus twice gives the same bytes.
    again = bi.write_corpus(tmp_path / "again")
    for name, path in paths.items():
        if path.is_file():
            assert path.read_bytes() == again[name].read_bytes(), name
    shutil.rmtree(tmp_path / "again")
