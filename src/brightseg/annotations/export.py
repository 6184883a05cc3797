"""Writers of the annotation formats the readers in :mod:`brightseg.annotations.cvat` take.

"CVAT for images 1.1" XML (polygons and RLE masks in CVAT's own run-length encoding) and
"COCO 1.0" JSON (polygons, uncompressed RLE), written the way CVAT's *Export task dataset*
writes them, so the synthetic demo plates (:func:`brightseg.synth.synth_plate`) carry the
exports a lab would have and every reader is tested against its writer.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

import numpy as np

#: The fixed timestamps of the written CVAT tasks (byte-identical exports).
_CVAT_TIME = "2024-01-01 00:00:00.000000+00:00"


def cvat_mask_rle(mask: np.ndarray) -> list[int]:
    """CVAT mask runs: row-major within the box, alternating bg/fg, starting with bg."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    return _runs(flat)


def coco_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major, starting with background) of a full mask."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    return {"counts": _runs(flat), "size": [int(mask.shape[0]), int(mask.shape[1])]}


def coco_rle_box(mask: np.ndarray, box: tuple[int, int, int, int], shape) -> dict:
    """:func:`coco_rle` of a mask given inside its box, without a full-size copy."""
    h, w = int(shape[0]), int(shape[1])
    r0, c0, r1, c1 = box
    strip = np.zeros((h, c1 - c0), dtype=bool)
    strip[r0:r1] = mask
    runs = _runs(strip.ravel(order="F"))
    runs[0] += c0 * h
    tail = (w - c1) * h
    if tail:
        if len(runs) % 2:
            runs[-1] += tail
        else:
            runs.append(tail)
    return {"counts": runs, "size": [h, w]}


def _runs(flat: np.ndarray) -> list[int]:
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return [int(r) for r in runs]


def format_points(xy: np.ndarray) -> str:
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in xy)


def cvat_task_xml(task_name: str, images: list[dict]) -> str:
    """Build a "CVAT for images 1.1" task export.

    ``images`` entries: ``name``, ``width``, ``height``, ``shapes`` (list of XML strings).
    """
    n = len(images)
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<annotations>",
        "  <version>1.1</version>",
        "  <meta>",
        "    <task>",
        "      <id>1</id>",
        f"      <name>{escape(task_name)}</name>",
        f"      <size>{n}</size>",
        "      <mode>annotation</mode>",
        "      <overlap>0</overlap>",
        "      <bugtracker></bugtracker>",
        f"      <created>{_CVAT_TIME}</created>",
        f"      <updated>{_CVAT_TIME}</updated>",
        "      <subset>default</subset>",
        "      <start_frame>0</start_frame>",
        f"      <stop_frame>{max(0, n - 1)}</stop_frame>",
        "      <frame_filter></frame_filter>",
        "      <segments>",
        "        <segment>",
        "          <id>1</id>",
        "          <start>0</start>",
        f"          <stop>{max(0, n - 1)}</stop>",
        "          <url>http://localhost:8080/api/jobs/1</url>",
        "        </segment>",
        "      </segments>",
        "      <owner>",
        "        <username>brightseg</username>",
        "        <email></email>",
        "      </owner>",
        "      <assignee></assignee>",
        "      <labels>",
    ]
    for name, color in (("cell", "#33ddff"), ("debris", "#fa3253")):
        out += [
            "        <label>",
            f"          <name>{name}</name>",
            f"          <color>{color}</color>",
            "          <type>any</type>",
            "          <attributes>",
            "          </attributes>",
            "        </label>",
        ]
    out += [
        "      </labels>",
        "    </task>",
        f"    <dumped>{_CVAT_TIME}</dumped>",
        "  </meta>",
    ]
    for i, im in enumerate(images):
        out.append(
            f'  <image id="{i}" name={quoteattr(im["name"])} '
            f'width="{im["width"]}" height="{im["height"]}">'
        )
        out.extend(im["shapes"])
        out.append("  </image>")
    out.append("</annotations>")
    return "\n".join(out) + "\n"


def cvat_polygon(label: str, xy: np.ndarray, z: int) -> str:
    return (
        f'    <polygon label="{label}" source="manual" occluded="0" '
        f'points="{format_points(xy)}" z_order="{z}">\n    </polygon>'
    )


def cvat_mask(label: str, mask: np.ndarray, left: int, top: int, z: int) -> str:
    rle = ", ".join(str(r) for r in cvat_mask_rle(mask))
    return (
        f'    <mask label="{label}" source="manual" occluded="0" rle="{rle}" '
        f'left="{left}" top="{top}" width="{mask.shape[1]}" height="{mask.shape[0]}" '
        f'z_order="{z}">\n    </mask>'
    )


