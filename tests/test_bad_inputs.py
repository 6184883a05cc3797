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
polygon with NaN / inf coordinate  error | skip the image (no pycocotools call: no segfault)
polygon with coordinates ~1e9      clipped exactly to a margin around the image, warning
COCO list/dict as an id            images[].id: error; image_id/category_id: error | skip
JSON nested 200,000 deep / 5,000   error (limits.max_json_depth / max_int_digits)
  digit integer
zip member declaring 3 GiB         error from its header (limits.max_export_bytes)
CVAT mask box 100000 x 100000      decoded only where it overlaps the image, warning
TIFF/PNG declaring 100000 x 100000 error | skip from the header (limits.max_image_pixels)
palette PNG, CMYK JPEG, planar     read as displayed (palette colours, RGB, interleaved), alpha
  RGB, grey + alpha                of grey + alpha dropped
TIFF with a thumbnail first        the largest page is read, warning
'#' in a sheet path, CSV sheet,    kept; "use tabs"; the value shown and a sane range
  pixel size inf / 0,65
regex group capturing '3b'         error | skip the file
mixed image sizes in a plate       error | skip the images not of the most common size
constant score column (stats)      t, p, d undefined (null) with a reason
temporaries of a killed job        removed when the output is next written
=================================  ==========================================================

"error | skip": an :class:`InputError` whose ``path`` is the bad file and whose message
says what is wrong under ``on_bad_input="error"``; under ``"skip"`` exactly that item is
left out, listed with the reason, and every other output is byte-identical to a run
without the bad item.
"""

from __future__ import annotations

import hashlib
import json
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

from brightseg.annotations.cvat import import_cvat, load_annotations
from brightseg.annotations.maskfolder import import_mask_folder
from brightseg.errors import InputError
from brightseg.io import read_image, warn_low_bit_depth
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


# =========================================================================== issue 14
# Hostile and malformed inputs: no segfault, no traceback, no silent wrong answer, no
# memory blow-up.  Cases that crashed the interpreter (segfaults in pycocotools) or
# allocated gigabytes run in a subprocess under a memory limit, so a regression fails
# the test instead of killing pytest or the machine.

ISOLATED = r"""
import json, sys, resource
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
sys.path.insert(0, {tests!r})
from brightseg.errors import InputError
out = {{}}
try:
{body}
except InputError as exc:
    out["error"] = str(exc)
print("RESULT " + json.dumps(out, default=str))
"""


def isolated(body: str, **values) -> dict:
    """Run ``body`` (Python, indented 4, filling the dict ``out``) in a fresh interpreter
    limited to 3 GiB of address space; returns ``out`` (``error``: an InputError)."""
    import subprocess
    import sys
    import textwrap

    code = ISOLATED.format(
        tests=str(REPO / "tests"), body=textwrap.indent(textwrap.dedent(body), "    ")
    )
    import os

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps({k: str(v) for k, v in values.items()})],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


IMPORT_BOTH = """
import json, sys
from brightseg.annotations.cvat import import_cvat
a = json.loads(sys.argv[1])
try:
    import_cvat(a["bad"], a["images"], a["out"] + "/error", plate="P")
    out["error_mode"] = None
except InputError as exc:
    out["error_mode"] = str(exc)
    out["error_path"] = exc.path
m, skipped = import_cvat(a["bad"], a["images"], a["out"] + "/skip", plate="P",
                         on_bad_input="skip")
