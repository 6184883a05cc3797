"""Train/validation split of the training manifest, grouped by source image.

All patches and all augmented variants of one source image go to the same
side of the split, so validation never sees a (transformed) copy of a
training image.  (The paper split the augmented samples at random, which
leaks; we do not.)  Groups are stratified by modality: each modality puts
about ``val_fraction`` of its source images into validation, and at least
one when it has two or more.

For pre-tiled patch sets whose files are named ``<source>_<row>_<col>.png``
:func:`group_from_name` recovers the source image to group by.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .io import write_parquet

log = logging.getLogger(__name__)

#: Default pattern for pre-tiled patch files ``<source>_<row>_<col>.<ext>``.
DEFAULT_NAME_REGEX = r"^(?P<source>.+)_(?P<row>\d+)_(?P<col>\d+)(?:\.\w+)?$"


def _stratum_seed(seed: int, stratum: str) -> int:

    digest = hashlib.sha256(f"{seed}:split:{stratum}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _group_strata(
    manifest: pd.DataFrame, group_col: str, strata_col: str | None
) -> dict[str, list[str]]:
    """Map stratum -> sorted list of groups (each group in exactly one stratum)."""
    for col in (group_col, strata_col):
        if col is not None and col not in manifest.columns:
            raise InputError(col, f"manifest has no column {col!r} (has {list(manifest.columns)})")
    if len(manifest) == 0:
        raise InputError(None, "manifest is empty: nothing to split")
    groups = manifest[group_col].astype(str)
    if strata_col is None:
        strata = pd.Series("all", index=manifest.index)
    else:
        strata = manifest[strata_col].astype(str)
    table = pd.DataFrame({"g": groups.to_numpy(), "s": strata.to_numpy()})
    per_group = table.groupby("g", sort=True)["s"].agg(lambda s: sorted(set(s)))
    out: dict[str, list[str]] = {}
    for g, ss in per_group.items():
        if len(ss) > 1:
            log.warning("group %s spans strata %s; using %s", g, ss, ss[0])
        out.setdefault(ss[0], []).append(str(g))
    return {s: sorted(v) for s, v in sorted(out.items())}


def grouped_split(
    manifest: pd.DataFrame,
    *,
    group_col: str = "source_image",
    strata_col: str | None = "modality",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> pd.Series:
    """Assign every row to ``"train"`` or ``"val"``, grouped and stratified.

    Parameters
    ----------
    manifest : pandas.DataFrame
        One row per sample.
    group_col : str
        Rows sharing this value (the source image) share a split.
    strata_col : str or None
        Each stratum (modality) contributes ``round(val_fraction * n_groups)``
        groups to validation, at least 1 and at most ``n_groups - 1`` when it
        has two or more groups; a stratum with a single group trains.
    val_fraction : float
        In (0, 1).
    seed : int
        The groups of a stratum are shuffled with a generator seeded from
        ``(seed, stratum)``; the result does not depend on row order.

    Returns
    -------
    pandas.Series of str
        ``"train"``/``"val"``, aligned with ``manifest.index``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError("val_fraction", f"must lie strictly between 0 and 1, got {val_fraction}")
    strata = _group_strata(manifest, group_col, strata_col)
    val_groups: set[str] = set()
    for stratum, groups in strata.items():
        n = len(groups)
        if n < 2:
            log.warning("stratum %s has a single group: all of it trains", stratum)
            continue
        n_val = min(max(1, int(round(val_fraction * n))), n - 1)
        rng = np.random.default_rng(_stratum_seed(seed, stratum))
        order = rng.permutation(n)
        val_groups.update(groups[i] for i in order[:n_val])
    is_val = manifest[group_col].astype(str).isin(val_groups)
    return pd.Series(np.where(is_val, "val", "train"), index=manifest.index, name="split")


def kfold_split(
    manifest: pd.DataFrame,
    *,
    group_col: str = "source_image",
    strata_col: str | None = "modality",
    k: int = 5,
    seed: int = 0,
) -> pd.Series:
    """Assign grouped, stratified cross-validation folds ``0..k-1``.

    Within each stratum the groups are shuffled (seeded by ``(seed,
    stratum)``) and dealt round-robin into the folds; the dealing continues
    across strata so small strata do not all land in fold 0.

    Returns
    -------
    pandas.Series of int
        Fold per row, aligned with ``manifest.index``; all rows of a group
        share a fold.
    """
    if int(k) != k or k < 2:
        raise InputError("k", f"the number of folds must be an integer >= 2, got {k}")
    strata = _group_strata(manifest, group_col, strata_col)
    n_groups = sum(len(g) for g in strata.values())
    if n_groups < k:
        raise InputError("k", f"{k} folds need at least {k} groups, the manifest has {n_groups}")
    fold_of: dict[str, int] = {}
    offset = 0
    for stratum, groups in strata.items():
        rng = np.random.default_rng(_stratum_seed(seed, stratum))
        for j, i in enumerate(rng.permutation(len(groups))):
            fold_of[groups[i]] = (offset + j) % k
        offset += len(groups)
    folds = manifest[group_col].astype(str).map(fold_of).astype(np.int64)
    return pd.Series(folds.to_numpy(), index=manifest.index, name="fold")


