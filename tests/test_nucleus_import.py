"""Nucleus outlines from a CVAT export (annotations.nucleus_labels) train nucleus3 models in
the workflow: the import writes <stem>_nuclei.tif and augment stores them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from brightseg.annotations.cvat import import_cvat
from brightseg.errors import InputError
from brightseg.io import read_image
from brightseg.rules.preprocess import correct_illumination, import_annotations
from brightseg.rules.training import augment

REGEX = r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$"


def _square(x0, y0, x1, y1):
    return f"{x0},{y0};{x1},{y0};{x1},{y1};{x0},{y1}"


def _export(path, stems, size=64):
    shapes = (
        ("cell", _square(4, 4, 30, 30)),
        ("nucleus", _square(12, 12, 20, 20)),
        ("cell", _square(34, 34, 60, 60)),
        ("nucleus", _square(42, 42, 52, 52)),
        ("debris", _square(40, 4, 50, 14)),
    )
    images = []
    for i, stem in enumerate(stems):
        polys = "".join(
            f'<polygon label="{label}" points="{pts}" occluded="0" z_order="0"/>'
            for label, pts in shapes
        )
        images.append(
            f'<image id="{i}" name="{stem}.png" width="{size}" height="{size}">{polys}</image>'
        )
    path.write_text(f'<?xml version="1.0"?><annotations><version>1.1</version>{"".join(images)}'
                    "</annotations>")  # fmt: skip


def _images(folder, stems, size=64):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem in stems:
        img = (rng.normal(120, 5, (size, size))).astype(np.float32)
        img[4:31, 4:31] -= 40
        img[34:61, 34:61] -= 40
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{stem}.png")


def test_cvat_nucleus_labels_become_nucleus_label_images(tmp_path):
    stems = ["n_A01_f00_t00"]
    _images(tmp_path / "images", stems)
    _export(tmp_path / "cvat.xml", stems)
    out = tmp_path / "ann"
    import_cvat(tmp_path / "cvat.xml", tmp_path / "images", out, labels=["cell"],
                nucleus_labels=["nucleus"])  # fmt: skip
    cells = read_image(out / f"{stems[0]}_labels.tif")
    nuclei = read_image(out / f"{stems[0]}_nuclei.tif")
    assert cells.max() == 2 and nuclei.max() == 2  # nuclei and debris are not cells
    assert nuclei.shape == cells.shape
    assert (cells[nuclei > 0] > 0).all()  # every nucleus inside a cell
    assert (nuclei[12:20, 12:20] > 0).all() and (nuclei[21:30, 21:30] == 0).all()
    without = tmp_path / "plain"
    import_cvat(tmp_path / "cvat.xml", tmp_path / "images", without, labels=["cell"])
    assert not (without / f"{stems[0]}_nuclei.tif").exists()
    np.testing.assert_array_equal(read_image(without / f"{stems[0]}_labels.tif"), cells)
    with pytest.raises(InputError, match="nucleus_labels"):
        import_cvat(tmp_path / "cvat.xml", tmp_path / "images", tmp_path / "x", labels=None,
                    nucleus_labels=["nucleus"])  # fmt: skip


def test_augment_stores_the_plates_nuclei_for_nucleus3(tmp_path):
    stems = [f"n_A0{i}_f00_t00" for i in (1, 2)]
    _images(tmp_path / "images", stems)
    _export(tmp_path / "cvat.xml", stems)
    store = tmp_path / "n.ome.zarr"
    correct_illumination(
        str(tmp_path / "images"), str(store), str(tmp_path / "skipped.tsv"), plate="n",
        regex=REGEX, modality="brightfield", pixel_size_um=0.65,
        illumination={"radius": 20, "unit": "px", "mode": "black"}, chunk=256,
    )  # fmt: skip
    training = {"patch_size": 32, "n_variants": 2, "with_labels": True, "with_nuclei": True}
    for name, nucleus_labels in (("with", ["nucleus"]), ("without", None)):
        ann = tmp_path / name
        import_annotations(
            str(tmp_path / "cvat.xml"), str(tmp_path / "images"), str(ann / "manifest.parquet"),
            str(ann / "skipped.tsv"), plate="n", on_bad_input="error",
            annotations={"labels": ["cell"], "nucleus_labels": nucleus_labels},
        )  # fmt: skip
    zarr_path, unsplit = tmp_path / "patches.zarr", tmp_path / "unsplit.parquet"
    manifest = str(tmp_path / "with" / "manifest.parquet")
    augment([str(store)], [manifest], str(zarr_path), str(unsplit), training=dict(training),
            patch_sets=[], seed=1)  # fmt: skip
    root = zarr.open_group(str(zarr_path), mode="r")
    man = pd.read_parquet(unsplit)
    v0 = man[man["variant"] == 0].sort_values("index")
    nuclei = np.asarray(root["nuclei"].oindex[v0["index"].to_numpy()])
    masks = np.asarray(root["masks"].oindex[v0["index"].to_numpy()])
    assert nuclei.max() > 0 and (masks[nuclei > 0] > 0).all()
    # a plate imported without nucleus labels cannot train nucleus3: the error says what to set
    with pytest.raises(InputError, match="annotations.nucleus_labels"):
        augment([str(store)], [str(tmp_path / "without" / "manifest.parquet")],
                str(tmp_path / "p2.zarr"), str(tmp_path / "u2.parquet"), training=dict(training),
                patch_sets=[], seed=1)  # fmt: skip
