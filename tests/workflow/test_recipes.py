"""README "Your own plates", followed as written: (a) annotated plates with the paper (GPU)
config, (c) no GPU with the CPU recipe. Recipe (b), new plates with a bundle, is
tests/workflow/test_bundle.py.

Each test builds what a lab has (a sheet of plates, one annotated with a CVAT export or a
folder of masks, one not), copies the config the README names, points ``plates:`` at the
sheet and runs the README's command.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from brightseg.io import read_image
from brightseg.synth import synth_plate

from .conftest import copy_workflow, run_snakemake
from .test_new_plate import job_counts

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

SHEET_HEADER = "plate\timages\tmodality\tpixel_size_um\tannotations\tuse_for_training\n"


def _own_config(work: Path, template: str, sheet: str) -> dict:
    """README step 3: copy the config, point ``plates:`` at the sheet, remove ``demo:``."""
    cfg = yaml.safe_load((work / template).read_text())
    cfg["plates"] = sheet
    cfg.pop("demo", None)
    return cfg


def _readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_recipe_a_annotated_plates_with_the_paper_config(tmp_path):
    """(a) A CVAT-annotated plate trains the paper's models, both plates are segmented; offline,
    the first training job says which ImageNet file to download and where to put it."""
    section = _readme_section("Your own plates")
    assert "Copy `config/paper.yaml`" in section
    assert "snakemake --configfile config/my.yaml --cores 8" in section

    work = copy_workflow(tmp_path / "lab")
    synth_plate(work / "data/P001", "P001", n_images=2, shape=(256, 256), seed=3)
    synth_plate(work / "data/P002", "P002", n_images=2, shape=(256, 256), seed=4, annotate=False)
    (work / "config/my_plates.tsv").write_text(
        SHEET_HEADER
        + "P001\tdata/P001/images/\tbrightfield\t0.65\tdata/P001/cvat.xml\ttrue\n"
        + "P002\tdata/P002/images/*.tif\tbrightfield\t0.65\t\tfalse\n"
    )
    cfg = _own_config(work, "config/paper.yaml", "config/my_plates.tsv")
    cfg["evaluation_sets"] = []
    (work / "config/my.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    args = ["--configfile", "config/my.yaml", "--cores", "8"]
    counts = job_counts(run_snakemake(work, "-n", *args).stdout)
    assert counts["import_annotations"] == 1 and "synth_plate" not in counts
    assert counts["train"] == len(cfg["models"])
    for rule in ("correct_illumination", "predict", "split_instances", "measure_cells"):
        assert counts[rule] == 2, (rule, counts)

    # No ImageNet weights on this machine: the first training job fails with what to do,
    # not as bad input and without a traceback.
    model, loss = cfg["models"][0]["architecture"], cfg["models"][0]["loss"]
    target = f"results/models/{model}/{loss}/history.csv"
    proc = run_snakemake(
        work, "--configfile", "config/my.yaml", "--cores", "2", target, check=False
    )
    logs = "".join(p.read_text(errors="replace") for p in (work / "logs/train").rglob("*.log"))
    text = proc.stdout + proc.stderr + logs
    assert proc.returncode != 0
    assert "ImageNet weights" in text and "missing" in text, text[-3000:]
    assert "Place the file" in text and "results/keras" in text  # what to download, where
    assert "Traceback (most recent call last)" not in logs


def _mask_folder_plate(root: Path, plate: str, n_images: int, seed: int) -> None:
    """A synthetic plate with a folder of 0/255 PNG masks (README "Bring your own data")."""
    synth_plate(root, plate, n_images=n_images, shape=(384, 384), seed=seed, annotate=False)
    (root / "masks").mkdir()
    for labels in sorted((root / "labels").glob("*_labels.tif")):
        stem = labels.name.removesuffix("_labels.tif")
        mask = (read_image(labels) > 0).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    shutil.rmtree(root / "labels")


def test_recipe_c_no_gpu_with_the_cpu_recipe(tmp_path):
    """(c) No GPU: config/cpu.yaml with the lab's sheet trains one small U-Net, writes the
    bundle and segments the annotated and the new plate, with the CPU recipe's settings."""
    section = _readme_section("CPU recipe")
    command = "snakemake --cores 2 --configfile config/cpu.yaml"
    assert command in section

    work = copy_workflow(tmp_path / "lab")
    _mask_folder_plate(work / "data/LAB1", "LAB1", n_images=3, seed=11)
    synth_plate(work / "data/LAB2", "LAB2", n_images=2, shape=(384, 384), seed=12, annotate=False)
    (work / "config/my_plates.tsv").write_text(
        SHEET_HEADER
        + "LAB1\tdata/LAB1/images/\tbrightfield\t0.65\tdata/LAB1/masks/\ttrue\n"
        + "LAB2\tdata/LAB2/images/\tbrightfield\t0.65\t\tfalse\n"
    )
    cfg = _own_config(work, "config/cpu.yaml", "config/my_plates.tsv")
    recipe = {k: cfg["training"][k] for k in ("patch_size", "batch_size", "learning_rate")}
    # The one deviation from the README: a few steps instead of the recipe's 45 minutes.
    cfg["training"].update(epochs=2, steps_per_epoch=2, val_steps=1, n_variants=2, patience=2)
    (work / "config/cpu.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    run_snakemake(work, *command.split()[1:])

    assert not (work / "results/demo").exists()
    [model] = cfg["models"]
    history = pd.read_csv(
        work / f"results/models/{model['architecture']}/{model['loss']}/history.csv"
    )
    assert len(history) >= 1
    manifest = json.loads((work / "results/models/bundle/bundle.json").read_text())
    assert manifest["preprocessing"]["tile"] == recipe["patch_size"]
    assert manifest["training"]["plates"] == ["LAB1"]
    images = pd.read_parquet(work / "results/tables/images.parquet")
    assert sorted(images["plate"].unique()) == ["LAB1", "LAB2"]
    assert len(images) == 5
    for plate in ("LAB1", "LAB2"):
        cells = pd.read_parquet(work / f"results/tables/{plate}/cells.parquet")
        assert set(cells["plate"]) <= {plate}
    assert re.search(r"small_unet", (work / "results/models/ensemble.tsv").read_text())
    # the recipe's working pixel size: the models trained at 1.74 um/px (ensemble.tsv, the
    # bundle) and the plates' cells came back on their own 0.65 um grid
    working = cfg["training"]["working_pixel_size_um"]
    ens = pd.read_csv(work / "results/models/ensemble.tsv", sep="\t")
    assert (ens["working_pixel_size_um"] == working).all()
    bundled = (work / "results/models/bundle/ensemble.tsv").read_text()
    assert "working_pixel_size_um" in bundled
    from brightseg.platestore import open_labels

    cells = open_labels(work / "results/instances/LAB2.zarr", work / "results/plates/LAB2.ome.zarr")
    first = cells.images["image_id"].iloc[0]
    assert np.asarray(cells.read_label(first, "cells")).shape == (384, 384)
    # instances.tune: validation - the watershed pair chosen on the validation image(s)
    tuned = json.loads((work / "results/models/instances.json").read_text())
    assert tuned["n_images"] >= 1 and set(tuned["settings"]) <= {"h_um", "min_area_um2"}
    recorded = manifest["postprocessing"]["instances"]
    assert recorded["tune"] == "none"
    for key, value in tuned["settings"].items():
        assert recorded[key] == value
