"""The embedded demo end to end (README command 1), its outputs, reruns and report."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from brightseg.morphometry import CELL_SCHEMA
from brightseg.platestore import open_labels, open_plate

from .conftest import run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plate_stores_hold_images_and_label_stores_every_label(demo_run):
    """Images in the plate store (never written after correction), labels in the stores of
    the rules that write them: predictions (prob, mask) and instances (cells)."""
    sheet = pd.read_csv(demo_run / "config/plates.tsv", sep="\t")
    for plate in sheet["plate"]:
        plate_path = demo_run / f"results/plates/{plate}.ome.zarr"
        store = open_plate(plate_path)
        assert store.plate == plate
        assert len(store.images) >= 3
        assert store.label_names() == []
        pred = open_labels(demo_run / f"results/predictions/{plate}.zarr", plate_path)
        inst = open_labels(demo_run / f"results/instances/{plate}.zarr", plate_path)
        # qc.uncertainty (on in the demo) adds the ensemble's variance and vote entropy
        qc = yaml.safe_load((demo_run / "config/config.yaml").read_text()).get("qc", {})
        extra = ["entropy", "variance"] if qc.get("uncertainty") else []
        assert pred.label_names() == sorted(["mask", "prob", *extra])
        assert inst.label_names() == ["cells"]
        for image_id in store.images["image_id"]:
            img = store.read(image_id)
            assert img.dtype.kind == "f" and 0.0 <= img.min() and img.max() <= 1.0
            mask = pred.read_label(image_id, "mask")
            cells = inst.read_label(image_id, "cells")
            assert mask.shape == img.shape
            assert set(pd.unique(mask.ravel())) <= {0, 1}
            # cells lie inside the predicted foreground (hole filling may add a few pixels)
            if (cells > 0).any():
                assert (mask[cells > 0] == 1).mean() > 0.95


def test_tables_and_ensemble(demo_run):
    res = demo_run / "results"
    ens = pd.read_csv(res / "models/ensemble.tsv", sep="\t")
    assert len(ens) == 4 and list(ens["rank"]) == [1, 2, 3, 4]
    assert all((demo_run / p).is_file() for p in ens["path"])
    # every file a rule wrote is a declared output: checkpoints in the train rule's
    # checkpoints/ directory, exports in measure_cells' exports/ directory
    assert all("/checkpoints/epoch_" in p for p in ens["path"])
    assert not list(res.glob("models/*/*/epoch_*.keras"))
    exports = sorted(p.name for p in (res / "tables/demo1/exports").iterdir())
    assert [n for n in exports if not n.startswith(".")][:2] == [
        "demo1_A01_f00_t00_masks.tif",
        "demo1_A01_f00_t00_rois.zip",
    ]
    assert not list(res.glob("predictions/.*partial*"))
    for plate in ("demo1", "demo2", "demo3"):
        cells = pq.read_table(res / f"tables/{plate}/cells.parquet")
        assert cells.schema.equals(CELL_SCHEMA, check_metadata=False)
        images = pd.read_parquet(res / f"tables/{plate}/images.parquet")
        assert len(images) == len(open_plate(res / f"plates/{plate}.ome.zarr").images)
        assert (images["n_cells"] > 0).all()
        # bounded measurements stay in their bounds; image intensities are filled
        for col in ("circularity", "convexity", "solidity"):
            assert cells.column(col).to_pandas().between(0, 1).all(), (plate, col)
        assert images["mean_intensity"].between(0, 1).all(), plate
    agg = pd.read_parquet(res / "tables/images.parquet")
    assert set(agg["plate"]) == {"demo1", "demo2", "demo3"}
    ev = pd.read_parquet(res / "tables/evaluation.parquet")
    assert "ensemble" in set(ev["model"])
    # the ensemble is a real segmentation, not noise: held-out F1 well above chance
    assert ev.loc[ev["model"] == "ensemble", "f1"].mean() > 0.5
    stats = json.loads((res / "tables/stats.json").read_text())
    for key in ("n", "mean", "t", "p_value", "log10_p", "cohens_d", "beta_ci95_low"):
        assert key in stats
    skipped = pd.read_csv(res / "qc/skipped.tsv", sep="\t")
    assert skipped.empty


def test_livecell_fixture_tables(demo_run):
    res = demo_run / "results"
    qc = pd.read_csv(res / "livecell/qc.tsv", sep="\t")
    reasons = " ".join(qc.astype(str).to_numpy().ravel())
    assert "A172_Phase_A7_1_01d04h00m_3" in reasons  # the paper's excluded list
    assert "BT474" in reasons  # the deliberately truncated image
    per_image = pd.read_parquet(res / "tables/livecell/per_image.parquet")
    assert {"A172", "BT474", "SKOV3"} <= set(per_image["cell_line"])
    ap = pd.read_parquet(res / "tables/livecell/ap.parquet")
    assert "all" in set(ap["cell_line"])
    for name in ("groups", "summary", "ap"):
        assert (res / f"tables/livecell/{name}.md").read_text().startswith("|")


def test_rerun_does_nothing(demo_run):
    proc = run_snakemake(demo_run, "-n", "--cores", "2")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_figure_rules_are_byte_identical_on_rerun(demo_run):
    res = demo_run / "results"
    outputs = sorted(
        p
        for p in [*(res / "figures").iterdir(), *(res / "tables/livecell").iterdir()]
        if p.suffix in (".png", ".svg", ".parquet", ".md", ".tex")
    ) + [res / "tables/stats.json", res / "tables/stats.md", res / "tables/stats.tex"]
    before = {p: sha(p) for p in outputs}
    run_snakemake(
        demo_run, "--cores", "2", "--forcerun", "figures", "livecell_report", "stats_report"
    )
    after = {p: sha(p) for p in outputs}
    assert [str(p) for p in outputs if before[p] != after[p]] == []


def test_report_zip(demo_run):
    run_snakemake(demo_run, "--report", "results/report.zip")
    report = demo_run / "results/report.zip"
    assert report.is_file() and report.stat().st_size > 10_000