out["cells"] = dict(zip(m["stem"], m["n_cells"].astype(int).tolist()))
out["skipped"] = skipped["file"].tolist()
out["reasons"] = skipped["reason"].tolist()
"""


def _clean_cells(plate: Path, export: str, tmp_path: Path) -> dict:
    m, _ = import_cvat(plate / export, plate / "images", tmp_path / "clean", plate="P")
    return dict(zip(m["stem"], m["n_cells"].astype(int).tolist(), strict=True))


# ---- class 1: non-finite and huge polygon coordinates


@pytest.mark.parametrize(
    "entry, export",
    [
        ("cvat_polygon_nan", "cvat.xml"),
        ("coco_polygon_inf", "coco.json"),
    ],
)
def test_non_finite_polygon_error_and_skip_without_crash(plate, tmp_path, entry, export):
    clean = _clean_cells(plate, export, tmp_path)
    if entry == "cvat_polygon_nan":
        bad = bi.write_xml_polygon(
            plate / export, tmp_path / "bad.xml", image="P_A02_f00_t00.tif", points=bi.NAN_POINTS
        )
        victim = "P_A02_f00_t00.tif"
    else:
        bad = bi.write_coco_patched(plate / export, tmp_path / "bad.json", bi._coco_inf_polygon)
        doc = json.loads((plate / export).read_text())
        first = bi._first_polygon(doc)
        victim = next(i["file_name"] for i in doc["images"] if i["id"] == first["image_id"])
    r = isolated(IMPORT_BOTH, bad=bad, images=plate / "images", out=tmp_path)
    assert r["error_mode"] is not None and "non-finite" in r["error_mode"], r
    assert r["error_path"] == str(bad)
    assert f"image {victim!r}" in r["error_mode"]
    assert r["skipped"] == [victim]
    stem = Path(victim).stem
    assert r["cells"] == {k: v for k, v in clean.items() if k != stem}


@pytest.mark.parametrize("export", ["cvat.xml", "coco.json"])
def test_huge_polygon_is_clipped_without_crash(plate, tmp_path, export):
    clean = _clean_cells(plate, export, tmp_path)
    if export == "cvat.xml":
        bad = bi.write_xml_polygon(
            plate / export, tmp_path / "bad.xml", image="P_A02_f00_t00.tif", points=bi.HUGE_POINTS
        )
    else:
        bad = bi.write_coco_patched(plate / export, tmp_path / "bad.json", bi._coco_huge_polygon)
    r = isolated(IMPORT_BOTH, bad=bad, images=plate / "images", out=tmp_path)
    assert r["error_mode"] is None and r["skipped"] == []
    # One more cell, somewhere in the image; the others unchanged.
    assert sum(r["cells"].values()) >= sum(clean.values())
    assert set(r["cells"]) == set(clean)


def test_polygon_sanitiser_is_exact_inside_the_image():
    from brightseg.annotations.cvat import _polygon_rle, sanitize_polygon

    # A triangle reaching 10^9 px: clipped to [-w, 2w] x [-h, 2h] ...
    ring = [10.0, 10.0, 1e9, 30.0, 10.0, 50.0]
    (clipped,) = sanitize_polygon([ring], 64, 64)
    xy = np.asarray(clipped).reshape(-1, 2)
    assert xy[:, 0].max() <= 128 and xy[:, 0].min() >= -64
    # ... keeping the direction of every edge: points on the clipped edge lie on the
    # original edge.
    slope = (30.0 - 10.0) / (1e9 - 10.0)
    on_edge = [p for p in xy if abs(p[0] - 128) < 1e-9 and p[1] < 30]
    assert on_edge and abs(on_edge[0][1] - (10.0 + slope * (128 - 10.0))) < 1e-6
    # A ring wholly outside the box is dropped; inside the box it is untouched.
    assert sanitize_polygon([[1e6, 1e6, 1e6 + 5, 1e6, 1e6, 1e6 + 5]], 64, 64) == []
    assert _polygon_rle([[1e6, 1e6, 1e6 + 5, 1e6, 1e6, 1e6 + 5]], 64, 64) is None
    inside = [1.0, 2.0, 30.0, 2.0, 15.5, 40.0]
    assert sanitize_polygon([inside], 64, 64) == [inside]
    for bad in ([1.0, float("nan"), 3.0, 4.0, 5.0, 6.0], [1.0, 2.0, float("-inf"), 4, 5, 6]):
        with pytest.raises(InputError, match="non-finite"):
            sanitize_polygon([bad], 64, 64)
    # Coordinates near the float maximum do not overflow the clipper.
    (big,) = sanitize_polygon([[10.0, 10.0, 1.7e308, 20.0, -1.7e308, 40.0]], 64, 64)
    assert np.all(np.isfinite(big))


# ---- class 2: COCO structure errors


@pytest.mark.parametrize(
    "patch, problem",
    [
        (bi._coco_list_category, r"category_id must be an integer or a string, got list"),
        (bi._coco_dict_image_id, r"image_id must be an integer or a string, got dict"),
    ],
)
def test_coco_unhashable_ids_error_and_skip(plate, tmp_path, patch, problem):
    clean, _ = import_cvat(plate / "coco.json", plate / "images", tmp_path / "clean", plate="P")
    bad = bi.write_coco_patched(plate / "coco.json", tmp_path / "bad.json", patch)
    with pytest.raises(InputError, match=problem) as exc:
        load_annotations(bad)
    assert exc.value.path == str(bad)
    aid = json.loads(bad.read_text())["annotations"][0]["id"]
    assert f"annotation id {aid}" in str(exc.value)
    manifest, skipped = import_cvat(
        bad, plate / "images", tmp_path / "skip", plate="P", on_bad_input="skip"
    )
    assert skipped["file"].tolist() == [f"{bad} annotation id {aid}"]
    assert manifest["n_cells"].sum() == clean["n_cells"].sum() - 1


def test_coco_unhashable_images_id(plate, tmp_path):
    bad = bi.write_coco_patched(plate / "coco.json", tmp_path / "bad.json", bi._coco_list_images_id)
    for mode in ("error", "skip"):
        with pytest.raises(InputError, match=r"images\[0\]\.id .* must be an integer or a string"):
            load_annotations(bad, on_bad_input=mode)


def test_json_nesting_and_digits_are_limited(plate, tmp_path):
    deep = bi.write_deep_json(tmp_path / "deep.json")
    with pytest.raises(InputError, match=r"levels deep, over the limit of 64") as exc:
        load_annotations(deep)
    assert exc.value.path == str(deep)
    digits = bi.write_huge_int_json(plate / "coco.json", tmp_path / "digits.json")
    with pytest.raises(InputError, match=r"integer of 5000 digits .*\(limits\.max_int_digits\)"):
        load_annotations(digits)
    # Brackets inside strings do not count as nesting.
    from brightseg.io import json_depth, load_json

    assert json_depth('{"a": "[[[[{{{{", "b": [[1]]}') == 3
    assert load_json(b'{"a": "[[[["}', "x") == {"a": "[[[["}
    from brightseg.limits import Limits

    with pytest.raises(InputError, match="nested 3 levels deep"):
        load_json("[[[1]]]", "x", Limits(max_json_depth=2))


# ---- class 3: decompression and allocation bombs


def test_zip_declaring_3gib_is_refused_from_its_header(tmp_path):
    bomb = bi.write_zip_bomb(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 1000
    r = isolated(
        """
        import json, sys
        from brightseg.annotations.cvat import load_annotations
        load_annotations(json.loads(sys.argv[1])["bomb"])
        """,
        bomb=bomb,
    )
    assert "decompresses (as declared) to 3,221,225,472 bytes" in r["error"]
    assert "limits.max_export_bytes" in r["error"] and f"{bomb}!annotations.xml" in r["error"]


def test_zip_member_over_the_limit_is_refused(plate, tmp_path):
    import zipfile

    from brightseg.limits import Limits

    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations.xml", (plate / "cvat.xml").read_text() + " " * 200_000)
    assert len(load_annotations(big)) == 3
    with pytest.raises(InputError, match=r"over the limit of 100,000"):
        load_annotations(big, limits=Limits(max_export_bytes=100_000))
    with pytest.raises(InputError, match=r"annotation export has .* over the limit"):
        load_annotations(plate / "cvat.xml", limits=Limits(max_export_bytes=1000))


def test_huge_cvat_mask_box_is_clipped_before_decoding(plate, tmp_path):
    clean = _clean_cells(plate, "cvat.xml", tmp_path)
    bad = bi.write_xml_huge_mask_box(
        plate / "cvat.xml", tmp_path / "bad.xml", image="P_A02_f00_t00.tif"
    )
    r = isolated(IMPORT_BOTH, bad=bad, images=plate / "images", out=tmp_path)
    assert r["error_mode"] is None and r["skipped"] == []
    # The box covers the whole image and is painted on top: one cell.
    assert r["cells"]["P_A02_f00_t00"] == 1
    assert {k: v for k, v in r["cells"].items() if k != "P_A02_f00_t00"} == {
        k: v for k, v in clean.items() if k != "P_A02_f00_t00"
    }
    lab = tifffile.imread(tmp_path / "skip" / "P_A02_f00_t00_labels.tif")
    assert lab.shape == (64, 64) and np.all(lab == 1)


def test_clipped_mask_decoding_matches_full_decoding():
    from brightseg.annotations.cvat import decode_cvat_rle

    rng = np.random.default_rng(0)
    box = rng.random((9, 13)) < 0.4
    flat = box.ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    for left, top in ((0, 0), (-4, -3), (10, 5), (-20, 0), (3, -8)):
        got = decode_cvat_rle(runs, left, top, 13, 9, (12, 15))
        want = np.zeros((12, 15), bool)
        for y in range(9):
            for x in range(13):
                if 0 <= top + y < 12 and 0 <= left + x < 15:
                    want[top + y, left + x] = box[y, x]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("writer", ["tiff", "png"])
def test_image_declaring_100000px_is_refused_from_its_header(tmp_path, writer):
    write = bi.write_huge_tiff if writer == "tiff" else bi.write_huge_png
    bad = write(tmp_path, f"P_A04_f00_t00.{'tif' if writer == 'tiff' else 'png'}")
    assert bad.stat().st_size < 200_000
    r = isolated(
        """
        import json, sys
        from brightseg.io import read_image
        read_image(json.loads(sys.argv[1])["bad"])
        """,
        bad=bad,
    )
    assert r["error"].startswith(f"{bad}: ")
    assert "limits.max_image_pixels" in r["error"]
    from brightseg.io import image_header

    with pytest.raises(InputError, match="max_image_pixels"):
        image_header(bad)


def test_huge_mask_in_a_mask_folder_error_and_skip(tmp_path):
    bad = bi.write_mask_folder_huge_mask(tmp_path / "mf")
    images, masks = tmp_path / "mf" / "images", tmp_path / "mf" / "masks"
    r = isolated(
        """
        import json, sys
        from brightseg.annotations.maskfolder import import_mask_folder
        a = json.loads(sys.argv[1])
        try:
            import_mask_folder(a["images"], a["masks"], a["out"] + "/e", plate="P")
        except InputError as exc:
            out["error_mode"] = str(exc)
        m, s = import_mask_folder(a["images"], a["masks"], a["out"] + "/s", plate="P",
                                  on_bad_input="skip")
        out["stems"] = m["stem"].tolist()
        out["skipped"] = s["file"].tolist()
        """,
        images=images,
        masks=masks,
        out=tmp_path,
    )
    assert "limits.max_image_pixels" in r["error_mode"] and str(bad) in r["error_mode"]
    assert r["stems"] == ["img0", "img2"] and r["skipped"] == [str(bad)]


def test_illumination_radius_is_limited():
    from brightseg.illumination import radius_to_px, tophat
    from brightseg.limits import Limits

    for radius, unit in ((1e9, "px"), (1e9, "um"), (5000, "px")):
        with pytest.raises(InputError, match=r"limits\.max_illumination_radius_px"):
            radius_to_px(radius, unit, 0.65)
    with pytest.raises(InputError, match="over the limit"):
        tophat(bi.raw_image(0), 10**9)
    assert radius_to_px(50, "px", 0.65) == 50
    with pytest.raises(InputError):
        radius_to_px(50, "px", 0.65, Limits(max_illumination_radius_px=10))


# ---- class 4: images read wrong without a word


def test_palette_png_is_read_as_displayed(tmp_path):
    path = bi.write_inverted_palette_png(tmp_path, "p.png")
    assert not np.array_equal(np.asarray(Image.open(path)), bi.grey_array(0))  # indices
    np.testing.assert_array_equal(read_image(path), bi.grey_array(0))


def test_cmyk_jpeg_is_read_as_displayed_grey(tmp_path):
    path = bi.write_cmyk_jpeg(tmp_path, "c.jpg")
    grey = read_image(path).astype(int)
    want = bi.grey_array(0).astype(int)
    assert grey.shape == (64, 64)
    assert np.abs(grey - want).mean() < 3  # JPEG is lossy; an inverted read is ~100 off


def test_tiff_with_thumbnail_first_reads_the_full_image(tmp_path, caplog):
    path = bi.write_tiff_thumbnail_first(tmp_path, "t.tif")
    with caplog.at_level(logging.WARNING, logger="brightseg.io"):
        img = read_image(path)
    np.testing.assert_array_equal(img, bi.raw_image(0))
    assert "reading the largest, page 1 (64x64)" in caplog.text
    from brightseg.io import image_header

    h = image_header(path)
    assert (h.height, h.width, h.pages, h.page, h.stack) == (64, 64, 2, 1, False)


def test_planar_rgb_tiff_is_read_like_interleaved(tmp_path):
    planar = read_image(bi.write_planar_rgb_tiff(tmp_path, "planar.tif"))
    interleaved = read_image(bi.write_rgb(tmp_path, "rgb.tif"))
    np.testing.assert_array_equal(planar, interleaved)
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif", grey=False), bi.rgb_array(0))


@pytest.mark.parametrize("name", ["la.png", "la.tif"])
def test_grey_plus_alpha_drops_the_alpha(tmp_path, name):
    path = bi.write_grey_alpha(tmp_path, name)
    np.testing.assert_array_equal(read_image(path), bi.grey_array(0))


def test_min_is_white_tiff_is_inverted(tmp_path):
    img = bi.raw_image(0)
    tifffile.imwrite(tmp_path / "w.tif", 65535 - img, photometric="miniswhite", metadata=None)
    np.testing.assert_array_equal(read_image(tmp_path / "w.tif"), img)


# ---- class 5: plate sheet


def test_sheet_hash_in_a_path_is_kept(tmp_path):
    images = bi.write_hash_plate(tmp_path)
    sheet = bi.write_sheet_rows(tmp_path / "plates.tsv", images)
    sheet.write_text("# a comment line\n" + sheet.read_text() + "  # trailing comment\n")
    df = read_sheet(sheet)
    assert df.loc["P1", "images"] == str(images) and "#" in df.loc["P1", "images"]
    table, skipped = plate_images("P1", df.loc["P1", "images"], REGEX)
    assert len(table) == 3 and skipped == []


@pytest.mark.parametrize("value", ["inf", "1e308", "1e-300", "nan", "-0.65"])
def test_sheet_pixel_size_out_of_range(tmp_path, value):
    sheet = bi.write_sheet_rows(tmp_path / "plates.tsv", tmp_path, pixel_size_um=value)
    with pytest.raises(InputError, match=r"plate\(s\) \['P1'\]: pixel_size_um must be") as exc:
        read_sheet(sheet)
    assert f"P1={value!r}" in str(exc.value)


def test_sheet_decimal_comma_and_csv_say_what_to_do(tmp_path):
    sheet = bi.write_sheet_rows(tmp_path / "plates.tsv", tmp_path, pixel_size_um="0,65")
    with pytest.raises(InputError, match=r"got P1='0,65'; use a decimal point"):
        read_sheet(sheet)
    csv = bi.write_csv_sheet(tmp_path / "plates.csv", tmp_path)
    with pytest.raises(InputError, match=r"separated by commas; use tabs") as exc:
        read_sheet(csv)
    assert exc.value.path == str(csv)


def test_regex_group_capturing_3b(tmp_path):
    images = bi.clean_plate(tmp_path / "loose", "P", seed=4) / "images"
    bad = images / "P_A3b_f00_t00.tif"
    shutil.copyfile(sorted(images.glob("*.tif"))[0], bad)
    rx = compile_regex(bi.LOOSE_REGEX)
    with pytest.raises(InputError, match=r"group 'column' captured '3b', not a number") as exc:
        plate_images("P", str(images), rx)
    assert exc.value.path == str(bad)
    table, skipped = plate_images("P", str(images), rx, on_bad_input="skip")
    assert len(table) == 3 and [f for f, _ in skipped] == [str(bad)]


# ---- class 6: mixed image sizes


def test_mixed_image_sizes_error_and_skip(plate, tmp_path):
    images = plate / "images"
    clean_store, _ = correct(images, tmp_path / "clean")
    odd = bi.write_odd_size_image(images, "P_A04_f00_t00.tif")
    with pytest.raises(InputError, match=r"images differ in size \(width x height\)") as exc:
        plate_images("P", str(images), REGEX)
    assert exc.value.path == str(odd)
    assert "64x64 (3 images" in str(exc.value) and f"64x48 (1 images, e.g. {odd})" in str(exc.value)
    table, skipped = plate_images("P", str(images), REGEX, on_bad_input="skip")
    assert len(table) == 3
    assert skipped == [
        (str(odd), "image is 64x48 (width x height) but most images of plate 'P' are 64x64")
    ]
    store, skipped_tsv = correct(images, tmp_path / "skip", on_bad_input="skip")
    assert read_skipped(skipped_tsv)["file"].tolist() == [str(odd)]
    assert digest(store) == digest(clean_store)


# ---- class 7: degenerate results


def test_stats_constant_column_is_undefined_not_huge(tmp_path):
    from brightseg.stats import report_markdown, stats_from_file

    src = bi.write_constant_scores(tmp_path / "c.csv")
    rep = stats_from_file(src, "f1", 0.5, out_json=tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    for key in ("t", "cohens_d", "p_value", "log10_p"):
        assert data[key] is None, key
    assert "all 6 values are equal" in data["undefined_reason"]
    assert "| Cohen's d | nan |" in report_markdown(rep)


def test_figures_with_no_cells_at_all(tmp_path):
    from brightseg import figures as F

    empty = pd.DataFrame({"area": [], "circularity": [], "plate": [], "well": []})
    fig = F.morphometry_distributions(empty)
    F.save_figure(fig, empty, tmp_path / "morphometry")
    assert (tmp_path / "morphometry.png").is_file()


def test_split_instances_cli_bad_options(tmp_path):
    from click.testing import CliRunner

    from brightseg.cli import main

    mask = tmp_path / "m.png"
    m = np.zeros((32, 32), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(mask)
    (tmp_path / "outdir").mkdir()
    runner = CliRunner()
    for args, problem in (
        (["--pixel-size-um", "0", "--out", str(tmp_path / "o.tif")], "pixel_size_um: must be"),
        (["--pixel-size-um", "inf", "--out", str(tmp_path / "o.tif")], "pixel_size_um: must be"),
        (["--pixel-size-um", "1e9", "--out", str(tmp_path / "o.tif")], "must lie between"),
        (["--out", str(tmp_path / "outdir")], "output path is an existing directory"),
    ):
        res = runner.invoke(main, ["split-instances", "--mask", str(mask), *args])
        assert res.exit_code == 2, res.output
        assert problem in res.output and "Traceback" not in res.output


# ---- class 8: temporaries of killed jobs


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_path_removes_temporaries_of_killed_processes(tmp_path):
    import os

    from brightseg.io import _host_tag, atomic_path, write_tiff

    host, dead = _host_tag(), _dead_pid()
    store = tmp_path / "P.ome.zarr"
    stale = tmp_path / f".P.ome.zarr.tmp-{host}-{dead}-abc123.ome.zarr"
    (stale / "0").mkdir(parents=True)
    (stale / "0" / "chunk").write_bytes(b"x" * 100)
    live = tmp_path / f".P.ome.zarr.tmp-{host}-{os.getppid()}-def456.ome.zarr"
    live.mkdir()
    other_host = tmp_path / f".P.ome.zarr.tmp-elsewhere-{dead}-ghi789.ome.zarr"
    other_host.mkdir()
    other_output = tmp_path / f".Q.ome.zarr.tmp-{host}-{dead}-jkl000.ome.zarr"
    other_output.mkdir()
    stale_file = tmp_path / f".x.tif.tmp-{host}-{dead}-zz.tif"
    stale_file.write_bytes(b"half")
    with atomic_path(store, is_dir=True) as tmp:
        assert f"-{os.getpid()}-" in tmp.name and tmp.name.startswith(f".P.ome.zarr.tmp-{host}")
        tmp.mkdir()
    assert store.is_dir() and not stale.exists()
    assert live.exists() and other_host.exists() and other_output.exists()
    # Files too (the directory was listed once, by the first write).
    assert stale_file.exists()
    write_tiff(np.zeros((4, 4), np.uint8), tmp_path / "x.tif")
    assert not stale_file.exists() and (tmp_path / "x.tif").is_file()


# ---- the command line on every corpus file, within 4 GiB

CLI_DRIVER = r"""
import contextlib, io, json, sys
from pathlib import Path

