"""The brightseg command line: each command on small inputs, bad input without traceback."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import tifffile
from click.testing import CliRunner

from brightseg.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_synth_import_tophat_split_chain(tmp_path):
    r = invoke(
        "synth", "plate", tmp_path / "p", "--plate", "p1", "--n-images", 2, "--shape", 128, 128
    )
    assert r.exit_code == 0, r.output
    assert "2 images" in r.output
    r = invoke(
        "import-cvat",
        tmp_path / "p/cvat.xml",
        "--images",
        tmp_path / "p/images",
        "--out",
        tmp_path / "ann",
    )
    assert r.exit_code == 0, r.output
    manifest = pd.read_parquet(tmp_path / "ann/manifest.parquet")
    assert len(manifest) == 2 and (manifest["n_cells"] > 0).all()

    img = next((tmp_path / "p/images").glob("*.tif"))
    r = invoke("tophat", img, tmp_path / "corrected.tif", "--radius", 20, "--mode", "black")
    assert r.exit_code == 0, r.output
    corrected = tifffile.imread(tmp_path / "corrected.tif")
    assert corrected.dtype == np.uint16 and corrected.shape == (128, 128)

    mask = next((tmp_path / "ann").glob("*_mask.png"))
    r = invoke(
        "split-instances", "--mask", mask, "--out", tmp_path / "labels.tif", "--pixel-size-um", 0.65
    )
    assert r.exit_code == 0, r.output
    assert tifffile.imread(tmp_path / "labels.tif").max() > 0


def test_stats_command_matches_table6_shape(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(3180)
    scores = 0.89 + 0.07 * (z - z.mean()) / z.std(ddof=1)
    pd.DataFrame({"f1": scores}).to_csv(tmp_path / "s.csv", index=False)
    r = invoke(
        "stats", "--input", tmp_path / "s.csv", "--column", "f1", "--baseline", 0.75,
        "--out", tmp_path / "s.json", "--md", tmp_path / "s.md",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "s.json").read_text())
    assert abs(rep["t"] - 112.78) < 0.01
    assert abs(rep["cohens_d"] - 2.0) < 1e-9
    assert (tmp_path / "s.md").read_text().startswith("#")


def test_bad_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotations><image></annotations>")
    (tmp_path / "imgs").mkdir()
    r = CliRunner().invoke(
        main,
        ["import-cvat", str(bad), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")],
    )
    assert r.exit_code == 2
    assert str(bad) in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["stats", "--input", str(tmp_path / "missing.csv"), "--column", "f1",
                                  "--baseline", "0.5", "--out", str(tmp_path / "x.json")])  # fmt: skip
    assert r.exit_code == 2 and "missing.csv" in r.output


def test_benchmarks_end_with_a_key_value_line():
    r = invoke("bench", "tophat", "--shape", 192, 256, "--radius", 12, "--repeats", 1)
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    pairs = dict(tok.split("=", 1) for tok in last.split())
    assert float(pairs["ratio"]) > 0 and 0 <= float(pairs["max_error_fraction"]) < 1
    r = invoke("bench", "instances", "--shape", 256, 256, "--n", 12, "--repeats", 1)
    assert r.exit_code == 0, r.output
    pairs = dict(tok.split("=", 1) for tok in r.output.strip().splitlines()[-1].split())
    assert {"ratio", "matched_f", "plain_matched_f"} <= set(pairs)
