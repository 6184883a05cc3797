"""List the files that differ between the ``results/`` trees of two workflow runs.

Usage: python tests/workflow/compare_runs.py RUN_A RUN_B  (each a workflow directory or its
results/). Prints one differing path per line (nothing when the runs are byte-identical)
and exits 1 if any differ.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

# Files that legitimately differ between runs: Snakemake's own bookkeeping and the report
# (which embeds run times and dates). Training checkpoints are compared too: on a CPU with
# op determinism enabled they are byte-identical.
IGNORED_NAMES = {".snakemake_timestamp", "report.zip"}
IGNORED_PARTS = {"tensorboard"}


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree(root: Path) -> dict[str, str]:
    root = root / "results" if (root / "results").is_dir() else root
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in IGNORED_NAMES and not IGNORED_PARTS & set(p.parts):
            out[str(p.relative_to(root))] = digest(p)
    return out


def differing_files(a: Path, b: Path) -> list[str]:
    """Relative paths present in only one tree or with different sha256."""
    ta, tb = tree(Path(a)), tree(Path(b))
    return sorted(k for k in ta.keys() | tb.keys() if ta.get(k) != tb.get(k))


if __name__ == "__main__":
    diff = differing_files(Path(sys.argv[1]), Path(sys.argv[2]))
    for path in diff:
        print(path)
    sys.exit(1 if diff else 0)