import click

from brightseg.cli import main

corpus = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2])


def run(args):
    err = io.StringIO()
    code, crash = 0, None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args, standalone_mode=False)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.ClickException as exc:
            code = exc.exit_code
        except BaseException as exc:  # a traceback would reach the user: a bug
            code, crash = -1, f"{type(exc).__name__}: {exc}"[:300]
    return code, crash, err.getvalue()[-300:]


for name, (path, images) in sorted(corpus.items()):
    work = out / name
    commands = {
        "tophat": ["tophat", path, str(work / "t.tif"), "--radius", "5"],
        "split-instances": ["split-instances", "--mask", path, "--out", str(work / "s.tif")],
        "stats": ["stats", "--input", path, "--column", "f1", "--baseline", "0.5",
                  "--out", str(work / "s.json")],
        "import-cvat error": ["import-cvat", path, "--images", images, "--out",
                              str(work / "ce"), "--label", "cell"],
        "import-cvat skip": ["import-cvat", path, "--images", images, "--out",
                             str(work / "cs"), "--on-bad-input", "skip"],
    }
    for cmd, args in commands.items():
        code, crash, err = run(args)
        print(json.dumps({"entry": name, "command": cmd, "code": code, "crash": crash,
                          "stderr": err}), flush=True)
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules}), flush=True)
"""


def test_cli_on_every_corpus_file_exits_0_or_2_within_4gib(tmp_path):
    import os
    import subprocess
    import sys

    paths = bi.write_corpus(tmp_path / "corpus")
    corpus = {}
    for name, path in paths.items():
        plate_images_dir = tmp_path / "corpus" / name / "plate" / "images"
        images = plate_images_dir if plate_images_dir.is_dir() else path.parent
        corpus[name] = (str(path), str(images))
    spec = tmp_path / "corpus.json"
    spec.write_text(json.dumps(corpus))
    driver = tmp_path / "driver.py"
    driver.write_text(CLI_DRIVER)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            "bash",
            "-c",
            'ulimit -v 4194304 && exec "$0" "$@"',
            sys.executable,
            str(driver),
            str(spec),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0, (
        f"driver died ({proc.returncode}) after {lines[-1:]}:\n{proc.stderr[-3000:]}"
    )
    results = [r for r in lines if "entry" in r]
    assert len(results) == 5 * len(paths)
    bad = [r for r in results if r["code"] not in (0, 2) or r["crash"]]
    assert bad == [], bad
    assert not any("Traceback" in r["stderr"] for r in results)
    assert lines[-1] == {"tensorflow_imported": False}
    # The hostile files are refused with exit status 2, not accepted by accident.
    by = {(r["entry"], r["command"]): r["code"] for r in results}
    for name in ("tiff_declares_100000px", "png_declares_100000px"):
        assert by[(name, "tophat")] == 2 and by[(name, "split-instances")] == 2
    for name in ("zip_declares_3gib", "json_nested_200000", "json_5000_digit_integer"):
        assert by[(name, "import-cvat skip")] == 2
    for name in ("cvat_polygon_huge", "coco_polygon_huge", "cvat_mask_box_100000"):
        assert by[(name, "import-cvat skip")] == 0
    assert by[("stats_constant_column", "stats")] == 0


def test_palette_and_cmyk_tiff_are_read_as_displayed(tmp_path):
    g = bi.grey_array(0)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:] = (255 - np.arange(256)) * 257  # inverted grey palette
    tifffile.imwrite(tmp_path / "p.tif", 255 - g, photometric="palette", colormap=cmap)
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), g)
    cmyk = np.concatenate([np.repeat(255 - g[..., None], 3, -1), np.zeros_like(g)[..., None]], -1)
    tifffile.imwrite(tmp_path / "c.tif", cmyk, photometric="separated", metadata=None)
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), g)


def test_stats_and_import_cli_bad_options(plate, tmp_path):
    from click.testing import CliRunner

    from brightseg.cli import main

    scores = bi.write_constant_scores(tmp_path / "c.csv")
    (tmp_path / "afile").write_text("")
    runner = CliRunner()
    cases = (
        (
            ["stats", "--input", str(scores), "--column", "f1", "--baseline", "nan"],
            "baseline: must be a finite number",
        ),
        (
            ["stats", "--input", str(scores), "--column", "f1", "--baseline", "0.5"],
            "output path is an existing directory",
        ),
        (
            [
                "import-cvat",
                str(plate / "cvat.xml"),
                "--images",
                str(plate / "images"),
                "--out",
                str(tmp_path / "afile" / "sub"),
            ],
            "",
        ),
    )
    (tmp_path / "outdir").mkdir()
    for args, problem in cases:
        if args[0] == "stats":
            args = [*args, "--out", str(tmp_path / ("outdir" if "0.5" in args else "s.json"))]
        res = runner.invoke(main, args)
        assert res.exit_code == 2, res.output
        assert problem in res.output and "Traceback" not in res.output
