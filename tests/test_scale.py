"""Working pixel size (brightseg.scale)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from brightseg.errors import InputError
from brightseg.scale import (
    resample_image,
    resample_labels,
    resample_mask,
    scale_factor,
    working_shape,
)


def test_scale_factor_and_shape():
    assert scale_factor(0.87, None) == 1.0
    assert scale_factor(0.87, 1.74) == pytest.approx(0.5)
    assert working_shape((1022, 1024), 0.5) == (511, 512)
    assert working_shape((3, 3), 0.1) == (1, 1)
    with pytest.raises(InputError, match="positive"):
        scale_factor(0.0, 1.0)


def test_resample_image_preserves_mean_and_round_trips_smooth_images():
    yy, xx = np.mgrid[0:200, 0:240].astype(np.float32)
    img = 0.5 + 0.4 * np.sin(xx / 15.0) * np.cos(yy / 20.0)
    small = resample_image(img, (100, 120))
    assert small.shape == (100, 120) and small.dtype == np.float32
    assert small.mean() == pytest.approx(img.mean(), abs=1e-3)  # area averaging
    back = resample_image(small, img.shape)
    assert np.abs(back - img)[5:-5, 5:-5].max() < 0.02
    assert resample_image(img, img.shape) is img
    edge = np.ones((101, 103), np.float32)
    edge[:, :50] = 0.0
    for shape in ((37, 41), (250, 260)):
        out = resample_image(edge, shape)
        assert out.min() >= 0.0 and out.max() <= 1.0  # no float overshoot past the input
    rgb = resample_image(np.dstack([img] * 3), (100, 120))
    assert rgb.shape == (100, 120, 3)


def test_resample_mask_and_labels_keep_cells():
    labels = np.zeros((120, 120), np.int32)
    for k, (r, c) in enumerate([(30, 30), (30, 80), (85, 60)], start=1):
        rr, cc = np.ogrid[:120, :120]
        labels[(rr - r) ** 2 + (cc - c) ** 2 < 15**2] = k
    mask = (labels > 0).astype(np.uint8)
    small = resample_mask(mask, (60, 60))
    assert small.dtype == np.uint8 and set(np.unique(small)) <= {0, 1}
    assert small.sum() * 4 == pytest.approx(mask.sum(), rel=0.05)
    lab = resample_labels(labels, (60, 60))
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    for k in (1, 2, 3):
        assert (lab == k).sum() * 4 == pytest.approx((labels == k).sum(), rel=0.08)
        assert ndi.label(lab == k)[1] == 1
    assert resample_labels(labels, labels.shape) is labels
