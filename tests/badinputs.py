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


# --------------------------------------------------------------------------- hostile inputs (issue 14)
#
# Built cheaply: a file that declares a huge size holds tiny data (one compressed strip
# shared by every strip offset, a PNG header without pixels, a zip header that lies), so
# no test ever allocates the size it declares.

HUGE = 100_000  #: width and height declared by the "huge" files (10^10 pixels)


def _tiff_bytes(width: int, height: int) -> bytes:
    """A little-endian uint8 TIFF of ``width x height`` zeros, deflate-compressed, whose
    strips all point at the same compressed block: a few tens of kB whatever the size."""
    import zlib

    rows = max(1, min(height // 2, (1 << 20) // max(1, width)))  # >= 2 strips
    n_strips = -(-height // rows)
    block = zlib.compress(bytes(width * rows), 9)
    entries = 10
    offsets_at = 8 + 2 + entries * 12 + 4
    counts_at = offsets_at + 4 * n_strips
    block_at = counts_at + 4 * n_strips
    tags = [  # (tag, type: 3 SHORT or 4 LONG, count, value)
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 8),  # deflate
        (262, 3, 1, 1),  # min-is-black
        (273, 4, n_strips, offsets_at),
        (277, 3, 1, 1),
        (278, 4, 1, rows),
        (279, 4, n_strips, counts_at),
        (284, 3, 1, 1),
    ]
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", entries)
    for tag, typ, count, value in tags:
        if typ == 3:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{n_strips}I", *([block_at] * n_strips))
    out += struct.pack(f"<{n_strips}I", *([len(block)] * n_strips))
    return out + block


def write_huge_tiff(directory: str | Path, name: str, *, size: int = HUGE) -> Path:
    """A TIFF declaring ``size x size`` px (uint8, deflate) in a few kilobytes."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_tiff_bytes(size, size))
    return path


def write_huge_png(directory: str | Path, name: str, *, size: int = HUGE) -> Path:
    """A PNG whose header declares ``size x size`` px, with one tiny IDAT (a few bytes)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    data += chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_mask_folder_huge_mask(root: str | Path) -> Path:
    """A mask folder whose ``img1`` mask is a TIFF declaring 100000 x 100000 px."""
    images, masks = write_mask_folder(root)
    (masks / "img1.png").unlink()
    return write_huge_tiff(masks, "img1.tif")


def grey_array(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """The 8-bit grey image the display-conversion entries must read back."""
    return (raw_image(seed, shape) >> 8).astype(np.uint8)


def write_inverted_palette_png(directory: str | Path, name: str, *, seed=0) -> Path:
    """A palette PNG whose palette is inverted: index i is displayed as grey 255 - i.

    Read as its indices it is the negative of the image it shows.
    """
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = grey_array(seed)
    im = Image.fromarray((255 - shown).astype(np.uint8), mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    im.save(path)
    return path


def write_cmyk_jpeg(directory: str | Path, name: str, *, seed=0) -> Path:
    """A CMYK JPEG (Adobe, inverted ink) of a grey image."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey_array(seed), mode="L").convert("CMYK").save(path, quality=95)
    return path


def write_tiff_thumbnail_first(directory: str | Path, name: str, *, seed=0) -> Path:
    """A two-page TIFF: a 16 x 16 thumbnail first, then the 64 x 64 image (uint16)."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img = raw_image(seed)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img[::4, ::4].copy(), metadata=None, subfiletype=1)
        tw.write(img, metadata=None)
    return path


def write_planar_rgb_tiff(directory: str | Path, name: str, *, seed=0) -> Path:
    """An RGB TIFF stored planar (3, H, W), PlanarConfiguration = separate."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rgb_array(seed)
    tifffile.imwrite(
        path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate", metadata=None
    )
    return path


def write_grey_alpha(directory: str | Path, name: str, *, seed=0) -> Path:
    """Grey + alpha: an LA PNG, or a 2-sample TIFF with an alpha extra sample."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    la = np.stack([grey_array(seed), np.full(SHAPE, 200, np.uint8)], axis=-1)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, la, photometric="minisblack", extrasamples=["unassalpha"])
    else:
        Image.fromarray(la, mode="LA").save(path)
    return path


def write_odd_size_image(directory: str | Path, name: str, *, seed=0) -> Path:
    """A 64 x 48 (width x height) image among 64 x 64 ones."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, raw_image(seed)[:48], metadata=None)
    return path


def _xml_add_shape(text: str, image: str, element: str) -> str:
    start = text.index(f'name="{image}"')
    end = text.index("</image>", start)
    return text[:end] + f"    {element}\n  " + text[end:]


def write_xml_polygon(src: str | Path, dst: str | Path, *, image: str, points: str) -> Path:
    """A CVAT XML export with one more polygon on ``image`` (its points as given)."""
    text = Path(src).read_text()
    el = f'<polygon label="cell" source="manual" occluded="0" points="{points}" z_order="0"/>'
    dst = Path(dst)
    dst.write_text(_xml_add_shape(text, image, el))
    return dst


#: Polygon points with a NaN vertex, and one with vertices 10^9 px away.
NAN_POINTS = "10.00,10.00;nan,10.00;20.00,20.00"
HUGE_POINTS = "10.00,10.00;1000000000.00,12.00;-1000000000.00,40.00;20.00,-1e12"


def write_xml_huge_mask_box(src: str | Path, dst: str | Path, *, image: str) -> Path:
    """A CVAT XML export with a <mask> of 100000 x 100000 px (all foreground) on ``image``.

    Two runs: 0 background, then 10^10 foreground; decoding the box before clipping it
    to the 64 x 64 image would allocate 10 GB.
    """
    text = Path(src).read_text()
    el = (
        f'<mask label="cell" source="manual" occluded="0" rle="0, {HUGE * HUGE}" '
        f'left="0" top="0" width="{HUGE}" height="{HUGE}" z_order="5"/>'
    )
    dst = Path(dst)
    dst.write_text(_xml_add_shape(text, image, el))
    return dst


def write_coco_patched(src: str | Path, dst: str | Path, patch: Callable[[dict], None]) -> Path:
    """A COCO export with ``patch(doc)`` applied (``allow_nan``: NaN/Infinity literals)."""
    doc = json.loads(Path(src).read_text())
    patch(doc)
    dst = Path(dst)
    dst.write_text(json.dumps(doc, allow_nan=True))
    return dst


def _first_polygon(doc: dict) -> dict:
    return next(a for a in doc["annotations"] if isinstance(a.get("segmentation"), list))


def _coco_inf_polygon(doc: dict) -> None:
    _first_polygon(doc)["segmentation"][0][2] = float("inf")


def _coco_huge_polygon(doc: dict) -> None:
    ann = dict(_first_polygon(doc))
    ann["id"] = max(a["id"] for a in doc["annotations"]) + 1
    ann["segmentation"] = [[10.0, 10.0, 1e9, 12.0, -1e9, 40.0, 20.0, -1e12]]
    doc["annotations"].append(ann)


def _coco_list_category(doc: dict) -> None:
    doc["annotations"][0]["category_id"] = [doc["annotations"][0]["category_id"]]


def _coco_dict_image_id(doc: dict) -> None:
    doc["annotations"][0]["image_id"] = {"id": doc["annotations"][0]["image_id"]}


def _coco_list_images_id(doc: dict) -> None:
    doc["images"][0]["id"] = [doc["images"][0]["id"]]


def write_deep_json(path: str | Path, depth: int = 200_000) -> Path:
    """A JSON file nested ``depth`` levels deep (a COCO-looking prefix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"images": [], "annotations": ' + "[" * depth + "]" * depth + "}")
    return path


def write_huge_int_json(src: str | Path, dst: str | Path, digits: int = 5000) -> Path:
    """A COCO export whose first image width is an integer of ``digits`` digits."""
    text = Path(src).read_text()
    m = re.search(r'"width":\s*\d+', text)
    if m is None:
        raise RuntimeError(f"{src}: no width")
    dst = Path(dst)
    dst.write_text(text[: m.start()] + '"width": ' + "9" * digits + text[m.end() :])
    return dst


def write_zip_bomb(dst: str | Path, *, declared: int = 3 << 30) -> Path:
    """A CVAT zip export whose annotations.xml declares ``declared`` bytes (default 3 GiB).

    The member holds a small valid XML; the sizes in its local and central headers are
    patched to ``declared`` (so the file costs nothing to build, and a reader that
    trusts the header would try to read 3 GiB).
    """
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("annotations.xml", date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, "<annotations><version>1.1</version></annotations>")
    raw = bytearray(buf.getvalue())
    # local file header: uncompressed size at offset 22; central directory: at 24
    assert raw[:4] == b"PK\x03\x04"
    struct.pack_into("<I", raw, 22, declared)
    cd = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, declared)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(raw))
    return dst


def write_sheet_rows(path: str | Path, images: str | Path, **kw) -> Path:
    return write_sheet(path, [sheet_row("P1", images, **kw)])


def write_csv_sheet(path: str | Path, images: str | Path) -> Path:
    """The plate sheet saved as CSV (commas) instead of TSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = sheet_row("P1", images)
    path.write_text(
        ",".join(SHEET_COLUMNS) + "\n" + ",".join(str(row[c]) for c in SHEET_COLUMNS) + "\n"
    )
    return path


def write_hash_plate(root: str | Path) -> Path:
    """A clean plate whose directory name contains '#' (``plate#1/images``)."""
    return clean_plate(Path(root) / "plate#1", "P", seed=3) / "images"


#: A regex whose column group also takes a letter: ``P_A3b_f00_t00`` gives column '3b'.
LOOSE_REGEX = r"_(?P<row>[A-P])(?P<column>\d+\w?)_f(?P<field>\d+)_t(?P<timepoint>\d+)$"


def write_constant_scores(path: str | Path, value: float = 0.7, n: int = 6) -> Path:
    """A per-image score table whose ``f1`` column is constant."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("image,f1\n" + "".join(f"img{i},{value}\n" for i in range(n)))
    return path


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
    # ---- issue 14: hostile and malformed inputs
    Entry(
        "cvat_polygon_nan",
        "cvat.import_cvat",
        "error|skip",
        _annotation_entry(
            lambda s, r: write_xml_polygon(
                s, r / "nan_polygon.xml", image="P_A02_f00_t00.tif", points=NAN_POINTS
            ),
            "cvat.xml",
        ),
    ),
    Entry(
        "cvat_polygon_huge",
        "cvat.import_cvat",
        "warn",
        _annotation_entry(
            lambda s, r: write_xml_polygon(
                s, r / "huge_polygon.xml", image="P_A02_f00_t00.tif", points=HUGE_POINTS
            ),
            "cvat.xml",
        ),
    ),
    Entry(
        "coco_polygon_inf",
        "cvat.import_cvat",
        "error|skip",
        _annotation_entry(
            lambda s, r: write_coco_patched(s, r / "inf_polygon.json", _coco_inf_polygon),
            "coco.json",
        ),
    ),
    Entry(
        "coco_polygon_huge",
        "cvat.import_cvat",
        "warn",
        _annotation_entry(
            lambda s, r: write_coco_patched(s, r / "huge_polygon.json", _coco_huge_polygon),
            "coco.json",
        ),
    ),
    Entry(
        "coco_list_category_id",
        "cvat.load_annotations",
        "error|skip",
        _annotation_entry(
            lambda s, r: write_coco_patched(s, r / "list_category.json", _coco_list_category),
            "coco.json",
        ),
    ),
    Entry(
        "coco_dict_image_id",
        "cvat.load_annotations",
        "error|skip",
        _annotation_entry(
            lambda s, r: write_coco_patched(s, r / "dict_image_id.json", _coco_dict_image_id),
            "coco.json",
        ),
    ),
    Entry(
        "coco_list_images_id",
        "cvat.load_annotations",
        "error",
        _annotation_entry(
            lambda s, r: write_coco_patched(s, r / "list_images_id.json", _coco_list_images_id),
            "coco.json",
        ),
    ),
    Entry(
        "json_nested_200000",
        "cvat.load_annotations",
        "error",
        lambda root: write_deep_json(root / "deep.json"),
    ),
    Entry(
        "json_5000_digit_integer",
        "cvat.load_annotations",
        "error",
        _annotation_entry(lambda s, r: write_huge_int_json(s, r / "digits.json"), "coco.json"),
    ),
    Entry(
        "zip_declares_3gib",
        "cvat.load_annotations",
        "error",
        lambda root: write_zip_bomb(root / "bomb.zip"),
    ),
    Entry(
        "cvat_mask_box_100000",
        "cvat.import_cvat",
        "warn",
        _annotation_entry(
            lambda s, r: write_xml_huge_mask_box(s, r / "huge_box.xml", image="P_A02_f00_t00.tif"),
            "cvat.xml",
        ),
    ),
    Entry(
        "tiff_declares_100000px",
        "io.read_image",
        "error|skip",
        _in("huge_tiff", lambda d: write_huge_tiff(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "png_declares_100000px",
        "io.read_image",
        "error|skip",
        _in("huge_png", lambda d: write_huge_png(d, "P_A04_f00_t00.png")),
    ),
    Entry(
        "mask_tiff_declares_100000px",
        "maskfolder.import_mask_folder",
        "error|skip",
        lambda root: write_mask_folder_huge_mask(root / "maskfolder"),
    ),
    Entry(
        "palette_png_inverted",
        "io.read_image",
        "accept",
        _in("palette", lambda d: write_inverted_palette_png(d, "P_A04_f00_t00.png")),
    ),
    Entry(
        "cmyk_jpeg",
        "io.read_image",
        "accept",
        _in("cmyk", lambda d: write_cmyk_jpeg(d, "P_A04_f00_t00.jpg")),
    ),
    Entry(
        "tiff_thumbnail_first",
        "io.read_image",
        "warn",
        _in("thumbnail", lambda d: write_tiff_thumbnail_first(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "planar_rgb_tiff",
        "io.read_image",
        "warn",
        _in("planar", lambda d: write_planar_rgb_tiff(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "grey_alpha_png",
        "io.read_image",
        "accept",
        _in("la_png", lambda d: write_grey_alpha(d, "P_A04_f00_t00.png")),
    ),
    Entry(
        "grey_alpha_tiff",
        "io.read_image",
        "accept",
        _in("la_tiff", lambda d: write_grey_alpha(d, "P_A04_f00_t00.tif")),
    ),
    Entry(
        "sheet_hash_in_path",
        "sheet.read_sheet",
        "accept",
        lambda root: write_sheet_rows(root / "hash.tsv", write_hash_plate(root).relative_to(root)),
    ),
    Entry(
        "sheet_pixel_size_inf",
        "sheet.read_sheet",
        "error",
        lambda root: write_sheet_rows(root / "inf.tsv", "plate/images", pixel_size_um="inf"),
    ),
    Entry(
        "sheet_csv",
        "sheet.read_sheet",
        "error",
        lambda root: write_csv_sheet(root / "plates.csv", "plate/images"),
    ),
    Entry(
        "regex_column_captures_3b",
        "sheet.plate_images",
        "error|skip",
        lambda root: shutil.copyfile(
            sorted((clean_plate(root / "loose", "P", seed=4) / "images").glob("*.tif"))[0],
            root / "loose" / "images" / "P_A3b_f00_t00.tif",
        ),
    ),
    Entry(
        "mixed_image_sizes",
        "sheet.plate_images",
        "error|skip",
        lambda root: write_odd_size_image(
            clean_plate(root / "mixed", "P", seed=5) / "images", "P_A04_f00_t00.tif"
        ),
    ),
    Entry(
        "stats_constant_column",
        "stats.stats_from_file",
        "warn",
        lambda root: write_constant_scores(root / "constant.csv"),
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
