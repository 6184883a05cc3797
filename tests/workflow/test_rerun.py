"""A changed parameter or model reruns exactly what it changes and gives a clean run's bytes.

After a complete demo run, ``inference.threshold``, the ensemble membership
(``ensemble.top_k``) and ``instances.h_um`` are changed one after the other, each followed
by a rerun; the jobs each change schedules are checked, and in the end every output must
equal (byte for byte) a clean run made with the three new values from an empty directory.
Before the redesign the first change reran ``predict``, which then skipped every image
because a mask existed: masks, cells and tables kept the old threshold.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from .compare_runs import differing_files
from .conftest import copy_workflow, run_snakemake
from .test_new_plate import job_counts

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

INFERENCE_DOWNSTREAM = {
    "predict",
    "split_instances",
    "measure_cells",
    "aggregate_tables",
    "evaluate",
    "livecell_predict",
    "livecell_report",
    "stats_report",
    "evalset_compare",
    "figures",
    "qc_review",
    "qc_export_cvat",
    "evalset_qc",
    "all",
}
CHANGES = [
    # (config block, key, new value, rules that must rerun (others must not))
    # the bundle records the threshold and its members; threshold.json records the threshold
    # in force (validation -> 0.6: no stale chosen value is left beside the ensemble)
    # (instances.tune: validation - choose_instances splits the validation images' masks)
    (
        "inference",
        "threshold",
        0.6,
        INFERENCE_DOWNSTREAM | {"choose_threshold", "choose_instances", "bundle"},
    ),
    (
        "ensemble",
        "top_k",
        3,
        INFERENCE_DOWNSTREAM
        | {"select_checkpoints", "choose_threshold", "choose_instances", "bundle"},
    ),
    # the watershed does not change the predictions or the evaluation sets (pixel masks)
    # (the bundle records the watershed settings as the defaults of predict-only runs; the
    # config's h_um is one point of the grid choose_instances tries)
    (
        "instances",
        "h_um",
        0.8,
        INFERENCE_DOWNSTREAM - {"predict", "evalset_compare", "evalset_qc"}
        | {"bundle", "choose_instances"},
    ),
]


def set_config(work, block, key, value):
    path = work / "config/config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg[block][key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_changed_parameters_rerun_exactly_and_match_a_clean_run(demo_run, tmp_path):
    work = tmp_path / "rerun"
    shutil.copytree(demo_run, work, symlinks=True)
    for block, key, value, expected in CHANGES:
        set_config(work, block, key, value)
        dry = run_snakemake(work, "-n", "--cores", "2")
        assert set(job_counts(dry.stdout + dry.stderr)) == expected, (block, key)
        run_snakemake(work, "--cores", "2")
        again = run_snakemake(work, "-n", "--cores", "2")
        assert "Nothing to be done" in again.stdout + again.stderr, (block, key)

    clean = copy_workflow(tmp_path / "clean")
    for block, key, value, _ in CHANGES:
        set_config(clean, block, key, value)
    run_snakemake(clean, "--cores", "2")
    assert differing_files(work, clean) == []
    # and the change was real: the final outputs differ from the original run's
    changed = differing_files(demo_run, work)
    assert "tables/images.parquet" in changed and "models/ensemble.tsv" in changed


def test_one_plates_illumination_in_the_sheet_reruns_only_that_plate(demo_run, tmp_path):
    work = tmp_path / "sheet"
    shutil.copytree(demo_run, work, symlinks=True)
    sheet = work / "config/plates.tsv"
    lines = sheet.read_text().splitlines()
    out = [lines[0] + "\tillumination_mode\tillumination_radius"]
    for line in lines[1:]:
        plate = line.split("\t")[0]
        out.append(line + ("\twhite\t30" if plate == "demo3" else "\t\t"))
    sheet.write_text("\n".join(out) + "\n")
    dry = run_snakemake(work, "-n", "--cores", "2")
    text = dry.stdout + dry.stderr
    counts = job_counts(text)
    assert counts["correct_illumination"] == 1 and counts["predict"] == 1, counts
    assert "augment" not in counts and "train" not in counts
    assert "plate=demo3" in text
    assert "plate=demo1" not in text and "plate=demo2" not in text
