"""``brightseg bench dag``: how long Snakemake takes to plan a run over many plates.

Writes a plate sheet of N small synthetic plates (tiny images: the DAG, not the pixels,
is measured), then times ``snakemake -n`` on the real workflow.  Per-plate rules are one
job per plate, so the job count grows as about 6 x N and planning stays fast.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from ..io import write_tiff

REPO = Path(__file__).resolve().parents[3]


def make_plates(root: Path, n_plates: int, *, images_per_plate: int = 2, seed: int = 0) -> Path:
    """Write ``n_plates`` tiny plates (uint16 32x32 TIFFs) and their sheet; return the sheet."""
    rng = np.random.default_rng(seed)
    lines = ["plate\timages\tmodality\tpixel_size_um\tannotations\tuse_for_training"]
    for i in range(n_plates):
        plate = f"P{i:05d}"
        d = root / "plates" / plate
        d.mkdir(parents=True, exist_ok=True)
        for k in range(images_per_plate):
            img = rng.integers(20000, 30000, size=(32, 32), dtype=np.uint16)
            write_tiff(img, d / f"{plate}_A{k + 1:02d}_f00_t00.tif")
        lines.append(f"{plate}\tplates/{plate}\tbrightfield\t0.65\t\tfalse")
    sheet = root / "plates.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def bench_dag(n_plates: int = 1000, *, workdir: Path | None = None, repo: Path = REPO) -> dict:
    """Time ``snakemake -n`` over ``n_plates`` plates; return plates, jobs, seconds.

    The two demo plates with annotations stay in the sheet so training, selection and every
    per-plate rule are in the DAG; the N added plates are unannotated (inference only).
    """
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="brightseg-dag-"))
    try:
        for name in ("workflow", "config", "scripts", "envs", "profiles", "resources"):
            src = repo / name
            if src.exists():
                shutil.copytree(src, tmp / name, dirs_exist_ok=True)
        sheet = make_plates(tmp, n_plates)
        demo_rows = (repo / "config" / "plates.tsv").read_text().splitlines()[1:]
        with open(sheet, "a") as fh:
            fh.write("\n".join(demo_rows) + "\n")
        config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
        config["plates"] = "plates.tsv"
        (tmp / "bench.yaml").write_text(yaml.safe_dump(config))
        cmd = [
            str(Path(sys.executable).with_name("snakemake")),
            "-n",
            "--cores",
            "1",
            "--quiet",
            "rules",
            "--configfile",
            "bench.yaml",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake -n failed:\n{out[-4000:]}")
        m = re.search(r"^total\s+(\d+)", out, re.M)
        jobs = int(m.group(1)) if m else -1
        return {"plates": n_plates + len(demo_rows), "jobs": jobs, "seconds": round(seconds, 2)}
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
