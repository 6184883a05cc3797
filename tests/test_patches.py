from __future__ import annotations

import numpy as np
import pytest

from brightseg.errors import InputError
from brightseg.patches import make_patches, stack_patches, tile_positions, to_rgb_uint8


def test_tile_positions_hand_computed():
    # 600 rows: 0, 256, then flush 344; 256 cols: one tile
    assert tile_positions(600, 256, 256) == [(0, 0), (256, 0), (344, 0)]
    assert tile_positions(512, 512, 256) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    # 300 rows, size 256, stride 100: start 0, next start 100 > 44, so the flush tile at 44
    assert tile_positions(300, 100, 256, stride=100) == [(0, 0), (44, 0)]
    assert tile_positions(10, 20, 256) == [(0, 0)]


@pytest.mark.parametrize(
    "h,w,size,stride", [(600, 257, 256, None), (97, 64, 32, 20), (64, 64, 64, 7)]
)
def test_tiles_cover_image_and_stay_inside(h, w, size, stride):
    covered = np.zeros((h, w), bool)
    for r, c in tile_positions(h, w, size, stride):
        assert 0 <= r <= h - size and 0 <= c <= w - size
        covered[r : r + size, c : c + size] = True
    assert covered.all()
    starts = sorted({r for r, _ in tile_positions(h, w, size, stride)})
    assert starts[-1] == h - size  # last tile flush with the edge


def test_tile_positions_rejects_bad_size():
    with pytest.raises(InputError):
        tile_positions(100, 100, 0)


def test_make_patches_values_and_positions():
    rng = np.random.default_rng(1)
    img = rng.random((100, 70)).astype(np.float32)
    mask = (rng.random((100, 70)) > 0.5).astype(np.uint8)
    patches = make_patches(img, mask, size=64)
    assert [(r, c) for r, c, _, _ in patches] == [(0, 0), (0, 6), (36, 0), (36, 6)]
    for r, c, ip, mp in patches:
        assert ip.dtype == np.float32 and mp.dtype == np.uint8
        np.testing.assert_array_equal(ip, img[r : r + 64, c : c + 64])
        np.testing.assert_array_equal(mp, mask[r : r + 64, c : c + 64])


def test_small_image_is_reflect_padded():
    img = np.linspace(0, 1, 5 * 3, dtype=np.float32).reshape(5, 3)
    mask = np.zeros((5, 3), np.uint8)
    mask[0, 0] = 1
    ((r, c, ip, mp),) = make_patches(img, mask, size=8)
    assert (r, c) == (0, 0) and ip.shape == (8, 8) and mp.shape == (8, 8)
    np.testing.assert_array_equal(ip[:5, :3], img)
    # reflection (edge not repeated): column 3 mirrors column 1, row 5 mirrors row 3
    np.testing.assert_array_equal(ip[:5, 3], img[:, 1])
    np.testing.assert_array_equal(ip[5, :3], img[3, :])
    # mask reflected the same way: original (0, 0) appears at columns 0 and 4 of row 0 only
    assert mp[0, 4] == 1 and mp.sum() == 2


def test_min_foreground_drops_empty_patches():
    img = np.zeros((64, 128), np.float32)
    mask = np.zeros((64, 128), np.uint8)
    mask[10:30, 70:100] = 1  # only in the right half: 600 / 4096 = 0.146
    kept = make_patches(img, mask, size=64, min_foreground=0.1)
    assert [(r, c) for r, c, _, _ in kept] == [(0, 64)]
    assert len(make_patches(img, mask, size=64, min_foreground=0.0)) == 2
    assert make_patches(img, mask, size=64, min_foreground=0.2) == []


def test_mask_0_255_accepted_and_bad_inputs_rejected():
    img = np.zeros((8, 8), np.float32)
    m255 = np.zeros((8, 8), np.uint8)
    m255[2, 2] = 255
    ((_, _, _, mp),) = make_patches(img, m255, size=8)
    assert mp[2, 2] == 1 and mp.max() == 1
    with pytest.raises(InputError, match="mask shape"):
        make_patches(img, np.zeros((8, 9), np.uint8), size=8)
    with pytest.raises(InputError, match="binary"):
        make_patches(img, np.full((8, 8), 3, np.uint8), size=8)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        make_patches(img + 2, m255, size=8)
    with pytest.raises(InputError, match="NaN"):
        make_patches(np.full((8, 8), np.nan, np.float32), m255, size=8, name="x.tif")
    with pytest.raises(InputError, match="2-D"):
        make_patches(np.zeros((8, 8, 2), np.float32), m255, size=8)


def test_rgb_uint8_conversion_and_stack():
    img = np.array([[0.0, 1.0], [0.5, 0.2]], np.float32)
    rgb = to_rgb_uint8(img)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    # round(x * 255): 0.5 -> 127.5 -> 128 (round half to even gives 128), 0.2 -> 51
    np.testing.assert_array_equal(rgb[..., 0], [[0, 255], [128, 51]])
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    patches = make_patches(np.tile(img, (8, 8)), np.ones((16, 16), np.uint8), size=8)
    images, masks = stack_patches(patches)
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
    assert masks.shape == (4, 8, 8) and masks.dtype == np.uint8 and set(np.unique(masks)) == {1}
