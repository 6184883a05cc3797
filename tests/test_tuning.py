"""Watershed settings chosen on validation images (:mod:`brightseg.tuning`)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from brightseg.instances import split_with_config
from brightseg.tuning import choose_instance_settings


def _scene(seed: int):
    """Cells of radius 9 px with true labels; the 'prediction' adds 3 px specks of debris."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((128, 128), np.int32)
    for k, (r, c) in enumerate([(25, 25), (25, 90), (90, 30), (95, 95)], start=1):
        truth[disk((r + rng.integers(-3, 4), c + rng.integers(-3, 4)), 9)] = k
    mask = truth > 0
    for r, c in [(60, 60), (10, 60), (60, 10), (120, 60), (60, 120)]:
        mask[disk((r, c), 2)] = True
    return mask.astype(np.uint8), truth


def test_min_area_that_drops_the_debris_is_chosen():
    scenes = [_scene(s) for s in range(2)]
    masks, truths = [m for m, _ in scenes], [t for _, t in scenes]
    base = {"min_area_um2": 1.0}

    def split(i, settings):
        return split_with_config(masks[i], 1.0, {**base, **settings})

    out = choose_instance_settings(
        masks, truths, split, grid={"min_area_um2": [None, 50.0, 1000.0]}
    )
    # config's own (1 um^2) keeps 5 specks: F1 = 8 / (8 + 5); 50 um^2 drops them: F1 = 1;
    # 1000 um^2 drops the cells too
    assert out["f1_50_config"] == pytest.approx(8 / 13)
    assert out["settings"] == {"min_area_um2": 50.0} and out["f1_50"] == pytest.approx(1.0)
    assert [r["min_area_um2"] for r in out["table"]] == [None, 50.0, 1000.0]
    assert out["table"][2]["f1_50"] == 0.0


def test_ties_keep_the_config_and_bad_inputs_raise():
    mask, truth = _scene(0)
    mask = (truth > 0).astype(np.uint8)  # no debris: every min area below the cells ties

    def split(i, settings):
        return split_with_config(mask, 1.0, {"min_area_um2": 1.0, **settings})

    out = choose_instance_settings([mask], [truth], split, grid={"min_area_um2": [20.0, None]})
    assert out["settings"] == {} and out["f1_50"] == out["f1_50_config"] == 1.0
    with pytest.raises(ValueError, match="equally many"):
        choose_instance_settings([], [], split)
    with pytest.raises(ValueError, match="empty grid"):
        choose_instance_settings([mask], [truth], split, grid={"h_um": []})


def test_tuned_instances_merges_the_chosen_settings(tmp_path):
    import json

    from brightseg.errors import InputError
    from brightseg.tuning import tuned_instances

    cfg = {"h_um": None, "min_area_um2": 20.0, "tune": "none"}
    assert tuned_instances(cfg, None) == cfg  # not tuned: the config as it is
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"settings": {"h_um": 2.0, "min_area_um2": 600.0}}))
    tuned = {**cfg, "tune": "validation"}
    assert tuned_instances(tuned, str(path)) == {"h_um": 2.0, "min_area_um2": 600.0, "tune": "none"}
    with pytest.raises(InputError, match="choose_instances"):
        tuned_instances(tuned, [])
