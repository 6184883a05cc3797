"""Workflow-level fixtures: run the real Snakemake workflow in a scratch copy of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COPIED = ("workflow", "config", "scripts", "envs", "profiles", "resources")


def copy_workflow(dst: Path) -> Path:
    """Copy what a user clones (no results) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = REPO / name
        if src.exists():
            shutil.copytree(src, dst / name, dirs_exist_ok=True)
    return dst


_SHIM: Path | None = None


def _scontrol_shim() -> Path:
    """A directory with an ``scontrol`` that fails at once.

    Snakemake imports its Slurm executor plugin at start-up, which runs ``scontrol show
    config`` with a 10 s timeout; where Slurm's tools are installed but no controller
    answers, every local run would wait those 10 s.
    """
    global _SHIM
    if _SHIM is None:
        import tempfile

        _SHIM = Path(tempfile.mkdtemp(prefix="brightseg-shim-"))
        fake = _SHIM / "scontrol"
        fake.write_text("#!/bin/sh\nexit 1\n")
        fake.chmod(0o755)
    return _SHIM


def snakemake_env(extra: dict | None = None, *, slurm: bool = False) -> dict:
    """Environment for a workflow run: the venv first on PATH; for local runs (not
    ``slurm``) a failing ``scontrol`` shim first of all."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if not slurm:
        env["PATH"] = f"{_scontrol_shim()}{os.pathsep}{env['PATH']}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.update(extra or {})
    return env


def run_snakemake(
    workdir: Path, *args: str, timeout: int = 1800, env: dict | None = None, check=True
):
    """Run ``snakemake ARGS`` in ``workdir``; on failure show the tail of the output."""
    cmd = [str(BIN / "snakemake"), *args]
    proc = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=snakemake_env(env)
    )
    if check and proc.returncode != 0:
        logs = (
            "\n".join(
                f"--- {p}\n{p.read_text()[-3000:]}"
                for p in sorted((workdir / "logs").rglob("*.log"))[-5:]
            )
            if (workdir / "logs").exists()
            else ""
        )
        pytest.fail(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}\n{logs}"
        )
    return proc


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The embedded demo, run once with ``snakemake --cores 2`` as README command 1 does."""
    work = copy_workflow(tmp_path_factory.mktemp("demo"))
    run_snakemake(work, "--cores", "2")
    return work
