"""README recipe (b): new, unannotated plates segmented with the bundle of an earlier run."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import yaml

from brightseg.io import read_image
from brightseg.platestore import open_labels

from .conftest import BIN, copy_workflow, run_snakemake
from .test_new_plate import job_counts

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

PER_PLATE = {
    "correct_illumination": 1,
    "predict": 1,
    "split_instances": 1,
    "measure_cells": 1,
    "aggregate_tables": 1,
    "skipped_report": 1,
    "polarity_report": 1,
    "all": 1,
}


def test_predict_only_run_with_the_bundle_gives_the_same_masks(demo_run, tmp_path):
    bundle = demo_run / "results/models/bundle.tar"
    assert bundle.is_file() and (demo_run / "results/models/bundle/bundle.json").is_file()
    # A fresh directory: the workflow, the bundle file, a new sheet of unannotated plates
    # (the demo's plate demo2 under another name) and a config that stands alone.
    work = copy_workflow(tmp_path / "lab")
    shutil.copy(bundle, work / "brightseg-model.tar")
    images = work / "data/new1"
    shutil.copytree(demo_run / "results/demo/demo2/images", images)
    (work / "config/new_plates.tsv").write_text(
        "plate\timages\tmodality\tpixel_size_um\tannotations\tuse_for_training\n"
        f"new1\t{images}\tbrightfield\t0.65\t\tfalse\n"
    )
    (work / "config/new.yaml").write_text(
        yaml.safe_dump({"plates": "config/new_plates.tsv", "seed": 42})
    )
    args = ["--cores", "2", "--configfile", "config/new.yaml", "--config"]
    dry = run_snakemake(work, "-n", *args, "model=brightseg-model.tar")
    assert job_counts(dry.stdout) == PER_PLATE
    run_snakemake(work, *args, "model=brightseg-model.tar")

    ours = open_labels(
        work / "results/predictions/new1.zarr", work / "results/plates/new1.ome.zarr"
    )
    theirs = open_labels(
        demo_run / "results/predictions/demo2.zarr", demo_run / "results/plates/demo2.ome.zarr"
    )
    ids = list(theirs.images["image_id"])
    assert list(ours.images["image_id"]) == ids
    for image_id in ids:
        for name in ("mask", "prob"):
            np.testing.assert_array_equal(
                ours.read_label(image_id, name), theirs.read_label(image_id, name)
            )
    cells = open_labels(work / "results/instances/new1.zarr", work / "results/plates/new1.ome.zarr")
    demo_cells = open_labels(
        demo_run / "results/instances/demo2.zarr", demo_run / "results/plates/demo2.ome.zarr"
    )
    for image_id in ids:  # the bundle's watershed settings too
        np.testing.assert_array_equal(
            cells.read_label(image_id, "cells"), demo_cells.read_label(image_id, "cells")
        )
    assert (work / "results/tables/new1/cells.parquet").is_file()

    # `brightseg segment` on the same files, without a sheet: the same cells.
    seg = subprocess.run(
        [str(BIN / "brightseg"), "segment", str(images), "--model", str(bundle), "--out", "seg"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert seg.returncode == 0, seg.stderr[-3000:]
    for image_id in ids:
        np.testing.assert_array_equal(
            read_image(work / f"seg/{image_id}_labels.tif"),
            demo_cells.read_label(image_id, "cells"),
        )
    assert not (work / "results/models/ensemble.tsv").exists()  # nothing trained

    # A value the models were not trained with is refused, naming both.
    (work / "config/white.yaml").write_text(yaml.safe_dump({"illumination": {"mode": "white"}}))
    bad = run_snakemake(
        work,
        "-n",
        "--cores",
        "2",
        "--configfile",
        "config/new.yaml",
        "config/white.yaml",
        "--config",
        "model=brightseg-model.tar",
        check=False,
    )
    assert bad.returncode != 0
    assert "illumination.mode is 'white'" in bad.stderr + bad.stdout
