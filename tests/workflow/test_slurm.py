"""The user's own commands, README section "On a Slurm cluster", on a real one-node Slurm.

The cluster (tests/cluster/slurm.sh: partitions `cpu` and `gpu`, no accounting, MinJobAge
3600 s) is started by .ci/run before pytest, or here if it is not up. The profile is installed
with the README's literal command and edited as the README says: partition placeholders,
`slurm-status-command: squeue` (what `brightseg cluster-check` recommends on this cluster), plus
quick polling for the test and a user `set-resources` that must not cost the GPU rules their
GPU or partition.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from brightseg.cluster import gpu_rules, workflow_rules

from .compare_runs import differing_files
from .conftest import BIN, REPO, copy_workflow, run_logged, run_snakemake, snakemake_env

pytestmark = [pytest.mark.workflow, pytest.mark.slurm, pytest.mark.slow]

SLURM_SH = REPO / "tests/cluster/slurm.sh"
GPU_PARTITION, CPU_PARTITION = "gpu", "cpu"  # the test cluster's partitions
# A user's own set-resources in their profile (merged with the rules' resources).
USER_SET_RESOURCES = "set-resources:\n  predict: {mem_mb: 3000}\n  split_instances: {runtime: 30}\n"


def readme_cluster_commands() -> list[str]:
    """The command lines of the README's cluster section (its first bash block)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## On a Slurm cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def slurm_cluster():
    up = subprocess.run(["bash", str(SLURM_SH), "status"], capture_output=True, text=True)
    if up.returncode != 0 and os.geteuid() != 0 and not _in_ci():
        pytest.skip("no Slurm up and starting slurmctld/slurmd needs root (CI runs this test)")
    proc = subprocess.run(
        ["timeout", "-k", "10", "900", "bash", str(SLURM_SH), "start"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"could not start Slurm:\n{proc.stdout}\n{proc.stderr}")
    # Left running: .ci/run started it, and later runs reuse it.


def install_profile(work: Path, home: Path, *, edit: bool = True) -> Path:
    """README step 1 run literally (HOME=home), then the README's 'edit once'."""
    install = readme_cluster_commands()[0]
    assert install.startswith("mkdir -p ~/.config/snakemake && cp -r profiles/slurm"), install
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["bash", "-c", install], cwd=work, env={**os.environ, "HOME": str(home)}, check=True
    )
    prof = home / ".config/snakemake/slurm"
    if not edit:
        return prof
    parts = prof / "partitions.yaml"
    text = parts.read_text()
    assert "gpu_partition:" in text and "cpu_partition:" in text
    parts.write_text(
        text.replace("gpu_partition:", f"{GPU_PARTITION}:").replace(
            "cpu_partition:", f"{CPU_PARTITION}:"
        )
    )
    cfg = prof / "config.yaml"
    text = cfg.read_text()
    assert "\n# slurm-status-command: squeue\n" in text
    text = text.replace("\n# slurm-status-command: squeue\n", "\nslurm-status-command: squeue\n")
    # Quick polling for the test (shipped: 5 s and 10 s).
    text = re.sub(
        r"(?m)^slurm-init-seconds-before-status-checks: \d+$",
        "slurm-init-seconds-before-status-checks: 1",
        text,
    )
    text = re.sub(
        r"(?m)^seconds-between-status-checks: \d+$", "seconds-between-status-checks: 2", text
    )
    assert "slurm_partition" not in text.split("default-resources:", 1)[1]
    cfg.write_text(text + USER_SET_RESOURCES)
    return prof


