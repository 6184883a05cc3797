"""training.working_pixel_size_um through the rule layer: a plate is corrected and imported,
the training store resampled, a tiny model trained and selected, and the plate predicted
on its own grid (brightseg.scale)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import zarr

from brightseg.augment import training_store_working_pixel_size
from brightseg.ensemble import Ensemble
from brightseg.platestore import create_label_store, open_plate
from brightseg.rules.preprocess import correct_illumination, import_annotations
from brightseg.rules.training import augment, choose_instances, select_checkpoints, split, train
from brightseg.synth import synth_plate
from brightseg.tuning import tuned_instances

REGEX = r"_(?P<row>[A-P])(?P<column>\d{2})_f(?P<field>\d+)_t(?P<timepoint>\d+)$"
SHAPE = (128, 128)


def test_working_pixel_size_trains_on_the_coarse_grid_and_predicts_the_native_one(tmp_path):
    raw = tmp_path / "raw"
    synth_plate(raw, "p1", n_images=4, shape=SHAPE, seed=5, cells_per_image=(5, 8),
                mean_radius_px=12)  # fmt: skip
    store = tmp_path / "p1.ome.zarr"
    correct_illumination(
        str(raw / "images"), str(store), str(tmp_path / "skipped.tsv"), plate="p1",
        regex=REGEX, modality="brightfield", pixel_size_um=0.65,
        illumination={"radius": 20, "unit": "px", "mode": "black"}, chunk=256,
    )  # fmt: skip
    ann = tmp_path / "ann"
    import_annotations(
        str(raw / "cvat.xml"), str(raw / "images"), str(ann / "manifest.parquet"),
        str(ann / "skipped.tsv"), plate="p1", annotations={"labels": ["cell"]},
        on_bad_input="error",
    )  # fmt: skip
    training = {"patch_size": 32, "n_variants": 2}
    stores = {}
    for name, extra in (("native", {}), ("coarse", {"working_pixel_size_um": 1.3})):
        zarr_path = tmp_path / name / "patches.zarr"
        unsplit = tmp_path / name / "unsplit.parquet"
        augment([str(store)], [str(ann / "manifest.parquet")], str(zarr_path), str(unsplit),
                training={**training, **extra}, patch_sets=[], seed=1)  # fmt: skip
        stores[name] = (zarr_path, unsplit)
    native = pd.read_parquet(stores["native"][1])
    coarse = pd.read_parquet(stores["coarse"][1])
    # 128 px at 0.65 um -> 64 px at 1.3 um: 2 x 2 patches of 32 px per image, not 4 x 4
    assert (native.groupby("source_image").size() == 16 * 2).all()
    assert (coarse.groupby("source_image").size() == 4 * 2).all()
    assert training_store_working_pixel_size(stores["coarse"][0]) == 1.3
    assert training_store_working_pixel_size(stores["native"][0]) is None
    assert "working_pixel_size_um" not in zarr.open_group(str(stores["native"][0])).attrs

    zarr_path, unsplit = stores["coarse"]
    manifest = tmp_path / "coarse" / "manifest.parquet"
    split(str(unsplit), str(manifest), str(tmp_path / "split.tsv"), val_fraction=0.25, seed=1)
    run = tmp_path / "models" / "small_unet" / "bce_dice"
    train(
        str(zarr_path), str(manifest), str(run / "history.csv"), str(run / "card.json"),
        str(run / "checkpoints"),
        spec={"architecture": "small_unet", "loss": "bce_dice",
              "model_kwargs": {"base_filters": 4}},
        training={"epochs": 1, "batch_size": 2, "steps_per_epoch": 2, "val_steps": 1,
                  "patch_size": 32, "deterministic": False, "encoder_weights": "none"},
        seed=1,
    )  # fmt: skip
    card = json.loads((run / "card.json").read_text())
    assert card["data"]["working_pixel_size_um"] == 1.3
    tsv = tmp_path / "models" / "ensemble.tsv"
    select_checkpoints([str(run / "history.csv")], str(tsv), ensemble={"top_k": 1})
    assert pd.read_csv(tsv, sep="\t")["working_pixel_size_um"].tolist() == [1.3]

    ens = Ensemble.load(tsv, {"tile": 32, "overlap": 8, "threshold": 0.5})
    assert ens.working_pixel_size_um == 1.3 and ens.scale_for(0.65) == 0.5
    assert ens.scale_for(None) == 1.0  # a validation patch is on the working grid already
    plate = open_plate(store)
    labels = create_label_store(tmp_path / "pred.zarr", plate)
    df = ens.predict_plate(labels, uncertainty=True)
    assert len(df) == 4
    for image_id in df["image_id"]:
        for name in ("prob", "mask", "variance", "entropy"):
            assert np.asarray(labels.read_label(image_id, name)).shape == SHAPE
    # the plate path and the single-image path agree (same resampling, same vote)
    first = df["image_id"].iloc[0]
    _, prob, mask = ens.predict(plate.read(first), pixel_size_um=plate.pixel_size_um)
    assert prob.shape == SHAPE
    np.testing.assert_array_equal(mask, np.asarray(labels.read_label(first, "mask")))

    # instances.tune: validation - the watershed settings chosen on the validation split's
    # plate images (predicted whole, at the plate's pixel size), merged by the splitting rules
    out = tmp_path / "models" / "instances.json"
    instances = {"tune": "validation", "min_area_um2": 5.0}
    chosen = choose_instances(
        str(tsv), str(manifest), {"p1": str(store)}, {"p1": str(ann / "manifest.parquet")},
        str(out), inference={"tile": 32, "overlap": 8, "threshold": 0.5}, instances=instances,
    )  # fmt: skip
    val = pd.read_parquet(manifest).query("split == 'val'")["source_image"].unique()
    assert chosen["n_images"] == len(val) >= 1
    assert set(chosen["settings"]) <= {"h_um", "min_area_um2"}
    assert len(chosen["grid"]) == 25 and chosen["f1_50"] >= chosen["f1_50_config"]
    merged = tuned_instances(instances, str(out))
    assert merged == {**instances, **chosen["settings"], "tune": "none"}
