"""Kill and resume: SIGKILL in the middle of a run, rerun, same result (issue: reliability)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from .compare_runs import differing_files
from .conftest import BIN, copy_workflow, run_snakemake, snakemake_env

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended (rc {proc.returncode}) before the kill point")
        if time.monotonic() - t0 > timeout:
            pytest.fail("kill point not reached in time")
        time.sleep(0.2)


def test_kill_during_predict_and_resume(demo_run, tmp_path):
    # The demo's finished run (results, logs and Snakemake's metadata) without the outputs
    # of predict and of everything after it (Snakemake does not remake a missing
    # intermediate file whose consumers are up to date): the models stay (what a killed
    # plate run must not retrain) and every plate's predict and all that follows run again.
    # Training from scratch first would only make the test slower: predict is the stage
    # that resumes.
    work = copy_workflow(tmp_path / "work")
    for name in ("results", "logs", "benchmarks", ".snakemake"):
        shutil.copytree(demo_run / name, work / name, symlinks=True)
    for name in ("locks", "incomplete", "log"):
        shutil.rmtree(work / ".snakemake" / name, ignore_errors=True)
    # (results/qc/skipped/ stays: it is written by import_annotations and
    # correct_illumination, and without it everything from the import on would run again)
    for name in ("predictions", "instances", "tables", "figures", "qc/overlays"):
        shutil.rmtree(work / "results" / name)
    # The models, the training store and the plate stores as the finished demo left them:
    # neither the killed run nor the resumed one may remake any of them.
    trained = {
        p: p.stat().st_mtime_ns
        for p in [
            *(work / "results/models").rglob("*.keras"),
            work / "results/models/ensemble.tsv",
            work / "results/models/threshold.json",
            work / "results/training/manifest.parquet",
            *(work / "results/plates").glob("*.ome.zarr/.snakemake_timestamp"),
        ]
    }
    # One job at a time, so the kill lands inside predict with earlier outputs complete.
    proc = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1"],
        cwd=work,
        env=snakemake_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    partial = work / "results/predictions"
    try:
        # a predict job is writing a partial store (.{plate}.zarr.partial-<key>)
        wait_for(lambda: partial.is_dir() and any(partial.iterdir()), 1500, proc)
        time.sleep(3)  # inside the job: models loading or tiles being written
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    # What was complete before the kill.
    done = {
        p: p.stat().st_mtime_ns
        for p in [
            *(work / "results/annotations").rglob("manifest.parquet"),
            *(work / "results/models").rglob("*.keras"),
            work / "results/models/ensemble.tsv",
            *(work / "results/plates").glob("*.ome.zarr/.snakemake_timestamp"),
        ]
        if p.exists()
    }
    assert work / "results/models/ensemble.tsv" in done
    plates = sorted(p.name.removesuffix(".ome.zarr") for p in (work / "results/plates").iterdir())
    assert not all((partial / f"{p}.zarr").is_dir() for p in plates)  # killed inside predict

    run_snakemake(work, "--unlock")
    proc2 = run_snakemake(work, "--cores", "2")
    out = proc2.stdout + proc2.stderr
    assert "rule train:" not in out and "rule augment:" not in out
    assert {p: p.stat().st_mtime_ns for p in done} == done
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    assert differing_files(demo_run, work) == []
