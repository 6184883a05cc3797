"""Validation threshold choice (issue 12): the threshold maximising pooled validation Dice."""

import numpy as np
import pytest

from brightseg.metrics import choose_threshold


def test_choose_threshold_moves_off_half_for_overconfident_maps():
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), bool)
    truth[16:48, 16:48] = True
    # background pixels near the cells get 0.6 (over-segmentation at 0.5), cells 0.9
    prob = np.where(truth, 0.9, 0.1).astype(np.float32)
    prob[8:56, 8:56][~truth[8:56, 8:56]] = 0.6
    prob += rng.uniform(-0.02, 0.02, prob.shape).astype(np.float32)
    out = choose_threshold([prob], [truth])
    assert 0.6 < out["threshold"] < 0.9
    assert out["dice"] == pytest.approx(1.0)
    assert out["dice_at_0.5"] < 0.7


def test_choose_threshold_tie_prefers_half():
    truth = np.zeros((8, 8), bool)
    truth[:4] = True
    prob = truth.astype(np.float32)  # 0/1 maps: every candidate is perfect
    assert choose_threshold([prob], [truth])["threshold"] == 0.5


def test_choose_threshold_bad_input():
    with pytest.raises(ValueError):
        choose_threshold([], [])
    with pytest.raises(ValueError):
        choose_threshold([np.zeros((4, 4))], [np.zeros((4, 5))])


# --------------------------------------------------------------------------- the ensemble's


class _FakeEnsemble:
    """Two 'models' that are under-confident: 0.3 on cells, 0.1 on background."""

    def __init__(self, vote="mean"):
        from brightseg.config import InferenceConfig

        self.inference = InferenceConfig.from_dict({"vote": vote})

    def predict(self, image):
        fg = image[..., 0] > 0.5
        probs = np.stack([np.where(fg, 0.3, 0.1), np.where(fg, 0.6, 0.1)]).astype(np.float32)
        prob = probs.mean(axis=0)
        return probs, prob, (prob > 0.5).astype(np.uint8)


def _patches(n=3, size=16):
    rng = np.random.default_rng(0)
    masks = [(rng.random((size, size)) > 0.7).astype(np.uint8) for _ in range(n)]
    images = [np.repeat(m[..., None].astype(np.float32), 3, axis=-1) for m in masks]
    return images, masks


def test_validation_threshold_of_an_under_confident_ensemble():
    from brightseg.ensemble import validation_threshold

    images, masks = _patches()
    got = validation_threshold(_FakeEnsemble(), images, masks)
    # mean vote: 0.45 (float32: a hair above) on cells, 0.1 elsewhere; ties go nearest 0.5
    assert 0.1 <= got["threshold"] <= 0.45 and got["dice"] == 1.0
    assert got["dice_at_0.5"] == 0.0 and got["n_patches"] == 3 and got["vote"] == "mean"
    # majority vote: the share of models above 0.5 is 0.5 on cells, 0 elsewhere
    maj = validation_threshold(_FakeEnsemble("majority"), images, masks)
    assert 0.0 < maj["threshold"] < 0.5 and maj["dice"] == 1.0


def test_a_configured_threshold_is_recorded_with_its_dice_and_the_best_one():
    from brightseg.ensemble import validation_threshold

    images, masks = _patches()
    got = validation_threshold(_FakeEnsemble(), images, masks, fixed=0.6)
    # the number in force is the configured one: nothing is above 0.6, so its Dice is 0
    assert got["threshold"] == 0.6 and got["chosen_on"] == "config" and got["dice"] == 0.0
    assert 0.1 <= got["best_threshold"] <= 0.45 and got["best_dice"] == 1.0
    at_low = validation_threshold(_FakeEnsemble(), images, masks, fixed=0.2)
    assert at_low["dice"] == 1.0 and at_low["threshold"] == 0.2
    chosen = validation_threshold(_FakeEnsemble(), images, masks)
    assert chosen["chosen_on"] == "validation" and chosen["threshold"] == chosen["best_threshold"]


def test_resolve_threshold_reads_the_file_beside_the_ensemble(tmp_path):
    import json

    from brightseg.config import InferenceConfig
    from brightseg.ensemble import resolve_threshold
    from brightseg.errors import InputError

    tsv = tmp_path / "ensemble.tsv"
    fixed = InferenceConfig.from_dict({"threshold": 0.4})
    assert resolve_threshold(fixed, tsv) is fixed  # a number needs no file
    chosen = InferenceConfig.from_dict({"threshold": "validation"})
    with pytest.raises(InputError, match=r"threshold\.json.*choose_threshold"):
        resolve_threshold(chosen, tsv)
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 1.5}))
    with pytest.raises(InputError, match=r"outside \[0, 1\)"):
        resolve_threshold(chosen, tsv)
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.35, "dice": 0.9}))
    assert resolve_threshold(chosen, tsv).threshold == 0.35


def test_threshold_config_errors_name_the_problem():
    from brightseg.config import InferenceConfig
    from brightseg.errors import InputError

    with pytest.raises(InputError, match="1.5 is greater than or equal to the maximum of 1$"):
        InferenceConfig.from_dict({"threshold": 1.5})
    with pytest.raises(InputError, match=r"'valid' is not one of \['validation'\]"):
        InferenceConfig.from_dict({"threshold": "valid"})
