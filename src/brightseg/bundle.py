"""Portable model bundles: the voting checkpoints with everything needed to use them.

A bundle is what training hands to the plates that arrive later: a directory (and the
same content as one ``.tar`` file) holding

``bundle.json``
    The format and its version, the package versions the models were trained with, every
    preprocessing and inference parameter they expect (the illumination block, the
    working pixel size, the tile, the threshold and the vote), a summary of the training
    data, the validation scores of the members and, last, ``content_sha256``.
``ensemble.tsv``
    The voting checkpoints in rank order, with paths relative to the bundle.
``members/NN_<model>_<loss>_eEE.keras``
    The checkpoints themselves.
``student/student.keras``, ``student/card.json``
    With ``ensemble.distill``: the distilled student (the default predictor of a
    predict-only run with ``ensemble.distill: true``) and its card; ``bundle.json``
    lists it under ``student``.

``content_sha256`` is the sha256 of every other file (name and bytes, in sorted order)
and of ``bundle.json`` without that key: :func:`open_bundle` recomputes it, so a bundle
damaged in transfer or edited by hand is refused, and a bundle of a newer format than
this brightseg reads is refused with what to do.  The archive is deterministic (sorted
members, zero times and owners): the same models give the same bytes.

The workflow writes a bundle in the ``bundle`` rule (``results/models/bundle/`` and
``results/models/bundle.tar``); ``model: <bundle>`` in the config makes a predict-only run
(:func:`config_with_bundle`), and ``brightseg segment --model <bundle>`` uses it without a
plate sheet.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .config import InferenceConfig
from .ensemble import Ensemble, read_ensemble
from .ensemble import _file_sha256 as _sha256_file
from .errors import InputError
from .io import atomic_path, write_text

log = logging.getLogger(__name__)

FORMAT = "brightseg-model-bundle"
#: The bundle format this brightseg writes and the newest it reads.
FORMAT_VERSION = 1
MANIFEST = "bundle.json"
TABLE = "ensemble.tsv"
MEMBERS = "members"
STUDENT = "student"

#: Config keys that a bundle fixes: the models were trained (illumination) or validated
#: (inference) with these values, so a predict-only run takes them from the bundle.
BUNDLE_KEYS: dict[str, tuple[str, ...]] = {
    "illumination": ("radius", "unit", "mode", "method", "percentiles"),
    "inference": ("tile", "overlap", "threshold", "vote", "tta"),
}
#: Largest member (bytes) and member count an archive may have (checked from its index).
MAX_MEMBER_BYTES = 4 << 30
MAX_MEMBERS = 1000


def content_hash(root: str | os.PathLike, manifest: Mapping) -> str:
    """sha256 of a bundle directory's files (but ``bundle.json``) and of its manifest.

    The manifest enters as canonical JSON without ``content_sha256``; files as their
    relative POSIX path and the sha256 of their bytes, in sorted order.
    """
    root = Path(root)
    h = hashlib.sha256()
    body = {k: v for k, v in manifest.items() if k != "content_sha256"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        h.update(rel.encode() + b"\0" + _sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """The versions a bundle records (those that decide whether a checkpoint loads)."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "brightseg": __version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
    }


