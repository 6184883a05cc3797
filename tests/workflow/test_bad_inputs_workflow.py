"""Bad inputs through the real workflow (issue #7): stop before any job, or skip exactly them.

Every test runs Snakemake in a scratch copy of the workflow with three tiny real plates
(64x64 px, made with :func:`brightseg.synth.synth_plate`): ``p1`` annotated in CVAT XML,
``p2`` unannotated, ``p3`` annotated in COCO JSON.  The config has no demo plates, no
models and no LIVECell, so only the preprocessing stages run (plate stores, annotation
import, ``results/qc/skipped.tsv``), a few seconds per run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import badinputs as bi
import pandas as pd
import pytest
import yaml

from .compare_runs import differing_files
from .conftest import BIN, copy_workflow
from .conftest import run_snakemake as _run_snakemake

pytestmark = [pytest.mark.workflow]

PLATES = {"p1": ("cvat.xml", 1), "p2": ("", 2), "p3": ("coco.json", 3)}


def make_template(root: Path) -> Path:
    """A workflow copy with three real plates and a preprocessing-only config."""
    work = copy_workflow(root)
    rows = []
    for plate, (export, seed) in PLATES.items():
        bi.clean_plate(work / "data" / plate, plate, n_images=3, seed=seed)
        annotations = f"data/{plate}/{export}" if export else ""
        rows.append(
            bi.sheet_row(
                plate,
                f"data/{plate}/images",
                annotations,
                modality="phase" if plate == "p3" else "brightfield",
            )
        )
    bi.write_sheet(work / "config" / "plates.tsv", rows)
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    cfg.pop("demo", None)  # no synthetic plates
    cfg["models"] = []
    if "evaluation_sets" in cfg:  # the demo's evaluation set is synthetic (demo.evalset)
        cfg["evaluation_sets"] = []
    cfg.setdefault("livecell", {})["enabled"] = False
    cfg["illumination"]["radius"] = 10
    cfg["plate_store"]["chunk"] = 32
    cfg["on_bad_input"] = "skip"
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


@pytest.fixture(scope="module")
def fast_env(tmp_path_factory) -> dict:
    """PATH with an ``scontrol`` that fails at once.

    Snakemake imports its Slurm executor plugin at start-up, which runs ``scontrol show
    config`` with a 10 s timeout; where Slurm's tools are installed but no controller
    answers, every run would wait those 10 s.  These runs are local, so skip the wait.
    """
    shim = tmp_path_factory.mktemp("shim")
    fake = shim / "scontrol"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    return {"PATH": os.pathsep.join([str(shim), str(BIN), os.environ.get("PATH", "")])}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_template(tmp_path_factory.mktemp("bad_inputs") / "template")


@pytest.fixture(scope="module")
def run_snakemake(fast_env):
    def run(workdir: Path, *args: str, check: bool = True):
        return _run_snakemake(workdir, *args, env=fast_env, timeout=600, check=check)

    return run


@pytest.fixture(scope="module")
def clean_run(template, tmp_path_factory, run_snakemake) -> Path:
    """The template run as it is: the reference every bad run is compared with."""
    work = tmp_path_factory.mktemp("clean") / "work"
    shutil.copytree(template, work)
    run_snakemake(work, "--cores", "2")
    skipped = pd.read_csv(work / "results/qc/skipped.tsv", sep="\t")
    assert len(skipped) == 0
    return work


@pytest.fixture
def work(template, tmp_path) -> Path:
    dst = tmp_path / "work"
    shutil.copytree(template, dst)
    return dst


def set_config(work: Path, **values) -> None:
    path = work / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg = bi.patch_config(cfg, values)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def append_sheet(work: Path, row: dict) -> None:
    with open(work / "config" / "plates.tsv", "a") as fh:
        fh.write("\t".join(str(row.get(c, "")) for c in bi.SHEET_COLUMNS) + "\n")


def output(proc) -> str:
    return proc.stdout + proc.stderr


def logs(work: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((work / "logs").rglob("*.log")))


# --------------------------------------------------------------------------- (a) stop early


def _duplicate_plate(work):
    append_sheet(work, bi.sheet_row("p2", "data/p2/images"))
    return "config/plates.tsv", r"duplicate plate id\(s\): \['p2'\]"


def _missing_directory(work):
    append_sheet(work, bi.sheet_row("p4", "data/p4/images"))
    return "data/p4/images", r"plate 'p4': image directory does not exist \(config/plates.tsv\)"


def _bad_pixel_size(work):
    append_sheet(work, bi.sheet_row("p4", "data/p2/images", pixel_size_um="0,65"))
    return "config/plates.tsv", r"plate\(s\) \['p4'\]: pixel_size_um must be a positive number"


def _empty_directory(work):
    bi.write_empty_plate_dir(work / "data" / "p4")
    append_sheet(work, bi.sheet_row("p4", "data/p4"))
    return "data/p4", r"plate 'p4': no images \(.tif"


def _duplicate_well(work):
    set_config(work, on_bad_input="error")
    dup = bi.write_duplicate_well(work / "data" / "p2" / "images")
    return f"data/p2/images/{dup.name}", r"images map to the same well/field/timepoint"


def _radius_negative(work):
    set_config(work, illumination={"radius": -5})
    return "config key 'illumination.radius'", r"-5 is less than or equal to the minimum of 0"


def _on_bad_input_maybe(work):
    set_config(work, on_bad_input="maybe")
    return "config key 'on_bad_input'", r"'maybe' is not one of \['error', 'skip'\]"


def _chunk_too_small(work):
    set_config(work, plate_store={"chunk": 8})
    return "config key 'plate_store.chunk'", r"8 is less than the minimum of 16"


STOP_EARLY = {
    "duplicate_plate_id": _duplicate_plate,
    "missing_directory": _missing_directory,
    "non_numeric_pixel_size": _bad_pixel_size,
    "empty_plate_directory": _empty_directory,
    "duplicate_well_field_timepoint": _duplicate_well,
    "config_radius_negative": _radius_negative,
    "config_on_bad_input_maybe": _on_bad_input_maybe,
    "config_chunk_too_small": _chunk_too_small,
}


@pytest.mark.parametrize("problem", sorted(STOP_EARLY))
def test_stops_before_any_job(work, problem, run_snakemake):
    where, what = STOP_EARLY[problem](work)
    for args in (["-n", "--cores", "1"], ["--cores", "1"]):
        proc = run_snakemake(work, *args, check=False)
        text = output(proc)
        assert proc.returncode != 0, text[-3000:]
        assert where in text, text[-3000:]
        assert re.search(what, text), text[-3000:]
        assert "Traceback (most recent call last)" not in text
    assert not (work / "results").exists()
    assert not (work / "logs").exists()


def _malformed_xml(work):
    bad, line = bi.write_malformed_xml(work / "data/p1/cvat.xml", work / "data/p1/bad.xml")
    sheet = work / "config" / "plates.tsv"
    sheet.write_text(sheet.read_text().replace("data/p1/cvat.xml", "data/p1/bad.xml"))
    return "data/p1/bad.xml", rf"XML is not well-formed at line {line}"


def _coco_missing_image_id(work):
    set_config(work, on_bad_input="error")
    _, aid = bi.write_coco_missing_image_id(work / "data/p3/coco.json", work / "data/p3/coco.json")
    return "data/p3/coco.json", rf"annotation id {aid} refers to image id 999"


ANNOTATION_STOP_EARLY = {
    "cvat_xml_not_well_formed": _malformed_xml,
    "coco_missing_image_id": _coco_missing_image_id,
}


@pytest.mark.parametrize("problem", sorted(ANNOTATION_STOP_EARLY))
def test_annotation_problem_stops_before_any_job(work, problem, run_snakemake):
    where, what = ANNOTATION_STOP_EARLY[problem](work)
    proc = run_snakemake(work, "-n", "--cores", "1", check=False)
    text = output(proc)
    assert proc.returncode != 0, text[-3000:]
    assert where in text and re.search(what, text), text[-3000:]
    assert not (work / "results").exists()


# --------------------------------------------------------------------------- (b) skip


def test_skip_lists_exactly_the_bad_items(work, clean_run, run_snakemake):
    truncated = bi.write_truncated_tiff(work / "data/p2/images", "p2_A05_f00_t00.tif")
    dup = bi.write_duplicate_well(work / "data/p2/images")
    bi.write_xml_missing_image(
        work / "data/p1/cvat.xml", work / "data/p1/cvat.xml", name="p1_A09_f00_t00.tif"
    )
    _, aid = bi.write_coco_missing_image_id(work / "data/p3/coco.json", work / "data/p3/coco.json")

    run_snakemake(work, "--cores", "2")
    skipped = pd.read_csv(work / "results/qc/skipped.tsv", sep="\t", dtype=str)
    got = skipped[["stage", "plate", "file"]].values.tolist()
    assert got == [
        ["correct_illumination", "p2", f"data/p2/images/{dup.name}"],
        ["correct_illumination", "p2", f"data/p2/images/{truncated.name}"],
        ["import_annotations", "p1", "p1_A09_f00_t00.tif"],
        ["import_annotations", "p3", f"data/p3/coco.json annotation id {aid}"],
    ]
    reasons = skipped["reason"].tolist()
    assert reasons[0] == "another image maps to the same well/field/timepoint"
    assert reasons[1].startswith("cannot read image (file is truncated")
    assert "image 'p1_A09_f00_t00.tif' listed in data/p1/cvat.xml is missing" in reasons[2]
    assert f"annotation id {aid} refers to image id 999" in reasons[3]

    # Everything else is byte-identical to the clean run: every plate store (chunks and
    # metadata, which records the relative source paths) and every annotation file.
    differing = differing_files(clean_run / "results", work / "results")
    assert differing == [
        "qc/skipped.tsv",
        "qc/skipped/correct_illumination/p2.tsv",
        "qc/skipped/import_annotations/p1.tsv",
        "qc/skipped/import_annotations/p3.tsv",
    ]
    stores = [p for p in (work / "results/plates").iterdir()]
    assert sorted(p.name for p in stores) == ["p1.ome.zarr", "p2.ome.zarr", "p3.ome.zarr"]


# --------------------------------------------------------------------------- (c) error


def test_error_stops_on_truncated_tiff(work, clean_run, run_snakemake):
    set_config(work, on_bad_input="error")
    truncated = bi.write_truncated_tiff(work / "data/p2/images", "p2_A05_f00_t00.tif")
    proc = run_snakemake(work, "--cores", "1", check=False)
    text = output(proc) + logs(work)
    assert proc.returncode != 0
    assert "Error in rule correct_illumination" in text
    rel = "data/p2/images/p2_A05_f00_t00.tif"
    assert f"{rel}: cannot read image (file is truncated" in text, text[-3000:]
    assert "Traceback (most recent call last)" not in logs(work)
    # No store of p2 looks complete: none at all, and no temporary leftovers.
    plates = work / "results" / "plates"
    assert not (plates / "p2.ome.zarr").exists()
    if plates.exists():
        assert not [p.name for p in plates.iterdir() if p.name.startswith(".p2")]
    assert not (work / "results/qc/skipped.tsv").exists()
    # Whatever finished before the failure is what the clean run made.
    done = [p for p in differing_files(clean_run / "results", work / "results")]
    for path in done:
        assert not (work / "results" / path).exists(), f"{path} differs from the clean run"
    assert truncated.exists()


def test_error_in_annotations_keeps_going_for_the_rest(work, clean_run, run_snakemake):
    # Under on_bad_input: error an export naming an image that is not in the plate fails
    # its import job (only the job looks at the images); with --keep-going every other
    # job still finishes, with exactly the clean run's outputs.
    set_config(work, on_bad_input="error")
    bi.write_xml_missing_image(
        work / "data/p1/cvat.xml", work / "data/p1/cvat.xml", name="p1_A09_f00_t00.tif"
    )
    proc = run_snakemake(work, "--cores", "2", "--keep-going", check=False)
    text = output(proc) + logs(work)
    assert proc.returncode != 0
    assert "Error in rule import_annotations" in text
    assert (
        "data/p1/images/p1_A09_f00_t00.tif: image 'p1_A09_f00_t00.tif' listed in "
        "data/p1/cvat.xml is missing from data/p1/images"
    ) in text, text[-3000:]
    assert not (work / "results/annotations/p1/manifest.parquet").exists()
    missing = differing_files(clean_run / "results", work / "results")
    for path in missing:
        assert not (work / "results" / path).exists(), f"{path} differs from the clean run"
    assert all(p.startswith(("annotations/p1/", "qc/")) for p in missing), missing
    for plate in PLATES:
        assert (work / f"results/plates/{plate}.ome.zarr/zarr.json").is_file()
    assert (work / "results/annotations/p3/manifest.parquet").is_file()


# --------------------------------------------------------------------------- (d) issue 14
# Hostile files through the workflow.  Parse-time refusals are checked with ``-n`` only
# (no job runs); the job-level cases share one run under skip and one under error.


def _hostile_mixed_sizes(work):
    set_config(work, on_bad_input="error")
    odd = bi.write_odd_size_image(work / "data/p2/images", "p2_A06_f00_t00.tif")
    return f"data/p2/images/{odd.name}", r"plate 'p2': images differ in size"


def _hostile_zip_bomb(work):
    bi.write_zip_bomb(work / "data/p1/bomb.zip")
    sheet = work / "config" / "plates.tsv"
    sheet.write_text(sheet.read_text().replace("data/p1/cvat.xml", "data/p1/bomb.zip"))
    return "data/p1/bomb.zip!annotations.xml", r"decompresses \(as declared\) to 3,221,225,472"


def _hostile_deep_json(work):
    bi.write_deep_json(work / "data/p3/deep.json")
    sheet = work / "config" / "plates.tsv"
    sheet.write_text(sheet.read_text().replace("data/p3/coco.json", "data/p3/deep.json"))
    return "data/p3/deep.json", r"JSON is nested \d+ levels deep, over the limit of 64"


def _hostile_huge_int(work):
    coco = work / "data/p3/coco.json"
    bi.write_huge_int_json(coco, coco)
    return "data/p3/coco.json", r"JSON has an integer of 5000 digits"


def _hostile_pixel_size_inf(work):
    append_sheet(work, bi.sheet_row("p4", "data/p2/images", pixel_size_um="inf"))
    return "config/plates.tsv", r"plate\(s\) \['p4'\]: pixel_size_um must be .* got p4='inf'"


def _hostile_csv_sheet(work):
    sheet = work / "config" / "plates.tsv"
    sheet.write_text(sheet.read_text().replace("\t", ","))
    return "config/plates.tsv", r"separated by commas; use tabs"


def _hostile_regex_3b(work):
    set_config(work, on_bad_input="error", filename_regex=bi.LOOSE_REGEX)
    images = work / "data/p2/images"
    shutil.copyfile(images / "p2_A01_f00_t00.tif", images / "p2_A3b_f00_t00.tif")
    return "data/p2/images/p2_A3b_f00_t00.tif", r"group 'column' captured '3b', not a number"


HOSTILE_STOP_EARLY = {
    "mixed_image_sizes": _hostile_mixed_sizes,
    "zip_declares_3gib": _hostile_zip_bomb,
    "json_nested_200000": _hostile_deep_json,
    "json_5000_digit_integer": _hostile_huge_int,
    "sheet_pixel_size_inf": _hostile_pixel_size_inf,
    "sheet_csv": _hostile_csv_sheet,
    "regex_column_captures_3b": _hostile_regex_3b,
}


@pytest.mark.parametrize("problem", sorted(HOSTILE_STOP_EARLY))
def test_hostile_input_stops_at_parse_time(work, problem, run_snakemake):
    where, what = HOSTILE_STOP_EARLY[problem](work)
    proc = run_snakemake(work, "-n", "--cores", "1", check=False)
    text = output(proc)
    assert proc.returncode != 0, text[-3000:]
    assert where in text and re.search(what, text), text[-3000:]
    assert "Traceback (most recent call last)" not in text
    assert not (work / "results").exists()


def _plant_hostile_files(work) -> dict:
    """Several hostile files at once in the three tiny plates; returns what was planted."""
    p2 = work / "data/p2/images"
    planted = {
        "huge_tiff": bi.write_huge_tiff(p2, "p2_A05_f00_t00.tif"),
        "odd_size": bi.write_odd_size_image(p2, "p2_A06_f00_t00.tif"),
        "palette": bi.write_inverted_palette_png(p2, "p2_A07_f00_t00.png"),
        "thumbnail": bi.write_tiff_thumbnail_first(p2, "p2_A08_f00_t00.tif"),
        "planar": bi.write_planar_rgb_tiff(p2, "p2_A09_f00_t00.tif"),
        "cmyk": bi.write_cmyk_jpeg(p2, "p2_A10_f00_t00.jpg"),
        "grey_alpha": bi.write_grey_alpha(p2, "p2_A11_f00_t00.png"),
        "huge_png": bi.write_huge_png(p2, "p2_A12_f00_t00.png"),
    }
    # A column group that also takes a letter: p2_A3b is skipped, every other name parses.
    set_config(work, filename_regex=bi.LOOSE_REGEX)
    shutil.copyfile(p2 / "p2_A01_f00_t00.tif", p2 / "p2_A3b_f00_t00.tif")
    xml = work / "data/p1/cvat.xml"
    bi.write_xml_polygon(xml, xml, image="p1_A02_f00_t00.tif", points=bi.NAN_POINTS)
    bi.write_xml_polygon(xml, xml, image="p1_A01_f00_t00.tif", points=bi.HUGE_POINTS)
    bi.write_xml_huge_mask_box(xml, xml, image="p1_A03_f00_t00.tif")
    coco = work / "data/p3/coco.json"
    doc = json.loads(coco.read_text())
    anns = doc["annotations"]
    anns[0]["category_id"] = [anns[0]["category_id"]]
    anns[1]["image_id"] = {"id": anns[1]["image_id"]}
    polygon = next(a for a in anns[2:] if isinstance(a.get("segmentation"), list))
    polygon["segmentation"][0][2] = float("inf")
    coco.write_text(json.dumps(doc))
    images = {i["id"]: i["file_name"] for i in doc["images"]}
    planted["coco_aids"] = (anns[0]["id"], anns[1]["id"])
    planted["coco_inf_image"] = images[polygon["image_id"]]
    return planted


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_hostile_files_are_skipped_in_one_run(work, run_snakemake):
    from brightseg.io import _host_tag
    from brightseg.platestore import open_plate

    planted = _plant_hostile_files(work)
    # A temporary store left by a correct_illumination job killed with SIGKILL.
    stale = work / f"results/plates/.p2.ome.zarr.tmp-{_host_tag()}-{_dead_pid()}-x.ome.zarr"
    (stale / "0").mkdir(parents=True)

    run_snakemake(work, "--cores", "2")
    skipped = pd.read_csv(work / "results/qc/skipped.tsv", sep="\t", dtype=str)
    got = sorted(skipped[["stage", "plate", "file"]].values.tolist())
    a0, a1 = planted["coco_aids"]
    assert got == sorted(
        [
            ["correct_illumination", "p2", "data/p2/images/p2_A05_f00_t00.tif"],
            ["correct_illumination", "p2", "data/p2/images/p2_A06_f00_t00.tif"],
            ["correct_illumination", "p2", "data/p2/images/p2_A12_f00_t00.png"],
            ["correct_illumination", "p2", "data/p2/images/p2_A3b_f00_t00.tif"],
            ["import_annotations", "p1", "p1_A02_f00_t00.tif"],
            ["import_annotations", "p3", f"data/p3/coco.json annotation id {a0}"],
            ["import_annotations", "p3", f"data/p3/coco.json annotation id {a1}"],
            ["import_annotations", "p3", planted["coco_inf_image"]],
        ]
    )
    reasons = dict(zip(skipped["file"], skipped["reason"], strict=True))
    assert "limits.max_image_pixels" in reasons["data/p2/images/p2_A05_f00_t00.tif"]
    assert "limits.max_image_pixels" in reasons["data/p2/images/p2_A12_f00_t00.png"]
    assert "but most images of plate 'p2' are 64x64" in reasons["data/p2/images/p2_A06_f00_t00.tif"]
    assert "captured '3b'" in reasons["data/p2/images/p2_A3b_f00_t00.tif"]
    assert "non-finite" in reasons["p1_A02_f00_t00.tif"]
    assert "non-finite" in reasons[planted["coco_inf_image"]]
    assert (
        "category_id must be an integer or a string"
        in reasons[f"data/p3/coco.json annotation id {a0}"]
    )
    assert (
        "image_id must be an integer or a string"
        in reasons[f"data/p3/coco.json annotation id {a1}"]
    )
    store = open_plate(work / "results/plates/p2.ome.zarr", mode="r")
    ids = set(store.images["image_id"])
    read_as_displayed = {f"p2_A{k:02d}_f00_t00" for k in (7, 8, 9, 10, 11)}
    assert read_as_displayed <= ids
    assert not ids & {"p2_A05_f00_t00", "p2_A06_f00_t00", "p2_A12_f00_t00", "p2_A3b_f00_t00"}
    assert not stale.exists()
    assert "Traceback (most recent call last)" not in logs(work)


def test_hostile_files_fail_their_jobs_under_error(work, run_snakemake):
    set_config(work, on_bad_input="error")
    bi.write_huge_tiff(work / "data/p2/images", "p2_A05_f00_t00.tif")
    xml = work / "data/p1/cvat.xml"
    bi.write_xml_polygon(xml, xml, image="p1_A02_f00_t00.tif", points=bi.NAN_POINTS)
    proc = run_snakemake(work, "--cores", "2", "--keep-going", check=False)
    text = output(proc) + logs(work)
    assert proc.returncode != 0
    assert (
        "data/p2/images/p2_A05_f00_t00.tif: image is 100000x100000 px (width x height)" in text
    ), text[-3000:]
    assert "image 'p1_A02_f00_t00.tif', <polygon>" in text and "non-finite" in text
    assert "Traceback (most recent call last)" not in logs(work)
    assert not (work / "results/plates/p2.ome.zarr").exists()
    assert (work / "results/plates/p3.ome.zarr/zarr.json").is_file()
