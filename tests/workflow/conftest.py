"""Workflow-level fixtures: run the real Snakemake workflow in a scratch copy of the repo."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
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


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


_RUNS = itertools.count()


def run_logged(
    cmd: list[str], cwd: Path, env: dict, timeout: float, log_dir: Path | None = None
) -> tuple[subprocess.CompletedProcess, Path, Path, bool]:
    """Run ``cmd`` with stdout and stderr streamed to files, in its own process group.

    On a timeout the whole group is killed with SIGKILL (a stalled Snakemake ignores
    SIGTERM). Returns the completed process (output read back from the files), the two log
    paths and whether it timed out.
    """
    log_dir = log_dir or Path(cwd).parent
    n = next(_RUNS)
    out_path = log_dir / f"{Path(cwd).name}.run{n}.stdout.log"
    err_path = log_dir / f"{Path(cwd).name}.run{n}.stderr.log"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = subprocess.CompletedProcess(
        cmd,
        proc.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
    )
    return done, out_path, err_path, timed_out


def _slurm_state(run_output: str) -> str:
    """Slurm's view of this run's jobs (for failure messages); cancels what is left."""
    m = re.search(r"SLURM run ID: (\S+)", run_output)
    if not m:
        return ""
    name = m.group(1)
    q = subprocess.run(
        ["timeout", "10", "squeue", "--states=all", "--name", name, "-o", "%i %j %T %k %r"],
        capture_output=True,
        text=True,
    )
    subprocess.run(["timeout", "10", "scancel", "--name", name], capture_output=True)
    return f"--- squeue --states=all (jobs of run {name}, now cancelled)\n{q.stdout}{q.stderr}"


def run_snakemake(
    workdir: Path,
    *args: str,
    timeout: int = 1800,
    env: dict | None = None,
    check=True,
    slurm: bool = False,
):
    """Run ``snakemake ARGS`` in ``workdir``; on failure or timeout show the output's tail.

    ``slurm=True`` for runs that submit to a real Slurm cluster: no failing ``scontrol``
    shim on PATH (the executor plugin reads MinJobAge with ``scontrol show config``), and a
    failure or timeout also shows and cancels the run's Slurm jobs.
    """
    cmd = [str(BIN / "snakemake"), *args]
    proc, out_path, err_path, timed_out = run_logged(
        cmd, workdir, snakemake_env(env, slurm=slurm), timeout
    )
    if timed_out or (check and proc.returncode != 0):
        logs = (
            "\n".join(
                f"--- {p}\n{p.read_text()[-3000:]}"
                for p in sorted((workdir / "logs").rglob("*.log"))[-5:]
            )
            if (workdir / "logs").exists()
            else ""
        )
        what = (
            f"timed out after {timeout} s (killed)" if timed_out else f"failed ({proc.returncode})"
        )
        slurm_state = _slurm_state(proc.stdout + proc.stderr) if slurm else ""
        pytest.fail(
            f"{' '.join(cmd)} {what}; full output in {out_path} and {err_path}\n"
            f"--- last lines of stdout\n{_tail(out_path)}\n"
            f"--- last lines of stderr\n{_tail(err_path, 120)}\n{slurm_state}\n{logs}"
        )
    return proc


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The embedded demo, run once with ``snakemake --cores 2`` as README command 1 does."""
    work = copy_workflow(tmp_path_factory.mktemp("demo"))
    run_snakemake(work, "--cores", "2")
    return work
