"""Acquisition artefacts for robustness tests (brightseg.artefacts)."""

import numpy as np
import pytest

from brightseg.artefacts import add_artefacts


def _raw(dtype=np.uint16):
    rng = np.random.default_rng(0)
    return (20000 + 3000 * rng.standard_normal((200, 300))).clip(0, 65535).astype(dtype)


def test_frame_bar_and_jpeg_on_a_raw_image():
    raw = _raw()
    out, hidden = add_artefacts(raw)
    assert out.shape == raw.shape and out.dtype == raw.dtype
    f = 8  # 4 % of the shorter side (200 px)
    assert hidden[:f].all() and hidden[:, -f:].all() and not hidden[f:-f, f:-f].any()
    assert out[hidden].mean() < np.percentile(raw, 1)  # near black
    # the scale bar: a bright run in the bottom-right corner, inside the frame
    corner = out[150:-f, 150:-f].astype(float)
    assert (corner > np.percentile(raw, 99.9)).sum() >= 40
    # each artefact alone: without them the image is returned unchanged (up to dtype)
    same, none = add_artefacts(raw, frame_fraction=0, bar_fraction=0, jpeg_quality=None)
    assert (same == raw).all() and not none.any()
    # JPEG alone changes pixels but keeps the range
    jpg, _ = add_artefacts(raw, frame_fraction=0, bar_fraction=0, jpeg_quality=30)
    assert (jpg != raw).mean() > 0.5 and jpg.min() >= raw.min() and jpg.max() <= raw.max()


def test_float_images_and_bad_shapes():
    raw = _raw().astype(np.float32) / 65535
    out, hidden = add_artefacts(raw, jpeg_quality=None)
    assert out.dtype == np.float32 and hidden.any()
    assert np.isclose(out[~hidden].max(), raw.max())  # the bar and its label take the max
    with pytest.raises(ValueError, match="2-D"):
        add_artefacts(np.zeros((4, 4, 3)))