def _member_name(rank: int, row: Any) -> str:
    parts = [f"{rank:02d}"]
    for key in ("model", "loss"):
        if key in row and str(row[key]):
            parts.append(str(row[key]))
    if "epoch" in row and pd.notna(row["epoch"]):
        parts.append(f"e{int(row['epoch']):02d}")
    return "_".join(parts) + ".keras"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def write_bundle(
    ensemble_tsv: str | os.PathLike,
    out_dir: str | os.PathLike,
    archive: str | os.PathLike | None = None,
    *,
    illumination: Mapping,
    inference: Mapping,
    tile: int | None,
    pixel_size_um: float | None,
    training: Mapping | None = None,
    instances: Mapping | None = None,
    versions: Mapping | None = None,
    input_planes: int = 1,
    student: str | os.PathLike | None = None,
    student_card: str | os.PathLike | None = None,
) -> dict:
    """Write a bundle directory (and its ``.tar`` archive) from an ``ensemble.tsv``.

    Parameters
    ----------
    ensemble_tsv : path
        The voting checkpoints (:func:`brightseg.ensemble.read_ensemble` resolves them).
    out_dir : path
        The bundle directory, written atomically (replaced whole).
    archive : path, optional
        The single-file form: an uncompressed, deterministic tar of ``out_dir``'s files.
    illumination, inference : mapping
        The blocks the models were trained and validated with (only :data:`BUNDLE_KEYS`
        and ``overlap``/``tta`` of ``inference`` are kept).
    tile : int or None
        The tile the models predict (``inference.tile``; None: the models' input size).
    pixel_size_um : float or None
        The working pixel size of the training images (None where they differ).
    instances : mapping, optional
        The watershed settings the run used: the defaults of a predict-only run and of
        ``brightseg segment`` (the config may change them).
    training : mapping, optional
        A summary of the training data (plates, patch sets, counts) and anything else
        to record (``seed``, the training keys).
    versions : mapping, optional
        Package versions (default :func:`package_versions`).
    input_planes : int
        Focal planes the models take as their channels (:mod:`brightseg.focus`): 3 is
        recorded as ``preprocessing.input_planes``; 1 (grey) is the absence of the key.
    student, student_card : path, optional
        The distilled ``student.keras`` and its ``card.json`` (:mod:`brightseg.distill`).

    Returns
    -------
    dict
        The manifest written as ``bundle.json``.
    """
    table = read_ensemble(ensemble_tsv)
    members = []
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / MEMBERS).mkdir(parents=True)
        rows = []
        for rank, row in enumerate(table.to_dict("records"), start=1):
            name = _member_name(rank, row)
            shutil.copyfile(row["path"], tmp / MEMBERS / name)
            rel = f"{MEMBERS}/{name}"
            rows.append({**row, "rank": rank, "path": rel})
            scores = {
                k: row[k]
                for k in row
                if k not in {"rank", "path", "model", "loss", "epoch"}
                and isinstance(row[k], int | float)
            }
            members.append(
                {
                    "file": rel,
                    "sha256": _sha256_file(tmp / rel),
                    "model": str(row.get("model", "")),
                    "loss": str(row.get("loss", "")),
                    "epoch": None if pd.isna(row.get("epoch")) else int(row["epoch"]),
                    "validation": _jsonable(scores),
                }
            )
        pd.DataFrame(rows, columns=list(table.columns)).to_csv(
            tmp / TABLE, sep="\t", index=False, float_format="%.6f", lineterminator="\n"
        )
        student_entry = None
        if student is not None:
            (tmp / STUDENT).mkdir()
            shutil.copyfile(student, tmp / STUDENT / "student.keras")
            student_entry = {"file": f"{STUDENT}/student.keras"}
            student_entry["sha256"] = _sha256_file(tmp / student_entry["file"])
            if student_card is not None:
                shutil.copyfile(student_card, tmp / STUDENT / "card.json")
                card = json.loads(Path(student_card).read_text())
                student_entry["card"] = f"{STUDENT}/card.json"
                student_entry["flops_ratio"] = card.get("flops", {}).get("ratio")
                student_entry["dice_ratio"] = card.get("validation", {}).get("dice_ratio")
        ill = {k: illumination[k] for k in BUNDLE_KEYS["illumination"]}
        inf = {k: inference[k] for k in BUNDLE_KEYS["inference"] if k != "tile"}
        inf["tile"] = None if tile is None else int(tile)
        radius_um = None
        if pixel_size_um:
            radius_um = ill["radius"] * (pixel_size_um if ill["unit"] == "px" else 1.0)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "versions": dict(versions or package_versions()),
            "preprocessing": {
                "illumination": _jsonable(ill),
                "illumination_radius_um": radius_um,
                "pixel_size_um": pixel_size_um,
                "tile": inf["tile"],
                **({"input_planes": int(input_planes)} if int(input_planes) > 1 else {}),
            },
            "inference": _jsonable(inf),
            "postprocessing": {"instances": _jsonable(dict(instances or {}))},
            "training": _jsonable(dict(training or {})),
            "members": members,
        }
        if student_entry is not None:
            manifest["student"] = _jsonable(student_entry)
        manifest["content_sha256"] = content_hash(tmp, manifest)
        write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", tmp / MANIFEST)
    if archive is not None:
        write_archive(out_dir, archive)
    log.info(
        "model bundle %s: %d members, content %s", out_dir, len(members), manifest["content_sha256"]
    )
    return manifest


def write_archive(bundle_dir: str | os.PathLike, archive: str | os.PathLike) -> None:
    """The bundle directory as one deterministic, uncompressed tar (atomically).

    The checkpoints are zip files already; members are sorted and have zero times and
    owners, so the same bundle gives the same bytes.
    """
    bundle_dir = Path(bundle_dir)
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(bundle_dir).as_posix())
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


