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


# --------------------------------------------------------------------------- per-plate choice


@pytest.mark.parametrize(
    "configured, stat, expected",
    [
        ("auto", -0.5, ("black", "ok")),
        ("auto", 0.4, ("white", "ok")),
        ("auto", 0.03, ("black", "uncertain")),
        ("black", 0.4, ("black", "disagrees")),
        ("white", -0.3, ("white", "disagrees")),
        ("black", -0.3, ("black", "ok")),
        ("white", 0.05, ("white", "ok")),  # within the margin: no evidence against it
    ],
)
def test_choose_polarity(configured, stat, expected):
    from brightseg.illumination import choose_polarity

    assert choose_polarity(configured, stat) == expected


def test_choose_polarity_uncertain_mode_and_bad_mode():
    from brightseg.errors import InputError
    from brightseg.illumination import choose_polarity

    assert choose_polarity("auto", -0.02, uncertain_mode="white") == ("white", "uncertain")
    with pytest.raises(InputError, match="white, black or auto"):
        choose_polarity("dark", 0.5)


def _plate_dir(root, invert: bool, n: int = 2):
    import tifffile

    root.mkdir()
    truths = []
    for i in range(n):
        scene = render_scene((128, 128), 8, np.random.default_rng(i), mean_radius_px=8.0)
        im = scene.image
        if invert:  # bright cells on a dark background
            im = (im.max() - im).astype(im.dtype)
        tifffile.imwrite(root / f"q_A0{i + 1}_f00_t00.tif", im)
        truths.append(scene.labels > 0)
    return truths


def _correct(images, store, mode, tmp_path):
    from brightseg.rules.preprocess import correct_illumination

    correct_illumination(
        str(images),
        str(store),
        str(tmp_path / f"{store.stem}.skipped.tsv"),
        plate=store.name.split(".")[0],
        regex=r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$",
        modality="brightfield",
        pixel_size_um=0.65,
        illumination={"radius": 20, "unit": "px", "mode": mode, "method": "fast"},
        chunk=256,
    )


def test_plates_of_both_polarities_give_cells_bright(tmp_path, caplog):
    """Dark-on-bright and bright-on-dark synthetic plates: `auto` picks black and white, so
    both corrected stores show the cells bright; a fixed `black` on the bright-cell plate is
    flagged `disagrees` with a warning; the QC table lists the three plates."""
    import logging

    from brightseg.platestore import open_plate
    from brightseg.rules.preprocess import polarity_report

    truths = _plate_dir(tmp_path / "dark", invert=False)
    _plate_dir(tmp_path / "bright", invert=True)
    stores = {
        "dark": tmp_path / "dark.ome.zarr",
        "bright": tmp_path / "bright.ome.zarr",
        "forced": tmp_path / "forced.ome.zarr",
    }
    _correct(tmp_path / "dark", stores["dark"], "auto", tmp_path)
    _correct(tmp_path / "bright", stores["bright"], "auto", tmp_path)
    with caplog.at_level(logging.WARNING):
        _correct(tmp_path / "bright", stores["forced"], "black", tmp_path)
    assert any("may be segmented inverted" in r.getMessage() for r in caplog.records)

    # The white top-hat of the inverted image is the black top-hat of the original, so
    # `auto` makes the two plates' corrected images the same; the forced one differs.
    read = {
        name: [st.read(i).astype(float) for i in st.images.sort_values("column")["image_id"]]
        for name, st in ((n, open_plate(p, mode="r")) for n, p in stores.items())
    }
    for k in range(2):
        inside = truths[k]
        assert read["dark"][k][inside].mean() > read["dark"][k][~inside].mean()
        r_auto = np.corrcoef(read["dark"][k].ravel(), read["bright"][k].ravel())[0, 1]
        r_forced = np.corrcoef(read["dark"][k].ravel(), read["forced"][k].ravel())[0, 1]
        assert r_auto > 0.99 and r_forced < 0.5, (r_auto, r_forced)

    df = polarity_report([str(p) for p in stores.values()], str(tmp_path / "polarity.tsv"))
    by = df.set_index("plate")
    assert by.loc["dark", "mode_used"] == "black" and by.loc["dark", "flag"] == "ok"
    assert by.loc["bright", "mode_used"] == "white" and by.loc["bright", "flag"] == "ok"
    assert by.loc["forced", "mode_configured"] == "black"
    assert by.loc["forced", "flag"] == "disagrees" and by.loc["forced", "statistic"] > 0.1
    assert by.loc["dark", "statistic"] < -0.1
    text = (tmp_path / "polarity.tsv").read_text()
    assert text.splitlines()[0].split("\t")[:5] == [
        "plate",
        "mode_configured",
        "mode_used",
        "statistic",
        "flag",
    ]


def test_default_mode_is_auto():
    from brightseg.config import IlluminationConfig

    cfg = IlluminationConfig.from_dict({"radius": 40})
    assert cfg.mode == "auto" and cfg.uncertain_mode == "black"


def test_segment_decides_once_for_all_its_images(tmp_path):
    """`brightseg segment` takes one mode for its whole input, as the workflow does per plate
    (a per-image decision could differ between the two paths for the same files)."""
    import tifffile

    from brightseg.config import IlluminationConfig
    from brightseg.segment import _decide_mode

    _plate_dir(tmp_path / "bright", invert=True)
    files = sorted((tmp_path / "bright").glob("*.tif"))
    ill = IlluminationConfig.from_dict({"radius": 20})
    assert _decide_mode(files, ill, 20) == "white"
    assert _decide_mode(files, ill.replace(mode="black"), 20) == "black"  # a fixed mode stays
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((64, 64), 1000, np.uint16))
    assert _decide_mode([flat], ill.replace(uncertain_mode="white"), 20) == "white"
