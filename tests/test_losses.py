"""Losses against values computed by hand on 2x2 images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brightseg.errors import InputError
from brightseg.losses import (
    LOSSES,
    bce_dice,
    focal_dice_boundary,
    get_loss,
    laplacian,
    soft_dice_per_sample,
)

# y = [[1, 0], [0, 0]], p = [[0.8, 0.2], [0.1, 0.4]]
Y = np.array([1.0, 0.0, 0.0, 0.0], np.float32).reshape(1, 2, 2, 1)
P = np.array([0.8, 0.2, 0.1, 0.4], np.float32).reshape(1, 2, 2, 1)


def hand_dice_loss():
    # soft Dice with smoothing 1: (2 * 0.8 + 1) / (1 + 1.5 + 1) = 2.6 / 3.5
    return 1.0 - 2.6 / 3.5


def hand_bce_dice():
    # weighted BCE: foreground pixel x10, averaged over the 4 pixels
    terms = [10 * -math.log(0.8), -math.log(1 - 0.2), -math.log(1 - 0.1), -math.log(1 - 0.4)]
    return sum(terms) / 4 + hand_dice_loss()


def hand_focal_dice_boundary():
    # focal: -alpha_t (1 - p_t)^2 log p_t, alpha_t 0.25 (fg) / 0.75 (bg)
    focal = (
        0.25 * 0.2**2 * -math.log(0.8)  # fg, p_t = 0.8
        + 0.75 * 0.2**2 * -math.log(0.8)  # bg, p = 0.2 -> p_t = 0.8
        + 0.75 * 0.1**2 * -math.log(0.9)  # bg, p_t = 0.9
        + 0.75 * 0.4**2 * -math.log(0.6)  # bg, p_t = 0.6
    ) / 4
    # Laplacian with edge replication of [[a, b], [c, d]]:
    # [[b + c - 2a, a + d - 2b], [a + d - 2c, b + c - 2d]]
    lap_p = [0.2 + 0.1 - 1.6, 0.8 + 0.4 - 0.4, 0.8 + 0.4 - 0.2, 0.2 + 0.1 - 0.8]  # -1.3 .8 1 -.5
    lap_y = [-2.0, 1.0, 1.0, 0.0]
    boundary = sum(abs(a - b) for a, b in zip(lap_p, lap_y, strict=True)) / 4  # 0.35
    return 0.3 * focal + 0.6 * hand_dice_loss() + 0.1 * boundary


def test_hand_values_literal():
    # guard the hand formulas themselves with rounded literals
    assert hand_bce_dice() == pytest.approx(1.024831, abs=1e-5)
    assert hand_focal_dice_boundary() == pytest.approx(0.194612, abs=1e-5)


def test_bce_dice_hand_value():
    assert float(get_loss("bce_dice")(Y, P)) == pytest.approx(hand_bce_dice(), rel=1e-5)
    assert float(bce_dice(Y, P)) == pytest.approx(hand_bce_dice(), rel=1e-5)


def test_focal_dice_boundary_hand_value():
    got = float(get_loss("focal_dice_boundary")(Y, P))
    assert got == pytest.approx(hand_focal_dice_boundary(), rel=1e-5)
    assert float(focal_dice_boundary(Y, P)) == pytest.approx(hand_focal_dice_boundary(), rel=1e-5)


def test_laplacian_hand_value():
    lap = np.asarray(laplacian(P)).ravel()
    np.testing.assert_allclose(lap, [-1.3, 0.8, 1.0, -0.5], atol=1e-6)
    flat = np.full((1, 5, 7, 1), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(laplacian(flat)), 0.0, atol=1e-6)


def test_dice_edge_cases():
    empty = np.zeros((1, 3, 3, 1), np.float32)
    assert float(soft_dice_per_sample(empty, empty)[0]) == pytest.approx(1.0)
    assert float(soft_dice_per_sample(Y, Y)[0]) == pytest.approx(1.0)
    # perfect prediction: Dice and boundary terms vanish, only tiny clipped BCE/focal remain
    assert float(get_loss("bce_dice")(Y, Y)) == pytest.approx(0.0, abs=1e-5)
    assert float(get_loss("focal_dice_boundary")(Y, Y)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_per_sample_reduction(name):
    # sample 0 is the hand example, sample 1 its mirror with another prediction
    y = np.concatenate([Y, Y[:, ::-1]])
    p = np.concatenate([P, np.full_like(P, 0.5)])
    per = np.asarray(get_loss(name, reduction="none")(y, p))
    assert per.shape == (2,)
    single0 = float(get_loss(name)(y[:1], p[:1]))
    single1 = float(get_loss(name)(y[1:], p[1:]))
    np.testing.assert_allclose(per, [single0, single1], rtol=1e-6)
    assert float(get_loss(name)(y, p)) == pytest.approx(per.mean(), rel=1e-6)
    # masks without the channel axis are accepted
    np.testing.assert_allclose(
        np.asarray(get_loss(name, reduction=None)(y[..., 0], p)), per, rtol=1e-6
    )


def test_loss_ranks_better_prediction_lower():
    worse = np.array([0.3, 0.6, 0.5, 0.7], np.float32).reshape(1, 2, 2, 1)
    for name in LOSSES:
        assert float(get_loss(name)(Y, P)) < float(get_loss(name)(Y, worse))


def test_unknown_loss():
    with pytest.raises(InputError, match="unknown loss"):
        get_loss("mse")