def user_env(home: Path) -> dict:
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def cluster_check(work: Path, home: Path) -> subprocess.CompletedProcess:
    line = readme_cluster_commands()[1]
    assert line == "brightseg cluster-check", line
    return subprocess.run(
        [str(BIN / "brightseg"), *shlex.split(line)[1:]],
        cwd=work,
        env=snakemake_env(user_env(home), slurm=True),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cluster_check_on_live_cluster(slurm_cluster, tmp_path):
    work = copy_workflow(tmp_path / "work")
    # As shipped: the plugin would use sacct, which fails without accounting.
    install_profile(work, tmp_path / "shipped", edit=False)
    shipped = cluster_check(work, tmp_path / "shipped")
    out = shipped.stdout
    assert shipped.returncode == 1, out + shipped.stderr
    assert "scontrol show config: works" in out
    assert "MinJobAge: 3600 s" in out
    assert "accounting (sacct): off" in out
    assert "status command the plugin will use: sacct" in out
    assert "uncomment `slurm-status-command: squeue`" in out
    assert "placeholder `gpu_partition` not edited" in out
    assert out.strip().splitlines()[-1] == (
        "status_command=sacct min_job_age=3600 accounting=off ok=false"
    )
    # Edited as the README says: squeue, partitions found.
    install_profile(work, tmp_path / "edited")
    edited = cluster_check(work, tmp_path / "edited")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "status command the plugin will use: squeue (set in the profile)" in edited.stdout
    assert edited.stdout.strip().splitlines()[-1] == (
        "status_command=squeue min_job_age=3600 accounting=off ok=true"
    )


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as {key: value} (slurmctld keeps jobs MinJobAge seconds)."""
    out = subprocess.run(
        ["timeout", "10", "scontrol", "show", "job", "-o", job_id],
        capture_output=True,
        text=True,
    ).stdout
    info: dict[str, str] = {}
    for key, value in re.findall(r"(\w+)=(\S*)", out):
        info.setdefault(key, value)  # the first: Command= may hold key=value words too
    return info


def rule_of(comment: str, rules: set[str]) -> str | None:
    """The rule of a job from the plugin's ``--comment rule_<name>[_wildcards_...]``."""
    for name in sorted(rules, key=len, reverse=True):
        if comment == f"rule_{name}" or comment.startswith(f"rule_{name}_wildcards_"):
            return name
    return None


def requests_gpu(info: dict[str, str]) -> bool:
    tres = " ".join(info.get(k, "") for k in ("TresPerJob", "TresPerNode", "TresPerTask"))
    return "gpu" in tres


def test_demo_on_slurm_equals_local_run(slurm_cluster, demo_run, tmp_path):
    work = copy_workflow(tmp_path / "work")
    home = tmp_path / "home"
    install_profile(work, home)

    check = cluster_check(work, home)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "status_command=squeue" in check.stdout.splitlines()[-1]

    line = readme_cluster_commands()[2]
    assert line == "snakemake --profile slurm", line
    # --verbose: the plugin logs failed status queries at debug level only.
    t0 = time.monotonic()
    proc = run_snakemake(
        work, *shlex.split(line)[1:], "--verbose", env=user_env(home), slurm=True, timeout=2400
    )
    print(f"snakemake --profile slurm: {time.monotonic() - t0:.0f} s")
    out = proc.stdout + proc.stderr
    assert "Falling back to 'sacct'" not in out
    assert "could not check status" not in out
    job_ids = sorted(set(re.findall(r"has been submitted with SLURM jobid (\d+)", out)), key=int)
    assert job_ids, out[-3000:]

    # What slurmctld got: per rule, GPU request, partition, memory, time limit.
    rules = workflow_rules(work)
    expected_gpu = gpu_rules(work)
    jobs: dict[str, list[dict]] = {}
    for jid in job_ids:
        info = job_info(jid)
        rule = rule_of(info.get("Comment", ""), set(rules))
        assert rule, (jid, info)
        assert info.get("JobState") == "COMPLETED", (rule, info)
        jobs.setdefault(rule, []).append(info)
    got_gpu = {r for r, infos in jobs.items() if any(requests_gpu(i) for i in infos)}
    # the demo runs every GPU rule but distill (ensemble.distill is off in the demo config)
    demo_cfg = yaml.safe_load((work / "config/config.yaml").read_text())
    assert not (demo_cfg.get("ensemble") or {}).get("distill", False)
    assert got_gpu == expected_gpu - {"distill"}, (got_gpu, expected_gpu)
    for rule, infos in jobs.items():
        for info in infos:
            assert requests_gpu(info) == (rule in expected_gpu), (rule, info)
            if rule in expected_gpu:
                assert re.search(r"gpu[:=]1\b", info.get("TresPerJob", "")), (rule, info)
            want = GPU_PARTITION if rule in expected_gpu else CPU_PARTITION
            assert info.get("Partition") == want, (rule, info)
    # The user's set-resources merged with the rules: predict keeps its GPU and partition.
    assert all(i["MinMemoryNode"] == "3000M" for i in jobs["predict"]), jobs["predict"]
    assert all(i["TimeLimit"] == "00:30:00" for i in jobs["split_instances"])
    assert all(i["TimeLimit"] == "1-00:00:00" for i in jobs["train"])

    assert differing_files(demo_run, work) == []


FAKE_SQUEUE = """#!/bin/sh
# squeue that fails while {flag} exists (a status-query outage), else the real one.
if [ -e "{flag}" ]; then echo "squeue: error: fake outage" >&2; exit 1; fi
exec {real} "$@"
"""


def test_rerun_after_status_query_stall(slurm_cluster, demo_run, tmp_path):
    """A status-query outage stalls a run for good; the README's recovery (kill, cancel what
    is left, unlock, rerun) gives the outputs of an uninterrupted run: a job that finished
    unseen is kept, a cancelled one is redone. Two small jobs (two synthetic plates)."""
    plates = ("demo1", "demo2")
    targets = [f"results/demo/{p}/cvat.xml" for p in plates]
    work = copy_workflow(tmp_path / "work")
    home = tmp_path / "home"
    install_profile(work, home)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    flag = tmp_path / "squeue-fails"
    flag.touch()
    real = subprocess.run(["which", "squeue"], capture_output=True, text=True).stdout.strip()
    (fake / "squeue").write_text(FAKE_SQUEUE.format(flag=flag, real=real))
    (fake / "squeue").chmod(0o755)
    env = snakemake_env(user_env(home), slurm=True)
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    log = tmp_path / "stalled.log"

    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "snakemake"), "--profile", "slurm", "--verbose", *targets],
            cwd=work,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for(what, predicate, timeout):
        t0 = time.monotonic()
        while not predicate():
            if proc.poll() is not None:
                pytest.fail(
                    f"snakemake ended ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}"
                )
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"no {what} within {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)

    def job_ids():
        return re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())

    try:
        wait_for("two submissions", lambda: len(job_ids()) == 2, 300)
        wait_for("failed status round", lambda: "(final attempt)" in log.read_text(), 300)
        by_plate = {
            job_info(j)["Comment"].removeprefix("rule_synth_plate_wildcards_"): j for j in job_ids()
        }
        assert set(by_plate) == set(plates), by_plate
        # The user cancels a job that is still queued or running ...
        subprocess.run(["timeout", "10", "scancel", by_plate["demo2"]], check=True)
        flag.unlink()  # ... and the outage is over: squeue answers again.
        states = lambda: {p: job_info(j).get("JobState") for p, j in by_plate.items()}  # noqa: E731
        wait_for(
            "both jobs ended in Slurm",
            lambda: set(states().values()) <= {"COMPLETED", "CANCELLED"},
            600,
        )
        ended = states()
        assert ended["demo1"] == "COMPLETED", ended
        n_before = log.read_text().count("No active jobs; skipping status query.")
        time.sleep(10)  # several status rounds with a working squeue
        stalled = log.read_text()
        assert proc.poll() is None, stalled[-4000:]  # still waiting for jobs it dropped
        assert stalled.count("No active jobs; skipping status query.") > n_before
        assert "steps (100%) done" not in stalled
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    # Recovery as in the README: unlock, run again.
    run_snakemake(work, "--unlock")
    again = run_snakemake(
        work, "--profile", "slurm", *targets, env=user_env(home), slurm=True, timeout=900
    )
    out = again.stdout + again.stderr
    # demo1 finished unseen: its job step recorded it, so it is kept; demo2 (cancelled, or
    # finished if the cancel came too late) is redone by rerun-incomplete.
    redone = re.findall(r"wildcards: plate=(\w+)", out)
    want = ["demo2"] if ended["demo2"] == "CANCELLED" else []
    assert redone == want, out[-3000:]
    for plate in plates:
        assert (
            differing_files(demo_run / f"results/demo/{plate}", work / f"results/demo/{plate}")
            == []
        )


def test_timeout_kills_the_process_group_and_keeps_the_output(tmp_path):
    """What run_snakemake does on a timeout: SIGKILL to the whole group (a stalled Snakemake
    ignores SIGTERM, and so does this child), output kept for the failure message."""
    work = tmp_path / "w"
    work.mkdir()
    script = "echo started; trap '' TERM; sh -c \"trap '' TERM; sleep 300\" & echo child $!; wait"
    t0 = time.monotonic()
    proc, out_path, _, timed_out = run_logged(["sh", "-c", script], work, dict(os.environ), 2)
    assert timed_out and time.monotonic() - t0 < 30
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.startswith("started") and out_path.read_text() == proc.stdout
    child = int(re.search(r"child (\d+)", proc.stdout).group(1))
    time.sleep(0.5)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or " Z " in stat.read_text()  # killed with its group
