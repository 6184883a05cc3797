"""Tests of brightseg.stats against scipy.stats."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from brightseg import stats as S
from brightseg.errors import InputError


def exact_sample(n: int, mean: float, std: float, seed: int = 0) -> np.ndarray:
    """Random normals standardised to exactly ``mean`` and ``std`` (ddof 1)."""
    z = np.random.default_rng(seed).standard_normal(n)
    z = (z - z.mean()) / z.std(ddof=1)
    return mean + std * z


def test_paper_table6_numbers_against_scipy():
    x = exact_sample(3180, 0.89, 0.07)
    r = S.one_sample_report(x, baseline=0.75)
    assert r["n"] == 3180 and r["df"] == 3179
    assert r["mean"] == pytest.approx(0.89, abs=1e-12)
    assert r["std"] == pytest.approx(0.07, abs=1e-12)
    # paper: t = 112.90, d = 2.0; exact value 0.14 / (0.07 / sqrt(3180)) = 2 sqrt(3180)
    assert r["t"] == pytest.approx(2 * math.sqrt(3180), rel=1e-9)
    assert round(r["t"], 1) == 112.8
    assert r["cohens_d"] == pytest.approx(2.0, abs=1e-9)
    ref = st.ttest_1samp(x, 0.75, alternative="greater")
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-9)
    assert r["p_value"] == ref.pvalue == 0.0  # underflows in double precision
    # ... but log10 p stays finite: about -1112 (paper: "p < 1e-280")
    assert math.isfinite(r["log10_p"])
    assert -1120 < r["log10_p"] < -1100
    assert r["confidence_mean_ge_baseline"] == 1.0
    assert r["significant"] is True
    ci = st.t.interval(0.95, 3179, loc=x.mean(), scale=st.sem(x))
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx(ci, abs=1e-12)
    s = int(np.sum(x >= 0.75))
    assert r["beta_successes"] == s and r["beta_failures"] == 3180 - s
    assert r["beta_ci95_low"] == pytest.approx(st.beta.ppf(0.025, 1 + s, 1 + 3180 - s))
    assert r["beta_ci95_high"] == pytest.approx(st.beta.ppf(0.975, 1 + s, 1 + 3180 - s))


@pytest.mark.parametrize(
    ("t", "df"), [(3.0, 5), (10.0, 5), (30.0, 3179), (20.0, 100), (40.0, 1), (0.5, 12)]
)
def test_log10_sf_fallback_agrees_with_scipy_where_finite(t, df, monkeypatch):
    ref = st.t.logsf(t, df) / math.log(10)
    assert S.t_log10_sf(t, df) == pytest.approx(ref, rel=1e-10)
    # force the series branch: make scipy's logsf "underflow"
    real = st.t.logsf
    monkeypatch.setattr(st.t, "logsf", lambda *a, **k: -np.inf)
    assert S.t_log10_sf(t, df) == pytest.approx(ref, rel=1e-9)
    monkeypatch.setattr(st.t, "logsf", real)


def test_log10_sf_far_tail_is_monotone_and_consistent():
    # successive t values: the tail must keep decreasing, and the ratio of two
    # tails follows the density asymptotics sf(t) ~ c t^-df
    df = 3179
    vals = [S.t_log10_sf(t, df) for t in (60.0, 80.0, 112.9, 200.0)]
    assert all(math.isfinite(v) for v in vals)
    assert vals == sorted(vals, reverse=True)
    big = [S.t_log10_sf(t, 3) for t in (1e6, 1e7)]
    assert big[0] - big[1] == pytest.approx(3.0, abs=1e-6)


def test_one_sample_small_sample_against_scipy():
    x = np.array([0.8, 0.9, 0.85, 0.7, 0.95, 0.88])
    r = S.one_sample_report(x, baseline=0.8, threshold=0.86)
    ref = st.ttest_1samp(x, 0.8, alternative="greater")
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert 10 ** r["log10_p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert r["confidence_mean_ge_baseline"] == pytest.approx(1 - ref.pvalue)
    assert r["cohens_d"] == pytest.approx((x.mean() - 0.8) / x.std(ddof=1))
    assert r["beta_successes"] == 3 and r["beta_failures"] == 3
    assert r["beta_ci95_low"] == pytest.approx(st.beta.ppf(0.025, 4, 4))
    assert r["threshold"] == 0.86
    assert S.one_sample_report(x, baseline=0.8)["threshold"] == 0.8
    with pytest.raises(ValueError, match="at least 1"):
        S.one_sample_report([], baseline=0.1)
    one = S.one_sample_report([0.5], baseline=0.1)
    assert one["n"] == 1 and math.isnan(one["p_value"]) and math.isnan(one["ci95_low"])


def test_paired_comparison_against_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(0.85, 0.05, 40)
    b = a - rng.normal(0.02, 0.03, 40)
    r = S.paired_comparison(a, b)
    tt = st.ttest_rel(a, b)
    w = st.wilcoxon(a, b)
    d = a - b
    assert r["t"] == pytest.approx(tt.statistic, rel=1e-12)
    assert r["p_value"] == pytest.approx(tt.pvalue, rel=1e-12)
    assert r["wilcoxon_statistic"] == pytest.approx(w.statistic)
    assert r["wilcoxon_p_value"] == pytest.approx(w.pvalue, rel=1e-12)
    assert r["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert r["mean_diff"] == pytest.approx(d.mean())
    g = S.paired_comparison(a, b, alternative="greater")
    assert g["p_value"] == pytest.approx(st.ttest_rel(a, b, alternative="greater").pvalue)
    same = S.paired_comparison(a, a.copy())
    assert math.isnan(same["wilcoxon_p_value"])
    with pytest.raises(ValueError, match="length"):
        S.paired_comparison(a, b[:-1])


def write_scores(path, values, column="f1"):
    df = pd.DataFrame({"image": [f"im{i}" for i in range(len(values))], column: values})
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_stats_from_file_writes_deterministic_reports(tmp_path, suffix):
    x = exact_sample(3180, 0.89, 0.07, seed=1)
    src = write_scores(tmp_path / f"scores{suffix}", x)
    out = tmp_path / "out"
    r = S.stats_from_file(
        src, "f1", 0.75, out_json=out / "s.json", out_md=out / "s.md", out_tex=out / "s.tex"
    )
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    S.stats_from_file(
        src, "f1", 0.75, out_json=out / "s.json", out_md=out / "s.md", out_tex=out / "s.tex"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert sorted(first) == ["s.json", "s.md", "s.tex"]  # no temporary files left
    data = json.loads(first["s.json"])
    assert list(data) == sorted(data)
    assert data["n"] == 3180 and data["n_dropped"] == 0 and data["column"] == "f1"
    assert data["t"] == pytest.approx(r["t"], rel=1e-11)
    assert data["p_value"] == 0.0 and data["log10_p"] < -1000
    md = first["s.md"].decode()
    assert "| t statistic | 112.78 |" in md
    assert "| Cohen's d | 2.00 |" in md
    assert "| p value (one-sided, mean > baseline) | " in md and "e-11" in md
    tex = first["s.tex"].decode()
    assert r"\begin{tabular}{ll}" in tex and r"t statistic & 112.78 \\" in tex
    assert r"Cohen's d & 2.00 \\" in tex


def test_stats_from_file_bad_input(tmp_path):
    good = np.array([0.8, 0.9, 0.85, 0.7])
    src = write_scores(tmp_path / "s.csv", good)
    with pytest.raises(InputError, match=r"s\.csv.*no column 'dice'.*image, f1"):
        S.stats_from_file(src, "dice", 0.5, out_json=tmp_path / "o.json")
    with pytest.raises(InputError, match="does not exist"):
        S.stats_from_file(tmp_path / "nope.csv", "f1", 0.5, out_json=tmp_path / "o.json")
    text = tmp_path / "t.csv"
    pd.DataFrame({"f1": ["0.5", "abc", "0.7"]}).to_csv(text, index=False)
    with pytest.raises(InputError, match=r"t\.csv.*non-numeric.*'abc'"):
        S.stats_from_file(text, "f1", 0.5, out_json=tmp_path / "o.json")
    nan = write_scores(tmp_path / "n.parquet", np.array([0.8, np.nan, 0.9, 0.7]))
    with pytest.raises(InputError, match=r"n\.parquet.*1 missing/NaN"):
        S.stats_from_file(nan, "f1", 0.5, out_json=tmp_path / "o.json")
    r = S.stats_from_file(nan, "f1", 0.5, out_json=tmp_path / "o.json", nan_policy="drop")
    assert r["n"] == 3 and r["n_dropped"] == 1
    assert json.loads((tmp_path / "o.json").read_text())["n_dropped"] == 1
    none = write_scores(tmp_path / "none.csv", np.array([np.nan]))
    with pytest.raises(InputError, match=r"none\.csv.*no usable values"):
        S.stats_from_file(none, "f1", 0.5, out_json=tmp_path / "x.json", nan_policy="drop")
    assert not (tmp_path / "x.json").exists()
    # One held-out image (a small lab's split): a report, with the test undefined and why.
    one = write_scores(tmp_path / "one.csv", np.array([0.8]))
    r = S.stats_from_file(one, "f1", 0.5, out_json=tmp_path / "one.json", out_md=tmp_path / "o.md")
    assert r["n"] == 1 and r["mean"] == 0.8 and r["beta_successes"] == 1
    assert math.isnan(r["t"]) and math.isnan(r["cohens_d"]) and math.isnan(r["std"])
    assert "only 1 value" in r["undefined_reason"]
    assert json.loads((tmp_path / "one.json").read_text())["t"] is None
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(InputError, match=r"bad\.parquet.*cannot read"):
        S.stats_from_file(bad, "f1", 0.5, out_json=tmp_path / "x.json")


def test_format_p():
    assert S.format_p(-1114.4342) == "3.68e-1115"
    assert S.format_p(math.log10(0.0123)) == "0.0123"
    assert S.format_p(-5.0) == "1.00e-5"
