"""Multi-focal-plane plates through the workflow: config/multifocal.yaml, and the plane checks
that stop a run before any job."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from brightseg.platestore import open_labels, open_plate

from .conftest import copy_workflow, run_snakemake

pytestmark = [pytest.mark.workflow]


def _with_sheet(work, rows: str, synth: dict, **extra) -> None:
    cfg = yaml.safe_load((work / "config/multifocal.yaml").read_text())
    cfg["plates"] = "config/mixed.tsv"
    cfg["demo"]["synth"] = synth
    cfg.update(extra)
    (work / "config/mixed.yaml").write_text(yaml.safe_dump(cfg))
    header = "plate\timages\tmodality\tpixel_size_um\tannotations\tuse_for_training\tz_planes\tz_select\n"
    (work / "config/mixed.tsv").write_text(header + rows)


def test_plates_of_other_plane_counts_stop_the_run(tmp_path):
    """Training on 3-plane and 1-plane plates, or predicting a 1-plane plate with 3-plane
    models, stops at parse time naming the plates."""
    work = copy_workflow(tmp_path / "mixed")
    spec = {"n_images": 2, "shape": [128, 128]}
    _with_sheet(
        work,
        "mf1\tresults/demo/mf1/images\tbrightfield\t0.65\tresults/demo/mf1/cvat.xml\ttrue\t3\t\n"
        "flat\tresults/demo/flat/images\tbrightfield\t0.65\tresults/demo/flat/cvat.xml\ttrue\t\t\n",
        {"mf1": {**spec, "planes": 3, "plane_files": True}, "flat": spec},
    )
    proc = run_snakemake(
        work, "-n", "--cores", "1", "--configfile", "config/mixed.yaml", check=False
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "different focal plane counts (1 plane(s): flat; 3 plane(s): mf1)" in text
    _with_sheet(
        work,
        "mf1\tresults/demo/mf1/images\tbrightfield\t0.65\tresults/demo/mf1/cvat.xml\ttrue\t3\t\n"
        "flat\tresults/demo/flat/images\tbrightfield\t0.65\t\tfalse\t\t\n",
        {"mf1": {**spec, "planes": 3, "plane_files": True}, "flat": spec},
    )
    proc = run_snakemake(
        work, "-n", "--cores", "1", "--configfile", "config/mixed.yaml", check=False
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "plate(s) ['flat'] have [1] focal plane(s) but the models trained here take 3" in text
    _with_sheet(
        work,
        "mf1\tresults/demo/mf1/images\tbrightfield\t0.65\tresults/demo/mf1/cvat.xml\ttrue\t3\t\n",
        {"mf1": {**spec, "planes": 3, "plane_files": True}},
        livecell={"enabled": True, "synth": True},
    )
    proc = run_snakemake(
        work, "-n", "--cores", "1", "--configfile", "config/mixed.yaml", check=False
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "evaluation_sets and LIVECell hold single-plane images" in text


@pytest.mark.slow
def test_multifocal_config_trains_and_predicts_on_planes(tmp_path):
    """`snakemake --configfile config/multifocal.yaml`: plane files and a 5-page stack become
    3-channel stores; the model trained on them predicts both plates; the bundle says so."""
    work = copy_workflow(tmp_path / "mf")
    run_snakemake(work, "--cores", "2", "--configfile", "config/multifocal.yaml")
    res = work / "results"
    for plate, n in (("mf1", 6), ("mf2", 2)):
        ps = open_plate(res / f"plates/{plate}.ome.zarr", mode="r")
        assert ps.channels == 3 and len(ps.images) == n
        image_id = ps.images["image_id"][0]
        assert ps.read(image_id).shape == (256, 256, 3)
        pred = open_labels(res / f"predictions/{plate}.zarr", res / f"plates/{plate}.ome.zarr")
        assert pred.read_label(image_id, "mask").shape == (256, 256)
        assert pd.read_parquet(res / f"tables/{plate}/cells.parquet").shape[0] > 0
    assert open_plate(res / "plates/mf2.ome.zarr").metadata["focus"] == {
        "planes": 5,
        "select": [1, 2, 3],
    }
    ev = pd.read_parquet(res / "tables/evaluation.parquet")
    assert set(ev.loc[ev["source"] == "held-out plate", "plate"]) == {"mf2"}
    bundle = json.loads((res / "models/bundle/bundle.json").read_text())
    assert bundle["preprocessing"]["input_planes"] == 3


def test_a_multi_plane_bundle_refuses_single_plane_plates(tmp_path):
    """Predict-only with a bundle of 3-plane models: a plate of one plane stops the run."""
    import keras

    from brightseg.bundle import write_bundle

    work = copy_workflow(tmp_path / "new")
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)).save(
        tmp_path / "e1.keras"
    )
    tsv = tmp_path / "ensemble.tsv"
    tsv.write_text(
        f"rank\tpath\tmodel\tloss\tepoch\tval_f1\n1\t{tmp_path}/e1.keras\tu\tbce\t1\t0.8\n"
    )
    write_bundle(
        tsv,
        tmp_path / "bundle",
        work / "planes.tar",
        illumination={"radius": 40, "unit": "px", "mode": "black", "method": "fast",
                      "percentiles": [1.0, 99.8]},
        inference={"overlap": 8, "vote": "mean", "threshold": 0.5, "tta": False},
        tile=32,
        pixel_size_um=0.65,
        input_planes=3,
    )  # fmt: skip
    (work / "config/new.yaml").write_text(
        "plates: config/new.tsv\ndemo:\n  synth:\n    flat: {n_images: 1, shape: [64, 64]}\n"
    )
    (work / "config/new.tsv").write_text(
        "plate\timages\tmodality\tpixel_size_um\tannotations\tuse_for_training\n"
        "flat\tresults/demo/flat/images\tbrightfield\t0.65\t\tfalse\n"
    )
    args = ("-n", "--cores", "1", "--configfile", "config/new.yaml", "--config", "model=planes.tar")
    proc = run_snakemake(work, *args, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "plate(s) ['flat'] have [1] focal plane(s) but the models of planes.tar take 3" in text
