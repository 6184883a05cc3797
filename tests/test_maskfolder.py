"""Tests of the mask-folder importer and pre-tiled patch sets (brightseg.annotations.maskfolder)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from brightseg.annotations.cvat import MANIFEST_COLUMNS as CVAT_COLUMNS
from brightseg.annotations.cvat import import_cvat
from brightseg.annotations.maskfolder import (
    MANIFEST_COLUMNS,
    correct_field_of_view,
    describe_image,
    grouped_patch_split,
    import_mask_folder,
    load_patch_set,
    mask_to_labels,
    patch_offsets,
    patch_set_pairs,
    read_mask,
)
from brightseg.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 64, 80


def disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def instances(shape=(H, W), ids=(1, 2, 3, 4)) -> np.ndarray:
    """Four cells; cells 3 and 4 touch (one 8-connected blob), 1 and 2 are separate."""
    lab = np.zeros(shape, dtype=np.uint16)
    lab[disk(shape, 14, 14, 8)] = ids[0]
    lab[disk(shape, 14, 55, 9)] = ids[1]
    left = disk(shape, 45, 25, 10)
    right = disk(shape, 45, 45, 10) & ~left
    lab[left] = ids[2]
    lab[right] = ids[3]
    return lab


def iou(a, b) -> float:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    return float((a & b).sum() / (a | b).sum())


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two label images define the same regions (ids may differ)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = set(zip(a[a > 0].tolist(), b[b > 0].tolist(), strict=True))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def save_png(arr, path) -> Path:
    Image.fromarray(arr).save(path, format="PNG")
    return Path(path)


def raw_image(shape=(H, W), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1000, 5000, shape, dtype=np.uint16)


# --------------------------------------------------------------------------- read_mask


def test_binary01_png(tmp_path):
    truth = (instances() > 0).astype(np.uint8)
    mask, labels, info = read_mask(save_png(truth, tmp_path / "m.png"))
    assert info["kind"] == "binary01" and info["n_values"] == 2 and info["channels"] == 1
    assert labels is None
    assert mask.dtype == np.uint8 and np.array_equal(mask, truth)


def test_binary0255_png(tmp_path):
    truth = (instances() > 0).astype(np.uint8)
    mask, labels, info = read_mask(save_png(truth * 255, tmp_path / "m.png"))
    assert info["kind"] == "binary0255" and labels is None
    assert np.array_equal(mask, truth)


def test_rgb_png_equal_and_coloured(tmp_path):
    truth = (instances() > 0).astype(np.uint8)
    grey = np.repeat((truth * 255)[..., None], 3, axis=-1)
    mask, _, info = read_mask(save_png(grey, tmp_path / "grey.png"))
    assert info["channels"] == 3 and info["reduction"].startswith("first channel")
    assert info["kind"] == "binary0255" and np.array_equal(mask, truth)
    # a green mask on black: the max over channels keeps it
    green = np.zeros((H, W, 3), np.uint8)
    green[..., 1] = truth * 200
    mask, labels, info = read_mask(save_png(green, tmp_path / "green.png"))
    assert info["reduction"] == "maximum over channels"
    assert labels is None and np.array_equal(mask, truth)
    # RGBA with black RGB and the mask in alpha
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = truth * 255
    mask, _, info = read_mask(save_png(rgba, tmp_path / "alpha.png"))
    assert info["reduction"].startswith("alpha") and np.array_equal(mask, truth)


@pytest.mark.parametrize("rgb", [False, True])
def test_jpeg_mask_thresholded(tmp_path, rgb):
    truth = (instances((128, 160)) > 0).astype(np.uint8)
    arr = truth * 255
    if rgb:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    path = tmp_path / "m.jpg"
    Image.fromarray(arr).save(path, format="JPEG", quality=75)
    stored = np.asarray(Image.open(path))
    stored = stored.max(axis=-1) if stored.ndim == 3 else stored
    assert np.unique(stored).size > 10  # the values really are smeared
    assert iou(stored > 0, truth) < 0.98  # so "> 0" would be wrong
    mask, labels, info = read_mask(path, threshold=127)
    assert info["kind"] == "lossy" and info["lossy"] and info["threshold"] == 127
    assert labels is None
    assert iou(mask, truth) > 0.98


def test_jpeg_with_labels_expected_warns(tmp_path, caplog):
    truth = (instances() > 0).astype(np.uint8)
    path = tmp_path / "m.jpeg"
    Image.fromarray(truth * 255).save(path, format="JPEG", quality=90)
    with caplog.at_level(logging.WARNING):
        _, labels, info = read_mask(path, expect="labels")
    assert labels is None and info["kind"] == "lossy"
    assert "cannot hold instance labels" in caplog.text


def test_antialiased_png_is_thresholded(tmp_path):
    truth = (instances() > 0).astype(np.uint8)
    arr = truth * 255
    edge = truth.astype(bool) & ~np.roll(truth.astype(bool), 1, axis=1)
    arr[edge] = 128  # a ring of half-covered pixels on the left edges
    ring_out = np.roll(edge, -1, axis=1) & ~truth.astype(bool)
    arr[ring_out] = 40
    mask, labels, info = read_mask(save_png(arr, tmp_path / "aa.png"))
    assert info["kind"] == "lossy" and info.get("smeared") and labels is None
    assert np.array_equal(mask, truth)  # 128 > 127 kept, 40 dropped


def test_label_tiff_kept_and_renumbered(tmp_path):
    given = instances(ids=(7, 40, 3, 12))
    path = tmp_path / "l.tif"
    tifffile.imwrite(path, given)
    mask, labels, info = read_mask(path)
    assert info["kind"] == "labels" and info["used_as"] == "labels" and info["n_values"] == 5
    assert labels.dtype == np.uint16
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3, 4]
    assert same_partition(labels, given)
    # increasing order preserved: 3 -> 1, 7 -> 2, 12 -> 3, 40 -> 4
    assert labels[given == 3][0] == 1 and labels[given == 40][0] == 4
    assert np.array_equal(mask, (given > 0).astype(np.uint8))
    # connected components would merge the two touching cells
    assert mask_to_labels(mask).max() == 3


def test_label_image_given_as_binary_warns(tmp_path, caplog):
    path = tmp_path / "l.tif"
    tifffile.imwrite(path, instances())
    with caplog.at_level(logging.WARNING, logger="brightseg.annotations.maskfolder"):
        mask, labels, info = read_mask(path, expect="binary")
    assert labels is None and info["used_as"] == "binary"
    assert "mask_mode binary but" in caplog.text and str(path) in caplog.text
    assert np.array_equal(mask, (instances() > 0).astype(np.uint8))


def test_colour_coded_instances(tmp_path):
    given = instances()
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 200, 0], [30, 30, 250], [200, 0, 200]])
    rgb = colours[given].astype(np.uint8)
    mask, labels, info = read_mask(save_png(rgb, tmp_path / "c.png"))
    assert info["kind"] == "labels" and info.get("colour_coded")
    assert labels.max() == 4 and same_partition(labels, given)
    _, labels_b, _ = read_mask(tmp_path / "c.png", expect="binary")
    assert labels_b is None


def test_class_coded_mask_not_instances(tmp_path, caplog):
    lab = np.zeros((H, W), np.uint8)
    for i, (y, x) in enumerate([(8, 8), (8, 30), (8, 60), (30, 8), (30, 30), (30, 60), (52, 8)]):
        lab[disk((H, W), y, x, 4)] = 1 + i % 2  # classes 1 and 2, 7 separate objects
    with caplog.at_level(logging.WARNING):
        mask, labels, info = read_mask(save_png(lab, tmp_path / "k.png"))
    assert info["kind"] == "classes" and labels is None
    assert "classes" in caplog.text
    assert mask_to_labels(mask).max() == 7


def test_one_bit_palette_and_float(tmp_path):
    truth = instances() > 0
    Image.fromarray(truth).save(tmp_path / "b.png")  # mode "1"
    mask, _, info = read_mask(tmp_path / "b.png")
    assert info["kind"] == "binary01" and np.array_equal(mask, truth)
    pal = Image.fromarray(truth.astype(np.uint8), mode="L").convert("P")
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert np.asarray(Image.open(tmp_path / "p.png")).max() >= 1
    mask, _, _ = read_mask(tmp_path / "p.png")
    assert np.array_equal(mask, truth)
    prob = np.where(truth, 0.8, 0.1).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", prob)
    mask, labels, info = read_mask(tmp_path / "f.tif")
    assert info["kind"] == "lossy" and info["threshold"] == 0.5 and labels is None
    assert np.array_equal(mask, truth)


def test_read_mask_bad_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_mask(tmp_path / "empty.png")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(buf, format="PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:40])
    with pytest.raises(InputError) as err:
        read_mask(tmp_path / "trunc.png")
    assert "trunc.png" in str(err.value)
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[0, -1], [2, 0]], np.int16))
    with pytest.raises(InputError, match="negative"):
        read_mask(tmp_path / "neg.tif")
    with pytest.raises(InputError, match="expect"):
        read_mask(tmp_path / "neg.tif", expect="instances")


def test_describe_image(tmp_path):
    grey = raw_image().astype(np.uint8)
    save_png(np.repeat(grey[..., None], 3, axis=-1), tmp_path / "g.png")
    d = describe_image(tmp_path / "g.png")
    assert d["format"] == "PNG" and d["channels"] == 3 and d["bits"] == 8
    assert d["greyscale_in_rgb"] and d["reduction"] == "first channel (R=G=B)"
    col = np.stack([grey, grey // 2, grey], axis=-1)
    d = describe_image(save_png(col, tmp_path / "c.png"))
    assert not d["greyscale_in_rgb"] and d["reduction"] == "ITU-R 601 luminance"
    tifffile.imwrite(tmp_path / "r.tif", raw_image())
    d = describe_image(tmp_path / "r.tif")
    assert d == {
        "file": str(tmp_path / "r.tif"),
        "format": "TIFF",
        "dtype": "uint16",
        "bits": 16,
        "channels": 1,
        "width": W,
        "height": H,
        "lossy": False,
        "greyscale_in_rgb": False,
        "reduction": "none",
        "min": float(raw_image().min()),
        "max": float(raw_image().max()),
    }
    Image.fromarray(col).save(tmp_path / "c.jpg", quality=80)
    assert describe_image(tmp_path / "c.jpg")["lossy"]


# --------------------------------------------------------------------------- import


def runs_of(mask: np.ndarray) -> list[int]:
    """CVAT runs (row-major, background first) of a 2-D bool box."""
    flat = mask.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def cvat_export(path: Path, images: dict[str, np.ndarray]) -> None:
    """CVAT 1.1 XML with one <mask> per instance of each label image."""
    body = []
    for i, (name, lab) in enumerate(images.items()):
        shapes = []
        for v in range(1, int(lab.max()) + 1):
            ys, xs = np.nonzero(lab == v)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            box = lab[y0:y1, x0:x1] == v
            rle = ", ".join(map(str, runs_of(box)))
            shapes.append(
                f'    <mask label="cell" source="manual" occluded="0" rle="{rle}" left="{x0}" '
                f'top="{y0}" width="{x1 - x0}" height="{y1 - y0}" z_order="0"></mask>\n'
            )
        h, w = lab.shape
        body.append(
            f'  <image id="{i}" name="{name}" width="{w}" height="{h}">\n'
            + "".join(shapes)
            + "  </image>\n"
        )
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
        + "".join(body)
        + "</annotations>\n"
    )


def make_folder(root: Path, n: int = 3, kind: str = "labels") -> dict[str, np.ndarray]:
    """images/<stem>.png (uint16 raw) + masks/<stem>.<ext> in one of several encodings."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    truths = {}
    for i in range(n):
        stem = f"A0{i + 1}_f1"
        lab = instances()
        if i == 1:
            lab = np.where(lab == 4, 0, lab).astype(np.uint16)  # 3 cells
        truths[stem] = lab
        save_png(raw_image(seed=i), root / "images" / f"{stem}.png")
        if kind == "labels":
            tifffile.imwrite(root / "masks" / f"{stem}.tif", lab)
        else:
            save_png(((lab > 0) * 255).astype(np.uint8), root / "masks" / f"{stem}.png")
    return truths