# --------------------------------------------------------------------------- reading


def is_bundle(path: str | os.PathLike) -> bool:
    """True for a bundle directory (with ``bundle.json``) or a ``.tar`` archive."""
    path = Path(path)
    return (path.is_dir() and (path / MANIFEST).is_file()) or (
        path.is_file() and path.suffix == ".tar"
    )


def _safe_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise InputError(path, f"a model bundle with {len(members)} files (limit {MAX_MEMBERS})")
    for m in members:
        if not m.isfile():
            raise InputError(path, f"member {m.name!r} is not a regular file")
        parts = Path(m.name).parts
        if m.name.startswith("/") or ".." in parts:
            raise InputError(path, f"member {m.name!r} points outside the bundle")
        if m.size > MAX_MEMBER_BYTES:
            raise InputError(path, f"member {m.name!r} is {m.size} bytes")
    return members


def _read_archive_manifest(path: Path) -> dict:
    try:
        with tarfile.open(path, "r:") as tar:
            _safe_members(tar, path)
            fh = tar.extractfile(MANIFEST)
            if fh is None:
                raise KeyError(MANIFEST)
            return _parse_manifest(fh.read(), path)
    except KeyError:
        raise InputError(path, f"not a model bundle: no {MANIFEST} in the archive") from None
    except tarfile.TarError as exc:
        raise InputError(path, f"not a readable tar archive ({exc})") from None


