"""The typed config: complete schema, unknown keys with suggestions, defaults in one place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brightseg.config import (
    Config,
    IlluminationConfig,
    InferenceConfig,
    InstancesConfig,
    ModelSpec,
    TrainingConfig,
    load_schema,
    plate_illumination,
    unknown_keys,
    validate_config,
)
from brightseg.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _demo() -> dict:
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    cfg = Config.from_dict(yaml.safe_load((REPO / "config" / name).read_text()))
    assert cfg.illumination.radius > 0 and cfg.models


def test_every_block_and_key_is_in_the_schema():
    """Each object in the schema forbids unknown keys, and every block of both configs is known."""

    def objects(node, where="$"):
        if isinstance(node, dict):
            if node.get("type") == "object" or (
                isinstance(node.get("type"), list) and "object" in node["type"]
            ):
                if "properties" in node:
                    yield where, node
            for k, v in node.items():
                yield from objects(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from objects(v, f"{where}[{i}]")

    found = list(objects(load_schema()))
    assert len(found) > 20
    for where, node in found:
        assert node.get("additionalProperties") is False, where
    props = load_schema()["properties"]
    for block in _demo().keys() | yaml.safe_load((REPO / "config/paper.yaml").read_text()).keys():
        assert block in props


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("ilumination",),
            {"radius": 3},
            "unknown key 'ilumination' (did you mean 'illumination'?)",
        ),
        (
            ("instances", "min_area_um"),
            30,
            "'instances.min_area_um' (did you mean 'instances.min_area_um2'?)",
        ),
        (("training", "epochz"), 3, "'training.epochz' (did you mean 'training.epochs'?)"),
        (("inference", "zzz"), 3, "unknown key 'inference.zzz'"),
        (("models", 0, "losss"), "x", "'models[0].losss' (did you mean 'models[0].loss'?)"),
    ],
)
def test_unknown_keys_name_the_path_and_the_closest_key(path, value, message):
    cfg = _demo()
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(InputError, match="unknown key") as err:
        validate_config(cfg, source="my.yaml")
    assert message in str(err.value) and str(err.value).startswith("my.yaml: ")


def test_unknown_keys_lists_them_all():
    cfg = _demo()
    cfg["seeed"] = 1
    cfg["instances"]["h_uum"] = 1
    assert sorted(unknown_keys(cfg)) == [("instances.h_uum", "instances.h_um"), ("seeed", "seed")]


@pytest.mark.parametrize(
    ("block", "key", "value"),
    [
        ("inference", "threshold", 1.5),
        ("inference", "vote", "median"),
        ("illumination", "radius", 1e9),
        ("training", "epochs", 0),
        ("instances", "min_area_um2", "big"),
        ("seed", None, -1),
    ],
)
def test_types_and_ranges_are_checked(block, key, value):
    cfg = _demo()
    if key is None:
        cfg[block] = value
    else:
        cfg[block][key] = value
    with pytest.raises(InputError, match="config key"):
        validate_config(cfg)


def test_defaults_come_from_the_schema_only():
    cfg = Config.from_dict(
        {"plates": "p.tsv", "filename_regex": "x", "illumination": {"radius": 5}}
    )
    assert cfg.inference == InferenceConfig.from_dict({})
    assert cfg.inference.tile is None and cfg.inference.threshold == 0.5
    assert cfg.instances == InstancesConfig.from_dict(None)
    assert cfg.illumination.mode == "auto" and cfg.illumination.percentiles == (1.0, 99.8)
    assert cfg.illumination.uncertain_mode == "black"
    assert cfg.training.epochs == 45 and cfg.models == ()
    assert cfg["keras_home"] == "results/keras" and cfg["on_bad_input"] == "error"
    # schema defaults are copied, never shared between configs
    cfg.raw["training"]["patch_sets"].append("x")
    assert (
        Config.from_dict(
            {"plates": "p.tsv", "filename_regex": "x", "illumination": {"radius": 5}}
        ).training.patch_sets
        == ()
    )


def test_blocks_round_trip_through_plain_dicts():
    inf = InferenceConfig.from_dict({"threshold": 0.7, "tile": 128})
    d = inf.as_dict()
    assert isinstance(d, dict) and d["threshold"] == 0.7
    assert InferenceConfig.coerce(d) == inf and InferenceConfig.coerce(inf) is inf
    assert inf.replace(threshold=0.2).threshold == 0.2
    with pytest.raises(InputError):
        inf.replace(threshold=2)
    spec = ModelSpec.from_dict({"architecture": "small_unet", "loss": "bce_dice"})
    assert spec.name == "small_unet" and spec.hard_mining is False
    assert ModelSpec.coerce(spec.as_dict()) == spec
    t = TrainingConfig.from_dict({"epochs": 3})
    assert set(t.subset(t.AUGMENT_KEYS)) == set(t.AUGMENT_KEYS)
    assert not set(t.AUGMENT_KEYS) & set(t.TRAIN_KEYS)


def test_plate_illumination_overrides_one_plate():
    base = IlluminationConfig.from_dict({"radius": 40})
    assert plate_illumination(base, {"plate": "P1"}) is base
    assert plate_illumination(base, {"plate": "P1", "illumination_mode": ""}) is base
    own = plate_illumination(
        base, {"plate": "P1", "illumination_mode": "white", "illumination_radius": "25"}
    )
    assert own.mode == "white" and own.radius == 25.0 and own.method == base.method
    with pytest.raises(InputError, match="sheet.tsv: plate 'P1'.*illumination.mode"):
        plate_illumination(base, {"plate": "P1", "illumination_mode": "grey"}, sheet="sheet.tsv")
    with pytest.raises(InputError, match="illumination_radius must be a number, got 'big'"):
        plate_illumination(base, {"plate": "P1", "illumination_radius": "big"}, sheet="s.tsv")