def test_import_matches_cvat_outputs(tmp_path):
    truths = make_folder(tmp_path, kind="labels")
    cvat_export(tmp_path / "export.xml", {f"{s}.png": lab for s, lab in truths.items()})
    m_cvat, s_cvat = import_cvat(
        tmp_path / "export.xml", tmp_path / "images", tmp_path / "out_cvat", plate="P1"
    )
    m_mask, s_mask = import_mask_folder(
        tmp_path / "images", tmp_path / "masks", tmp_path / "out_mask", plate="P1"
    )
    assert tuple(MANIFEST_COLUMNS) == tuple(CVAT_COLUMNS)
    assert list(m_mask.columns) == list(m_cvat.columns)
    assert list(m_mask.dtypes) == list(m_cvat.dtypes)
    assert len(s_mask) == len(s_cvat) == 0
    names_cvat = sorted(p.name for p in (tmp_path / "out_cvat").iterdir())
    names_mask = sorted(p.name for p in (tmp_path / "out_mask").iterdir())
    assert (
        names_mask
        == names_cvat
        == sorted(
            ["manifest.parquet"]
            + [f"{s}_labels.tif" for s in truths]
            + [f"{s}_mask.png" for s in truths]
        )
    )
    for stem, truth in truths.items():
        a = tifffile.imread(tmp_path / "out_cvat" / f"{stem}_labels.tif")
        b = tifffile.imread(tmp_path / "out_mask" / f"{stem}_labels.tif")
        assert a.dtype == b.dtype == np.uint16
        assert same_partition(a, truth) and same_partition(b, truth)
        pa = Image.open(tmp_path / "out_cvat" / f"{stem}_mask.png")
        pb = Image.open(tmp_path / "out_mask" / f"{stem}_mask.png")
        assert pa.mode == pb.mode == "L"
        assert np.array_equal(np.asarray(pa), np.asarray(pb))
        assert set(np.unique(np.asarray(pb))) == {0, 255}
    on_disk = pd.read_parquet(tmp_path / "out_mask" / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, m_mask)
    same = ["image", "stem", "plate", "n_cells", "foreground_fraction", "width", "height"]
    pd.testing.assert_frame_equal(m_mask[same], m_cvat[same])
    assert m_mask["n_cells"].tolist() == [4, 3, 4]
    assert set(m_mask["source_format"]) == {"mask_labels"}


