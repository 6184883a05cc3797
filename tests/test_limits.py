"""The explicit input limits (issue 14): defaults, config, enforcement of the count limit."""

from __future__ import annotations

import dataclasses

import badinputs as bi
import pytest

from brightseg.annotations.cvat import load_annotations
from brightseg.errors import InputError
from brightseg.limits import DEFAULT_LIMITS, Limits, check_pixels


def test_defaults_are_documented_values():
    assert DEFAULT_LIMITS == Limits()
    assert dataclasses.asdict(DEFAULT_LIMITS) == {
        "max_image_pixels": 16384 * 16384,
        "max_image_pages": 10_000,
        "max_export_bytes": 1 << 30,
        "max_annotations": 2_000_000,
        "max_json_depth": 64,
        "max_int_digits": 30,
        "max_illumination_radius_px": 4096,
        "max_pixel_size_um": 1000.0,
        "min_pixel_size_um": 0.001,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_image_pixels = 1  # type: ignore[misc]


def test_from_config():
    assert Limits.from_config(None) is DEFAULT_LIMITS
    lim = Limits.from_config({"max_image_pixels": "1e9", "max_pixel_size_um": 5})
    assert lim.max_image_pixels == 10**9 and isinstance(lim.max_image_pixels, int)
    assert lim.max_pixel_size_um == 5.0
    assert lim.max_json_depth == DEFAULT_LIMITS.max_json_depth
    with pytest.raises(InputError, match=r"unknown key\(s\) \['max_pixels'\]"):
        Limits.from_config({"max_pixels": 5})
    with pytest.raises(InputError, match="must be a positive number"):
        Limits.from_config({"max_json_depth": 0})
    with pytest.raises(InputError, match="must be a whole number"):
        Limits.from_config({"max_json_depth": "deep"})
    with pytest.raises(InputError, match="must be a whole number"):
        Limits.from_config({"max_json_depth": 2.5})
    with pytest.raises(InputError, match="below limits.max_pixel_size_um"):
        Limits(min_pixel_size_um=5.0, max_pixel_size_um=1.0)


def test_check_pixels():
    check_pixels(16384, 16384, "image", "x.tif")
    with pytest.raises(InputError, match=r"^x.tif: image is 16385x16384 px"):
        check_pixels(16384, 16385, "image", "x.tif")


@pytest.mark.parametrize("export", ["cvat.xml", "coco.json"])
def test_annotation_count_limit(tmp_path, export):
    plate = bi.clean_plate(tmp_path / "plate", "P", n_images=3, seed=1)
    assert load_annotations(plate / export)
    with pytest.raises(InputError, match=r"over the limit of 2 \(limits\.max_annotations\)"):
        load_annotations(plate / export, limits=Limits(max_annotations=2))