def coco_skeleton() -> dict:
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [{"id": 1, "name": "cell", "supercategory": ""}],
        "images": [],
        "annotations": [],
    }


# --------------------------------------------------------------------------- label images


def _trace_cell(cell: np.ndarray, tolerance_px: float) -> np.ndarray | None:
    """Outline of a cell mask (its box crop) in crop-local pixel-corner ``(x, y)``.

    The contour runs through pixel-edge midpoints (``find_contours`` at level 0.5 of the
    mask padded by one pixel, ``fully_connected="low"``) and is simplified by
    Douglas-Peucker (:func:`skimage.measure.approximate_polygon`) with ``tolerance_px``.
    None for a cell that is not one 4-connected component without holes, or whose
    simplified outline has fewer than 3 vertices (such cells are exported as masks).
    """
    from scipy import ndimage as ndi
    from skimage import measure

    _, n = ndi.label(cell)
    if n != 1 or not np.array_equal(ndi.binary_fill_holes(cell), cell):
        return None
    padded = np.pad(cell, 1).astype(np.float32)
    contours = measure.find_contours(padded, 0.5, fully_connected="low")
    if not contours:
        return None
    contour = max(contours, key=len) - 1.0
    if tolerance_px > 0:
        contour = measure.approximate_polygon(contour, tolerance=float(tolerance_px))
    if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
        contour = contour[:-1]
    if len(contour) < 3:
        return None
    xy = np.stack([contour[:, 1] + 0.5, contour[:, 0] + 0.5], axis=1)
    return np.round(xy, 2)


def _raster_local(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """pycocotools rasterisation of a polygon (crop-local corner ``(x, y)``) in an h x w box."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([xy.ravel().tolist()], h, w)
    return mask_utils.decode(rle[0]).astype(bool)


def label_shapes(
    labels: np.ndarray,
    *,
    shapes: str = "polygon",
    tolerance_px: float = 0.35,
    min_iou: float = 0.99,
) -> list[dict]:
    """Cells of an instance-label image as export shapes (polygons or exact masks).

    Parameters
    ----------
    labels : ndarray
        Instance labels (0 = background).
    shapes : {"polygon", "mask"}
        ``mask``: every cell an exact mask (CVAT RLE / COCO RLE).  ``polygon``: every cell
        its outline simplified with ``tolerance_px``, except cells whose polygon would not
        give them back with IoU >= ``min_iou`` once painted and re-rasterised as the
        importer does (pycocotools; masks painted over polygons): those, and cells with
        holes or several parts, are exact masks.
    tolerance_px : float
        Douglas-Peucker tolerance of the outlines in pixels (0: every contour vertex).
    min_iou : float
        The round trip each polygon cell must pass.

    Returns
    -------
    list of dict
        One per cell, in label order: ``label``, ``kind`` (``polygon`` or ``mask``),
        ``box`` ``(r0, c0, r1, c1)``, ``mask`` (bool crop of the box) and, for polygons,
        ``xy`` (image pixel-corner ``(x, y)`` vertices, 2 decimals).
    """
    if shapes not in ("polygon", "mask"):
        raise ValueError(f"shapes must be 'polygon' or 'mask', got {shapes!r}")
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    h, w = labels.shape
    cells = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        crop = labels[r0:r1, c0:c1] == i
        cell = {"label": i, "kind": "mask", "box": (r0, c0, r1, c1), "mask": crop}
        if shapes == "polygon":
            xy = _trace_cell(crop, tolerance_px)
            if xy is not None:
                # rasterised in the box grown by 2 px (integer shifts leave it unchanged)
                gr0, gc0 = max(0, r0 - 2), max(0, c0 - 2)
                gr1, gc1 = min(h, r1 + 2), min(w, c1 + 2)
                local = xy + np.array([c0 - gc0, r0 - gr0], dtype=np.float64)
                cell.update(
                    kind="polygon",
                    xy=xy + np.array([c0, r0], dtype=np.float64),
                    raster=_raster_local(local, gr1 - gr0, gc1 - gc0),
                    rbox=(gr0, gc0, gr1, gc1),
                )
        cells.append(cell)
    if shapes == "polygon":
        _fallback_to_masks(labels, cells, min_iou)
    for c in cells:
        c.pop("raster", None)
        c.pop("rbox", None)
    return cells


def _fallback_to_masks(labels: np.ndarray, cells: list[dict], min_iou: float) -> None:
    """Turn polygon cells that do not survive painting + re-rasterising into masks."""
    n = int(labels.max()) + 1 if labels.size else 1
    true_area = np.bincount(labels.ravel(), minlength=n)
    for _ in range(len(cells) + 1):
        canvas = np.zeros(labels.shape, dtype=labels.dtype)
        for c in cells:
            if c["kind"] == "polygon":
                r0, c0, r1, c1 = c["rbox"]
                canvas[r0:r1, c0:c1][c["raster"]] = c["label"]
        for c in cells:
            if c["kind"] == "mask":
                r0, c0, r1, c1 = c["box"]
                canvas[r0:r1, c0:c1][c["mask"]] = c["label"]
        inter = np.bincount(labels[canvas == labels].ravel(), minlength=n)
        pred_area = np.bincount(canvas.ravel(), minlength=n)
        union = true_area + pred_area - inter
        bad = [
            c
            for c in cells
            if c["kind"] == "polygon" and inter[c["label"]] < min_iou * union[c["label"]]
        ]
        if not bad:
            return
        for c in bad:
            c["kind"] = "mask"


def labels_to_cvat_shapes(cells: list[dict], label: str = "cell") -> list[str]:
    """XML shapes of :func:`label_shapes`' cells: polygons (``z_order`` 0), then masks (1)."""
    out = [cvat_polygon(label, c["xy"], 0) for c in cells if c["kind"] == "polygon"]
    for c in cells:
        if c["kind"] == "mask":
            r0, c0, _, _ = c["box"]
            out.append(cvat_mask(label, c["mask"], c0, r0, 1))
    return out


def labels_to_coco_annotations(
    cells: list[dict], image_id: int, first_id: int, shape: tuple[int, int]
) -> list[dict]:
    """COCO annotations of :func:`label_shapes`' cells: polygons first, then RLE (iscrowd 1)."""
    ordered = [c for c in cells if c["kind"] == "polygon"] + [
        c for c in cells if c["kind"] == "mask"
    ]
    anns = []
    for k, c in enumerate(ordered):
        r0, c0, r1, c1 = c["box"]
        ann = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": 1,
            "segmentation": None,
            "area": float(np.count_nonzero(c["mask"])),
            "bbox": [float(c0), float(r0), float(c1 - c0), float(r1 - r0)],
            "iscrowd": 0,
            "attributes": {"occluded": False},
        }
        if c["kind"] == "polygon":
            ann["segmentation"] = [[round(float(v), 2) for v in c["xy"].ravel()]]
        else:
            ann["segmentation"] = coco_rle_box(c["mask"], (r0, c0, r1, c1), shape)
            ann["iscrowd"] = 1
        anns.append(ann)
    return anns


