"""Automatic top-hat polarity (:func:`brightseg.illumination.decide_polarity`)."""

from __future__ import annotations

import glob

import numpy as np
import pytest

from brightseg.illumination import decide_polarity
from brightseg.synth import render_scene

USIIGACI = "/work/shared/data/external/usiigaci/images"


@pytest.mark.parametrize("modality", ["brightfield", "phase"])
def test_synthetic_dark_cells_black_and_inverted_white(modality):
    ims = [
        render_scene((256, 256), 15, np.random.default_rng(i), modality=modality).image
        for i in range(2)
    ]
    mode, stat, uncertain = decide_polarity(ims, 40)
    assert mode == "black" and stat < 0 and not uncertain
    inv = [im.max() - im for im in ims]
    mode2, stat2, _ = decide_polarity(inv, 40)
    assert mode2 == "white" and stat2 > 0


def test_flat_noise_uncertain():
    rng = np.random.default_rng(0)
    _, stat, uncertain = decide_polarity([rng.normal(1000, 10, (256, 256)) for _ in range(3)], 40)
    assert uncertain and abs(stat) < 0.1


def test_usiigaci_consistent():
    paths = sorted(glob.glob(USIIGACI + "/*.tif"))[:2]
    if not paths:
        pytest.skip("usiigaci images absent")
    from brightseg.io import read_image

    decisions = {decide_polarity([read_image(p)], 50)[0] for p in paths}
    assert len(decisions) == 1


def test_rule_auto_writes_decided_mode(tmp_path):
    import tifffile
    import zarr

    from brightseg.rules.preprocess import correct_illumination

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        im = render_scene((128, 128), 8, np.random.default_rng(i), mean_radius_px=8.0).image
        tifffile.imwrite(d / f"q_A0{i + 1}_f00_t00.tif", im)
    correct_illumination(
        str(d),
        str(tmp_path / "q.ome.zarr"),
        str(tmp_path / "skipped.tsv"),
        plate="q",
        regex=r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$",
        modality="brightfield",
        pixel_size_um=0.65,
        illumination={"radius": 20, "unit": "px", "mode": "auto", "method": "fast"},
        chunk=256,
    )
    meta = dict(zarr.open_group(str(tmp_path / "q.ome.zarr"), mode="r").attrs)
    ill = meta["brightseg"]["metadata"]["illumination"]
    assert ill["mode"] == "auto" and ill["mode_decided"] == "black"
    assert ill["polarity_statistic"] < 0 and isinstance(ill["polarity_uncertain"], bool)


def test_sheet_column_accepts_auto():
    from brightseg.config import IlluminationConfig, plate_illumination

    base = IlluminationConfig.coerce(
        {"radius": 10, "unit": "px", "mode": "black", "method": "fast", "percentiles": [1, 99.8]}
    )
    assert plate_illumination(base, {"plate": "p", "illumination_mode": "auto"}).mode == "auto"


def test_correct_illumination_auto_decides_one_image():
    """Paths without a plate-level decision (evaluation and patch sets, segment) use auto too."""
    from brightseg.illumination import correct_illumination

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    dark = (
        0.8
        - 0.5 * (((yy - 64) ** 2 + (xx - 64) ** 2) < 15**2)
        + 0.01 * rng.standard_normal((128, 128))
    )
    auto = correct_illumination(dark, 30, mode="auto")
    np.testing.assert_array_equal(auto, correct_illumination(dark, 30, mode="black"))
    bright = 1.0 - dark
    np.testing.assert_array_equal(
        correct_illumination(bright, 30, mode="auto"),
        correct_illumination(bright, 30, mode="white"),
    )
