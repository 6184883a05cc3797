"""The layers of DESIGN.md, checked from the source: imports point down only, no loops.

rule -> scripts/<rule>.py -> brightseg.rules.<stage> -> domain modules -> io/config/errors.
Module-level imports are read with :mod:`ast` (function-level ones too, for the layer
rules); a cycle among module-level imports is an import loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "brightseg"
BASE = {
    "brightseg.io",
    "brightseg.errors",
    "brightseg.config",
    "brightseg.limits",
    "brightseg.progress",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """brightseg modules imported by ``path`` (resolved relative imports)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("brightseg"):
                out.add(mod)
                for alias in node.names:  # `from . import figures`
                    if f"{mod}.{alias.name}" in MODULES:
                        out.add(f"{mod}.{alias.name}")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("brightseg")}
    return {m for m in out if m in MODULES and m != name}


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def test_no_import_loop():
    graph = {m: imports(p, top_level_only=False) for m, p in MODULES.items()}
    # a package's own __init__ importing its submodules is not a loop
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if m.startswith(n + ".") or n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                raise AssertionError("import loop: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if not state.get(n):
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)


def test_domain_modules_never_import_the_rule_layer_or_the_cli():
    for m, p in MODULES.items():
        if m.startswith(("brightseg.rules", "brightseg.cli")):
            continue
        bad = {
            i
            for i in imports(p, top_level_only=False)
            if i.startswith(("brightseg.rules", "brightseg.cli"))
        }
        assert not bad, f"{m} imports {bad}"


def test_base_modules_import_only_base_modules():
    for m in BASE:
        got = imports(MODULES[m], top_level_only=False) - BASE
        assert not got, f"{m} imports {got}"


def test_scripts_import_only_the_rule_layer():
    for script in sorted((ROOT / "scripts").glob("*.py")):
        tree = ast.parse(script.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        ours = {m for m in mods if m.startswith("brightseg")}
        assert ours and all(m.startswith("brightseg.rules") for m in ours), (script.name, ours)
        rule_fns = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module != "brightseg.rules"
        ]
        # the one function a script calls is named after its rule
        assert any(a.name == script.stem for n in rule_fns for a in n.names), script.name


def test_rule_layer_has_one_function_per_rule():
    import re

    rules = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    assert scripts == rules - {"all"}


def test_tensorflow_import_notices_are_filtered(tmp_path):
    """TensorFlow's absl/oneDNN start-up notices do not reach a run's stderr (issue 13);
    other stderr output at import still does, and BRIGHTSEG_TF_NOTICES=1 shows them."""
    import os
    import subprocess
    import sys

    code = "import brightseg.models, sys; print('ok'); sys.stderr.write('mine\\n')"
    env = {k: v for k, v in os.environ.items() if k != "BRIGHTSEG_TF_NOTICES"}
    quiet = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok"
    assert "absl::InitializeLog" not in quiet.stderr and "oneDNN" not in quiet.stderr
    assert "mine" in quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(env, BRIGHTSEG_TF_NOTICES="1", TF_CPP_MIN_LOG_LEVEL="0"),
        cwd=tmp_path,
    )
    assert "oneDNN" in loud.stderr or "absl" in loud.stderr