def review_exports(
    images: list[dict],
    *,
    task_name: str = "brightseg review",
    shapes: str = "polygon",
    tolerance_px: float = 0.35,
    min_iou: float = 0.99,
) -> tuple[str, dict, dict]:
    """A CVAT 1.1 XML task and a COCO 1.0 JSON of predicted label images.

    Parameters
    ----------
    images : list of dict
        ``name`` (the image file name the task will hold) and ``labels`` (instance labels).
    task_name, shapes, tolerance_px, min_iou
        See :func:`label_shapes`.

    Returns
    -------
    xml : str
        "CVAT for images 1.1" task export (label ``cell``).
    coco : dict
        "COCO 1.0" instances (category ``cell``).
    counts : dict
        ``polygons`` and ``masks`` written.
    """
    xml_images = []
    coco = coco_skeleton()
    counts = {"polygons": 0, "masks": 0}
    next_ann = 1
    for k, im in enumerate(images, start=1):
        labels = np.asarray(im["labels"])
        h, w = labels.shape
        cells = label_shapes(labels, shapes=shapes, tolerance_px=tolerance_px, min_iou=min_iou)
        n_poly = sum(c["kind"] == "polygon" for c in cells)
        counts["polygons"] += n_poly
        counts["masks"] += len(cells) - n_poly
        xml_images.append(
            {"name": im["name"], "width": w, "height": h, "shapes": labels_to_cvat_shapes(cells)}
        )
        coco["images"].append(
            {
                "id": k,
                "width": w,
                "height": h,
                "file_name": im["name"],
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        anns = labels_to_coco_annotations(cells, k, next_ann, (h, w))
        coco["annotations"].extend(anns)
        next_ann += len(anns)
    return cvat_task_xml(task_name, xml_images), coco, counts
