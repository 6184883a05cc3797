"""Interior-seeded and LoG-nucleus-seeded watershed splitting (instances.method, issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

from brightseg.errors import InputError
from brightseg.instances import log_seeds, split_interior, split_log_seeds, split_with_config
from brightseg.metrics import match_instances
from brightseg.targets import border3_classes


def _disks(centres, radius, shape=(64, 96)):
    """Touching disks split by nearest centre (equal radii: the Voronoi ground truth)."""
    yy, xx = np.indices(shape)
    d = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    lab = (np.argmin(d, 0) + 1).astype(np.uint16)
    lab[d.min(0) > radius] = 0
    return lab


def test_interior_split_separates_disks_the_distance_watershed_merges():
    truth = _disks([(32, 40), (32, 48)], 12)  # centres 8 px apart: one EDT maximum
    mask = truth > 0
    dist = split_with_config(mask, 1.0, {"min_area_um2": 5})
    assert dist.max() == 1  # the distance watershed merges them
    interior = (border3_classes(truth) == 1).astype(np.float32)
    lab = split_with_config(
        mask, 1.0, {"method": "interior", "min_area_um2": 5}, seed_prob=interior
    )
    assert lab.max() == 2
    assert match_instances(lab, truth)["f1@0.5"] == 1.0
    direct = split_interior(mask, interior * 0.9, threshold=0.5, min_area_um2=5)
    assert (direct == lab).all()


def test_interior_split_keeps_unseeded_components_and_checks_input():
    truth = _disks([(20, 20), (20, 70)], 8)
    interior = np.zeros(truth.shape, np.float32)
    interior[truth == 1] = 0.9  # only the first cell has an interior above threshold
    lab = split_interior(truth > 0, interior, min_area_um2=5)
    assert lab.max() == 2
    with pytest.raises(InputError, match="3-class"):
        split_with_config(truth > 0, 1.0, {"method": "interior"})
    with pytest.raises(InputError, match="shape"):
        split_interior(truth > 0, interior[:10])
    with pytest.raises(InputError):
        split_interior(truth > 0, interior, threshold=1.5)


def _nucleus_prob(centres, radius, shape=(80, 120)):
    yy, xx = np.indices(shape)
    p = np.zeros(shape, np.float32)
    for cy, cx in centres:
        p[np.hypot(yy - cy, xx - cx) <= radius] = 1.0
    return p


def test_log_seeds_find_every_nucleus():
    centres = [(20, 20), (20, 33), (55, 60), (40, 95), (62, 20)]  # first two 13 px apart
    prob = _nucleus_prob(centres, 5)
    rng = np.random.default_rng(0)
    noisy = np.clip(prob * 0.85 + rng.normal(0, 0.05, prob.shape), 0, 1)
    sigma = 10.0 / (2 * np.sqrt(2))  # nucleus diameter 10 px
    pts = log_seeds(noisy, sigma)
    assert len(pts) == len(centres)
    for cy, cx in centres:
        assert np.min(np.hypot(pts[:, 0] - cy, pts[:, 1] - cx)) <= 2
    assert len(log_seeds(np.zeros_like(prob), sigma)) == 0


def test_log_seeded_split_gives_one_cell_per_nucleus():
    centres = [(30, 30), (30, 48), (30, 66)]  # a row of three touching cells
    truth = _disks(centres, 11, shape=(60, 100))
    nuc = _nucleus_prob(centres, 4, shape=(60, 100))
    cfg = {"method": "log_seeds", "nucleus_diameter_um": 4.0, "min_area_um2": 5}
    # 0.5 um/px: the 8 px nuclei are 4 um across
    lab = split_with_config(truth > 0, 0.5, cfg, seed_prob=nuc)
    assert lab.max() == 3
    assert match_instances(lab, truth)["f1@0.5"] == 1.0
    direct = split_log_seeds(
        truth > 0, nuc, nucleus_diameter_um=4.0, pixel_size_um=0.5, min_area_um2=5
    )
    assert (direct == lab).all()
    with pytest.raises(InputError, match="nucleus_diameter_um"):
        split_log_seeds(truth > 0, nuc, nucleus_diameter_um=0.0)


def test_split_instances_rule_reads_the_seed_label(tmp_path):
    import pandas as pd

    from brightseg.platestore import create_label_store, open_labels, open_plate, write_plate
    from brightseg.rules.inference import split_instances as split_rule

    truth = _disks([(32, 40), (32, 48)], 12)
    df = pd.DataFrame(
        {"image_id": ["a"], "row": ["A"], "column": [1], "field": [0], "timepoint": [0]}
    )
    store = tmp_path / "P.ome.zarr"
    write_plate(
        store,
        "P",
        df,
        load=lambda row: (truth > 0).astype(np.float32) * 0.5,
        pixel_size_um=1.0,
        modality="fluorescence",
    )
    preds = tmp_path / "pred.zarr"
    labels = create_label_store(preds, open_plate(store))
    labels.write_label("a", "prob", ((truth > 0) * 255).astype(np.uint8))
    labels.write_label("a", "mask", (truth > 0).astype(np.uint8))
    common = dict(pixel_size_um=1.0)
    with pytest.raises(InputError, match="seed"):
        split_rule(
            str(store),
            str(preds),
            str(tmp_path / "c0.zarr"),
            str(tmp_path / "c0.tsv"),
            instances={"method": "interior", "min_area_um2": 5},
            **common,
        )
    labels.write_label("a", "seed", ((border3_classes(truth) == 1) * 230).astype(np.uint8))
    split_rule(
        str(store),
        str(preds),
        str(tmp_path / "c1.zarr"),
        str(tmp_path / "c1.tsv"),
        instances={"method": "interior", "min_area_um2": 5},
        **common,
    )
    cells = open_labels(tmp_path / "c1.zarr", store).read_label("a", "cells")
    assert cells.max() == 2 and match_instances(cells, truth)["f1@0.5"] == 1.0
    split_rule(
        str(store),
        str(preds),
        str(tmp_path / "c2.zarr"),
        str(tmp_path / "c2.tsv"),
        instances={"min_area_um2": 5},
        **common,
    )
    assert open_labels(tmp_path / "c2.zarr", store).read_label("a", "cells").max() == 1
