"""Tests of the CVAT import stage (brightseg.annotations.cvat)."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils

from brightseg.annotations import cvat
from brightseg.annotations.cvat import (
    ImageAnnotations,
    Shape,
    decode_cvat_rle,
    import_cvat,
    load_annotations,
    rasterize,
)
from brightseg.errors import InputError

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external" / "cvat"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
needs_external = pytest.mark.skipif(
    not EXTERNAL.is_dir(), reason=f"external CVAT sample files not found at {EXTERNAL}"
)

DOC_RLE = (
    "3, 5, 7, 7, 5, 9, 3, 11, 2, 11, 2, 12, 1, 12, 1, 26, 1, 12, 1, 12, 2, 11, 3, 9, 5, 7, 7, 5, 3"
)


def kinds(anns: dict[str, ImageAnnotations]) -> tuple[dict, dict]:
    """Total kept shapes and skipped shapes by kind over all images."""
    kept, skipped = {}, {}
    for ann in anns.values():
        for s in ann.shapes:
            kept[s.kind] = kept.get(s.kind, 0) + 1
        for k, n in ann.skipped.items():
            skipped[k] = skipped.get(k, 0) + n
    return kept, skipped


def cvat_xml(images: list[tuple[str, int, int, str]]) -> str:
    """A minimal 'CVAT for images 1.1' task export: (name, width, height, shapes xml)."""
    body = "".join(
        f'  <image id="{i}" name="{name}" width="{w}" height="{h}">\n{shapes}  </image>\n'
        for i, (name, w, h, shapes) in enumerate(images)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
        "  <meta><task><labels><label><name>cell</name></label></labels></task></meta>\n"
        f"{body}</annotations>\n"
    )


def runs_of(mask: np.ndarray) -> list[int]:
    """CVAT runs (row-major, background first) of a 2-D bool box, computed independently."""
    flat = mask.ravel().astype(int)
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    return runs


def mask_el(mask: np.ndarray, left: int, top: int, label="cell", z=0) -> str:
    h, w = mask.shape
    rle = ", ".join(map(str, runs_of(mask)))
    return (
        f'    <mask label="{label}" source="manual" occluded="0" rle="{rle}" left="{left}" '
        f'top="{top}" width="{w}" height="{h}" z_order="{z}"></mask>\n'
    )


def poly_el(points: list[tuple[float, float]], label="cell", z=0) -> str:
    pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in points)
    return f'    <polygon label="{label}" occluded="0" points="{pts}" z_order="{z}"></polygon>\n'


# --------------------------------------------------------------------------- decoding


@needs_external
def test_doc_example_mask_decodes_to_disc():
    anns = load_annotations(EXTERNAL / "xml_format.md.example_annotation.xml")
    (ann,) = anns.values()
    (m,) = [s for s in ann.shapes if s.kind == "mask"]
    assert m.data["left"] == 707 and m.data["top"] == 888
    assert (m.data["width"], m.data["height"]) == (13, 15)
    assert m.data["rle"] == [int(v) for v in DOC_RLE.split(",")]
    full = decode_cvat_rle(DOC_RLE, 707, 888, 13, 15, (ann.height, ann.width))
    assert full.shape == (1200, 1600)
    box = full[888:903, 707:720]
    runs = [int(v) for v in DOC_RLE.split(",")]
    assert full.sum() == box.sum() == sum(runs[1::2]) == 149
    # Row 0: 3 background, 5 foreground (columns 3..7), 5 background.
    assert np.flatnonzero(box[0]).tolist() == [3, 4, 5, 6, 7]
    assert np.flatnonzero(box[7]).tolist() == list(range(13))  # widest rows span the box
    assert box[:, 0].any() and box[:, -1].any() and box[0].any() and box[-1].any()
    # A filled, convex blob: every row and every column is one unbroken run.
    for line in list(box) + list(box.T):
        idx = np.flatnonzero(line)
        assert idx.size and idx[-1] - idx[0] + 1 == idx.size
    from skimage.morphology import convex_hull_image

    hull = convex_hull_image(box)
    assert (hull & ~box).sum() <= 3  # digitally convex up to 3 boundary pixels
    assert abs(box.mean() - np.pi / 4) < 0.03  # fill ratio of a disc in its box
    # Nearly rotation symmetric: the 180-degree rotation differs in few pixels.
    assert (box ^ box[::-1, ::-1]).sum() <= 12


def test_decode_cvat_rle_row_major_background_first():
    runs = [1, 2, 3, 1, 2, 3]  # 3x4 box
    got = decode_cvat_rle(runs, 1, 2, 4, 3, (6, 7))
    expected = np.zeros((6, 7), dtype=bool)
    box = np.array([[0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 1, 1]], dtype=bool)
    expected[2:5, 1:5] = box
    np.testing.assert_array_equal(got, expected)
    assert runs_of(box) == runs  # independent encoder agrees
    # Partly outside the image: clipped, not an error.
    clipped = decode_cvat_rle(runs, 5, 4, 4, 3, (6, 7))
    exp2 = np.zeros((6, 7), dtype=bool)
    exp2[4:6, 5:7] = box[:2, :2]
    np.testing.assert_array_equal(clipped, exp2)


def test_decode_cvat_rle_bad_sum():
    with pytest.raises(InputError, match=r"sum to 11, expected width\*height = 4\*3 = 12"):
        decode_cvat_rle("1, 2, 3, 1, 2, 2", 0, 0, 4, 3, (5, 5))
    with pytest.raises(InputError, match="negative or non-integer"):
        decode_cvat_rle([1, -2, 13], 0, 0, 4, 3, (5, 5))


@needs_external
def test_ui_drawn_masks_decode_exactly(tmp_path):
    doc = json.loads((EXTERNAL / "annotations.json").read_text())
    wanted = [("27", 5, 5138, (458, 87, 79, 72)), ("28", 19, 1181, (627, 244, 41, 41))]
    wanted.append(("28", 33, 3200, (23, 57, 85, 68)))
    assert doc["task"]["22"]["shapes"][5]["points"] == doc["job"]["27"]["shapes"][5]["points"]
    images, elements = [], ""
    for k, (job, idx, _fg, box) in enumerate(wanted):
        shape = doc["job"][job]["shapes"][idx]
        assert shape["type"] == "mask"
        *runs, left, top, right, bottom = (int(v) for v in shape["points"])
        width, height = right - left + 1, bottom - top + 1
        assert (left, top, width, height) == box
        rle = ", ".join(map(str, runs))
        el = (
            f'    <mask label="cell" source="manual" occluded="0" rle="{rle}" left="{left}" '
            f'top="{top}" width="{width}" height="{height}" z_order="0"></mask>\n'
        )
        elements += el
        images.append((f"m{k}.png", 800, 600, el))
    images.append(("all.png", 800, 600, elements))
    path = tmp_path / "ui_masks.xml"
    path.write_text(cvat_xml(images))
    anns = load_annotations(path)
    assert list(anns) == ["m0.png", "m1.png", "m2.png", "all.png"]
    for k, (_, _, fg, (left, top, width, height)) in enumerate(wanted):
        lab = rasterize(anns[f"m{k}.png"])
        assert lab.shape == (600, 800) and lab.dtype == np.uint16
        assert np.count_nonzero(lab) == fg
        ys, xs = np.nonzero(lab)
        assert ys.min() >= top and ys.max() < top + height
        assert xs.min() >= left and xs.max() < left + width
    lab = rasterize(anns["all.png"])
    np.testing.assert_array_equal(np.bincount(lab.ravel())[1:], [5138, 1181, 3200])


@needs_external
def test_coco_uncompressed_rle_is_column_major():
    anns = load_annotations(EXTERNAL / "instances_val.json")
    assert list(anns) == ["b.jpg"]
    ann = anns["b.jpg"]
    assert (ann.width, ann.height) == (5, 10)
    poly, rle = ann.shapes
    assert (poly.kind, poly.label, rle.kind, rle.label) == ("polygon", "a", "rle", "b")
    assert rle.data == {"size": [10, 5], "counts": [0, 20, 30]}
    only_rle = ImageAnnotations("b.jpg", 5, 10, [rle])
    got = rasterize(only_rle)
    # size [h, w] = [10, 5]; 0 background then 20 foreground down the columns:
    # columns of 10 pixels, so the first 2 columns are filled, all 10 rows.
    expected = np.zeros((10, 5), dtype=np.uint16)
    expected[:, :2] = 1
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == 20
    # The polygon (0,0)-(1,0)-(1,2)-(0,2) covers the pixels of column 0, rows 0-1.
    only_poly = rasterize(ImageAnnotations("b.jpg", 5, 10, [poly]))
    assert np.argwhere(only_poly).tolist() == [[0, 0], [1, 0]]
    # Both: same z_order, the RLE comes later so it is on top and hides the polygon.
    both = rasterize(ann)
    np.testing.assert_array_equal(both, expected)


# --------------------------------------------------------------------------- real files


@needs_external
def test_datumaro_project_export_counts(caplog):
    with caplog.at_level(logging.WARNING, logger="brightseg.annotations.cvat"):
        anns = load_annotations(EXTERNAL / "annotations.xml")
    # 6 <image> elements; the names repeat across the three subsets.
    assert sorted(anns) == sorted(
        f"{s}/img{i}.jpg" for s in ("Test", "Train", "Validation") for i in (0, 1)
    )
    kept, skipped = kinds(anns)
    assert kept == {"polygon": 3}
    assert skipped == {"box": 3, "polyline": 3, "points": 3}
    msgs = [r.getMessage() for r in caplog.records]
    for text in ("3 box shapes skipped", "3 polyline shapes skipped", "3 points shapes skipped"):
        assert sum(text in m for m in msgs) == 1, msgs
    img1 = anns["Train/img1.jpg"]
    assert (img1.width, img1.height, img1.subset) == (10, 10, "Train")
    (s,) = img1.shapes
    assert (s.label, s.z_order, s.data) == ("label1", 1, [[1.0, 2.0, 3.0, 4.0, 6.0, 5.0]])
    # Rasterised exactly as pycocotools does.
    ref = mask_utils.decode(mask_utils.frPyObjects([[1, 2, 3, 4, 6, 5]], 10, 10))[..., 0]
    np.testing.assert_array_equal(rasterize(img1) > 0, ref > 0)
    # Label filter.
    only2 = load_annotations(EXTERNAL / "annotations.xml", labels=["label2"])
    assert kinds(only2)[0] == {}
    assert sum(a.excluded_labels["label1"] for a in only2.values()) == 3


@needs_external
def test_datumaro_task_file_counts():
    anns = load_annotations(EXTERNAL / "train.xml")
    assert list(anns) == ["img0.jpg", "img1.jpg"]
    kept, skipped = kinds(anns)
    assert kept == {"polygon": 1}
    # Skeletons count once each; their <points> children are not counted separately.
    assert skipped == {"box": 1, "polyline": 1, "points": 1, "skeleton": 2}
    assert anns["img1.jpg"].shapes[0].label == ""
    assert kinds(load_annotations(EXTERNAL / "train.xml", labels=["cell"]))[0] == {}


@needs_external
def test_cvat_doc_example_counts_and_z_order():
    anns = load_annotations(EXTERNAL / "xml_format.md.example_annotation.xml")
    (ann,) = anns.values()
    assert (ann.name, ann.width, ann.height) == ("filename000.jpg", 1600, 1200)
    kept, skipped = kinds(anns)
    assert kept == {"polygon": 1, "mask": 1}
    assert skipped == {"box": 1, "polyline": 2, "points": 1, "tag": 1, "skeleton": 1}
    poly = ann.shapes[0]
    assert poly.data[0][:4] == [561.30, 916.23, 561.30, 842.77]
    # The car polygon (z_order 1) is painted over the mask (z_order 0), which it covers.
    lab = rasterize(ann)
    assert lab.max() == 1
    mask = decode_cvat_rle(DOC_RLE, 707, 888, 13, 15, (1200, 1600))
    assert np.all(lab[mask] == 1)
    ref = mask_utils.decode(mask_utils.frPyObjects(poly.data, 1200, 1600))[..., 0]
    np.testing.assert_array_equal(lab > 0, ref > 0)
    # With z_order swapped the mask is on top and two cells remain.
    ann.shapes[1].z_order = 5
    lab2 = rasterize(ann)
    assert lab2.max() == 2
    assert np.all(lab2[mask] == 2) and np.count_nonzero(lab2 == 2) == 149


@needs_external
def test_coco_box_only_file():
    anns = load_annotations(EXTERNAL / "instances_train.json")
    assert list(anns) == ["a.jpg"]
    assert (anns["a.jpg"].width, anns["a.jpg"].height) == (10, 5)
    assert kinds(anns) == ({}, {"box": 1})
    assert rasterize(anns["a.jpg"]).shape == (5, 10)
    assert not rasterize(anns["a.jpg"]).any()


@needs_external
def test_rest_api_dump_is_unknown_format():
    with pytest.raises(InputError, match="not a COCO instances file") as exc:
        load_annotations(EXTERNAL / "annotations.json")
    assert "annotations.json" in str(exc.value)


# --------------------------------------------------------------------------- format errors


def test_unknown_formats(tmp_path):
    for name, text in [("a.xml", "just some text"), ("b.json", "[1, 2]"), ("c.txt", "x,y\n")]:
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(InputError) as exc:
            load_annotations(p)
        assert name in str(exc.value)
    p = tmp_path / "other.xml"
    p.write_text("<?xml version='1.0'?>\n<dataset><image/></dataset>\n")
    with pytest.raises(InputError, match="root element is <dataset>"):
        load_annotations(p)
    with pytest.raises(InputError, match="does not exist"):
        load_annotations(tmp_path / "missing.xml")


def test_detection_by_content_not_extension(tmp_path):
    xml = cvat_xml([("a.png", 8, 8, poly_el([(1, 1), (6, 1), (6, 6)]))])
    p = tmp_path / "export.json"  # wrong extension, XML content
    p.write_text("\ufeff\n  " + xml)
    anns = load_annotations(p)
    assert anns["a.png"].source_format == "cvat_xml"
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}]}
    coco |= {"annotations": [], "categories": []}
    q = tmp_path / "coco.xml"
    q.write_text(json.dumps(coco))
    assert load_annotations(q)["a.png"].source_format == "coco_json"


def test_malformed_xml_names_file_and_line(tmp_path):
    p = tmp_path / "broken.xml"
    p.write_text(
        '<?xml version="1.0"?>\n<annotations>\n  <image id="0" name="a.png" width="4" '
        'height="4">\n    <polygon label="cell" points="0,0;1,1;2,0" </image>\n</annotations>\n'
    )
    with pytest.raises(InputError, match=r"broken\.xml.*not well-formed at line 4") as exc:
        load_annotations(p)
    assert exc.value.path == str(p)


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "images": [\n    {"id": 1,,}\n  ]\n}\n')
    with pytest.raises(InputError, match=r"bad\.json.*line 3"):
        load_annotations(p)


def test_tracks_skipped_with_warning(tmp_path, caplog):
    xml = cvat_xml([("a.png", 8, 8, "")]).replace(
        "</annotations>",
        '<track id="0" label="cell"><box frame="0" xtl="1" ytl="1" xbr="3" ybr="3" '
        'outside="0" occluded="0" keyframe="1"/></track>\n</annotations>',
    )
    p = tmp_path / "video.xml"
    p.write_text(xml)
    with caplog.at_level(logging.WARNING, logger="brightseg.annotations.cvat"):
        anns = load_annotations(p)
    assert kinds(anns) == ({}, {})
    assert any("1 <track> elements skipped" in r.getMessage() for r in caplog.records)


def test_degenerate_polygon_and_clipping_warnings(tmp_path, caplog):
    shapes = (
        '    <polygon label="cell" points="1,1;5,5" z_order="0"/>\n'
        + poly_el([(-4, -4), (4, -4), (4, 4), (-4, 4)])
        + mask_el(np.ones((3, 3), bool), 8, 8)
    )
    p = tmp_path / "e.xml"
    p.write_text(cvat_xml([("a.png", 10, 10, shapes)]))
    with caplog.at_level(logging.WARNING, logger="brightseg.annotations.cvat"):
        anns = load_annotations(p)
    ann = anns["a.png"]
    assert [s.kind for s in ann.shapes] == ["polygon", "mask"]
    assert ann.skipped == {"degenerate polygon": 1}
    assert ann.clipped == 2
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert "1 degenerate polygon shapes skipped" in msgs and "fewer than 3 points" in msgs
    assert "2 shapes" in msgs and "clipped" in msgs
    lab = rasterize(ann)
    expected = np.zeros((10, 10), np.uint16)
    expected[0:4, 0:4] = 1  # polygon -4..4 clipped to the image: pixels 0..3
    expected[8:10, 8:10] = 2  # 3x3 mask at (8, 8) clipped to 2x2
    np.testing.assert_array_equal(lab, expected)


def test_coco_missing_image_id(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 6, "height": 4}],
        "categories": [{"id": 3, "name": "cell"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 4, 0, 4, 2]]},
            {"id": 8, "image_id": 99, "category_id": 3, "segmentation": [[0, 0, 4, 0, 4, 2]]},
        ],
    }
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(coco))
    with pytest.raises(InputError, match=r"annotation id 8 refers to image id 99"):
        load_annotations(p)
    anns = load_annotations(p, on_bad_input="skip")
    assert len(anns["a.png"].shapes) == 1
    with pytest.raises(InputError, match="on_bad_input"):
        load_annotations(p, on_bad_input="ignore")


def test_coco_polygon_equals_xml_polygon_and_rle_forms(tmp_path):
    pts = [(1.3, 2.7), (9.5, 1.2), (11.9, 8.4), (4.25, 9.9), (0.5, 6.0)]
    flat = [v for xy in pts for v in xy]
    xml = tmp_path / "a.xml"
    xml.write_text(cvat_xml([("a.png", 14, 12, poly_el(pts))]))
    target = np.zeros((12, 14), np.uint8)
    target[3:7, 2:9] = 1
    target[8, 10] = 1
    compressed = mask_utils.encode(np.asfortranarray(target))
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 14, "height": 12}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [flat]},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": [12, 14], "counts": compressed["counts"].decode()},
                "iscrowd": 1,
            },
        ],
    }
    cj = tmp_path / "a.json"
    cj.write_text(json.dumps(coco))
    xml_lab = rasterize(load_annotations(xml)["a.png"])
    coco_ann = load_annotations(cj)["a.png"]
    poly_only = rasterize(ImageAnnotations("a.png", 14, 12, coco_ann.shapes[:1]))
    np.testing.assert_array_equal(xml_lab, poly_only)
    ref = mask_utils.decode(mask_utils.frPyObjects([flat], 12, 14))[..., 0]
    np.testing.assert_array_equal(xml_lab > 0, ref > 0)
    rle_only = rasterize(ImageAnnotations("a.png", 14, 12, coco_ann.shapes[1:]))
    np.testing.assert_array_equal(rle_only, target)


def test_compressed_rle_totals_match_pycocotools():
    rng = np.random.default_rng(3)
    for h, w in [(1, 1), (7, 5), (40, 33), (128, 96)]:
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(m))["counts"]
        assert cvat._coco_string_total(counts) == h * w
        assert cvat._coco_string_total(counts.decode()) == h * w
    short = mask_utils.frPyObjects({"size": [10, 5], "counts": [0, 20, 3]}, 10, 5)
    ann = ImageAnnotations("x.png", 5, 10, [Shape("rle", "c", 0, short, "annotation id 4")])
    ann.shapes[0].data = {"size": [10, 5], "counts": short["counts"].decode()}
    with pytest.raises(InputError, match=r"annotation id 4.*sum to 23, expected h\*w"):
        rasterize(ann)


def test_z_order_and_ties():
    sq = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]
    sq2 = [[5.0, 5.0, 10.0, 5.0, 10.0, 10.0, 5.0, 10.0]]
    a = Shape("polygon", "cell", 2, sq, "A")
    b = Shape("polygon", "cell", 0, sq2, "B")
    lab = rasterize(ImageAnnotations("x", 12, 12, [a, b]))
    assert lab[6, 6] == 1 and lab[9, 9] == 2  # A has the higher z_order: on top
    a.z_order = 0
    lab = rasterize(ImageAnnotations("x", 12, 12, [a, b]))
    assert lab[6, 6] == 2  # tie: the later shape (B) is on top
    assert np.count_nonzero(lab == 1) == 36 - 9 and np.count_nonzero(lab == 2) == 25


def test_many_instances_use_uint32():
    n = 65537
    w = 257
    shapes = [
        Shape(
            "mask",
            "cell",
            0,
            {"rle": [0, 1], "left": i % w, "top": i // w, "width": 1, "height": 1},
            f"m{i}",
        )
        for i in range(n)
    ]
    lab = rasterize(ImageAnnotations("x", w, 256, shapes))
    assert lab.dtype == np.uint32
    assert lab.max() == n and lab[0, 0] == 1 and lab.ravel()[n - 1] == n
    small = rasterize(ImageAnnotations("x", w, 256, shapes[:65535]))
    assert small.dtype == np.uint16 and small.max() == 65535


# --------------------------------------------------------------------------- import_cvat


def make_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        arr = rng.integers(0, 4000, size=(h, w), dtype=np.uint16)
        if name.endswith((".tif", ".tiff")):
            tifffile.imwrite(folder / name, arr)
        else:
            Image.fromarray((arr // 16).astype(np.uint8)).save(folder / name)


def disc(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= r * r


def synthetic_export(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    make_images(images, {"A01_f1.tif": (40, 30), "A02_f1.tif": (24, 20), "A03_f1.png": (16, 12)})
    d = disc(4)
    a01 = (
        poly_el([(2, 2), (12, 2), (12, 8), (2, 8)])  # 10 x 6 rectangle
        + mask_el(d, 20, 10, z=1)
        + poly_el([(25, 12), (35, 12), (35, 20), (25, 20)], z=0)  # under the disc
        + '    <box label="cell" xtl="1" ytl="1" xbr="5" ybr="5" z_order="0"/>\n'
        + '    <points label="cell" points="3,3" z_order="0"/>\n'
        + poly_el([(30, 2), (38, 2), (38, 6)], label="debris")
    )
    a02 = (
        mask_el(np.ones((2, 3), bool), 5, 6)
        + '    <box label="cell" xtl="1" ytl="1" xbr="5" ybr="5"/>\n'
    )
    xml = cvat_xml(
        [("A01_f1.tif", 40, 30, a01), ("A02_f1.tif", 24, 20, a02), ("A03_f1.png", 16, 12, "")]
    )
    export = tmp_path / "annotations.xml"
    export.write_text(xml)
    return export, images


def test_import_cvat_end_to_end(tmp_path, caplog):
    export, images = synthetic_export(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="brightseg.annotations.cvat"):
        manifest, skipped = import_cvat(export, images, out, plate="P1")
    assert skipped.empty and list(skipped.columns) == ["file", "reason"]
    assert list(manifest.columns) == list(cvat.MANIFEST_COLUMNS)
    assert manifest["stem"].tolist() == ["A01_f1", "A02_f1", "A03_f1"]
    assert manifest["n_cells"].tolist() == [3, 1, 0]
    assert manifest["plate"].tolist() == ["P1"] * 3
    assert manifest["width"].tolist() == [40, 24, 16]
    assert manifest["height"].tolist() == [30, 20, 12]
    assert set(manifest["source_format"]) == {"cvat_xml"}
    assert manifest["image"].tolist() == [
        str(images / n) for n in ("A01_f1.tif", "A02_f1.tif", "A03_f1.png")
    ]
    # Rectangle 10x6 (60 px) + disc r=4 (49 px) + rectangle 10x8 minus its overlap with the disc.
    lab = tifffile.imread(out / "A01_f1_labels.tif")
    assert lab.dtype == np.uint16 and lab.shape == (30, 40)
    expected = np.zeros((30, 40), np.uint16)
    expected[2:8, 2:12] = 1
    expected[12:20, 25:35] = 3
    expected[10:19, 20:29][disc(4)] = 2
    np.testing.assert_array_equal(lab, expected)
    assert manifest.loc[0, "foreground_fraction"] == pytest.approx(
        np.count_nonzero(expected) / (30 * 40)
    )
    png = np.asarray(Image.open(out / "A01_f1_mask.png"))
    assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
    np.testing.assert_array_equal(png == 255, expected > 0)
    lab2 = tifffile.imread(out / "A02_f1_labels.tif")
    assert lab2.sum() == 6 and np.all(lab2[6:8, 5:8] == 1)
    assert not tifffile.imread(out / "A03_f1_labels.tif").any()
    stored = pd.read_parquet(out / "manifest.parquet")
    pd.testing.assert_frame_equal(stored, manifest, check_dtype=False)
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert "2 box shapes skipped" in msgs and "1 points shapes skipped" in msgs
    # Deterministic bytes on a re-run.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import_cvat(export, images, out, plate="P1")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_import_coco_subdirectory_names_and_zip(tmp_path):
    images = tmp_path / "imgs"
    make_images(images, {"w1.tif": (20, 10)})
    coco = {
        "images": [{"id": 4, "file_name": "task/sub/w1.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {"id": 1, "image_id": 4, "category_id": 1, "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]]}
        ],
    }
    z = tmp_path / "export.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("annotations/instances_default.json", json.dumps(coco))
    manifest, _ = import_cvat(z, images, tmp_path / "out", labels=None)
    assert manifest["stem"].tolist() == ["w1"] and manifest["n_cells"].tolist() == [1]
    assert manifest["source_format"].tolist() == ["coco_json"]
    lab = tifffile.imread(tmp_path / "out" / "w1_labels.tif")
    assert np.argwhere(lab).min(0).tolist() == [1, 1] and lab.sum() == 20


def test_import_missing_image_error_and_skip(tmp_path):
    export, images = synthetic_export(tmp_path)
    (images / "A02_f1.tif").unlink()
    out = tmp_path / "out"
    with pytest.raises(InputError, match="A02_f1.tif") as exc:
        import_cvat(export, images, out)
    assert "missing" in str(exc.value)
    assert not out.exists() or not any(out.iterdir())
    manifest, skipped = import_cvat(export, images, out, on_bad_input="skip")
    assert manifest["stem"].tolist() == ["A01_f1", "A03_f1"]
    assert skipped["file"].tolist() == ["A02_f1.tif"]
    assert "missing" in skipped["reason"][0]
    assert sorted(p.name for p in out.iterdir()) == [
        "A01_f1_labels.tif",
        "A01_f1_mask.png",
        "A03_f1_labels.tif",
        "A03_f1_mask.png",
        "manifest.parquet",
    ]


def test_import_size_mismatch(tmp_path):
    export, images = synthetic_export(tmp_path)
    tifffile.imwrite(images / "A02_f1.tif", np.zeros((24, 20), np.uint16))  # transposed
    with pytest.raises(InputError, match=r"image is 20x24 .* says 24x20") as exc:
        import_cvat(export, images, tmp_path / "out")
    assert exc.value.path == str(images / "A02_f1.tif")


def test_import_bad_rle_writes_nothing(tmp_path):
    export, images = synthetic_export(tmp_path)
    out = tmp_path / "out"
    import_cvat(export, images, out)  # a previous good run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    text = export.read_text().replace('rle="0, 6" left="5"', 'rle="0, 5" left="5"')
    export.write_text(text)
    with pytest.raises(InputError) as exc:
        import_cvat(export, images, out)
    msg = str(exc.value)
    assert "A02_f1.tif" in msg and "left=5 top=6 width=3 height=2" in msg
    assert "sum to 5, expected width*height = 3*2 = 6" in msg
    assert exc.value.path == str(export)
    # Checked before writing: the previous outputs are untouched, nothing new appears.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    manifest, skipped = import_cvat(export, images, tmp_path / "o2", on_bad_input="skip")
    assert manifest["stem"].tolist() == ["A01_f1", "A03_f1"]
    assert skipped["file"].tolist() == ["A02_f1.tif"]
    assert not (tmp_path / "o2" / "A02_f1_labels.tif").exists()


def test_import_error_while_writing_leaves_no_manifest(tmp_path, monkeypatch):
    export, images = synthetic_export(tmp_path)
    out = tmp_path / "out"
    import_cvat(export, images, out)  # a previous run left a manifest
    for name in ("A02_f1_labels.tif", "A02_f1_mask.png"):
        (out / name).unlink()
    real = cvat.rasterize

    def failing(ann, shape=None):
        if ann.name == "A02_f1.tif":
            raise InputError("x.xml", "simulated rasterisation failure")
        return real(ann, shape)

    monkeypatch.setattr(cvat, "rasterize", failing)
    with pytest.raises(InputError, match="simulated"):
        import_cvat(export, images, out)
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.parquet" not in names
    assert not any(n.startswith("A02_f1") for n in names)
    assert not any(n.startswith(".") for n in names)  # no temporary files left


def test_import_label_filter(tmp_path):
    export, images = synthetic_export(tmp_path)
    manifest, _ = import_cvat(export, images, tmp_path / "o1", labels=None)
    assert manifest["n_cells"].tolist() == [4, 1, 0]  # the 'debris' polygon counts too
    manifest, _ = import_cvat(export, images, tmp_path / "o2", labels=["debris"])
    assert manifest["n_cells"].tolist() == [1, 0, 0]
    with pytest.raises(InputError, match=r"no polygon or mask has a label in \['nucleus'\]"):
        import_cvat(export, images, tmp_path / "o3", labels=["nucleus"])


def test_import_coco_missing_image_id_skip(tmp_path):
    images = tmp_path / "imgs"
    make_images(images, {"a.png": (8, 6)})
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]},
            {"id": 6, "image_id": 2, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]},
        ],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(coco))
    with pytest.raises(InputError, match="annotation id 6 refers to image id 2"):
        import_cvat(p, images, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    manifest, skipped = import_cvat(p, images, tmp_path / "out", on_bad_input="skip")
    assert manifest["n_cells"].tolist() == [1]
    assert len(skipped) == 1 and "annotation id 6" in skipped["reason"][0]
