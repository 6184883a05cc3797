"""A misspelt config key stops the run before any job, naming the key and the closest name."""

from __future__ import annotations

import pytest
import yaml

from .conftest import copy_workflow, run_snakemake
from .test_new_plate import job_counts

pytestmark = [pytest.mark.workflow]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda cfg: cfg.update(ilumination=cfg.pop("illumination")),
            "unknown key 'ilumination' (did you mean 'illumination'?)",
        ),
        (
            lambda cfg: cfg["instances"].update(min_area_um=cfg["instances"].pop("min_area_um2")),
            "unknown key 'instances.min_area_um' (did you mean 'instances.min_area_um2'?)",
        ),
        (
            lambda cfg: cfg["inference"].update(threshold=1.5),
            "config key 'inference.threshold': 1.5 is greater than or equal to the maximum of 1",
        ),
    ],
    ids=["top-level", "nested", "out-of-range"],
)
def test_bad_key_stops_before_any_job(tmp_path, edit, message):
    work = copy_workflow(tmp_path / "work")
    path = work / "config/config.yaml"
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_snakemake(work, "--cores", "2", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out, out[-3000:]
    assert "config/config.yaml" in out  # the file at fault is named
    assert "Traceback" not in out
    assert not (work / "results").exists()  # stopped before any job


def test_a_configfile_stands_alone(tmp_path):
    """--configfile is not merged over the demo config: keys it leaves out take the
    schema's defaults, not the demo's values."""
    work = copy_workflow(tmp_path / "work")
    cfg = yaml.safe_load((work / "config/config.yaml").read_text())
    mine = {k: cfg[k] for k in ("plates", "filename_regex", "illumination", "demo")}
    (work / "config/my.yaml").write_text(yaml.safe_dump(mine))
    proc = run_snakemake(work, "-n", "--cores", "2", "--configfile", "config/my.yaml")
    out = proc.stdout + proc.stderr
    # no models in my.yaml: only the plates' correction and the imports are planned
    assert "rule train" not in out and "rule correct_illumination" in out
    assert "Config file(s): ['config/my.yaml']" in out or "config/my.yaml" in out


def test_no_plates_yet_trains_on_patch_sets_and_evaluates_the_sets(tmp_path):
    """Only training.patch_sets and evaluation_sets, no plate sheet: allowed, and the
    default target plans no plate-level aggregates, statistics or figures on nothing."""
    import numpy as np
    from PIL import Image

    work = copy_workflow(tmp_path / "work")
    rng = np.random.default_rng(0)
    for sub in ("ps/images", "ps/masks", "ev/images", "ev/masks"):
        (work / "data" / sub).mkdir(parents=True)
    for i in range(4):
        img = rng.integers(0, 255, (64, 64), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 10:30] = 255
        Image.fromarray(img).save(work / f"data/ps/images/src{i}_0_0.png")
        Image.fromarray(mask).save(work / f"data/ps/masks/src{i}_0_0.png")
        Image.fromarray(img).save(work / f"data/ev/images/e{i}.png")
        Image.fromarray(mask).save(work / f"data/ev/masks/e{i}.png")
    cfg = yaml.safe_load((work / "config/config.yaml").read_text())
    mine = {
        "illumination": cfg["illumination"],
        "training": dict(
            cfg["training"],
            patch_size=64,
            stride=64,
            patch_sets=[{"name": "lab", "images": "data/ps/images", "masks": "data/ps/masks"}],
        ),
        "models": cfg["models"][:1],
        "evaluation_sets": [{"name": "ev", "images": "data/ev/images", "masks": "data/ev/masks"}],
    }
    (work / "config/mine.yaml").write_text(yaml.safe_dump(mine))
    proc = run_snakemake(work, "-n", "--cores", "2", "--configfile", "config/mine.yaml")
    counts = job_counts(proc.stdout + proc.stderr)
    assert {"augment", "train", "select_checkpoints", "evalset_compare"} <= set(counts), counts
    for rule in ("correct_illumination", "aggregate_tables", "figures", "stats_report", "evaluate"):
        assert rule not in counts, counts


def test_running_from_workflow_folder_says_run_from_the_root(tmp_path):
    work = copy_workflow(tmp_path / "work")
    proc = run_snakemake(work / "workflow", "-n", "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "run snakemake from the repository root" in out and str(work) in out
