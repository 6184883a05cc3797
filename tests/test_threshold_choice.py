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
