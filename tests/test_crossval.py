"""``brightseg cv`` end to end on tiny synthetic images (issue 12)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from brightseg.cli import main
from brightseg.crossval import fold_assignment
from brightseg.errors import InputError
from brightseg.synth import synth_eval_set

ROOT = Path(__file__).resolve().parents[1]


def test_fold_assignment_grouped_and_seeded():
    a = fold_assignment(7, 3, seed=1)
    assert sorted(set(a)) == [0, 1, 2]
    assert (a == fold_assignment(7, 3, seed=1)).all()
    with pytest.raises(InputError):
        fold_assignment(2, 3, seed=0)


def test_cv_two_folds_tiny(tmp_path):
    synth_eval_set(tmp_path / "data", n_images=4, shape=(96, 96), seed=3, mean_radius_px=8)
    cfg = yaml.safe_load((ROOT / "config" / "cpu.yaml").read_text())
    cfg["illumination"]["radius"] = 20
    cfg["training"].update(
        working_pixel_size_um=None,  # the images' own grid unless --working-pixel-size-um
        patch_size=64,
        stride=32,
        n_variants=2,
        epochs=2,
        batch_size=2,
        steps_per_epoch=2,
        val_steps=1,
        val_fraction=0.34,
        deterministic=False,
    )
    cfg["models"] = [
        {"architecture": "small_unet", "loss": "bce_dice", "model_kwargs": {"base_filters": 4}}
    ]
    cfg["inference"]["tile"] = 64
    cfg["inference"]["overlap"] = 16
    cpath = tmp_path / "cfg.yaml"
    cpath.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cv"

    def cv(out, *extra):
        data = tmp_path / "data"
        args = ["cv", "--images", str(data / "images"), "--masks", str(data / "masks")]
        return CliRunner().invoke(main, [*args, "--config", str(cpath), "--out", str(out), *extra])

    r = cv(out, "--folds", "2", "--minutes", "1")
    assert r.exit_code == 0, r.output + repr(r.exception)
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("dice=") and "f1_50=" in last and "folds=2" in last
    assert "f1_50_tuned=" in last  # watershed settings chosen on each fold's validation images
    per_fold = pd.read_csv(out / "per_fold.tsv", sep="\t")
    for chosen in per_fold["instances_tuned"]:
        assert set(json.loads(chosen)) <= {"h_um", "min_area_um2"}
    assert (out / "summary.json").is_file() and (out / "summary.md").is_file()
    assert (out / "fold_0" / "per_image.tsv").is_file()
    # the workflow's ensemble (top-k epoch checkpoints voting) is scored beside the best one
    assert "dice_vote=" in last and "f1_50_tuned_vote=" in last
    assert {"dice_vote", "f1_50_tuned_vote", "vote_epochs"} <= set(per_fold.columns)
    assert per_fold["vote_epochs"].astype(str).str.count(",").max() <= 2  # top_k 3
    # a learning curve of the trained folds, without training again
    ckpt = out / "fold_0" / "model" / "checkpoints" / "epoch_01.keras"
    before = ckpt.stat().st_mtime_ns
    clean = pd.read_csv(out / "per_image.tsv", sep="\t")
    rc = cv(
        out, "--folds", "2", "--reuse-models", "--curve-every", "1", "--no-vote", "--test-artefacts"
    )
    assert rc.exit_code == 0, rc.output + repr(rc.exception)
    # the same models scored on test images with a dark frame, a scale bar and JPEG blocks
    assert json.loads((out / "summary.json").read_text())["test_artefacts"] is True
    marked = pd.read_csv(out / "per_image.tsv", sep="\t")
    assert list(marked["image"]) == list(clean["image"])
    assert (marked["dice"] != clean["dice"]).any()
    assert ckpt.stat().st_mtime_ns == before and "reusing the trained model" in rc.output
    curve = pd.read_csv(out / "curve.tsv", sep="\t")
    epochs = pd.read_csv(out / "fold_0" / "model" / "history.csv")["epoch"]
    assert list(curve.loc[curve["fold"] == 0, "epoch"]) == list(epochs)
    assert curve["dice"].between(0, 1).all() and (curve["train_s"] >= 0).all()
    assert {"val_loss", "f1_50_tuned", "threshold"} <= set(curve.columns)
    assert "dice_vote" not in pd.read_csv(out / "per_fold.tsv", sep="\t").columns
    # reusing a model trained with another recipe is refused, naming the card
    other = tmp_path / "other.yaml"
    other_cfg = {**cfg, "models": [{**cfg["models"][0], "model_kwargs": {"base_filters": 8}}]}
    other.write_text(yaml.safe_dump(other_cfg))
    args = ["--images", str(tmp_path / "data" / "images"), "--masks"]
    bad_reuse = CliRunner().invoke(
        main,
        ["cv", *args, str(tmp_path / "data" / "masks"), "--config", str(other), "--out", str(out)]
        + ["--folds", "2", "--reuse-models"],
    )
    assert bad_reuse.exit_code == 2 and "card.json" in bad_reuse.output
    assert "model_kwargs" in bad_reuse.output
    # one fold alone (one cluster job per fold): only that fold is trained and scored
    alone = tmp_path / "fold1"
    r1 = cv(alone, "--folds", "2", "--fold", "1")
    assert r1.exit_code == 0, r1.output + repr(r1.exception)
    assert not (alone / "fold_0").exists() and (alone / "fold_1" / "per_image.tsv").is_file()

    summary = json.loads((alone / "summary.json").read_text())
    assert summary["folds_run"] == [1] and summary["folds"] == 2
    both = json.loads((out / "summary.json").read_text())
    assert both["folds_run"] == [0, 1]
    # a working pixel size: trained on images resampled 96 -> 64 px (one 64 px patch per
    # image and variant instead of 2 x 2), scored on the images' own grid
    half = tmp_path / "scaled"
    r2 = cv(half, "--folds", "2", "--fold", "0", "--working-pixel-size-um", "1.5")
    assert r2.exit_code == 0, r2.output + repr(r2.exception)
    store = pd.read_parquet(half / "fold_0" / "manifest_all.parquet")
    native = pd.read_parquet(alone / "fold_1" / "manifest_all.parquet")
    per_source = store.groupby("source_image").size()
    assert (per_source == cfg["training"]["n_variants"]).all()
    assert (native.groupby("source_image").size() == 4 * cfg["training"]["n_variants"]).all()
    assert json.loads((half / "summary.json").read_text())["working_pixel_size_um"] == 1.5
    scored = pd.read_csv(half / "per_image.tsv", sep="\t")
    assert scored["dice"].between(0, 1).all() and len(scored) == 2
    bad = cv(tmp_path / "bad", "--folds", "2", "--fold", "2")
    assert bad.exit_code == 2 and "--fold must be in [0, 1]" in bad.output


def test_cv_bad_input_names_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"not a tiff")
    (tmp_path / "masks" / "a.png").write_bytes(b"not a png")
    r = CliRunner().invoke(
        main,
        [
            "cv",
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--config",
            str(ROOT / "config" / "cpu.yaml"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2
    assert "a." in r.output
