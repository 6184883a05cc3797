"""Preflight for ``snakemake --profile slurm``: will Snakemake see its jobs finish?

snakemake-executor-plugin-slurm 2.8.0 learns that a job finished from ``sacct`` (needs Slurm
accounting) or ``squeue`` (only lists a finished job for ``MinJobAge`` seconds). It reads
MinJobAge with ``scontrol show config``; where that fails, or MinJobAge is below
3 x ``slurm-init-seconds-before-status-checks``, it switches a configured ``squeue`` to
``sacct``. When every status query of a cycle fails it drops the jobs it was waiting for and
the run stalls. :func:`assess` works out, from the cluster's answers and the profile, which
command the plugin will use and whether it will work; everything here is a pure function of
command outputs except :func:`gather` (runs the commands) and :func:`load_profile`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# squeue only works if a finished job is still listed at the next status query. The plugin
# lets the interval between queries grow to 180 s, so MinJobAge must exceed that with a
# margin; 300 s is Slurm's default.
SQUEUE_MIN_JOB_AGE = 300
# The plugin's default for slurm-init-seconds-before-status-checks.
PLUGIN_INIT_SECONDS = 40
PLACEHOLDERS = ("gpu_partition", "cpu_partition")

Runner = Callable[[list[str]], tuple[int, str, str]]


def run_command(cmd: list[str], timeout: float = 20) -> tuple[int, str, str]:
    """Run ``cmd``; (returncode, stdout, stderr), 127 when it is not installed."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        return 127, "", str(exc)
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout} s"
    return p.returncode, p.stdout, p.stderr


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config`` output -> {key: value}."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def parse_seconds(value: str | None) -> int | None:
    """A Slurm duration as ``scontrol`` prints MinJobAge (``300 sec``, ``1h``, ``3600``)."""
    m = re.match(r"^(\d+)\s*([a-zA-Z]*)", (value or "").strip())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2).lower()
    if unit in ("h", "hour", "hours"):
        return n * 3600
    if unit in ("m", "min", "mins", "minute", "minutes"):
        return n * 60
    return n


def plugin_status_command(
    configured: str | None, min_job_age: int | None, init_seconds: int, have_sacct: bool
) -> tuple[str, str]:
    """The status command the plugin (2.8.0) will use, and why.

    Mirrors ``_get_status_command_default`` and the check in ``check_active_jobs``.
    """
    if configured is None:
        configured = "sacct" if have_sacct else "squeue"
        why = "plugin default (" + ("sacct is installed" if have_sacct else "no sacct") + ")"
    else:
        why = "set in the profile"
    threshold = 3 * init_seconds
    if configured == "squeue" and have_sacct and (min_job_age is None or min_job_age < threshold):
        if min_job_age is None:
            reason = "MinJobAge unknown (scontrol show config failed)"
        else:
            reason = (
                f"MinJobAge {min_job_age} s < 3 x slurm-init-seconds-before-status-checks "
                f"= {threshold} s"
            )
        return "sacct", f"the plugin falls back from squeue to sacct: {reason}"
    if configured == "sacct" and not have_sacct:
        return "squeue", "sacct is not installed"
    return configured, why


@dataclass
class Facts:
    """What the cluster's commands answered."""

    scontrol_ok: bool
    scontrol_error: str = ""
    config: dict[str, str] = field(default_factory=dict)
    have_sacct: bool = True
    sacct_ok: bool = False
    sacct_error: str = ""
    partitions: list[str] | None = None  # sinfo's partition names, None if sinfo failed


def _first_line(text: str) -> str:
    lines = [s for s in text.strip().splitlines() if s.strip()]
    return lines[0].strip() if lines else ""


def gather(run: Runner | None = None, which: Callable[[str], str | None] | None = None) -> Facts:
    """Ask the cluster (the same commands the plugin runs)."""
    run = run or run_command
    which = which or shutil.which
    rc, out, err = run(["scontrol", "show", "config"])
    facts = Facts(
        scontrol_ok=rc == 0,
        scontrol_error="" if rc == 0 else _first_line(err or out) or f"exit status {rc}",
    )
    if rc == 0:
        facts.config = parse_config(out)
    facts.have_sacct = which("sacct") is not None
    if facts.have_sacct:
        rc, out, err = run(["sacct", "-X", "-n", "--parsable2", "-o", "JobIdRaw,State"])
        facts.sacct_ok = rc == 0
        facts.sacct_error = "" if rc == 0 else _first_line(err or out) or f"exit status {rc}"
    rc, out, _ = run(["sinfo", "-h", "-o", "%P"])
    if rc == 0:
        facts.partitions = [p.rstrip("*") for p in out.split()]
    return facts


