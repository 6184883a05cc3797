"""Model bundles: written deterministically, verified on load, predict like the ensemble."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from brightseg import bundle as B
from brightseg.ensemble import Ensemble
from brightseg.errors import InputError

ILLUMINATION = {
    "radius": 40,
    "unit": "px",
    "mode": "black",
    "method": "fast",
    "percentiles": [1, 99.8],
}
INFERENCE = {
    "tile": 32,
    "overlap": 8,
    "batch_size": 4,
    "vote": "mean",
    "threshold": 0.4,
    "tta": False,
    "precision": "float32",
}


def _checkpoint(path, seed):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((32, 32, 3))
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp)
    keras.Model(inp, out).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    (root / "ckpt").mkdir()
    rows = ["rank\tpath\tmodel\tloss\tepoch\tval_f1\tval_loss"]
    for i in (1, 2):
        _checkpoint(root / "ckpt" / f"e{i}.keras", i)
        rows.append(f"{i}\t{root}/ckpt/e{i}.keras\tunet\tbce\t{i}\t0.{7 + i}\t0.3")
    tsv = root / "ensemble.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    out = root / "bundle"
    manifest = B.write_bundle(
        tsv,
        out,
        root / "bundle.tar",
        illumination=ILLUMINATION,
        inference=INFERENCE,
        tile=32,
        pixel_size_um=0.65,
        training={"plates": ["P1"], "samples": 42},
    )
    return root, tsv, out, manifest


def test_bundle_contents(trained):
    root, _, out, manifest = trained
    on_disk = json.loads((out / "bundle.json").read_text())
    assert on_disk == manifest
    assert manifest["format"] == B.FORMAT and manifest["format_version"] == B.FORMAT_VERSION
    assert manifest["preprocessing"]["illumination"]["mode"] == "black"
    assert manifest["preprocessing"]["illumination_radius_um"] == pytest.approx(40 * 0.65)
    assert manifest["inference"]["threshold"] == 0.4 and manifest["inference"]["tile"] == 32
    assert [m["file"] for m in manifest["members"]] == [
        "members/01_unet_bce_e01.keras",
        "members/02_unet_bce_e02.keras",
    ]
    assert manifest["members"][1]["validation"]["val_f1"] == pytest.approx(0.9)
    assert set(manifest["versions"]) >= {"brightseg", "keras", "tensorflow", "numpy"}
    assert manifest["content_sha256"] == B.content_hash(out, manifest)


def test_archive_is_deterministic(trained, tmp_path):
    root, _, out, _ = trained
    B.write_archive(out, tmp_path / "again.tar")
    assert (tmp_path / "again.tar").read_bytes() == (root / "bundle.tar").read_bytes()
    with tarfile.open(root / "bundle.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


@pytest.mark.parametrize("form", ["dir", "tar"])
def test_bundle_predicts_like_the_ensemble(trained, form):
    root, tsv, out, _ = trained
    source = out if form == "dir" else root / "bundle.tar"
    image = np.random.default_rng(0).random((70, 50)).astype("float32")
    direct = Ensemble.load(tsv, {**INFERENCE})
    via = B.load_ensemble(source, {**INFERENCE, "threshold": 0.5, "tile": None, "overlap": 4})
    assert via.inference.threshold == 0.4 and via.tile == 32  # the bundle's values
    assert via.inference.overlap == 8
    assert via.key == direct.key
    for a, b in zip(direct.predict(image), via.predict(image), strict=True):
        np.testing.assert_array_equal(a, b)


def test_changed_member_is_refused(trained, tmp_path):
    import shutil

    _, _, out, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    member = copy / "members/01_unet_bce_e01.keras"
    member.write_bytes(member.read_bytes() + b"\0")
    with pytest.raises(InputError, match="does not match its sha256"), B.open_bundle(copy):
        pass
    shutil.rmtree(copy)
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["inference"]["threshold"] = 0.9  # edited by hand
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="content hash mismatch"), B.open_bundle(copy):
        pass


def test_newer_format_and_non_bundles_are_refused(trained, tmp_path):
    _, _, out, _ = trained
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["format_version"] = B.FORMAT_VERSION + 1
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="newer than this brightseg"):
        B.read_manifest(copy)
    with pytest.raises(InputError, match="no bundle.json"):
        B.read_manifest(tmp_path)
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(InputError, match="junk.tar"):
        B.read_manifest(tmp_path / "junk.tar")
    with pytest.raises(InputError, match="does not exist"):
        B.read_manifest(tmp_path / "missing.tar")


def test_archive_with_escaping_member_is_refused(tmp_path):
    import io

    bad = tmp_path / "evil.tar"
    with tarfile.open(bad, "w") as tar:
        data = b"{}"
        info = tarfile.TarInfo("../bundle.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match="outside the bundle"):
        B.read_manifest(bad)


def test_config_with_bundle_fills_and_refuses_conflicts(trained):
    root, _, _, _ = trained
    cfg, manifest = B.config_with_bundle(
        {"model": str(root / "bundle.tar"), "inference": {"batch_size": 2}}
    )
    assert cfg["illumination"] == manifest["preprocessing"]["illumination"]
    assert cfg["inference"] == {
        "batch_size": 2,
        "tile": 32,
        "overlap": 8,
        "threshold": 0.4,
        "vote": "mean",
        "tta": False,
    }
    same, _ = B.config_with_bundle(
        {"model": str(root / "bundle"), "illumination": {"radius": 40.0, "mode": "black"}}
    )
    assert same["illumination"]["radius"] == 40.0
    with pytest.raises(InputError, match=r"illumination.mode is 'white' .* 'black' in the model"):
        B.config_with_bundle({"model": str(root / "bundle"), "illumination": {"mode": "white"}})


def test_segment_command_uses_the_workflow_code(trained, tmp_path):
    from click.testing import CliRunner

    from brightseg.cli import main
    from brightseg.illumination import correct_illumination
    from brightseg.io import read_image, write_tiff
    from brightseg.platestore import quantise

    root, _, _, _ = trained
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        write_tiff((rng.random((80, 64)) * 4000).astype("uint16"), tmp_path / f"imgs/w{i}.tif")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        ["segment", str(tmp_path / "imgs"), "--model", str(root / "bundle.tar"), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "in 2 images" in res.output or "0 cells" in res.output
    for i in range(2):
        for leaf in ("_labels.tif", "_mask.png", "_overlay.png"):
            assert (out / f"w{i}{leaf}").is_file()
    assert {"image", "n_cells"} <= set(pd.read_csv(out / "images.tsv", sep="\t"))
    # The mask is the ensemble's on the image as the plate store would hold it.
    raw = read_image(tmp_path / "imgs/w0.tif").astype("float32")
    image = quantise(correct_illumination(raw, 40, mode="black", percentiles=(1, 99.8)))
    _, _, mask = B.load_ensemble(root / "bundle.tar", INFERENCE).predict(image)
    np.testing.assert_array_equal(read_image(out / "w0_mask.png") > 0, mask > 0)
    # Bad input: one line, exit status 2.
    res = CliRunner().invoke(
        main,
        [
            "segment",
            str(tmp_path / "nope*.tif"),
            "--model",
            str(root / "bundle.tar"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 2 and "no image matches" in res.output
