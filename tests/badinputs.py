"""The bad-input corpus of issue #7, written on demand (no binary files in the repository).

Every ``write_*`` function writes one bad input into a directory it is given and returns
the path of the bad file (or directory), so tests build the corpus in ``tmp_path``.  The
bad files are derived from small valid inputs (``clean_plate``: a synthetic plate from
:func:`brightseg.synth.synth_plate`, 64x64 px), so a test can compare a run with the bad
item against a clean run.

:data:`CORPUS` lists every entry with the function that reads it and the behaviour the
workflow implements (see ``tests/test_bad_inputs.py``):

* ``error``: an :class:`~brightseg.errors.InputError` naming the file and the problem,
  whatever ``on_bad_input`` says (sheet-level and whole-file problems: nothing sensible
  can be skipped);
* ``error|skip``: an error under ``on_bad_input: error``; under ``skip`` exactly that item
  is left out and listed with the reason, everything else is processed unchanged;
* ``warn``: readable, used as it is, with a logged warning;
* ``accept``: readable, used as it is.

``python tests/badinputs.py DIR`` writes the whole corpus into ``DIR`` (e.g.
``tests/data/bad``) to look at or to feed to the command line by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SHEET_COLUMNS = ("plate", "images", "modality", "pixel_size_um", "annotations", "use_for_training")
SHAPE = (64, 64)
#: The workflow's default file-name regex (config/config.yaml).
FILENAME_REGEX = r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$"


# --------------------------------------------------------------------------- clean inputs


def clean_plate(
    root: str | Path, plate: str, *, n_images: int = 3, seed: int = 0, shape=SHAPE
) -> Path:
    """A small valid plate: ``root/images/*.tif`` (uint16), ``cvat.xml``, ``coco.json``.

    Images are named ``{plate}_{well}_f00_t00.tif`` with wells A01, A02, ...
    """
    from brightseg.synth import synth_plate

    root = Path(root)
    synth_plate(
        root,
        plate,
        n_images=n_images,
        shape=tuple(shape),
        seed=seed,
        mean_radius_px=8.0,
        cells_per_image=(2, 4),
        debris=(0, 1),
    )
    return root


def raw_image(seed: int = 0, shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    """A smooth random uint16 image (a bright blob on noise), deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = np.exp(-((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 3) ** 2) / (2 * 8.0**2))
    img = 8000 + 30000 * blob + rng.normal(0, 500, shape)
    return np.clip(img, 0, 65535).astype(dtype)


def write_sheet(path: str | Path, rows: list[dict]) -> Path:
    """A plate sheet (TSV) with the required columns; missing values are ''."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(SHEET_COLUMNS)]
    lines += ["\t".join(str(r.get(c, "")) for c in SHEET_COLUMNS) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def sheet_row(plate: str, images: str | Path, annotations: str | Path = "", **kw) -> dict:
    row = {
        "plate": plate,
        "images": str(images),
        "modality": "brightfield",
        "pixel_size_um": 0.65,
        "annotations": str(annotations),
        "use_for_training": "false",
    }
    row.update(kw)
    return row


# --------------------------------------------------------------------------- images


def write_truncated_tiff(directory: str | Path, name: str, *, keep: float = 0.5, seed=0) -> Path:
    """A valid uint16 TIFF cut to ``keep`` of its bytes: the header is intact, the data not."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, raw_image(seed), metadata=None)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def write_zero_byte_png(directory: str | Path, name: str) -> Path:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_tiff_16bit_header_8bit_data(
    directory: str | Path, name: str, *, trailing: bool = True, seed=0
) -> Path:
    """An 8-bit TIFF whose BitsPerSample tag was changed to 16 (strips hold half the bytes).

    With ``trailing`` the file goes on after the pixel data (here: zeros, as when another
    IFD or metadata follows), so a reader that trusts the header decodes garbage instead
    of failing at the end of the file.
    """
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data8 = (raw_image(seed) >> 8).astype(np.uint8)
    tifffile.imwrite(path, data8, metadata=None)
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags["BitsPerSample"]
        if tf.byteorder != "<" or tag.count != 1:
            raise RuntimeError("unexpected TIFF layout")
        offset = tag.valueoffset
    raw = bytearray(path.read_bytes())
    if struct.unpack("<H", raw[offset : offset + 2]) != (8,):
        raise RuntimeError("BitsPerSample not found where expected")
    raw[offset : offset + 2] = struct.pack("<H", 16)
    if trailing:
        raw += bytes(data8.size)
    path.write_bytes(bytes(raw))
    return path


def write_8bit_values_in_uint16(directory: str | Path, name: str, *, seed=0) -> Path:
    """A well-formed uint16 TIFF whose values all lie in 0..255 (8-bit data, 16-bit file)."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, (raw_image(seed) >> 8).astype(np.uint16), metadata=None)
    return path


def rgb_array(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """An 8-bit RGB image with different channels (a stained or colour-camera image)."""
    g = (raw_image(seed, shape) >> 8).astype(np.int32)
    return np.stack([g, np.roll(g, 7, axis=1), 255 - g], axis=-1).clip(0, 255).astype(np.uint8)


def write_rgb(directory: str | Path, name: str, *, seed=0) -> Path:
    """An RGB image (PNG or TIFF by the suffix of ``name``) where greyscale is expected."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb_array(seed)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, arr, photometric="rgb", metadata=None)
    else:
        Image.fromarray(arr, mode="RGB").save(path)
    return path


def write_grey_as_rgb(directory: str | Path, name: str, *, seed=0) -> Path:
    """A greyscale image stored as RGB with three equal channels."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    g = (raw_image(seed) >> 8).astype(np.uint8)
    Image.fromarray(np.repeat(g[..., None], 3, axis=2), mode="RGB").save(path)
    return path


def write_grey_png(directory: str | Path, name: str, *, seed=0) -> Path:
    """An 8-bit greyscale PNG (where an RGB image might be expected)."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((raw_image(seed) >> 8).astype(np.uint8), mode="L").save(path)
    return path


def write_stack(directory: str | Path, name: str, *, planes: int = 3, seed=0) -> Path:
    """A multi-page TIFF (z-stack / time series) where one 2-D image is expected."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack([raw_image(seed + i) for i in range(planes)])
    tifffile.imwrite(path, stack, photometric="minisblack", metadata=None)
    return path


def write_nonfinite_tiff(directory: str | Path, name: str, *, value=np.nan, seed=0) -> Path:
    """A float32 TIFF with one NaN (or inf) pixel."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img = raw_image(seed).astype(np.float32) / 65535.0
    img[5, 7] = value
    tifffile.imwrite(path, img, metadata=None)
    return path


def write_mask_folder(
    root: str | Path, *, n: int = 3, bad_stem: str | None = None, seed: int = 0
) -> tuple[Path, Path]:
    """``root/images/*.tif`` and ``root/masks/*.png`` (0/255); ``bad_stem``'s mask is smaller.

    Returns the images and masks folders.
    """
    root = Path(root)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for i in range(n):
        stem = f"img{i}"
        tifffile.imwrite(images / f"{stem}.tif", raw_image(seed + i), metadata=None)
        disc = (yy - 20 - 4 * i) ** 2 + (xx - 30) ** 2 < 8**2
        disc |= (yy - 45) ** 2 + (xx - 15 - 5 * i) ** 2 < 6**2
        mask = np.where(disc, 255, 0).astype(np.uint8)
        if stem == bad_stem:
            mask = mask[:, :48]  # 48 wide instead of 64
        Image.fromarray(mask, mode="L").save(masks / f"{stem}.png")
    return images, masks


# --------------------------------------------------------------------------- annotations


def write_malformed_xml(src: str | Path, dst: str | Path) -> tuple[Path, int]:
    """A CVAT XML export cut off inside an element; returns (path, 1-based line of the cut)."""
    text = Path(src).read_text()
    lines = text.splitlines(keepends=True)
    # Drop the closing '>' of the first <polygon ...> line and everything after it.
    k = next(i for i, ln in enumerate(lines) if "<polygon" in ln)
    bad = "".join(lines[:k]) + lines[k].rstrip().rstrip(">").rstrip("/") + "\n"
    dst = Path(dst)
    dst.write_text(bad)
    return dst, k + 1


def write_bad_rle_xml(src: str | Path, dst: str | Path, *, image: str) -> tuple[Path, str]:
    """A CVAT XML export whose first <mask> of ``image`` has runs one short of width*height.

    Returns (path, the mask's box as written in the error message).
    """
    text = Path(src).read_text()
    start = text.index(f'name="{image}"')
    m = re.compile(r'<mask [^>]*rle="([^"]*)"[^>]*>').search(text, start)
    if m is None or m.start() > text.find("</image>", start):
        raise RuntimeError(f"{src}: image {image} has no <mask>")
    runs = [int(v) for v in m.group(1).split(",")]
    runs[-1] -= 1 if runs[-1] > 0 else -1  # sum off by one
    el = m.group(0).replace(m.group(1), ", ".join(map(str, runs)))
    attrs = dict(re.findall(r' (left|top|width|height)="(\d+)"', el))
    box = " ".join(f"{k}={attrs[k]}" for k in ("left", "top", "width", "height"))
    dst = Path(dst)
    dst.write_text(text[: m.start()] + el + text[m.end() :])
    return dst, box


def write_xml_missing_image(src: str | Path, dst: str | Path, *, name: str) -> Path:
    """A CVAT XML export with one more <image> (one polygon) whose file does not exist."""
    text = Path(src).read_text()
    extra = (
        f'  <image id="99" name="{name}" width="{SHAPE[1]}" height="{SHAPE[0]}">\n'
        '    <polygon label="cell" source="manual" occluded="0" '
        'points="10.00,10.00;20.00,10.00;20.00,20.00" z_order="0">\n    </polygon>\n'
        "  </image>\n"
    )
    i = text.rindex("</annotations>")
    dst = Path(dst)
    dst.write_text(text[:i] + extra + text[i:])
    return dst


def write_coco_missing_image_id(
    src: str | Path, dst: str | Path, *, image_id: int = 999
) -> tuple[Path, int]:
    """A COCO export with one more annotation whose image_id is not in 'images'.

    Returns (path, the new annotation's id).
    """
    doc = json.loads(Path(src).read_text())
    ann = dict(doc["annotations"][0])
    ann["id"] = max(a["id"] for a in doc["annotations"]) + 1
    ann["image_id"] = image_id
    doc["annotations"].append(ann)
    dst = Path(dst)
    dst.write_text(json.dumps(doc))
    return dst, ann["id"]


# --------------------------------------------------------------------------- plates and sheets


def write_empty_plate_dir(directory: str | Path) -> Path:
    """A plate directory with no image in it (a stray text file only)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.txt").write_text("images not copied yet\n")
    return path


def write_duplicate_well(images_dir: str | Path) -> Path:
    """A copy of the first image under a name that maps to the same well/field/timepoint.

    ``P_A01_f00_t00.tif`` -> ``P_A01_f0_t0.tif`` (field 0, timepoint 0 again).  The copy's
    stem sorts after the original's, so under ``skip`` the original is the one kept.
    """
    images_dir = Path(images_dir)
    first = sorted(images_dir.glob("*.tif"))[0]
    m = re.search(r"^(.*_[A-P]\d{2})_f(\d+)_t(\d+)$", first.stem)
    if m is None:
        raise RuntimeError(f"{first}: unexpected name")
    dup = images_dir / f"{m.group(1)}_f{int(m.group(2))}_t{int(m.group(3))}.tif"
    shutil.copyfile(first, dup)
    return dup


def write_sheet_duplicate_plate(path: str | Path, images: str | Path) -> Path:
    return write_sheet(path, [sheet_row("P1", images), sheet_row("P1", images)])


def write_sheet_missing_dir(path: str | Path, images: str | Path, missing: str | Path) -> Path:
    return write_sheet(path, [sheet_row("P1", images), sheet_row("P2", missing)])


def write_sheet_bad_pixel_size(path: str | Path, images: str | Path) -> Path:
    return write_sheet(path, [sheet_row("P1", images, pixel_size_um="0,65 um")])


#: Config values outside the schema (workflow/schemas/config.schema.yaml): (key, patch).
BAD_CONFIG = {
    "illumination.radius": {"illumination": {"radius": -5}},
    "on_bad_input": {"on_bad_input": "maybe"},
    "plate_store.chunk": {"plate_store": {"chunk": 8}},
}


def patch_config(config: dict, patch: dict) -> dict:
    """``config`` with ``patch`` merged in (nested dicts merged, other values replaced)."""
    out = dict(config)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patch_config(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Entry:
    """One corpus entry: how to write it, who reads it, what happens."""

    name: str
    reader: str
    behaviour: str
    write: Callable[[Path], Path]


def _in(sub: str, fn: Callable[[Path], object]) -> Callable[[Path], Path]:
    def write(root: Path) -> Path:
        out = fn(root / sub)
        return out[0] if isinstance(out, tuple) else out

    return write


def _annotation_entry(fn: Callable[[Path, Path], object], source: str):
    def write(root: Path) -> Path:
        plate = clean_plate(root / "plate", "P", n_images=3, seed=1)
        out = fn(plate / source, root)
        return out[0] if isinstance(out, tuple) else out

    return write


CORPUS = [
    Entry(
        "truncated_tiff",
        "io.read_image",
        "error|skip",
        _in("truncated", lambda d: write_truncated_tiff(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "zero_byte_png",
        "io.read_image",
        "error|skip",
        _in("zero_byte", lambda d: write_zero_byte_png(d, "P_A04_f00_t00.png")),
    ),
    Entry(
        "tiff_16bit_header_8bit_data",
        "io.read_image",
        "error|skip",
        _in("hdr16", lambda d: write_tiff_16bit_header_8bit_data(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "tiff_8bit_values_in_uint16",
        "io.read_image / io.warn_low_bit_depth",
        "warn",
        _in("u8in16", lambda d: write_8bit_values_in_uint16(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "rgb_where_grey_expected",
        "io.read_image(grey=True)",
        "warn",
        _in("rgb", lambda d: write_rgb(d, "P_A04_f00_t00.png")),
    ),
    Entry(
        "grey_where_rgb_expected",
        "io.read_image(grey=False)",
        "accept",
        _in("grey", lambda d: write_grey_png(d, "P_A04_f00_t00.png")),
    ),
    Entry(
        "stack_where_2d_expected",
        "io.read_image",
        "error|skip",
        _in("stack", lambda d: write_stack(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "nan_float_tiff",
        "io.read_image",
        "error|skip",
        _in("nan", lambda d: write_nonfinite_tiff(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "inf_float_tiff",
        "io.read_image",
        "error|skip",
        _in("inf", lambda d: write_nonfinite_tiff(d, "P_A04_f00_t00.tif", value=np.inf)),
    ),
    Entry(
        "mask_size_differs",
        "maskfolder.import_mask_folder",
        "error|skip",
        lambda root: write_mask_folder(root / "maskfolder", bad_stem="img1")[1] / "img1.png",
    ),
    Entry(
        "cvat_xml_not_well_formed",
        "cvat.load_annotations",
        "error",
        _annotation_entry(lambda s, r: write_malformed_xml(s, r / "malformed.xml"), "cvat.xml"),
    ),
    Entry(
        "cvat_rle_bad_sum",
        "cvat.import_cvat",
        "error|skip",
        _annotation_entry(
            lambda s, r: write_bad_rle_xml(s, r / "bad_rle.xml", image="P_A02_f00_t00.tif"),
            "cvat.xml",
        ),
    ),
    Entry(
        "cvat_missing_image",
        "cvat.import_cvat",
        "error|skip",
        _annotation_entry(
            lambda s, r: write_xml_missing_image(s, r / "missing.xml", name="P_A09_f00_t00.tif"),
            "cvat.xml",
        ),
    ),
    Entry(
        "coco_missing_image_id",
        "cvat.load_annotations",
        "error|skip",
        _annotation_entry(
            lambda s, r: write_coco_missing_image_id(s, r / "coco_missing.json"), "coco.json"
        ),
    ),
    Entry(
        "sheet_duplicate_plate",
        "sheet.read_sheet",
        "error",
        lambda root: write_sheet_duplicate_plate(root / "dup_plate.tsv", "plate/images"),
    ),
    Entry(
        "sheet_missing_directory",
        "sheet.plate_images",
        "error",
        lambda root: write_sheet_missing_dir(root / "missing_dir.tsv", "plate/images", "nowhere"),
    ),
    Entry(
        "sheet_non_numeric_pixel_size",
        "sheet.read_sheet",
        "error",
        lambda root: write_sheet_bad_pixel_size(root / "bad_pixel.tsv", "plate/images"),
    ),
    Entry(
        "empty_plate_directory",
        "sheet.plate_images",
        "error",
        lambda root: write_empty_plate_dir(root / "empty_plate"),
    ),
    Entry(
        "duplicate_well_field_timepoint",
        "sheet.plate_images",
        "error|skip",
        lambda root: write_duplicate_well(clean_plate(root / "dupwell", "P", seed=2) / "images"),
    ),
    Entry(
        "config_out_of_range",
        "snakemake.utils.validate",
        "error",
        lambda root: _write_yaml(root / "bad_config.yaml", BAD_CONFIG["illumination.radius"]),
    ),
]


def _write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_corpus(root: str | Path) -> dict[str, Path]:
    """Write every :data:`CORPUS` entry under ``root/<name>/``; returns name -> bad path."""
    root = Path(root)
    return {e.name: e.write(root / e.name) for e in CORPUS}


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad")
    for name, path in write_corpus(target).items():
        print(f"{name}: {path}")