@dataclass
class Profile:
    """The settings of a Snakemake profile that decide how Slurm jobs are tracked."""

    path: Path | None = None
    status_command: str | None = None
    init_seconds: int = PLUGIN_INIT_SECONDS
    partitions: dict[str, int] = field(default_factory=dict)  # name -> max_gpu
    explicit_partition: str | None = None
    account: str | None = None
    no_account: bool = False


def profile_from_config(cfg: dict, profile_dir: Path | None = None) -> Profile:
    """A :class:`Profile` from a parsed profile ``config.yaml`` (and its partition file)."""
    defaults = cfg.get("default-resources") or {}
    prof = Profile(
        path=profile_dir,
        status_command=cfg.get("slurm-status-command"),
        init_seconds=int(cfg.get("slurm-init-seconds-before-status-checks", PLUGIN_INIT_SECONDS)),
        explicit_partition=defaults.get("slurm_partition"),
        account=defaults.get("slurm_account"),
        no_account=bool(cfg.get("slurm-no-account", False)),
    )
    part_file = cfg.get("slurm-partition-config")
    if part_file:
        p = Path(part_file).expanduser()
        if not p.is_absolute() and profile_dir is not None:
            p = profile_dir / p
        parts = (yaml.safe_load(p.read_text()) or {}).get("partitions") or {}
        prof.partitions = {name: int((lim or {}).get("max_gpu", 0)) for name, lim in parts.items()}
    return prof


def load_profile(name: str = "slurm") -> Profile | None:
    """The profile ``snakemake --profile NAME`` would use (same lookup), or None."""
    from snakemake.cli import get_profile_dir

    found = get_profile_dir(name)
    if found is None:
        return None
    profile_dir, config_file = found
    cfg = yaml.safe_load(Path(config_file).read_text()) or {}
    prof = profile_from_config(cfg, Path(profile_dir))
    prof.path = Path(config_file)
    return prof


@dataclass
class Report:
    lines: list[str]
    problems: list[str]
    status_command: str
    min_job_age: int | None
    accounting: bool

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        out = list(self.lines)
        if self.problems:
            out.append("PROBLEMS:")
            out += [f"  - {p}" for p in self.problems]
        else:
            out.append("OK: Snakemake will see its Slurm jobs finish.")
        age = "unknown" if self.min_job_age is None else self.min_job_age
        out.append(
            f"status_command={self.status_command} min_job_age={age} "
            f"accounting={'on' if self.accounting else 'off'} ok={str(self.ok).lower()}"
        )
        return "\n".join(out)