def split_summary(manifest: pd.DataFrame, *, group_col: str = "source_image") -> pd.DataFrame:
    """Counts per split and modality.

    Returns
    -------
    pandas.DataFrame
        Columns ``split``, ``modality`` (``"all"`` for the per-split total),
        ``groups`` (source images), ``patches`` (distinct tiles, i.e. variant
        0 rows when a ``variant`` column exists) and ``samples`` (rows).
    """
    for col in ("split", group_col):
        if col not in manifest.columns:
            raise InputError(col, f"manifest has no column {col!r}")
    df = manifest.copy()
    if "modality" not in df.columns:
        df["modality"] = "all"
    records = []
    for split, sdf in df.groupby("split", sort=True):
        parts = [(m, mdf) for m, mdf in sdf.groupby("modality", sort=True)]
        if len(parts) > 1 or parts[0][0] != "all":
            parts.append(("all", sdf))
        for modality, mdf in parts:
            if "variant" in mdf.columns:
                patches = int((mdf["variant"] == 0).sum())
            else:
                patches = len(mdf)
            records.append(
                {
                    "split": str(split),
                    "modality": str(modality),
                    "groups": int(mdf[group_col].nunique()),
                    "patches": patches,
                    "samples": len(mdf),
                }
            )
    return pd.DataFrame(records, columns=["split", "modality", "groups", "patches", "samples"])


def group_from_name(names: Iterable[str], regex: str = DEFAULT_NAME_REGEX) -> pd.Series:
    """Source-image group key from pre-tiled patch file names.

    Parameters
    ----------
    names : iterable of str
        File names or paths such as ``A01_f1_t0_512_256.png``; only the base
        name is matched.
    regex : str
        Pattern with a named group ``source`` (default
        ``<source>_<row>_<col>[.ext]``).

    Returns
    -------
    pandas.Series of str
        The ``source`` group; keeps the index of ``names`` if it is a Series.

    Raises
    ------
    InputError
        The pattern lacks ``(?P<source>...)`` or a name does not match it.
    """
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise InputError("group_regex", f"invalid regular expression {regex!r}: {exc}") from None
    if "source" not in pattern.groupindex:
        raise InputError("group_regex", f"{regex!r} has no named group (?P<source>...)")
    index = names.index if isinstance(names, pd.Series) else None
    out = []
    for name in names:
        base = Path(str(name)).name
        match = pattern.search(base)
        if match is None or not match.group("source"):
            raise InputError(name, f"file name does not match the patch pattern {regex!r}")
        out.append(match.group("source"))
    return pd.Series(out, index=index, name="source", dtype=object)


def apply_split(
    manifest_in: str | os.PathLike,
    manifest_out: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    group_col: str = "source_image",
    strata_col: str | None = "modality",
    group_regex: str | None = None,
    name_col: str = "patch_id",
) -> pd.DataFrame:
    """Read a manifest, fill its ``split`` column and write it atomically.

    Parameters
    ----------
    manifest_in, manifest_out : path-like
        Parquet files (may be the same path).
    val_fraction, seed, group_col, strata_col
        See :func:`grouped_split`.
    group_regex : str, optional
        For pre-tiled patch sets: derive the group from ``name_col`` with
        :func:`group_from_name` instead of using ``group_col``.
    name_col : str
        Column holding the file names when ``group_regex`` is given.

    Returns
    -------
    pandas.DataFrame
        The manifest as written.
    """
    manifest_in = Path(manifest_in)
    if not manifest_in.is_file():
        raise InputError(manifest_in, "manifest does not exist")
    try:
        manifest = pd.read_parquet(manifest_in)
    except Exception as exc:  # noqa: BLE001 - unreadable file is bad input
        raise InputError(
            manifest_in, f"cannot read parquet ({type(exc).__name__}: {exc})"
        ) from None
    try:
        if group_regex is not None:
            if name_col not in manifest.columns:
                raise InputError(name_col, f"manifest has no column {name_col!r}")
            key = "_group"
            frame = manifest.assign(**{key: group_from_name(manifest[name_col], group_regex)})
        else:
            key, frame = group_col, manifest
        split = grouped_split(
            frame, group_col=key, strata_col=strata_col, val_fraction=val_fraction, seed=seed
        )
    except InputError as exc:
        raise InputError(manifest_in, exc.message if exc.path is None else str(exc)) from None
    manifest = manifest.copy()
    manifest["split"] = split.astype(str).to_numpy()
    write_parquet(manifest, manifest_out)
    summary = split_summary(manifest.assign(_g=frame[key].to_numpy()), group_col="_g")
    log.info("split of %s:\n%s", manifest_in, summary.to_string(index=False))
    return manifest