def test_import_binary_uses_connected_components(tmp_path):
    truths = make_folder(tmp_path, kind="binary")
    manifest, skipped = import_mask_folder(
        tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    )
    assert len(skipped) == 0 and set(manifest["source_format"]) == {"mask_binary0255"}
    for row in manifest.itertuples():
        lab = tifffile.imread(tmp_path / "out" / f"{row.stem}_labels.tif")
        truth = truths[row.stem]
        # cells 3 and 4 touch and become one component: 3 objects from 4 cells (the
        # 3-cell image lacks cell 4, so its 3 cells stay separate)
        assert row.n_cells == lab.max() == 3
        assert same_partition(lab, np.where(truth == 4, 3, truth))
        assert np.array_equal(lab > 0, truth > 0)
        assert row.foreground_fraction == pytest.approx((truth > 0).mean())


def test_import_mask_suffix_same_folder(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    save_png(raw_image().astype(np.uint8), d / "x1.png")
    save_png(((instances() > 0) * 255).astype(np.uint8), d / "x1_mask.png")
    Image.fromarray(((instances() > 0) * 255).astype(np.uint8)).save(d / "x2_mask.jpg")
    save_png(raw_image(seed=3).astype(np.uint8), d / "x2.png")
    manifest, _ = import_mask_folder(d, d, tmp_path / "out", mask_suffix="_mask")
    assert manifest["stem"].tolist() == ["x1", "x2"]
    assert manifest["source_format"].tolist() == ["mask_binary0255", "mask_lossy"]
    with pytest.raises(InputError, match="mask_suffix"):
        import_mask_folder(d, d, tmp_path / "out2")


def _break(root: Path, case: str) -> str:
    """Make one bad item; returns the file name the error must name."""
    if case == "image_without_mask":
        save_png(raw_image(seed=9), root / "images" / "B01_f1.png")
        return "B01_f1.png"
    if case == "mask_without_image":
        save_png(np.zeros((H, W), np.uint8), root / "masks" / "Z09_f1.png")
        return "Z09_f1.png"
    if case == "size_mismatch":
        tifffile.imwrite(root / "masks" / "A02_f1.tif", np.zeros((H, W + 1), np.uint16))
        return "A02_f1.tif"
    if case == "unreadable_mask":
        (root / "masks" / "A02_f1.tif").write_bytes(b"II*\x00garbage")
        return "A02_f1.tif"
    if case == "unreadable_image":
        data = (root / "images" / "A02_f1.png").read_bytes()
        (root / "images" / "A02_f1.png").write_bytes(data[: len(data) // 3])
        return "A02_f1.png"
    raise AssertionError(case)


BAD = ["image_without_mask", "mask_without_image", "size_mismatch", "unreadable_mask"]


@pytest.mark.parametrize("case", [*BAD, "unreadable_image"])
def test_bad_input_error(tmp_path, case):
    make_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.parquet").write_bytes(b"stale")
    name = _break(tmp_path, case)
    with pytest.raises(InputError) as err:
        import_mask_folder(tmp_path / "images", tmp_path / "masks", out)
    assert name in str(err.value)
    assert not (out / "manifest.parquet").exists()
    assert not list(out.glob("*_labels.tif"))  # checked before writing


@pytest.mark.parametrize("case", [*BAD, "unreadable_image"])
def test_bad_input_skip(tmp_path, case):
    make_folder(tmp_path)
    name = _break(tmp_path, case)
    manifest, skipped = import_mask_folder(
        tmp_path / "images", tmp_path / "masks", tmp_path / "out", on_bad_input="skip"
    )
    assert len(skipped) == 1 and list(skipped.columns) == ["file", "reason"]
    assert skipped["file"].iloc[0].endswith(name) and name in skipped["reason"].iloc[0]
    # the extra image/mask is left out; a broken A02 pair is left out
    extra = case in ("image_without_mask", "mask_without_image")
    expected = {"A01_f1", "A02_f1", "A03_f1"} if extra else {"A01_f1", "A03_f1"}
    assert set(manifest["stem"]) == expected
    assert (tmp_path / "out" / "manifest.parquet").is_file()
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == sorted(
        f"{s}_mask.png" for s in expected
    )


def test_import_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist") as err:
        import_mask_folder(tmp_path / "nope", tmp_path, tmp_path / "out")
    assert "nope" in str(err.value)


# --------------------------------------------------------------------------- patch sets


def make_patches(root: Path, counts: dict[str, int], size: int = 32) -> dict[str, float]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    fg = {}
    rng = np.random.default_rng(1)
    for source, n in counts.items():
        for k in range(n):
            stem = f"{source}_{k // 2 * size}_{k % 2 * size}"
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            img[..., 1] = img[..., 2] = img[..., 0]  # greyscale saved as RGB
            save_png(img, root / "img" / f"{stem}.png")
            m = np.zeros((size, size), np.uint8)
            m[: 2 + k, :] = 255
            Image.fromarray(m).save(root / "msk" / f"{stem}.jpg", quality=75)
            fg[stem] = (2 + k) / size
    return fg


def test_load_patch_set(tmp_path):
    fg = make_patches(tmp_path, {"plateA_B03_f1": 3, "s2": 2})
    df = load_patch_set(tmp_path / "img", tmp_path / "msk")
    assert df["image_id"].tolist() == sorted(fg)
    row = df.set_index("image_id").loc["plateA_B03_f1_32_0"]
    assert (row["source"], row["row"], row["col"]) == ("plateA_B03_f1", 32, 0)
    assert (row["width"], row["height"]) == (32, 32)
    for r in df.itertuples():
        assert r.foreground_fraction == pytest.approx(fg[r.image_id], abs=1 / 32)
    # a name that does not follow the pattern
    save_png(np.zeros((32, 32), np.uint8), tmp_path / "img" / "oddname.png")
    save_png(np.zeros((32, 32), np.uint8), tmp_path / "msk" / "oddname.png")
    with pytest.raises(InputError, match="oddname"):
        load_patch_set(tmp_path / "img", tmp_path / "msk")
    assert len(load_patch_set(tmp_path / "img", tmp_path / "msk", on_bad_input="skip")) == 5
    with pytest.raises(InputError, match="source"):
        load_patch_set(tmp_path / "img", tmp_path / "msk", name_regex=r"(\d+)")


def test_patch_set_pairs(tmp_path):
    make_patches(tmp_path, {"s1": 2, "s2": 1})
    df = load_patch_set(tmp_path / "img", tmp_path / "msk")
    pairs = list(patch_set_pairs(df, plate="P", modality="phase"))
    assert [p["image_id"] for p in pairs] == df["image_id"].tolist()
    for p, r in zip(pairs, df.itertuples(), strict=True):
        raw = np.asarray(Image.open(r.image))[..., 0]
        assert p["image"].dtype == np.float32 and p["image"].shape == (32, 32)
        np.testing.assert_allclose(p["image"], raw / 255.0, atol=1e-6)
        assert p["mask"].dtype == np.uint8 and set(np.unique(p["mask"])) <= {0, 1}
        assert p["source"] == r.source and p["plate"] == "P" and p["modality"] == "phase"
    corrected = next(patch_set_pairs(df, correct=lambda im: np.full(im.shape, 2.0)))
    assert corrected["image"].max() == 1.0  # clipped to [0, 1]


def _table(source, rows, cols, size=32):
    return pd.DataFrame({"source": source, "row": rows, "col": cols, "width": size, "height": size})


def test_patch_offsets_grid_indices_or_pixels():
    grid = patch_offsets(_table("a", [0, 0, 1, 1], [0, 1, 0, 1]))
    assert grid["y0"].tolist() == [0, 0, 32, 32] and grid["x0"].tolist() == [0, 32, 0, 32]
    assert set(grid["positions"]) == {"grid"}
    pixels = patch_offsets(_table("a", [0, 0, 32, 32], [0, 32, 0, 32]))
    assert pixels["y0"].tolist() == [0, 0, 32, 32] and set(pixels["positions"]) == {"pixels"}
    stride = patch_offsets(_table("a", [0, 16, 32], [0, 0, 0]))  # overlapping, stride 16
    assert stride["y0"].tolist() == [0, 16, 32] and set(stride["positions"]) == {"pixels"}
    assert patch_offsets(_table("a", [-1, 0], [-1, 0])) is None  # no positions in the names
    mixed = pd.concat([_table("a", [0], [0]), _table("a", [1], [0], size=16)])
    assert patch_offsets(mixed.reset_index(drop=True)) is None  # sizes differ in a source


def test_correct_field_of_view_equals_the_window_of_the_whole_image():
    rng = np.random.default_rng(0)
    image = rng.random((64, 96)).astype(np.float32)

    def correct(im):  # depends on the whole field: subtract the global mean
        return im - im.mean()

    offsets = [(y, x) for y in (0, 32) for x in (0, 32, 64)]
    patches = [image[y : y + 32, x : x + 32] for y, x in offsets]
    got = correct_field_of_view(patches, offsets, correct)
    whole = correct(image)
    for (y, x), g in zip(offsets, got, strict=True):
        np.testing.assert_allclose(g, whole[y : y + 32, x : x + 32], atol=1e-6)
    # a missing patch: its place is filled with the median of the covered pixels
    partial = correct_field_of_view(patches[:-1], offsets[:-1], lambda im: im)
    np.testing.assert_array_equal(partial[0], patches[0])


def test_patch_set_pairs_feed_augmentation(tmp_path):
    from brightseg.augment import build_training_store

    make_patches(tmp_path, {"s1": 2, "s2": 1})
    df = load_patch_set(tmp_path / "img", tmp_path / "msk")
    manifest = build_training_store(
        patch_set_pairs(df),
        tmp_path / "t.zarr",
        tmp_path / "t.parquet",
        patch_size=32,
        n_variants=2,
    )
    assert len(manifest) == 3 * 2  # one tile per patch: no further tiling
    assert set(manifest["source_image"]) == set(df["image_id"])


def test_grouped_patch_split(tmp_path):
    counts = {"src0": 4, "src1": 2, "src2": 3, "src3": 4, "src4": 1, "src5": 2}
    make_patches(tmp_path, counts)
    df = load_patch_set(tmp_path / "img", tmp_path / "msk")
    out, summary = grouped_patch_split(df, val_fraction=0.34, seed=3)
    assert len(out) == len(df) and "split" not in df.columns
    sides = out.groupby("source")["split"].nunique()
    assert (sides == 1).all()  # no source on both sides
    val_sources = set(out.loc[out["split"] == "val", "source"])
    assert len(val_sources) == round(0.34 * len(counts))  # 2 of 6
    summ = summary.set_index("split")
    for side in ("train", "val"):
        srcs = set(out.loc[out["split"] == side, "source"])
        assert summ.loc[side, "groups"] == len(srcs)
        assert summ.loc[side, "patches"] == sum(counts[s] for s in srcs)
    assert summ["patches"].sum() == sum(counts.values())
    again, _ = grouped_patch_split(df, val_fraction=0.34, seed=3)
    assert again["split"].tolist() == out["split"].tolist()


def _antialiased_rgb(seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB mask saved after a JPEG round trip: 0/255 cells with blurred edges, the
    maximum a little below 255 and slightly different channels, and a speckle halo of
    values 1-31 around every cell (issue 12's lab masks)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    truth = instances() > 0
    soft = ndi.gaussian_filter(truth.astype(np.float32) * 250.0, 0.8)
    halo = ndi.binary_dilation(truth, iterations=4) & ~truth
    speckle = halo & (rng.random(truth.shape) < 0.6) & (soft < 1.0)
    soft[speckle] = rng.integers(1, 32, int(speckle.sum()))
    grey = np.clip(soft, 0, 252).astype(np.uint8)
    rgb = np.dstack([grey, np.clip(grey.astype(int) - 2, 0, 255), grey]).astype(np.uint8)
    return rgb, truth


def test_antialiased_rgb_mask_with_a_halo_is_read_as_binary(tmp_path, caplog):
    rgb, truth = _antialiased_rgb()
    path = save_png(rgb, tmp_path / "aa.png")
    assert len(np.unique(rgb.max(axis=-1))) > 20  # many grey levels: not a label image
    mask, labels, info = read_mask(path)
    assert labels is None and info["kind"] == "lossy" and info.get("smeared")
    assert info["threshold"] == 127
    # the > 127 mask: the halo and the dark half of the edge ramp are background
    assert (mask.astype(bool) ^ truth).sum() <= 0.02 * truth.sum()
    assert mask.sum() < 1.1 * truth.sum()
    # mask_mode binary reads it > threshold too; mask_mode labels keeps every value
    binary, _, binfo = read_mask(path, expect="binary")
    assert np.array_equal(binary, mask) and binfo["threshold"] == 127
    _, lab, linfo = read_mask(path, expect="labels")
    assert linfo["used_as"] == "labels" and lab is not None


def test_binary_mode_thresholds_every_reading(tmp_path):
    a = np.zeros((40, 40), np.uint8)
    a[5:20, 5:20] = 200
    a[25:35, 25:35] = 60  # dim: below the threshold
    path = save_png(a, tmp_path / "two.png")
    mask, _, info = read_mask(path, expect="binary", threshold=127)
    assert info["threshold"] == 127 and mask.sum() == 15 * 15
    one = np.zeros((40, 40), np.uint8)
    one[5:20, 5:20] = 1
    one[25:35, 25:35] = 2  # a 0/1/2 mask: nothing above the threshold, read > 0
    mask2, _, info2 = read_mask(save_png(one, tmp_path / "low.png"), expect="binary")
    assert info2["threshold"] == 0 and mask2.sum() == 15 * 15 + 10 * 10


def test_uint8_label_image_is_not_read_as_smeared(tmp_path):
    """150 labels in a uint8 PNG: its maximum is above the threshold but its top values
    hold a small share of the foreground, so it stays a label image."""
    lab = np.zeros((150, 150), np.uint8)
    for k in range(150):
        r, c = divmod(k, 15)
        lab[r * 10 + 1 : r * 10 + 9, c * 10 + 1 : c * 10 + 9] = k + 1
    _, labels, info = read_mask(save_png(lab, tmp_path / "lab.png"))
    assert info["kind"] == "labels" and labels.max() == 150
