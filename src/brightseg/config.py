"""The workflow configuration: validated once, completely, into frozen dataclasses.

``schemas/config.schema.yaml`` (beside this module; ``workflow/schemas/`` links to it) lists
every block and key with its type, range and default, with ``additionalProperties: false``
throughout.  It is the one place where defaults live: :func:`validate_config` fills them
in, and every block becomes a frozen dataclass (:class:`InferenceConfig`, ...) that the
rule layer (:mod:`brightseg.rules`) hands to the stage functions.

A misspelt key stops the run before any job, with the key's path and the closest valid
name::

    config: unknown key 'ilumination' (did you mean 'illumination'?)
    config: unknown key 'instances.min_area_um' (did you mean 'instances.min_area_um2'?)

Snakemake's ``params`` rerun trigger only sees plain values, so rules pass each block as
the dict :meth:`Block.as_dict` returns, and the rule layer turns it back into its class
with :meth:`Block.coerce` (which also fills defaults for a partial dict, e.g. from the
command line or a test).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any, ClassVar, TypeVar

import jsonschema
import yaml

from .errors import InputError

__all__ = [
    "AnnotationsConfig",
    "ComparisonConfig",
    "ExplainConfig",
    "Config",
    "EnsembleConfig",
    "IlluminationConfig",
    "InferenceConfig",
    "InstancesConfig",
    "LivecellConfig",
    "ModelSpec",
    "MorphometryConfig",
    "OtsuConfig",
    "StatsConfig",
    "StudentConfig",
    "TrainingConfig",
    "load_schema",
    "unknown_keys",
    "validate_config",
]


@cache
def load_schema() -> dict:
    """The config schema (``brightseg/schemas/config.schema.yaml``)."""
    text = resources.files("brightseg").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _resolve(schema: Mapping, root: Mapping) -> Mapping:
    """Follow a local ``$ref`` (``#/$defs/name``), merging the referring keys over it."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    merged = dict(_resolve(node, root))
    merged.update({k: v for k, v in schema.items() if k != "$ref"})
    return merged


def _subschema(path: str) -> dict:
    """The schema of a dotted block path, e.g. ``"inference"`` or ``"comparison.otsu"``."""
    root = load_schema()
    node: Mapping = root
    for part in path.split("."):
        node = _resolve(node["properties"][part], root)
    return {**node, "$defs": root.get("$defs", {})}


# --------------------------------------------------------------------------- unknown keys


def unknown_keys(config: Any, schema: Mapping | None = None) -> list[tuple[str, str | None]]:
    """Keys the schema does not know, as ``(dotted path, suggestion or None)``.

    Every object with ``additionalProperties: false`` is checked, in lists too
    (``models[1].losss``).  The suggestion is the closest valid key at that level
    (:func:`difflib.get_close_matches`).
    """
    root = schema if schema is not None else load_schema()
    return list(_unknown(config, root, root, ""))


def _unknown(value: Any, schema: Mapping, root: Mapping, where: str) -> Iterator:
    schema = _resolve(schema, root)
    if isinstance(value, Mapping):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, sub in value.items():
            path = f"{where}.{key}" if where else str(key)
            if key in props:
                yield from _unknown(sub, props[key], root, path)
            elif extra is False:
                close = difflib.get_close_matches(str(key), list(props), n=1, cutoff=0.6)
                yield path, (f"{where}.{close[0]}" if where else close[0]) if close else None
            elif isinstance(extra, Mapping):
                yield from _unknown(sub, extra, root, path)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            yield from _unknown(item, schema["items"], root, f"{where}[{i}]")


# --------------------------------------------------------------------------- defaults


def _fill(value: Any, schema: Mapping, root: Mapping) -> Any:
    """``value`` with the schema's defaults filled in (recursively; a copy)."""
    schema = _resolve(schema, root)
    if isinstance(value, Mapping):
        out = dict(value)
        props = schema.get("properties", {})
        for key, sub in props.items():
            sub = _resolve(sub, root)
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        for key in list(out):
            if key in props:
                out[key] = _fill(out[key], props[key], root)
            elif isinstance(schema.get("additionalProperties"), Mapping):
                out[key] = _fill(out[key], schema["additionalProperties"], root)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_fill(v, schema["items"], root) for v in value]
    return value


