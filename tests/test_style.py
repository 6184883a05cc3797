"""Style is checked, not argued: ruff, snakefmt and snakemake --lint run as tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check():
    r = run(tool("ruff"), "check", "src", "tests", "scripts")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format():
    r = run(tool("ruff"), "format", "--check", "src", "tests", "scripts")
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakefmt():
    r = run(tool("snakefmt"), "--check", "workflow")
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakemake_lint():
    r = run(tool("snakemake"), "--lint", "--cores", "1")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_report_categories_do_not_shadow_snakemakes_own_targets():
    """Snakemake's report defines the RST targets ``Workflow`` and ``Statistics`` (its panels)
    and one per category: a category of the same name (docutils compares them lowercased)
    makes every caption warn 'Duplicate explicit target name'."""
    import re

    reserved = {"workflow", "statistics"}
    categories = set()
    for smk in (ROOT / "workflow").rglob("*.smk"):
        categories |= set(re.findall(r'category="([^"]+)"', smk.read_text()))
    assert categories, "no report categories found"
    assert not {c for c in categories if c.strip().lower() in reserved}
