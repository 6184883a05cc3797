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