def _check(value: Any, schema: Mapping, where: str, source: str) -> None:
    """Unknown keys first (with suggestions), then types and ranges."""
    unknown = list(_unknown(value, schema, schema, ""))
    if unknown:
        lines = [
            f"unknown key '{_join(where, p)}'"
            + (f" (did you mean '{_join(where, s)}'?)" if s else "")
            for p, s in unknown
        ]
        raise InputError(source or "config", "; ".join(lines))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = _join(where, ".".join(str(p) for p in err.absolute_path)) or "(top level)"
        message = err.message
        if err.validator == "oneOf" and err.context:
            # A number or a keyword: say what is wrong with the value as given (a number
            # out of range, or a string that is not one of the keywords).
            wrong_type = {e.relative_schema_path[0] for e in err.context if e.validator == "type"}
            same_type = [e for e in err.context if e.relative_schema_path[0] not in wrong_type]
            message = "; ".join(e.message for e in (same_type or err.context))
        raise InputError(source or "config", f"config key '{path}': {message}")


def _join(where: str, path: str) -> str:
    if not where:
        return path
    return f"{where}.{path}" if path else where


def validate_config(config: Mapping, *, source: str | Sequence[str] = "") -> dict:
    """Check the whole config against the schema and return it with defaults filled in.

    Parameters
    ----------
    config : mapping
        The merged Snakemake config.
    source : str or sequence of str
        The config file(s), named in the error.

    Raises
    ------
    InputError
        An unknown key (with the closest valid name), a wrong type, a value out of range,
        a missing required key.
    """
    if not isinstance(source, str):
        source = ", ".join(str(s) for s in source)
    schema = load_schema()
    if not isinstance(config, Mapping):
        raise InputError(source or "config", "the config must be a mapping")
    _check(config, schema, "", source)
    filled = _fill(config, schema, schema)
    _check(filled, schema, "", source)
    check_targets(filled, source=source)
    return filled


#: Target each ``instances.method`` needs from the models (None: any).
METHOD_TARGET = {"distance": None, "interior": "border3", "log_seeds": "nucleus3"}


def check_targets(config: Mapping, *, source: str = "") -> None:
    """Cross-checks of ``models[].target``, the losses and ``instances.method`` (issue 16).

    3-class targets (``border3``, ``nucleus3``) train with ``cce_dice`` and binary ones with
    the other losses; every model of the ensemble has the same target (the members vote on
    one kind of output, class by class); ``instances.method: interior`` needs ``border3``
    models, ``log_seeds`` ``nucleus3`` models and ``instances.nucleus_diameter_um``.
    """
    models = list(config.get("models") or [])
    targets = []
    for i, m in enumerate(models):
        target = m.get("target", "binary")
        multi = target in ("border3", "nucleus3")
        if multi != (m.get("loss") == "cce_dice"):
            want = "cce_dice" if multi else "bce_dice or focal_dice_boundary"
            raise InputError(
                source or "config",
                f"models[{i}]: target {target!r} cannot train with loss {m.get('loss')!r}; "
                f"use {want}",
            )
        targets.append(target)
    if len(set(targets)) > 1:
        raise InputError(
            source or "config",
            f"models[] mix the targets {sorted(set(targets))}: the ensemble votes class by "
            "class on one kind of output; give every models entry the same target",
        )
    inst = config.get("instances") or {}
    method = inst.get("method", "distance")
    need = METHOD_TARGET.get(method)
    if need and targets and targets[0] != need:
        raise InputError(
            source or "config",
            f"instances.method {method!r} needs models with target {need!r} (its seeds are "
            f"the {'interior' if need == 'border3' else 'nucleus'} class), but the models' "
            f"target is {targets[0]!r}",
        )
    if (
        targets
        and targets[0] == "nucleus3"
        and not (config.get("annotations") or {}).get("nucleus_labels")
    ):
        raise InputError(
            source or "config",
            "models[] with target 'nucleus3' train on nucleus outlines: name their label in "
            "the CVAT/COCO exports with annotations.nucleus_labels (e.g. [nucleus])",
        )
    if method == "log_seeds" and inst.get("nucleus_diameter_um") is None:
        raise InputError(
            source or "config",
            "instances.method 'log_seeds' needs instances.nucleus_diameter_um (the expected "
            "nucleus diameter in um: it sets the scale of the blob detector)",
        )


