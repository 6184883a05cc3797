import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from brightseg import sheet as bs_sheet
from brightseg.errors import InputError

validate(config, schema="../schemas/config.schema.yaml")

ON_BAD_INPUT = config.get("on_bad_input", "error")
SYNTH = config.get("demo", {}).get("synth", {}) or {}

try:
    PLATES = bs_sheet.read_sheet(config["plates"])
    REGEX = bs_sheet.compile_regex(config["filename_regex"])
    # Plates on disk are checked now, before any job runs: a missing directory, a regex
    # that matches nothing, or two images on one well/field/timepoint stop the run here.
    for _plate, _row in PLATES.iterrows():
        if _plate not in SYNTH:
            bs_sheet.plate_images(
                _plate,
                _row["images"],
                REGEX,
                sheet_path=config["plates"],
                on_bad_input=ON_BAD_INPUT,
            )
except InputError as exc:
    raise WorkflowError(f"brightseg: bad input: {exc}")

validate(PLATES, schema="../schemas/plates.schema.yaml")

PLATE_IDS = list(PLATES.index)
ANNOTATED = [p for p in PLATE_IDS if PLATES.loc[p, "annotations"]]
TRAINING = [p for p in PLATE_IDS if PLATES.loc[p, "use_for_training"]]


wildcard_constraints:
    plate=r"[A-Za-z0-9][A-Za-z0-9.-]*",


def plate_images_input(wildcards):
    """Raw images of a plate: the synth rule's output directory, or the files on disk."""
    row = PLATES.loc[wildcards.plate]
    if wildcards.plate in SYNTH:
        return row["images"]
    return [str(p) for p in bs_sheet.list_images(row["images"])]


def plate_annotations_input(wildcards):
    return PLATES.loc[wildcards.plate, "annotations"]


def plate_param(name):
    return lambda wildcards: PLATES.loc[wildcards.plate, name]


def all_targets():
    targets = expand("results/plates/{plate}.ome.zarr", plate=PLATE_IDS)
    targets += expand("results/annotations/{plate}/manifest.parquet", plate=ANNOTATED)
    targets.append("results/qc/skipped.tsv")
    return targets