def assess(facts: Facts, profile: Profile | None) -> Report:
    """Which status command the plugin will use with this profile, and will it work."""
    profile = profile or Profile()
    lines: list[str] = []
    problems: list[str] = []
    if profile.path:
        lines.append(f"profile: {profile.path}")
    else:
        lines.append("profile: none found (plugin defaults)")

    if facts.scontrol_ok:
        lines.append("scontrol show config: works")
    else:
        lines.append(f"scontrol show config: FAILS ({facts.scontrol_error or 'no output'})")
    mja = parse_seconds(facts.config.get("MinJobAge")) if facts.scontrol_ok else None
    lines.append(f"MinJobAge: {'unknown' if mja is None else f'{mja} s'}")
    if not facts.have_sacct:
        lines.append("accounting (sacct): sacct not installed")
    elif facts.sacct_ok:
        lines.append("accounting (sacct): on, sacct works")
    else:
        lines.append(f"accounting (sacct): off, sacct fails ({facts.sacct_error})")

    configured = profile.status_command
    lines.append(
        f"profile: slurm-status-command {configured or 'unset'}, "
        f"slurm-init-seconds-before-status-checks {profile.init_seconds}"
    )
    command, why = plugin_status_command(configured, mja, profile.init_seconds, facts.have_sacct)
    lines.append(f"status command the plugin will use: {command} ({why})")

    no_acct_short_age = (
        "no accounting and MinJobAge "
        + ("unknown" if mja is None else f"{mja} s")
        + f" < {SQUEUE_MIN_JOB_AGE} s: jobs vanish from squeue before Snakemake sees them "
        "finish and sacct cannot answer, so neither status command works; ask your admins to "
        f"enable accounting (slurmdbd) or to raise MinJobAge to at least {SQUEUE_MIN_JOB_AGE} s"
    )
    if command == "sacct" and not facts.sacct_ok:
        stall = (
            "sacct fails here, so every status query fails; after 5 failures the plugin "
            "drops the jobs it waits for and the run stalls"
        )
        if not facts.scontrol_ok:
            problems.append(
                f"scontrol show config fails: the plugin cannot read MinJobAge and uses sacct; "
                f"{stall}. Make `scontrol show config` work where Snakemake runs (slurm.conf "
                "readable, slurmctld reachable), then run this check again"
            )
        elif mja is not None and mja >= SQUEUE_MIN_JOB_AGE:
            fix = "uncomment `slurm-status-command: squeue` in the profile"
            if configured == "squeue":
                fix = (
                    "lower slurm-init-seconds-before-status-checks to at most "
                    f"{mja // 3} s so that the plugin keeps squeue"
                )
            problems.append(
                f"{stall}. No accounting, MinJobAge {mja} s >= {SQUEUE_MIN_JOB_AGE} s: {fix}"
            )
        else:
            problems.append(f"{stall}. {no_acct_short_age}")
    elif command == "squeue" and (mja is None or mja < SQUEUE_MIN_JOB_AGE):
        if facts.sacct_ok:
            problems.append(
                f"MinJobAge {'unknown' if mja is None else f'{mja} s'} < {SQUEUE_MIN_JOB_AGE} s: "
                "squeue can miss finished jobs; accounting works, so remove "
                "`slurm-status-command: squeue` from the profile (the plugin then uses sacct)"
            )
        else:
            problems.append(no_acct_short_age)

    # Partitions: GPU rules to the partition with max_gpu > 0, the rest to the other.
    if profile.explicit_partition:
        lines.append(
            f"partition: every job to {profile.explicit_partition} (default-resources "
            "slurm_partition; GPU and CPU rules are not separated)"
        )
    if profile.partitions:
        desc = ", ".join(
            f"{n} ({'GPU' if g > 0 else 'CPU'} rules)" for n, g in profile.partitions.items()
        )
        lines.append(f"partitions (slurm-partition-config): {desc}")
        for name in profile.partitions:
            if name in PLACEHOLDERS:
                problems.append(
                    f"partition placeholder `{name}` not edited: rename it in the profile's "
                    "partitions.yaml to your cluster's partition (sinfo -s)"
                )
            elif facts.partitions is not None and name not in facts.partitions:
                problems.append(
                    f"partition `{name}` is not on this cluster (sinfo: {', '.join(facts.partitions)})"
                )
        if not any(g > 0 for g in profile.partitions.values()):
            problems.append("no partition in partitions.yaml has max_gpu > 0: GPU rules fit none")
    elif not profile.explicit_partition:
        lines.append("partitions: none configured (every job to the cluster's default partition)")

    if profile.account:
        lines.append(f"account: {profile.account} (sbatch -A)")
    elif profile.no_account:
        lines.append("account: none (slurm-no-account)")
    else:
        lines.append(
            "account: not set; fine unless your site requires `sbatch -A` (then set "
            "default-resources slurm_account: the plugin's guess fails there)"
        )
    accounting = facts.have_sacct and facts.sacct_ok
    return Report(lines, problems, command, mja, accounting)


def check(profile_name: str = "slurm", run: Runner | None = None) -> Report:
    """The preflight on this machine's cluster with profile ``profile_name``."""
    return assess(gather(run), load_profile(profile_name))


def workflow_rules(workdir: Path | str = ".") -> dict[str, dict]:
    """Each rule's threads and constant resources as the workflow declares them.

    Read by Snakemake itself from ``workdir/workflow/Snakefile`` (the rules are the one
    place for threads, gpu, mem_mb and runtime), e.g. ``{"train": {"threads": 2, "gpu": 1,
    "mem_mb": 16000, "runtime": 1440}, ...}``. Callable resources are left out.
    """
    import os

    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    workdir = Path(workdir).resolve()
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
            wf = api.workflow(
                resource_settings=ResourceSettings(),
                snakefile=workdir / "workflow" / "Snakefile",
                workdir=workdir,
            )
            out = {}
            for rule in wf._workflow.rules:
                res = {"threads": 1}
                for name, r in rule.resources.items():
                    try:
                        value = r.value
                    except ValueError:  # a function of wildcards/input: not constant
                        continue
                    if name == "_cores" and isinstance(value, int):
                        res["threads"] = value
                    elif not name.startswith("_") and isinstance(value, int | float | str):
                        res[name] = value
                out[rule.name] = res
            return out
    finally:
        os.chdir(cwd)


def gpu_rules(workdir: Path | str = ".") -> set[str]:
    """The rules that request a GPU (resource ``gpu`` > 0)."""
    return {n for n, r in workflow_rules(workdir).items() if r.get("gpu", 0)}