def _parse_manifest(data: bytes, path: Path) -> dict:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(
            path, f"not a brightseg model bundle ({MANIFEST} has no format {FORMAT!r})"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise InputError(path, f"{MANIFEST}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(
            path,
            f"bundle format {version} is newer than this brightseg {__version__} reads "
            f"(format {FORMAT_VERSION}): upgrade brightseg to use it",
        )
    for key in ("preprocessing", "inference", "members", "content_sha256"):
        if key not in manifest:
            raise InputError(path, f"{MANIFEST} lacks {key!r}")
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest (``bundle.json``) of a bundle directory or archive, format checked.

    Cheap: the checkpoints are neither read nor hashed (:func:`open_bundle` verifies
    them).  This is what the workflow reads at parse time.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise InputError(path, f"not a model bundle: no {MANIFEST} in the directory")
        return _parse_manifest((path / MANIFEST).read_bytes(), path)
    if not path.exists():
        raise InputError(path, "model bundle does not exist")
    return _read_archive_manifest(path)


def _check_versions(manifest: Mapping, path: Path) -> None:
    """Refuse a Keras major version that cannot read the checkpoints; warn on the rest."""
    recorded = manifest.get("versions", {})
    try:
        current = package_versions()
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        return
    for name, have in current.items():
        want = recorded.get(name)
        if want is None or want == have:
            continue
        if name == "keras" and str(want).split(".")[0] != str(have).split(".")[0]:
            raise InputError(
                path,
                f"the bundle was written with keras {want}, this environment has {have}: "
                f"install keras {str(want).split('.')[0]}.x",
            )
        log.warning("%s: bundle written with %s %s, running %s %s", path, name, want, name, have)


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle: its directory, manifest and ``ensemble.tsv`` path."""

    source: Path
    root: Path
    manifest: dict

    @property
    def ensemble_tsv(self) -> Path:
        return self.root / TABLE

    @property
    def illumination(self) -> dict:
        return dict(self.manifest["preprocessing"]["illumination"])

    @property
    def input_planes(self) -> int:
        """Focal planes the models take (1: a grey image, replicated)."""
        return int(self.manifest["preprocessing"].get("input_planes", 1))

    @property
    def inference(self) -> dict:
        return dict(self.manifest["inference"])

    @property
    def content_sha256(self) -> str:
        return str(self.manifest["content_sha256"])


def verify(root: Path, manifest: Mapping, source: Path) -> None:
    """Recompute the content hash and each member's sha256; refuse any difference."""
    for member in manifest["members"]:
        file = root / str(member.get("file", ""))
        if not file.is_file():
            raise InputError(source, f"member {member.get('file')!r} is missing")
        if _sha256_file(file) != member.get("sha256"):
            raise InputError(source, f"member {member['file']!r} does not match its sha256")
    student = manifest.get("student")
    if student is not None:
        file = root / str(student.get("file", ""))
        if not file.is_file() or _sha256_file(file) != student.get("sha256"):
            raise InputError(source, f"the student {student.get('file')!r} is missing or changed")
    if content_hash(root, manifest) != manifest["content_sha256"]:
        raise InputError(
            source,
            "content hash mismatch: the bundle was changed after it was written "
            "(copy it again from where it was trained)",
        )


@contextlib.contextmanager
def open_bundle(path: str | os.PathLike) -> Iterator[Bundle]:
    """Open a bundle directory or archive, verified (format, versions, hashes).

    An archive is extracted into a temporary directory (removed on exit, by which time
    the models have been loaded into memory).

    Raises
    ------
    InputError
        Not a bundle, a newer format, an incompatible Keras, a member changed or missing.
    """
    path = Path(path)
    manifest = read_manifest(path)
    _check_versions(manifest, path)
    if path.is_dir():
        verify(path, manifest, path)
        yield Bundle(path, path, manifest)
        return
    with tempfile.TemporaryDirectory(prefix="brightseg-bundle-") as tmp:
        with tarfile.open(path, "r:") as tar:
            _safe_members(tar, path)
            tar.extractall(tmp, filter="data")
        verify(Path(tmp), manifest, path)
        yield Bundle(path, Path(tmp), manifest)


def load_ensemble(source: str | os.PathLike, inference) -> Ensemble:
    """:meth:`Ensemble.load` of an ``ensemble.tsv`` or of a model bundle (verified).

    For a bundle, the inference keys it fixes (:data:`BUNDLE_KEYS`) are the bundle's; the
    others (batch size, TTA, overlap, precision) are ``inference``'s.
    """
    inference = InferenceConfig.coerce(inference)
    if not is_bundle(source):
        return Ensemble.load(source, inference)
    with open_bundle(source) as bundle:
        fixed = {k: bundle.inference[k] for k in BUNDLE_KEYS["inference"]}
        ens = Ensemble.load(bundle.ensemble_tsv, inference.replace(**fixed))
        ens.key  # noqa: B018 - hashed now, while an archive's members still exist
        return ens


# --------------------------------------------------------------------------- predict-only


def config_with_bundle(config: Mapping, *, source: str = "config") -> tuple[dict, dict]:
    """The user's config for a predict-only run, with the bundle's parameters filled in.

    ``config["model"]`` names the bundle.  Each key of :data:`BUNDLE_KEYS` comes from the
    bundle; the same key set in the config to another value is an error naming both (the
    models were trained or validated with the bundle's value).  The bundle's
    ``instances`` settings fill the keys the config leaves out.

    Returns
    -------
    (dict, dict)
        The config (a copy) and the bundle's manifest.
    """
    path = Path(str(config["model"]))
    manifest = read_manifest(path)
    fixed = {
        "illumination": manifest["preprocessing"]["illumination"],
        "inference": {k: manifest["inference"][k] for k in BUNDLE_KEYS["inference"]},
    }
    out = dict(config)
    for block, values in fixed.items():
        given = dict(out.get(block) or {})
        for key, value in values.items():
            if key in given and _norm(given[key]) != _norm(value):
                raise InputError(
                    source,
                    f"{block}.{key} is {given[key]!r} in the config but {value!r} in the "
                    f"model bundle {path}: the models were trained with the bundle's value; "
                    f"remove {block}.{key} from the config (or train a new bundle)",
                )
            given[key] = value
        out[block] = given
    # The watershed settings of the training run are defaults: the config may change them.
    recorded = manifest.get("postprocessing", {}).get("instances", {})
    out["instances"] = {**recorded, **dict(out.get("instances") or {})}
    return out, manifest


def _norm(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def training_summary(
    manifests: Sequence[str | os.PathLike], split_summary: str | os.PathLike | None, **extra
) -> dict:
    """What the models were trained on: plates, patch sets and counts, from the manifests."""
    summary: dict[str, Any] = dict(extra)
    frames = [pd.read_parquet(m) for m in manifests if Path(m).is_file()]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        if "plate" in df:
            summary["plates"] = sorted(str(p) for p in df["plate"].unique())
        if "source_image" in df:
            summary["source_images"] = int(df["source_image"].nunique())
        summary["samples"] = len(df)
        if "split" in df:
            summary["samples_per_split"] = {
                str(k): int(v) for k, v in df["split"].value_counts().sort_index().items()
            }
    if split_summary and Path(split_summary).is_file():
        text = Path(split_summary).read_text()
        summary["split_summary"] = pd.read_csv(io.StringIO(text), sep="\t").to_dict("records")
    return _jsonable(summary)
