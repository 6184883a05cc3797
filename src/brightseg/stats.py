"""Statistics of per-image scores: one-sample t-test against a baseline, Beta
posterior of the success rate, paired comparisons, and report writers.

The paper's Table 6 tests whether the mean per-image F1 exceeds a baseline
(one-sided one-sample t-test), gives Cohen's d and a Beta posterior for the
probability that an image scores at least the threshold.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from .errors import InputError
from .io import write_text

log = logging.getLogger(__name__)

_LN10 = math.log(10.0)

#: Rows of the Markdown / LaTeX report (key, label), in the order of Table 6.
REPORT_ROWS: tuple[tuple[str, str], ...] = (
    ("n", "Sample size (images)"),
    ("mean", "Mean"),
    ("std", "Standard deviation"),
    ("ci95", "95 % CI of the mean"),
    ("baseline", "Baseline"),
    ("t", "t statistic"),
    ("df", "Degrees of freedom"),
    ("p_value", "p value (one-sided, mean > baseline)"),
    ("confidence_mean_ge_baseline", "Confidence mean > baseline (1 - p)"),
    ("cohens_d", "Cohen's d"),
    ("threshold", "Threshold"),
    ("beta_successes", "Images >= threshold"),
    ("beta_failures", "Images < threshold"),
    ("beta_ci95", "Beta posterior 95 % CI of P(score >= threshold)"),
)


def t_log10_sf(t: float, df: float) -> float:
    """log10 of the upper tail P(T > t) of Student's t, finite where sf underflows.

    Uses ``scipy.stats.t.logsf``; where that underflows to -inf (t far in the
    tail), the tail is evaluated in log space from
    ``sf(t) = I_x(df/2, 1/2) / 2`` with ``x = df / (df + t**2)`` and
    ``I_x(a, b) = x**a (1-x)**b / (a B(a, b)) * 2F1(a+b, 1; a+1; x)``.
    """

    t = float(t)
    if math.isnan(t):
        return float("nan")
    val = float(stats.t.logsf(t, df))
    if math.isfinite(val) or t <= 0:
        return val / _LN10
    if math.isinf(t):
        return float("-inf")
    a, b = df / 2.0, 0.5
    x = df / (df + t * t)
    log_i = (
        a * math.log(x)
        + b * math.log(t * t / (df + t * t))
        - math.log(a)
        - float(special.betaln(a, b))
        + math.log(float(special.hyp2f1(a + b, 1.0, a + 1.0, x)))
    )
    return (math.log(0.5) + log_i) / _LN10


def one_sample_report(
    values: Sequence[float] | np.ndarray,
    *,
    baseline: float,
    threshold: float | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """One-sided one-sample t-test of ``mean > baseline`` and companions.

    Parameters
    ----------
    values : array-like
        Per-image scores (finite, at least 1; with 1 value ``std`` and
        everything derived from it are NaN, and ``undefined_reason`` says so).
    baseline : float
        The mean under H0.
    threshold : float, optional
        Success threshold of the Beta posterior (default: ``baseline``).
    alpha : float
        Significance level of ``significant``.

    Returns
    -------
    dict
        ``n``, ``mean``, ``std`` (ddof 1), ``sem``, ``baseline``, ``df``, ``t``,
        ``p_value`` (one-sided, H1: mean > baseline; may underflow to 0),
        ``log10_p`` (finite even when ``p_value`` underflows), ``alpha``,
        ``significant`` (p < alpha), ``confidence_mean_ge_baseline`` (1 - p),
        ``ci95_low``/``ci95_high`` (two-sided t interval of the mean),
        ``cohens_d`` = (mean - baseline) / std, ``threshold``,
        ``beta_successes`` (#values >= threshold), ``beta_failures``, and
        ``beta_ci95_low``/``beta_ci95_high``: the equal-tailed 95 % interval
        of the Beta(1 + successes, 1 + failures) posterior (uniform prior) of
        P(score >= threshold), and its mean ``beta_mean``.  ``undefined_reason`` is
        None, or says why ``t``, ``p_value``, ``log10_p`` and ``cohens_d`` are NaN
        (JSON ``null``): all values equal (to rounding), so the standard deviation is 0
        and the statistics are not defined.
    """

    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 1:
        raise ValueError("need at least 1 value, got 0")
    if not np.all(np.isfinite(x)):
        raise ValueError("values contain NaN or infinite numbers")
    threshold = float(baseline if threshold is None else threshold)
    n = int(x.size)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    df = n - 1
    undefined = _undefined_reason(x, mean, std)
    if n == 1:
        pass  # std, sem, t, p, the t interval and Cohen's d are NaN
    elif undefined:
        # Rounding leaves a std of ~1e-17 for equal values, which would give a t of
        # 1e14 and a p of 1e-30: report the statistics as undefined instead.
        std = 0.0
    sem = std / math.sqrt(n)
    if undefined:
        t = math.nan
    else:
        t = (mean - float(baseline)) / sem
    p = float(stats.t.sf(t, df)) if not math.isnan(t) else math.nan
    log10_p = t_log10_sf(t, df)
    half = float(stats.t.ppf(0.975, df)) * sem
    successes = int(np.count_nonzero(x >= threshold))
    failures = n - successes
    beta = stats.beta(1 + successes, 1 + failures)
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "sem": sem,
        "baseline": float(baseline),
        "df": df,
        "t": float(t),
        "p_value": p,
        "log10_p": log10_p,
        "alpha": float(alpha),
        "significant": bool(p < alpha),
        "confidence_mean_ge_baseline": 1.0 - p,
        "ci95_low": mean - half,
        "ci95_high": mean + half,
        "cohens_d": (mean - float(baseline)) / std if std > 0 else math.nan,
        "undefined_reason": undefined,
        "threshold": threshold,
        "beta_successes": successes,
        "beta_failures": failures,
        "beta_mean": float(beta.mean()),
        "beta_ci95_low": float(beta.ppf(0.025)),
        "beta_ci95_high": float(beta.ppf(0.975)),
    }


def _undefined_reason(x: np.ndarray, mean: float, std: float) -> str | None:
    """Why the t statistic and Cohen's d are undefined for ``x``, or None."""
    if x.size == 1:
        return (
            f"only 1 value ({x[0]:.6g}): the standard deviation, t statistic, p value and "
            "Cohen's d need at least 2 (e.g. more held-out images)"
        )
    if np.all(x == x[0]) or std <= 1e-12 * abs(mean):
        return (
            f"all {x.size} values are equal ({x[0]:.6g}): the standard deviation is 0, so "
            "the t statistic, p value and Cohen's d are undefined"
        )
    return None


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    alternative: str = "two-sided",
) -> dict[str, Any]:
    """Compare paired scores ``a`` and ``b`` (e.g. two models on the same images).

    Returns
    -------
    dict
        ``n``, ``mean_a``, ``mean_b``, ``mean_diff`` (a - b), ``std_diff``
        (ddof 1), ``t``/``p_value`` (paired t-test, ``scipy.stats.ttest_rel``),
        ``wilcoxon_statistic``/``wilcoxon_p_value`` (``scipy.stats.wilcoxon``;
        NaN when every difference is 0) and ``cohens_dz`` = mean(diff) /
        std(diff).
    """

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"need at least 2 pairs, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("values contain NaN or infinite numbers")
    diff = a - b
    sd = float(diff.std(ddof=1))
    tt = stats.ttest_rel(a, b, alternative=alternative)
    if np.any(diff != 0):
        w = stats.wilcoxon(a, b, alternative=alternative)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    else:
        w_stat, w_p = math.nan, math.nan
    return {
        "n": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(diff.mean()),
        "std_diff": sd,
        "t": float(tt.statistic),
        "p_value": float(tt.pvalue),
        "alternative": alternative,
        "wilcoxon_statistic": w_stat,
        "wilcoxon_p_value": w_p,
        "cohens_dz": float(diff.mean()) / sd if sd > 0 else math.nan,
    }


