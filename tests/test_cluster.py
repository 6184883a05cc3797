"""brightseg cluster-check and the shipped Slurm profile, without a cluster (fake outputs)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

from brightseg import cluster
from brightseg.cli import main
from brightseg.cluster import (
    Facts,
    Profile,
    assess,
    gather,
    gpu_rules,
    parse_config,
    parse_seconds,
    plugin_status_command,
    profile_from_config,
    workflow_rules,
)

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles/slurm"

SCONTROL_CONFIG = """Configuration data as of 2026-12-02T06:00:00
AccountingStorageType   = accounting_storage/none
ClusterName             = brightseg
MinJobAge               = {age}
SlurmctldPort           = 6817
"""
NO_ACCOUNTING = "sacct: error: Slurm accounting storage is disabled"


def facts(age="300 sec", sacct_ok=False, scontrol_ok=True, partitions=("cpu", "gpu")):
    return Facts(
        scontrol_ok=scontrol_ok,
        scontrol_error="" if scontrol_ok else "slurm_load_ctl_conf error: Unable to contact",
        config=parse_config(SCONTROL_CONFIG.format(age=age)) if scontrol_ok else {},
        have_sacct=True,
        sacct_ok=sacct_ok,
        sacct_error="" if sacct_ok else NO_ACCOUNTING,
        partitions=list(partitions),
    )


def profile(status=None, init=5):
    return Profile(status_command=status, init_seconds=init, partitions={"gpu": 4, "cpu": 0})


@pytest.mark.parametrize(
    "value,seconds",
    [("300 sec", 300), ("3600", 3600), ("1h", 3600), ("5 min", 300), ("", None), ("n/a", None)],
)
def test_parse_seconds(value, seconds):
    assert parse_seconds(value) == seconds


def test_parse_config():
    cfg = parse_config(SCONTROL_CONFIG.format(age="300 sec"))
    assert cfg["MinJobAge"] == "300 sec"
    assert cfg["AccountingStorageType"] == "accounting_storage/none"
    assert "Configuration data as of 2026-12-02T06:00:00" not in cfg


def test_plugin_status_command_mirrors_the_plugin():
    # default: sacct where it is installed
    assert plugin_status_command(None, 3600, 5, True)[0] == "sacct"
    assert plugin_status_command(None, 3600, 5, False)[0] == "squeue"
    # squeue kept only with MinJobAge >= 3 x init seconds
    assert plugin_status_command("squeue", 15, 5, True)[0] == "squeue"
    cmd, why = plugin_status_command("squeue", 14, 5, True)
    assert cmd == "sacct" and "falls back" in why
    # unknown MinJobAge (scontrol fails): sacct
    assert plugin_status_command("squeue", None, 5, True)[0] == "sacct"
    assert plugin_status_command("sacct", None, 5, False)[0] == "squeue"


def test_accounting_on_default_profile_is_ok():
    r = assess(facts(sacct_ok=True), profile())
    assert r.ok and r.status_command == "sacct" and r.accounting
    assert r.text().splitlines()[-1] == "status_command=sacct min_job_age=300 accounting=on ok=true"


def test_no_accounting_long_min_job_age_recommends_squeue():
    r = assess(facts(age="3600 sec"), profile())
    assert not r.ok and r.status_command == "sacct"
    assert "uncomment `slurm-status-command: squeue`" in r.text()
    r = assess(facts(age="3600 sec"), profile("squeue"))
    assert r.ok and r.status_command == "squeue"


def test_no_accounting_short_min_job_age_asks_the_admins():
    # squeue configured and kept by the plugin (60 >= 3 x 5), but jobs vanish within 60 s
    r = assess(facts(age="60 sec"), profile("squeue"))
    assert not r.ok and r.status_command == "squeue"
    assert "no accounting and MinJobAge 60 s < 300 s: jobs vanish from squeue" in r.text()
    assert "ask your admins" in r.text()
    # plugin's own fallback to sacct (100 < 3 x 40), which fails too
    r = assess(facts(age="100 sec"), profile("squeue", init=40))
    assert not r.ok and r.status_command == "sacct"
    assert "falls back from squeue to sacct" in r.text()
    assert "ask your admins" in r.text()


def test_squeue_with_accounting_and_short_min_job_age_recommends_sacct():
    r = assess(facts(age="60 sec", sacct_ok=True), profile("squeue"))
    assert not r.ok and r.status_command == "squeue"
    assert "remove `slurm-status-command: squeue`" in r.text()


def test_scontrol_failing_is_the_stall_of_issue_15():
    """The failing scontrol shim: MinJobAge unknown, squeue replaced by sacct, which fails."""
    r = assess(facts(scontrol_ok=False), profile("squeue"))
    assert not r.ok and r.status_command == "sacct" and r.min_job_age is None
    assert "scontrol show config: FAILS" in r.text()
    assert "run stalls" in r.text()


def test_partition_placeholders_and_missing_partitions():
    prof = Profile(partitions={"gpu_partition": 4, "cpu_partition": 0})
    text = assess(facts(sacct_ok=True), prof).text()
    assert "placeholder `gpu_partition` not edited" in text
    assert "placeholder `cpu_partition` not edited" in text
    prof = Profile(partitions={"a100": 4, "cpu": 0})
    text = assess(facts(sacct_ok=True), prof).text()
    assert "partition `a100` is not on this cluster (sinfo: cpu, gpu)" in text


def test_gather_with_fake_commands():
    answers = {
        "scontrol": (0, SCONTROL_CONFIG.format(age="300 sec"), ""),
        "sacct": (1, "", NO_ACCOUNTING + "\n"),
        "sinfo": (0, "cpu*\ngpu\n", ""),
    }
    f = gather(run=lambda cmd: answers[cmd[0]], which=lambda name: f"/usr/bin/{name}")
    assert f.scontrol_ok and f.config["MinJobAge"] == "300 sec"
    assert not f.sacct_ok and f.sacct_error == NO_ACCOUNTING
    assert f.partitions == ["cpu", "gpu"]
    f = gather(run=lambda cmd: answers[cmd[0]], which=lambda name: None)
    assert not f.have_sacct and not f.sacct_ok


def _fake_bin(tmp_path: Path, scontrol_rc=0, sacct_rc=1) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "scontrol": f"cat <<'EOF'\n{SCONTROL_CONFIG.format(age='3600 sec')}EOF\nexit {scontrol_rc}",
        "sacct": f"echo '{NO_ACCOUNTING}' >&2; exit {sacct_rc}",
        "sinfo": "printf 'cpu*\\ngpu\\n'",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_cluster_check_command(tmp_path, monkeypatch):
    prof = tmp_path / "slurm"
    shutil.copytree(SLURM_PROFILE, prof)
    monkeypatch.setenv("PATH", f"{_fake_bin(tmp_path)}:/usr/bin:/bin")
    r = CliRunner().invoke(main, ["cluster-check", "--profile", str(prof)])
    assert r.exit_code == 1, r.output
    assert "MinJobAge: 3600 s" in r.output
    assert "accounting (sacct): off, sacct fails (" + NO_ACCOUNTING + ")" in r.output
    assert r.output.strip().splitlines()[-1] == (
        "status_command=sacct min_job_age=3600 accounting=off ok=false"
    )
    # The README's edits: status command and partitions.
    cfg = prof / "config.yaml"
    cfg.write_text(
        cfg.read_text().replace("# slurm-status-command: squeue", "slurm-status-command: squeue")
    )
    parts = prof / "partitions.yaml"
    parts.write_text(
        parts.read_text().replace("gpu_partition", "gpu").replace("cpu_partition", "cpu")
    )
    r = CliRunner().invoke(main, ["cluster-check", "--profile", str(prof)])
    assert r.exit_code == 0, r.output
    assert "status command the plugin will use: squeue" in r.output


# --- the shipped profile ------------------------------------------------------------------


def shipped_profile() -> dict:
    return yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())


def test_shipped_profile_defaults():
    cfg = shipped_profile()
    prof = profile_from_config(cfg, SLURM_PROFILE)
    assert prof.status_command is None  # the plugin's default: sacct (accounting clusters)
    assert "# slurm-status-command: squeue" in (SLURM_PROFILE / "config.yaml").read_text()
    assert prof.partitions == {"gpu_partition": 4, "cpu_partition": 0}
    assert prof.explicit_partition is None
    assert "set-resources" not in cfg  # the rules are the one place
    for key in ("slurm-logdir", "slurm-keep-successful-logs", "slurm_account"):
        assert key in (SLURM_PROFILE / "config.yaml").read_text()


def test_workflow_profile_has_no_resources():
    """Keys here would replace the user's profile's wholesale (issue 15)."""
    cfg = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert not {"set-resources", "set-threads", "default-resources", "resources"} & set(cfg)


@pytest.fixture(scope="module")
def rules() -> dict[str, dict]:
    return workflow_rules(REPO)


def _job(name: str, res: dict, defaults: dict) -> SimpleNamespace:
    merged = {**defaults, **{k: v for k, v in res.items() if k != "threads"}}
    return SimpleNamespace(name=name, threads=res.get("threads", 1), resources=merged)


@pytest.mark.parametrize(
    "user_set_resources",
    [{}, {"predict": {"mem_mb": 3000}, "train": {"runtime": 600}, "figures": {"mem_mb": 500}}],
)
def test_gpu_rules_and_only_they_go_to_the_gpu_partition(rules, user_set_resources):
    """The plugin's own partition choice with the shipped partitions.yaml, for every rule,
    also with a user's set-resources merged in (as Snakemake merges it with the rules)."""
    partitions = read_partition_file(SLURM_PROFILE / "partitions.yaml")
    defaults = shipped_profile()["default-resources"]
    log = logging.getLogger("test")
    gpu = gpu_rules(REPO)
    assert gpu == {
        "train", "distill", "predict", "evaluate", "livecell_predict", "evalset_compare",
        "choose_instances",
    }  # fmt: skip
    for name, res in rules.items():
        res = {**res, **user_set_resources.get(name, {})}
        chosen = get_best_partition(partitions, _job(name, res, defaults), log)
        assert chosen == ("gpu_partition" if name in gpu else "cpu_partition"), name


def test_runtimes_fit_common_partition_limits(rules):
    limit = 24 * 60  # minutes; partitions.yaml max_runtime and the test cluster's MaxTime
    parts = yaml.safe_load((SLURM_PROFILE / "partitions.yaml").read_text())["partitions"]
    assert {p["max_runtime"] for p in parts.values()} == {limit}
    default = shipped_profile()["default-resources"]["runtime"]
    for name, res in rules.items():
        assert 0 < res.get("runtime", default) <= limit, name


def test_readme_lists_the_gpu_rules():
    text = (REPO / "README.md").read_text()
    section = text.split("## On a Slurm cluster", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"The rules that request a GPU \([^)]*\) are: ([^.]+)\.", section, re.S)
    assert m, "README cluster section: 'The rules that request a GPU (...) are: ...' missing"
    assert set(re.findall(r"`(\w+)`", m.group(1))) == gpu_rules(REPO)


def test_cluster_module_has_no_slurm_side_effects(monkeypatch):
    """run_command reports a missing tool instead of raising."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cluster.run_command(["scontrol", "show", "config"])[0] == 127
