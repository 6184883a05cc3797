"""A new plate arrives: only its own jobs and the aggregates run (issue: incremental reruns)."""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest
import yaml

from brightseg.synth import synth_plate

from .conftest import run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

PER_PLATE_AND_AGGREGATES = {
    "correct_illumination": 1,
    "predict": 1,
    "split_instances": 1,
    "measure_cells": 1,
    "aggregate_tables": 1,
    "skipped_report": 1,
    "polarity_report": 1,
    "figures": 1,
    "qc_review": 1,
    "qc_export_cvat": 1,
    "all": 1,
}


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def snapshot(root):
    """sha256 and mtime of every file under results/ (the old plates' outputs)."""
    out = {}
    for p in sorted((root / "results").rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
            )
    return out


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    dst = tmp_path / "work"
    shutil.copytree(demo_run, dst, symlinks=True)
    return dst


def add_sheet_row(work, plate, images, annotations="", training="false"):
    with open(work / "config/plates.tsv", "a") as fh:
        fh.write(f"{plate}\t{images}\tbrightfield\t0.65\t{annotations}\t{training}\n")


def test_new_unannotated_plate_runs_only_its_jobs(demo_copy):
    work = demo_copy
    synth_plate(
        work / "incoming/demo4", "demo4", n_images=2, shape=(256, 256), seed=7, annotate=False
    )
    add_sheet_row(work, "demo4", "incoming/demo4/images")
    dry = run_snakemake(work, "-n", "--cores", "2")
    assert job_counts(dry.stdout) == PER_PLATE_AND_AGGREGATES

    before = snapshot(work)
    run_snakemake(work, "--cores", "2")
    after = snapshot(work)
    old_plates = [k for k in before if any(f"demo{i}" in k for i in (1, 2, 3))]
    assert old_plates
    # results/qc/review/ is one aggregate job's directory (the review of all plates, which a
    # new plate may change), so Snakemake writes it anew: its old plates' files keep their
    # bytes, not their mtimes. Every other output of an old plate is not touched at all.
    review = [k for k in old_plates if k.startswith("results/qc/review/")]
    changed = [k for k in old_plates if k not in review and before[k] != after.get(k)]
    assert changed == [], f"outputs of old plates were touched: {changed[:10]}"
    rewritten = [k for k in review if k in after and before[k][0] != after[k][0]]
    assert rewritten == [], f"review exports of old plates changed: {rewritten[:10]}"
    assert (work / "results/tables/demo4/cells.parquet").is_file()
    assert "Nothing to be done" in run_snakemake(work, "-n", "--cores", "2").stdout


def test_discovered_plate_directory(demo_copy):
    work = demo_copy
    synth_plate(
        work / "scratch/demo5", "demo5", n_images=2, shape=(256, 256), seed=8, annotate=False
    )
    (work / "incoming").mkdir()
    shutil.move(str(work / "scratch/demo5/images"), work / "incoming/demo5")
    extra = {"plate_discovery": {"pattern": "incoming/*", "pixel_size_um": 0.65}}
    (work / "discover.yaml").write_text(yaml.safe_dump(extra))
    dry = run_snakemake(
        work, "-n", "--cores", "2", "--configfile", "config/config.yaml", "discover.yaml"
    )
    assert job_counts(dry.stdout) == PER_PLATE_AND_AGGREGATES
    assert "demo5" in dry.stdout


def test_new_training_plate_retrains(demo_copy):
    work = demo_copy
    synth_plate(work / "incoming/demo6", "demo6", n_images=2, shape=(256, 256), seed=9)
    add_sheet_row(work, "demo6", "incoming/demo6/images", "incoming/demo6/cvat.xml", "true")
    counts = job_counts(run_snakemake(work, "-n", "--cores", "2").stdout)
    assert counts["train"] == 2
    assert counts["augment"] == 1
    assert counts["import_annotations"] == 1
    assert counts["predict"] == 4  # a new ensemble predicts every plate again


def _corrected_export(work, plate):
    """A 'corrected' CVAT export of a plate's predictions (the qc export, one cell deleted)."""
    from brightseg.platestore import open_labels
    from brightseg.rules.qc import export_review

    res = work / "results"
    labels = open_labels(res / f"instances/{plate}.zarr", res / f"plates/{plate}.ome.zarr")
    items = []
    for image_id in labels.images["image_id"]:
        cells = labels.read_label(image_id, "cells").copy()
        items.append({"name": f"{image_id}.png", "labels": cells})
    first = items[0]["labels"]
    first[first == first.max()] = 0  # the reviewer deletes a false cell
    out = work / "corrections" / plate
    export_review(items, out, qc={})
    return out / "cvat.xml", items


def set_annotations(work, plate, path):
    sheet = work / "config/plates.tsv"
    rows = [line.split("\t") for line in sheet.read_text().splitlines()]
    col = rows[0].index("annotations")
    for row in rows[1:]:
        if row[0] == plate:
            row[col] = str(path.relative_to(work))
    sheet.write_text("\n".join("\t".join(r) for r in rows) + "\n")


def test_corrected_export_reimported_reruns_only_what_depends_on_it(demo_copy):
    """A corrected export of the QC review as a plate's annotations: that plate's import and
    what uses its annotations rerun; a plate not used for training retrains nothing, a
    training plate retrains (and repredicts) but corrects no image again."""
    import numpy as np

    from brightseg.io import read_image

    work = demo_copy
    export, items = _corrected_export(work, "demo3")  # demo3: use_for_training false
    set_annotations(work, "demo3", export)
    dry = run_snakemake(work, "-n", "--cores", "2")
    counts = job_counts(dry.stdout)
    assert counts["import_annotations"] == 1 and "plate=demo3" in dry.stdout
    for rule in ("correct_illumination", "augment", "train", "predict", "measure_cells"):
        assert rule not in counts, (rule, counts)
    # the import itself gives back the corrected cells (IoU >= 0.99 each)
    run_snakemake(work, "--cores", "1", "results/annotations/demo3/manifest.parquet")
    for item in items:
        stem = item["name"][: -len(".png")]
        back = read_image(work / f"results/annotations/demo3/{stem}_labels.tif")
        truth = item["labels"]
        assert int(back.max()) == len(np.unique(truth)) - 1
        for label in np.unique(truth)[1:]:
            m = truth == label
            hits = np.bincount(back[m].astype(np.int64))
            other = back == int(np.argmax(hits[1:]) + 1)
            assert (m & other).sum() / (m | other).sum() >= 0.99

    export1, _ = _corrected_export(work, "demo1")  # demo1 trains
    set_annotations(work, "demo1", export1)
    counts = job_counts(run_snakemake(work, "-n", "--cores", "2").stdout)
    assert counts["import_annotations"] == 1
    assert counts["train"] == 2 and counts["predict"] == 3
    assert "correct_illumination" not in counts