# --------------------------------------------------------------------------
# file front end
# --------------------------------------------------------------------------
def _read_table(path: Path):

    if not path.is_file():
        raise InputError(path, "file does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # noqa: BLE001 - any parser error is bad input
        raise InputError(path, f"cannot read table ({type(exc).__name__}: {exc})") from None
    raise InputError(path, f"unsupported table format {suffix!r} (use .parquet, .csv or .tsv)")


def read_scores(
    path: str | os.PathLike, column: str, *, nan_policy: str = "error"
) -> tuple[np.ndarray, int]:
    """Read one numeric column of per-image scores from a parquet/CSV/TSV file.

    Returns
    -------
    values, n_dropped : ndarray, int
        The finite values and the number of NaN entries dropped.

    Raises
    ------
    InputError
        Missing file or column (the available columns are listed), values that
        are not numbers, NaN (with ``nan_policy="error"``), infinite values,
        fewer than 2 values.
    """

    if nan_policy not in ("error", "drop"):
        raise ValueError(f"nan_policy must be 'error' or 'drop', not {nan_policy!r}")
    path = Path(path)
    df = _read_table(path)
    if column not in df.columns:
        raise InputError(
            path, f"no column {column!r}; available columns: {', '.join(map(str, df.columns))}"
        )
    raw = df[column]
    if raw.dtype == bool or not (
        pd.api.types.is_numeric_dtype(raw)
        or raw.dtype == object
        or pd.api.types.is_string_dtype(raw)
    ):
        raise InputError(path, f"column {column!r} is not numeric (dtype {raw.dtype})")
    num = pd.to_numeric(raw, errors="coerce")
    bad = num.isna() & raw.notna()
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())[:5].tolist()
        examples = ", ".join(repr(raw.iloc[i]) for i in rows)
        raise InputError(
            path,
            f"column {column!r} has {int(bad.sum())} non-numeric values (rows {rows}: {examples})",
        )
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    nan = np.isnan(values)
    n_dropped = 0
    if nan.any():
        if nan_policy == "error":
            rows = np.flatnonzero(nan)[:5].tolist()
            raise InputError(
                path,
                f"column {column!r} has {int(nan.sum())} missing/NaN values (first rows {rows}); "
                "use nan_policy='drop' to drop them",
            )
        n_dropped = int(nan.sum())
        values = values[~nan]
    if np.isinf(values).any():
        raise InputError(path, f"column {column!r} has infinite values")
    if values.size < 1:
        raise InputError(path, f"column {column!r} has no usable values")
    return values, n_dropped


