"""Tests for brightseg.illumination (top-hat background removal, normalisation)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from brightseg.bench.tophat import synthetic_brightfield
from brightseg.errors import InputError
from brightseg.illumination import (
    background,
    correct_file,
    correct_illumination,
    default_factor,
    euclidean_disk,
    normalize_percentile,
    radius_to_px,
    to_uint16,
    tophat,
)

AMP = 400.0


def _sloped_with_blobs(shape=(160, 200)) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Integer plane 1000 + 3x + 2y with a bright and a dark flat disk (radius 5)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = 1000.0 + 3.0 * xx + 2.0 * yy
    bright, dark = (60, 60), (100, 140)
    img[(yy - bright[0]) ** 2 + (xx - bright[1]) ** 2 <= 25] += AMP
    img[(yy - dark[0]) ** 2 + (xx - dark[1]) ** 2 <= 25] -= AMP
    return img.astype(np.uint16), bright, dark


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_white_and_black_tophat_pick_the_right_blob(method):
    img, bright, dark = _sloped_with_blobs()
    factor = 3 if method == "fast" else None
    white = tophat(img, 15, mode="white", method=method, factor=factor)
    black = tophat(img, 15, mode="black", method=method, factor=factor)
    assert white.dtype == np.float32 and black.dtype == np.float32
    assert white.shape == img.shape
    # the opening of a plane is the plane, so the white top-hat of the bright disk
    # is about its height (the disk can rest on the blob's downhill rim, which lifts
    # the opening by a few counts; the fast method adds ~slope x factor)
    tol = 0.02 * AMP if method == "exact" else 0.05 * AMP
    assert abs(white[bright] - AMP) <= tol
    assert abs(black[dark] - AMP) <= tol
    assert white[dark] <= tol and black[bright] <= tol
    # away from the blobs and the border the background is removed
    far = (slice(20, 40), slice(150, 180))
    assert white[far].max() <= tol and black[far].max() <= tol


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_no_uint16_wraparound_where_background_is_brighter(method):
    # a dark object on a bright background in white mode: background > image there
    img = np.full((120, 150), 60000, np.uint16)
    yy, xx = np.mgrid[0:120, 0:150]
    spot = (yy - 60) ** 2 + (xx - 75) ** 2 <= 36
    img[spot] = 100
    out = tophat(img, 20, mode="white", method=method, factor=4 if method == "fast" else None)
    assert out.min() >= 0
    assert out[60, 75] == 0  # not 65535 - 59900
    assert out[spot].max() == 0  # the whole dark disk
    if method == "exact":
        assert out.max() == 0
    else:
        # the fast background dips around a sharp dark object (documented ring),
        # but values never exceed the image's own range
        assert out.max() <= 60000 - 100
    # the same in black mode finds the object with its full depth (exact)
    black = tophat(img, 20, mode="black", method="exact")
    assert black[60, 75] == 60000 - 100


@pytest.mark.parametrize("mode", ["white", "black"])
def test_fast_close_to_exact_on_brightfield_like_image(mode):
    img = synthetic_brightfield(
        (384, 512),
        seed=0,
        n_cells=40,
        noise=0.001,
        cell_radius=(2, 5),
        polarity="bright" if mode == "white" else "dark",
    )
    span = float(img.max()) - float(img.min())
    exact = tophat(img, 25, mode=mode, method="exact")
    fast = tophat(img, 25, mode=mode, method="fast", factor=2)
    err = np.abs(fast - exact) / span
    assert err.max() < 0.01
    assert err.mean() < 0.001
    # the approximation really is a different computation
    assert not np.array_equal(fast, exact)
    # and it removed the illumination: the top-hat's background is near zero
    assert np.median(fast) < 0.02 * span


def test_fast_with_factor_one_is_exact():
    img = synthetic_brightfield((100, 120), seed=1, n_cells=5, noise=0.002)
    np.testing.assert_array_equal(
        tophat(img, 10, method="fast", factor=1), tophat(img, 10, method="exact")
    )
    assert default_factor(100) == 4 and default_factor(10) == 1 and default_factor(1000) == 8


@pytest.mark.parametrize(
    "dtype,mode",
    [(np.uint16, "white"), (np.uint16, "black"), (np.float32, "white"), (np.uint8, "black")],
)
def test_exact_equals_opencv_reference(dtype, mode):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 250, size=(90, 110)).astype(dtype)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * 12 + 1, 2 * 12 + 1))
    op = cv2.MORPH_TOPHAT if mode == "white" else cv2.MORPH_BLACKHAT
    ref = cv2.morphologyEx(img, op, kernel).astype(np.float32)
    np.testing.assert_array_equal(tophat(img, 12, mode=mode, method="exact"), ref)


def test_exact_background_matches_scipy_in_the_interior():
    # independent implementation of the same opening (scipy pads differently,
    # so compare away from the border)
    from scipy import ndimage

    rng = np.random.default_rng(4)
    img = rng.normal(100, 10, size=(80, 80)).astype(np.float32)
    fp = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13)).astype(bool)
    ref = ndimage.grey_opening(img, footprint=fp)
    got = background(img, 6, method="exact")
    np.testing.assert_allclose(got[12:-12, 12:-12], ref[12:-12, 12:-12])


def test_euclidean_disk():
    d = euclidean_disk(2.5)
    assert d.shape == (5, 5)
    assert d.sum() == 21  # 5x5 minus the four corners (2^2 + 2^2 = 8 > 6.25)
    assert euclidean_disk(1).sum() == 5


def test_tophat_rejects_bad_input():
    with pytest.raises(InputError):
        tophat(np.zeros((3, 4, 5)), 3)
    with pytest.raises(InputError):
        tophat(np.array([[1.0, np.nan], [0.0, 1.0]]), 1)
    with pytest.raises(InputError):
        tophat(np.zeros((10, 10)), 0)
    with pytest.raises(InputError):
        tophat(np.zeros((10, 10)), 3, mode="grey")
    with pytest.raises(InputError):
        tophat(np.zeros((10, 10)), 3, method="slow")


def test_normalize_percentile_maps_percentiles_to_unit_range():
    x = np.arange(101, dtype=np.float64)
    np.testing.assert_allclose(normalize_percentile(x, 0, 100), x / 100, atol=1e-7)
    out = normalize_percentile(x, 10, 90)
    assert out.dtype == np.float32
    assert out[10] == 0 and out[90] == 1
    assert out[:10].max() == 0 and out[90:].min() == 1  # clipped
    np.testing.assert_allclose(out[50], 0.5, atol=1e-6)


def test_normalize_percentile_edge_cases():
    const = np.full((5, 6), 7, np.uint16)
    out = normalize_percentile(const)
    assert out.dtype == np.float32 and out.shape == (5, 6) and not out.any()
    # percentiles equal although the image is not constant: zeros, no division
    mostly = np.zeros(1000)
    mostly[0] = 5
    assert not normalize_percentile(mostly, 1, 99).any()
    with pytest.raises(InputError):
        normalize_percentile(np.arange(10), 50, 50)
    with pytest.raises(InputError):
        normalize_percentile(np.arange(10), -1, 50)
    with pytest.raises(InputError):
        normalize_percentile(np.array([0.0, np.inf]))


def test_correct_illumination_range_and_flattening():
    img = synthetic_brightfield((200, 240), seed=2, n_cells=15, noise=0.002, cell_radius=(2, 4))
    out = correct_illumination(img, 25)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    # the raw gradient (left vs right thirds) is gone after correction
    raw_l, raw_r = np.median(img[:, :80]), np.median(img[:, -80:])
    cor_l, cor_r = np.median(out[:, :80]), np.median(out[:, -80:])
    assert abs(raw_r - raw_l) / (img.max() - img.min()) > 0.1
    assert abs(cor_r - cor_l) < 0.03


def test_radius_to_px():
    assert radius_to_px(100.4, "px", None) == 100
    assert radius_to_px(65, "um", 0.65) == 100
    assert radius_to_px(10, "um", 0.4) == 25
    for args in [
        (10, "mm", 1.0),
        (10, "um", None),
        (10, "um", 0),
        (-3, "px", None),
        (0.2, "px", 1),
    ]:
        with pytest.raises(InputError):
            radius_to_px(*args)


def test_to_uint16():
    np.testing.assert_array_equal(
        to_uint16(np.array([0.0, 0.5, 1.0, 1.2, -0.1])), [0, 32768, 65535, 65535, 0]
    )


def test_correct_file_round_trip(tmp_path):
    img = synthetic_brightfield((120, 160), seed=5, n_cells=10, noise=0.002, cell_radius=(2, 4))
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, img)
    dst = tmp_path / "out" / "a_corrected.tif"
    correct_file(src, dst, 20, "white", "exact")
    got = tifffile.imread(dst)
    assert got.dtype == np.uint16
    expected = np.round(correct_illumination(img, 20, method="exact").astype(np.float64) * 65535)
    np.testing.assert_array_equal(got, expected.astype(np.uint16))
    assert not list((tmp_path / "out").glob(".*tmp*"))
    with pytest.raises(InputError, match="missing.tif"):
        correct_file(tmp_path / "missing.tif", dst, 20, "white", "fast")
