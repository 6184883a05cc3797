"""The user's own command, ``snakemake --profile slurm``, on a real one-node Slurm cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .compare_runs import differing_files
from .conftest import REPO, copy_workflow, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slurm, pytest.mark.slow]

SLURM_SH = REPO / "tests/cluster/slurm.sh"
GPU_RULES = {"train", "predict", "evaluate", "livecell_predict"}


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.environ.get("BRIGHTSEG_SLURM_TESTS") != "1":
        pytest.skip("set BRIGHTSEG_SLURM_TESTS=1 to run the real-Slurm test (see issue note)")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    proc = subprocess.run(
        ["bash", str(SLURM_SH), "start"], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"could not start Slurm:\n{proc.stdout}\n{proc.stderr}")
    yield
    subprocess.run(["bash", str(SLURM_SH), "stop"], capture_output=True, text=True, timeout=120)


def install_profile(xdg: Path) -> None:
    """The project's slurm profile, as README tells users to install it, with the
    placeholders filled for the test cluster (partition 'debug', quick polling)."""
    dst = xdg / "snakemake" / "slurm"
    shutil.copytree(REPO / "profiles/slurm", dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["default-resources"]["slurm_partition"] = "debug"
    cfg["slurm-no-account"] = True
    cfg["seconds-between-status-checks"] = 2
    cfg["slurm-init-seconds-before-status-checks"] = 1
    cfg["latency-wait"] = 10
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_demo_on_slurm_equals_local_run(slurm_cluster, demo_run, tmp_path):
    work = copy_workflow(tmp_path / "work")
    xdg = tmp_path / "xdg"
    install_profile(xdg)
    proc = run_snakemake(
        work, "--profile", "slurm", env={"XDG_CONFIG_HOME": str(xdg)}, timeout=2400
    )
    out = proc.stdout + proc.stderr

    submitted = re.findall(r"rule (\w+).*?\n.*?SLURM (?:run ID|jobid) (\d+)", out, re.S)
    job_ids = re.findall(r"SLURM (?:run ID|jobid)[: ]+(\d+)", out)
    assert job_ids, out[-3000:]

    # Every GPU rule's job asked Slurm for a GPU (sbatch --gpus=1): read it back from slurmctld.
    gpu_jobs = {}
    for jid in sorted(set(job_ids), key=int):
        info = subprocess.run(
            ["timeout", "10", "scontrol", "show", "job", jid], capture_output=True, text=True
        ).stdout
        m = re.search(r"Comment=rule_(\w+)|JobName=\S+ .*", info)
        name = re.search(r"\bComment=rule_(\w+)_wildcards", info) or re.search(
            r"\bComment=rule_(\w+)", info
        )
        rule = name.group(1) if name else ""
        if m and rule:
            gpu_jobs.setdefault(rule, []).append("gpu:1" in info or "gpu=1" in info)
    assert GPU_RULES <= set(gpu_jobs), (gpu_jobs, submitted[:5])
    for rule in GPU_RULES:
        assert all(gpu_jobs[rule]), f"{rule} submitted without a GPU request"
    assert not any(any(v) for r, v in gpu_jobs.items() if r not in GPU_RULES)

    assert differing_files(demo_run, work) == []
