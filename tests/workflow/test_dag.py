"""The DAG stays small: per-plate rules are one job per plate, not per image."""

from __future__ import annotations

import pytest

from brightseg.bench.dag import bench_dag

pytestmark = [pytest.mark.workflow]


def test_jobs_grow_by_four_per_unannotated_plate(tmp_path):
    base = bench_dag(0, workdir=tmp_path / "a")
    more = bench_dag(25, workdir=tmp_path / "b")
    assert more["plates"] - base["plates"] == 25
    # correct_illumination, predict, split_instances, measure_cells per plate; the
    # aggregates (tables, figures, qc) stay one job each however many plates there are.
    assert more["jobs"] - base["jobs"] == 4 * 25


def test_paper_config_resolves_with_gpu_training_jobs(tmp_path):
    """`snakemake -n` on config/paper.yaml: 12 training jobs, each carrying gpu=1."""
    import re

    from .conftest import copy_workflow, run_snakemake

    work = copy_workflow(tmp_path / "paper")
    proc = run_snakemake(work, "-n", "--cores", "8", "--configfile", "config/paper.yaml")
    out = proc.stdout
    train_jobs = re.findall(r"rule train:\n(?:    .*\n)+", out)
    assert len(train_jobs) == 12
    for job in train_jobs:
        assert re.search(r"resources: .*\bgpu=1\b", job), job
    stats = out.split("Job stats:", 1)[1]
    assert re.search(r"^train\s+12$", stats, re.M)
    assert re.search(r"^predict\s+2$", stats, re.M)
