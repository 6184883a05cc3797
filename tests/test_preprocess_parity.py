"""Preprocessing parity (issue 12): training patches = windows of the corrected full image."""

from pathlib import Path

import numpy as np
import pytest

from brightseg.illumination import correct_illumination
from brightseg.patches import patches_from_raw

USIIGACI = Path("/work/shared/data/external/usiigaci")
TOL = 0.0  # cut after correcting the full image: bit-identical by construction


def _raw(shape=(300, 340), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ramp = 20000 + 30 * xx + 10 * yy  # uneven illumination
    img = ramp + rng.normal(0, 300, shape)
    mask = np.zeros(shape, np.uint8)
    for cy, cx in [(60, 80), (150, 200), (240, 100), (100, 300)]:
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 25**2
        img[disk] -= 6000
        mask[disk] = 1
    return np.clip(img, 0, 65535).astype(np.uint16), mask


def test_patch_equals_window_of_corrected_full_image():
    raw, mask = _raw()
    corrected, patches = patches_from_raw(raw, mask, radius_px=40, size=128, stride=96)
    ref = correct_illumination(raw, 40, mode="black", method="fast")
    np.testing.assert_array_equal(corrected, ref)
    assert len(patches) >= 9
    for r, c, img, m in patches:
        assert np.max(np.abs(img - ref[r : r + 128, c : c + 128])) <= TOL
        np.testing.assert_array_equal(m, mask[r : r + 128, c : c + 128])


def test_correcting_a_cut_patch_alone_is_not_equivalent():
    # the mismatch issue 12 found: per-patch percentiles stretch a cell-free patch's noise
    raw, _ = _raw()
    window = (slice(185, 300), slice(140, 300))  # no cell here
    ref = correct_illumination(raw, 40, mode="black", method="fast")
    alone = correct_illumination(raw[window], 40, mode="black", method="fast")
    assert np.mean(np.abs(alone - ref[window])) > 0.05


@pytest.mark.skipif(not USIIGACI.is_dir(), reason="Usiigaci data absent")
def test_usiigaci_patch_parity():
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image

    f = sorted((USIIGACI / "images").glob("*.tif"))[0]
    raw = tifffile.imread(f)
    mask = (np.asarray(Image.open(USIIGACI / "masks" / (f.stem + ".png"))) > 0).astype(np.uint8)
    corrected, patches = patches_from_raw(raw, mask, radius_px=50, size=256)
    for r, c, img, _ in patches:
        assert np.max(np.abs(img - corrected[r : r + 256, c : c + 256])) <= TOL
