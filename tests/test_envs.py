"""Every rule has a conda env whose pins agree with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# conda-forge names that differ from the PyPI names in pyproject.toml
CONDA_TO_PYPI = {"tensorflow": "tensorflow-cpu"}


def pyproject_pins() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]
    pins = {}
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^;\s]+)", dep)
        assert m, f"pyproject dependency is not pinned exactly: {dep}"
        pins.setdefault(m.group(1).lower(), m.group(2))
    return pins


def env_pins(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    assert "conda-forge" in env["channels"], path
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for item in dep.get("pip", []):
                m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", item)
                if m:
                    pins[m.group(1).lower()] = m.group(2)
                else:
                    assert item.startswith("-e "), f"{path}: unpinned pip entry {item!r}"
            continue
        m = re.match(r"^([A-Za-z0-9_.-]+)=([^=\s]+)(=\S+)?$", dep)
        assert m, f"{path}: conda dependency not pinned: {dep!r}"
        pins[m.group(1).lower()] = m.group(2)
    return pins


def rule_envs() -> dict[str, str]:
    """Map rule name -> conda env path, from the workflow's .smk files."""
    out = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"\n(?=rule |checkpoint )", text):
            m = re.match(r"(?:rule|checkpoint) (\w+):", block.strip())
            if not m:
                continue
            c = re.search(r"conda:\n\s+\"([^\"]+)\"", block)
            out[m.group(1)] = c.group(1) if c else ""
    return out


def test_every_rule_has_an_existing_env():
    envs = rule_envs()
    assert len(envs) >= 4
    for rule, env in envs.items():
        if rule == "all":
            continue
        assert env, f"rule {rule} has no conda: directive"
        path = (ROOT / "workflow" / "rules" / env).resolve()
        assert path.is_file(), f"rule {rule}: {env} does not exist"
        assert path.parent == ROOT / "envs"


def test_env_pins_agree_with_pyproject():
    pins = pyproject_pins()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert {p.stem for p in envs} >= {"imaging", "augment", "tensorflow", "stats"}
    for path in envs:
        for name, version in env_pins(path).items():
            key = CONDA_TO_PYPI.get(name, name)
            if key in ("python", "pip", "cuda-version"):
                continue
            assert key in pins, f"{path.name}: {name} is not a pyproject dependency"
            assert pins[key] == version, f"{path.name}: {name}={version}, pyproject {pins[key]}"


def test_tensorflow_env_is_a_cuda_build():
    env = yaml.safe_load((ROOT / "envs" / "tensorflow.yaml").read_text())
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("cuda-version=") for d in deps)
    assert any(re.match(r"tensorflow=[\d.]+=cuda\*", d) for d in deps)