def _clean(value: Any, digits: int = 12) -> Any:
    """JSON-ready value: numpy scalars to Python, floats rounded to ``digits``
    significant digits (stable across platforms), non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, digits) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}")
    return value


def to_json(report: dict[str, Any]) -> str:
    """Deterministic JSON: sorted keys, 12 significant digits, ``null`` for non-finite."""
    return json.dumps(_clean(report), sort_keys=True, indent=2, allow_nan=False) + "\n"


def format_p(log10_p: float, p: float | None = None) -> str:
    """Format a p value from its log10, e.g. ``3.2e-1114`` (exact beyond float range)."""
    if log10_p is None or not math.isfinite(log10_p):
        return "nan" if p is None or not math.isfinite(p) else f"{p:.3g}"
    if log10_p > -4:
        return f"{10**log10_p:.4f}"
    exponent = math.floor(log10_p)
    mantissa = 10 ** (log10_p - exponent)
    if mantissa >= 9.995:
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.2f}e{exponent}"


def _report_values(report: dict[str, Any]) -> list[tuple[str, str]]:
    def f(v: float, nd: int = 4) -> str:
        return "nan" if v is None or not math.isfinite(v) else f"{v:.{nd}f}"

    conf = report["confidence_mean_ge_baseline"]
    values = {
        "n": str(report["n"]),
        "mean": f(report["mean"]),
        "std": f(report["std"]),
        "ci95": f"[{f(report['ci95_low'])}, {f(report['ci95_high'])}]",
        "baseline": f(report["baseline"]),
        "t": f(report["t"], 2),
        "df": str(report["df"]),
        "p_value": format_p(report["log10_p"], report["p_value"]),
        "confidence_mean_ge_baseline": (
            f"1 - {format_p(report['log10_p'])}" if report["log10_p"] < -4 else f(conf)
        ),
        "cohens_d": f(report["cohens_d"], 2),
        "threshold": f(report["threshold"]),
        "beta_successes": str(report["beta_successes"]),
        "beta_failures": str(report["beta_failures"]),
        "beta_ci95": f"[{f(report['beta_ci95_low'])}, {f(report['beta_ci95_high'])}]",
    }
    return [(label, values[key]) for key, label in REPORT_ROWS]


def report_markdown(report: dict[str, Any], *, title: str | None = None) -> str:
    """Markdown table (rows: metric, value) of a :func:`one_sample_report`."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| Metric | Value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in _report_values(report)]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        (">=", r"$\geq$"),
        ("<", r"$<$"),
        (">", r"$>$"),
    ):
        text = text.replace(a, b)
    return text