# --------------------------------------------------------------------------- typed blocks

B = TypeVar("B", bound="Block")


@dataclass(frozen=True)
class Block:
    """A config block: built from its validated dict, defaults from the schema."""

    #: Dotted path of the block in the config (its schema).
    PATH: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[B], value: Mapping | None, *, source: str = "") -> B:
        """Validate ``value`` against the block's schema, fill defaults, build the block."""
        schema = _subschema(cls.PATH)
        value = dict(value or {})
        _check(value, schema, cls.PATH, source)
        filled = _fill(value, schema, schema)
        return cls._build(filled)

    @classmethod
    def _build(cls: type[B], d: Mapping) -> B:
        kwargs = {}
        for f in fields(cls):
            v = d[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    @classmethod
    def coerce(cls: type[B], value: B | Mapping | None) -> B:
        """``value`` itself if it is a ``cls``, else :meth:`from_dict`."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    def as_dict(self) -> dict:
        """Plain values (lists for tuples), as a rule's ``params`` holds them."""
        return _plain(dataclasses.asdict(self))

    def subset(self, keys: Sequence[str]) -> dict:
        """The named keys as a plain dict (one rule's share of the block)."""
        d = self.as_dict()
        return {k: d[k] for k in keys}

    def replace(self: B, **changes: Any) -> B:
        """A copy with some fields changed (checked against the schema again)."""
        return type(self).from_dict({**self.as_dict(), **changes})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class IlluminationConfig(Block):
    """Top-hat background suppression (:func:`brightseg.illumination.correct_illumination`)."""

    PATH: ClassVar[str] = "illumination"
    radius: float
    unit: str
    mode: str
    method: str
    percentiles: tuple[float, float]
    uncertain_mode: str


@dataclass(frozen=True)
class AnnotationsConfig(Block):
    PATH: ClassVar[str] = "annotations"
    labels: tuple[str, ...] | None
    mask_threshold: float
    mask_suffix: str
    mask_mode: str
    nucleus_labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainingConfig(Block):
    """The training set and the optimiser (``patch_sets`` are resolved separately)."""

    PATH: ClassVar[str] = "training"
    patch_size: int
    stride: int | None
    min_foreground: float
    n_variants: int
    val_fraction: float
    epochs: int
    batch_size: int
    steps_per_epoch: int | None
    val_steps: int | None
    learning_rate: float
    decay_steps: int
    decay_rate: float
    patience: int
    precision: str
    encoder_weights: str
    deterministic: bool
    mining_budget: int | None = None
    patch_sets: tuple = ()
    working_pixel_size_um: float | None = None
    lr_schedule: str = "exponential"

    #: The keys that change the augmented training store (the ``augment`` rule's params).
    AUGMENT_KEYS: ClassVar[tuple[str, ...]] = (
        "patch_size",
        "stride",
        "min_foreground",
        "n_variants",
    )
    #: The keys that change the split (the ``split`` rule's params).
    SPLIT_KEYS: ClassVar[tuple[str, ...]] = ("val_fraction",)
    #: The keys that change a training run (the ``train`` rule's params).
    TRAIN_KEYS: ClassVar[tuple[str, ...]] = (
        "epochs",
        "batch_size",
        "steps_per_epoch",
        "val_steps",
        "learning_rate",
        "decay_steps",
        "decay_rate",
        "patience",
        "precision",
        "encoder_weights",
        "deterministic",
        "mining_budget",
    )

    def train_params(self) -> dict:
        """The ``train`` rule's params: :data:`TRAIN_KEYS`, and ``lr_schedule`` when it is
        not the default (so that runs from before the option keep their params)."""
        extra = {} if self.lr_schedule == "exponential" else {"lr_schedule": self.lr_schedule}
        return {**self.subset(self.TRAIN_KEYS), **extra}


@dataclass(frozen=True)
class ModelSpec(Block):
    """One training job: an architecture and a loss (``models[]`` in the config)."""

    PATH: ClassVar[str] = "models"
    name: str
    architecture: str
    loss: str
    hard_mining: bool
    encoder_weights: str | None
    model_kwargs: dict
    loss_kwargs: dict
    target: str
    #: Test-time augmentation of this model's checkpoints (None: ``inference.tta``); an
    #: inference setting, so the ``train`` rule's params leave it out.
    tta: bool | None = None

    @classmethod
    def from_dict(cls, value: Mapping | None, *, source: str = "") -> ModelSpec:
        schema = {**_subschema("models")["items"], "$defs": load_schema().get("$defs", {})}
        value = dict(value or {})
        _check(value, schema, "models[]", source)
        filled = _fill(value, schema, schema)
        filled.setdefault("name", filled["architecture"])
        return cls(**{f.name: filled[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class EnsembleConfig(Block):
    PATH: ClassVar[str] = "ensemble"
    top_k: int
    stability_window: int
    distill: bool = False
    student: dict = dataclasses.field(default_factory=dict)

    #: The keys that change the checkpoint selection (the ``select_checkpoints`` params).
    SELECT_KEYS: ClassVar[tuple[str, ...]] = ("top_k", "stability_window")

    @property
    def student_config(self) -> StudentConfig:
        return StudentConfig.coerce(self.student)


@dataclass(frozen=True)
class StudentConfig(Block):
    """The distilled student (:mod:`brightseg.distill`): ``ensemble.student``."""

    PATH: ClassVar[str] = "ensemble.student"
    architecture: str
    model_kwargs: dict
    epochs: int
    steps_per_epoch: int | None
    batch_size: int
    learning_rate: float
    dice_weight: float
    unlabelled_plates: tuple[str, ...]
    unlabelled_tiles: int
    min_dice_ratio: float
    max_flops_ratio: float
    on_miss: str
    qc_images: int

    #: The keys that change the student (the ``distill`` rule's params; ``qc_images``
    #: is the ``predict`` rule's).
    DISTILL_KEYS: ClassVar[tuple[str, ...]] = (
        "architecture",
        "model_kwargs",
        "epochs",
        "steps_per_epoch",
        "batch_size",
        "learning_rate",
        "dice_weight",
        "unlabelled_plates",
        "unlabelled_tiles",
        "min_dice_ratio",
        "max_flops_ratio",
        "on_miss",
    )


@dataclass(frozen=True)
class InferenceConfig(Block):
    """Tiled ensemble inference (:class:`brightseg.ensemble.Ensemble`)."""

    PATH: ClassVar[str] = "inference"
    tile: int | None
    overlap: int
    batch_size: int
    vote: str
    threshold: float | str
    tta: bool
    precision: str

    @property
    def validation_threshold(self) -> bool:
        """``threshold: validation``: chosen on the validation patches (``threshold.json``)."""
        return self.threshold == "validation"


@dataclass(frozen=True)
class InstancesConfig(Block):
    """Watershed instance splitting (:func:`brightseg.instances.split_with_config`)."""

    PATH: ClassVar[str] = "instances"
    h_um: float | None
    min_area_um2: float
    max_area_um2: float | None
    fill_holes: bool
    remove_border: bool
    use_prob: bool
    method: str
    interior_threshold: float
    nucleus_diameter_um: float | None
    tune: str = "none"


@dataclass(frozen=True)
class MorphometryConfig(Block):
    PATH: ClassVar[str] = "morphometry"
    n_overlays: int
    export: dict


@dataclass(frozen=True)
class LivecellConfig(Block):
    PATH: ClassVar[str] = "livecell"
    enabled: bool
    synth: bool
    synth_n_per_line: int
    annotations: tuple[str, ...]
    images: str
    exclude: str
    pixel_size_um: float
    f1_threshold: float


@dataclass(frozen=True)
class StatsConfig(Block):
    PATH: ClassVar[str] = "stats"
    input: str
    model: str
    column: str
    baseline: float
    threshold: float | None
    nan_policy: str


@dataclass(frozen=True)
class OtsuConfig(Block):
    """The classical top-hat + Otsu baseline of the evaluation sets."""

    PATH: ClassVar[str] = "comparison.otsu"
    radius_px: int
    mode: str
    method: str
    sigma: float
    min_size: int
    fill_holes: bool


@dataclass(frozen=True)
class ComparisonConfig(Block):
    PATH: ClassVar[str] = "comparison"
    paired_metrics: tuple[str, ...]
    otsu: dict

    @property
    def otsu_config(self) -> OtsuConfig:
        return OtsuConfig.from_dict(self.otsu)


@dataclass(frozen=True)
class QcConfig(Block):
    """Ensemble uncertainty, per-image QC scores and the review export (:mod:`brightseg.qc`)."""

    PATH: ClassVar[str] = "qc"
    uncertainty: bool
    uncertain_band: tuple[float, float]
    border_px: int
    review_threshold: float
    export_cvat: bool
    export_shapes: str
    tolerance_px: float
    min_iou: float

    def __post_init__(self) -> None:
        lo, hi = self.uncertain_band
        if not lo < hi:
            raise InputError("qc.uncertain_band", f"needs lo < hi, got [{lo}, {hi}]")


@dataclass(frozen=True)
class ExplainConfig(Block):
    """Grad-CAM maps of the voting models for the first images of each plate."""

    PATH: ClassVar[str] = "explain"
    enabled: bool
    layer: str | None
    images: int
    threshold: float


@dataclass(frozen=True)
class Config:
    """The whole validated config (what ``common.smk`` builds once at parse time)."""

    raw: dict
    illumination: IlluminationConfig
    annotations: AnnotationsConfig
    training: TrainingConfig
    models: tuple[ModelSpec, ...]
    ensemble: EnsembleConfig
    inference: InferenceConfig
    instances: InstancesConfig
    morphometry: MorphometryConfig
    livecell: LivecellConfig
    stats: StatsConfig
    comparison: ComparisonConfig
    explain: ExplainConfig

    @classmethod
    def from_dict(cls, config: Mapping, *, source: str | Sequence[str] = "") -> Config:
        """Validate ``config`` (:func:`validate_config`) and build every block."""
        raw = validate_config(config, source=source)
        if "illumination" not in raw:  # a predict-only config not yet completed
            raise InputError(
                str(source) or "config",
                f"no illumination block: the model bundle {raw.get('model')} supplies it "
                "(brightseg.bundle.config_with_bundle)",
            )
        return cls(
            raw=raw,
            illumination=IlluminationConfig._build(raw["illumination"]),
            annotations=AnnotationsConfig._build(raw["annotations"]),
            training=TrainingConfig._build(raw["training"]),
            models=tuple(ModelSpec.from_dict(m) for m in raw["models"]),
            ensemble=EnsembleConfig._build(raw["ensemble"]),
            inference=InferenceConfig._build(raw["inference"]),
            instances=InstancesConfig._build(raw["instances"]),
            morphometry=MorphometryConfig._build(raw["morphometry"]),
            livecell=LivecellConfig._build(raw["livecell"]),
            stats=StatsConfig._build(raw["stats"]),
            comparison=ComparisonConfig._build(raw["comparison"]),
            explain=ExplainConfig._build(raw["explain"]),
        )

    def __getitem__(self, key: str) -> Any:
        """Top-level scalars and untyped blocks (``plates``, ``seed``, ``demo``...)."""
        return self.raw[key]


#: Optional plate-sheet columns that override the ``illumination`` block for one plate.
PLATE_ILLUMINATION_COLUMNS = {"illumination_mode": "mode", "illumination_radius": "radius"}


def plate_illumination(
    base: IlluminationConfig, row: Mapping, *, sheet: str = ""
) -> IlluminationConfig:
    """The illumination settings of one plate: ``base`` with the sheet row's overrides.

    ``illumination_mode`` (``black``: dark cells on a bright background, ``white``: bright
    cells) and ``illumination_radius`` (in ``illumination.unit``) may be given per plate;
    an empty cell keeps the config's value.

    Raises
    ------
    InputError
        Naming the sheet, the plate and the column, for a value the schema refuses.
    """
    plate = row.get("plate", "")
    overrides: dict[str, Any] = {}
    for column, key in PLATE_ILLUMINATION_COLUMNS.items():
        value = str(row.get(column, "") or "").strip()
        if not value or value.lower() == "nan":
            continue
        if key == "radius":
            try:
                overrides[key] = float(value)
            except ValueError:
                raise InputError(
                    sheet, f"plate {plate!r}: {column} must be a number, got {value!r}"
                ) from None
        else:
            overrides[key] = value
    if not overrides:
        return base
    try:
        return base.replace(**overrides)
    except InputError as exc:
        raise InputError(sheet, f"plate {plate!r}: {exc.message}") from None