def report_latex(report: dict[str, Any], *, caption: str | None = None) -> str:
    """LaTeX ``tabular`` (booktabs; rows: metric, value) of a :func:`one_sample_report`."""
    lines = [r"\begin{tabular}{ll}", r"\toprule", r"Metric & Value \\", r"\midrule"]
    for label, value in _report_values(report):
        lines.append(f"{_tex_escape(label)} & {_tex_escape(value)} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines = [r"\begin{table}", r"\centering", f"\\caption{{{_tex_escape(caption)}}}"] + lines
        lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def stats_from_file(
    input: str | os.PathLike,
    column: str,
    baseline: float,
    *,
    out_json: str | os.PathLike,
    out_md: str | os.PathLike | None = None,
    out_tex: str | os.PathLike | None = None,
    threshold: float | None = None,
    alpha: float = 0.05,
    nan_policy: str = "error",
) -> dict[str, Any]:
    """Test a column of per-image scores against a baseline and write reports.

    Parameters
    ----------
    input : path-like
        Parquet, CSV or TSV table of per-image scores.
    column : str
        Column holding the scores (e.g. ``f1``).
    baseline : float
        Mean under H0 (see :func:`one_sample_report`).
    out_json, out_md, out_tex : path-like
        Report files (JSON always; Markdown and LaTeX if given), written
        atomically.
    nan_policy : {"error", "drop"}
        NaN values raise :class:`InputError`, or are dropped and counted in
        ``n_dropped``.

    Returns
    -------
    dict
        The report with ``input``, ``column``, ``nan_policy`` and ``n_dropped``
        added (as written to ``out_json``).
    """

    for name, value in (("baseline", baseline), ("threshold", threshold), ("alpha", alpha)):
        if value is not None and not math.isfinite(float(value)):
            raise InputError(name, f"must be a finite number, got {value!r}")
    values, n_dropped = read_scores(input, column, nan_policy=nan_policy)
    report = one_sample_report(values, baseline=baseline, threshold=threshold, alpha=alpha)
    report.update(
        {
            "input": Path(input).name,
            "column": column,
            "nan_policy": nan_policy,
            "n_dropped": n_dropped,
        }
    )
    write_text(to_json(report), out_json)
    title = f"{column}: one-sided t-test against baseline {baseline:g}"
    if out_md is not None:
        write_text(report_markdown(report, title=title), out_md)
    if out_tex is not None:
        write_text(report_latex(report, caption=title), out_tex)
    if report["undefined_reason"]:
        log.warning("%s: %s", column, report["undefined_reason"])
    log.info(
        "%s: n=%d mean=%.4f t=%.2f log10 p=%.1f d=%.2f",
        column,
        report["n"],
        report["mean"],
        report["t"],
        report["log10_p"],
        report["cohens_d"],
    )
    return report
