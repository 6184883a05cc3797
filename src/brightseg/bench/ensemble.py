"""``brightseg bench ensemble``: raw forward passes vs the zarr-to-zarr pipeline vs per image.

Beside the ensemble, the distilled student (:mod:`brightseg.distill`) predicts the same
plate through the same pipeline: ``student_patches_per_s`` and ``ensemble_patches_per_s``
are image tiles per second end to end (every member, or the student alone), ``speedup``
their ratio, with the FLOPs of one tile of each (:func:`brightseg.distill.count_flops`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from ..ensemble import make_predictor, predict_plate
from ..tiling import tile_grid, to_uint8

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- benchmark


def _bench_model(name: str, tile: int, seed: int):
    """A small model for the benchmark: ``"mini_unet"`` (2 levels), ``"conv"`` or a zoo name."""
    import keras

    keras.utils.set_random_seed(seed)
    if name == "conv":
        inp = keras.Input((tile, tile, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
        out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
        return keras.Model(inp, out)
    if name == "mini_unet":
        inp = keras.Input((tile, tile, 3))
        c1 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
        c1 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(c1)
        p1 = keras.layers.MaxPooling2D()(c1)
        c2 = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(p1)
        c2 = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(c2)
        u1 = keras.layers.UpSampling2D()(c2)
        m1 = keras.layers.Concatenate()([u1, c1])
        c3 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(m1)
        out = keras.layers.Conv2D(1, 1, activation="sigmoid")(c3)
        return keras.Model(inp, out)
    from .. import models as zoo  # a model of the project's zoo, e.g. "small_unet"

    build = getattr(zoo, "build_model", None)
    if build is None:
        raise ValueError(f"unknown benchmark model {name!r}")
    return build(name, input_shape=(tile, tile, 3))


class _BenchStore:
    """Minimal zarr plate store (used only when ``brightseg.platestore`` is unavailable)."""

    def __init__(self, root: Path, images: list[np.ndarray]):

        self.root = zarr.open_group(str(root), mode="w")
        ids = [f"img{i:04d}" for i in range(len(images))]
        for image_id, img in zip(ids, images, strict=True):
            h, w = img.shape
            arr = self.root.create_array(
                f"{image_id}/0", shape=(1, 1, h, w), chunks=(1, 1, h, w), dtype="uint16"
            )
            arr[0, 0] = np.rint(img * 65535).astype(np.uint16)
        self.images = pd.DataFrame(
            {"image_id": ids, "row": "A", "column": 1, "field": range(len(ids)), "timepoint": 0}
        )

    def read(self, image_id):
        return self.root[f"{image_id}/0"][0, 0].astype(np.float32) / np.float32(65535)

    def image_array(self, image_id):
        return self.root[f"{image_id}/0"], 0

    def create_label(self, image_id, name, dtype):
        h, w = self.root[f"{image_id}/0"].shape[-2:]
        self.root.create_array(
            f"{image_id}/labels/{name}/0",
            shape=(1, 1, h, w),
            chunks=(1, 1, h, w),
            dtype=np.dtype(dtype).name,
            overwrite=True,
        )

    def write_label(self, image_id, name, array):
        self.root[f"{image_id}/labels/{name}/0"][0, 0] = array
        self.root[f"{image_id}/labels/{name}/0"].attrs["complete"] = True

    def has_label(self, image_id, name):
        key = f"{image_id}/labels/{name}/0"
        return key in self.root and bool(self.root[key].attrs.get("complete", False))

    def read_label(self, image_id, name):
        return self.root[f"{image_id}/labels/{name}/0"][0, 0]


def _make_bench_store(root: Path, images: list[np.ndarray]):
    """A plate store holding ``images``: the project's platestore, else minimal zarr."""
    try:
        from ..platestore import open_plate, write_plate
    except ImportError:
        return _BenchStore(root, images), "zarr"
    table = pd.DataFrame(
        {
            "image_id": [f"img{i:04d}" for i in range(len(images))],
            "row": "A",
            "column": 1,
            "field": range(len(images)),
            "timepoint": 0,
        }
    )
    write_plate(
        root,
        "bench",
        table,
        load=lambda row: images[int(row["field"])],
        pixel_size_um=1.0,
        modality="brightfield",
    )
    return open_plate(root), "platestore"


def _paper_predict(image, models, *, tile, overlap, batch_size, threshold):
    """The paper's inference: patchify, ``model.predict`` per model, stitch, mean vote."""
    h, w = image.shape
    if overlap == 0:
        hp, wp = -(-max(h, tile) // tile) * tile, -(-max(w, tile) // tile) * tile
        padded = np.pad(image, ((0, hp - h), (0, wp - w)), mode="reflect")
        corners = [(y, x) for y in range(0, hp, tile) for x in range(0, wp, tile)]
    else:
        padded = np.pad(image, ((0, max(0, tile - h)), (0, max(0, tile - w))), mode="reflect")
        hp, wp = padded.shape
        corners = tile_grid(hp, wp, tile, overlap)
    patches = np.stack([padded[y : y + tile, x : x + tile] for y, x in corners])
    patches = np.repeat(patches[..., None], 3, axis=-1)
    total = np.zeros((hp, wp), dtype=np.float32)
    count = np.zeros((hp, wp), dtype=np.float32)
    for model in models:
        pred = model.predict(patches, batch_size=batch_size, verbose=0)[..., 0]
        for (y, x), p in zip(corners, pred, strict=True):
            total[y : y + tile, x : x + tile] += p
            count[y : y + tile, x : x + tile] += 1
    prob = (total / count)[:h, :w]
    return to_uint8(prob), (prob > threshold).astype(np.uint8)


def _load_models(ensemble: str | os.PathLike) -> list:
    """The checkpoints of an ``ensemble.tsv`` (or of a model bundle), loaded."""
    from .. import bundle as bs_bundle
    from ..ensemble import read_ensemble
    from ..models import load_checkpoint

    if bs_bundle.is_bundle(ensemble):
        with bs_bundle.open_bundle(ensemble) as b:
            return [load_checkpoint(p) for p in read_ensemble(b.ensemble_tsv)["path"]]
    return [load_checkpoint(p) for p in read_ensemble(ensemble)["path"]]


def _student_model(student: str, tile: int, seed: int):
    """``student.keras`` (or a bundle's student), or the default student architecture."""
    import keras

    from .. import bundle as bs_bundle
    from ..config import StudentConfig
    from ..models import build_model, load_checkpoint

    if student == "default":
        cfg = StudentConfig.from_dict({})
        keras.utils.set_random_seed(seed)
        return build_model(cfg.architecture, (tile, tile, 3), "none", **dict(cfg.model_kwargs))
    if bs_bundle.is_bundle(student):
        with bs_bundle.open_bundle(student) as b:
            return load_checkpoint(b.root / b.manifest["student"]["file"])
    return load_checkpoint(student)


def bench_ensemble(
    n_images: int = 4,
    shape: tuple[int, int] = (1024, 1024),
    n_models: int = 2,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    model: str = "mini_unet",
    tta: bool = False,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    repeats: int = 3,
    verbose: bool = True,
    ensemble: str | os.PathLike | None = None,
    student: str | None = "default",
) -> dict:
    """Compare raw model throughput, this module's pipeline and the paper's approach.

    On the same ``n_images`` random images and ``n_models`` models:

    (a) raw forward passes of the compiled predictors on in-memory batches, as
        many batches as the pipeline needs;
    (b) :func:`predict_plate` end to end, zarr to zarr;
    (c) per image: patchify, ``model.predict`` per model, stitch by averaging,
        mean vote, write; once with the same overlap (same tiles as (b)) and
        once with non-overlapping tiles.

    (d) with ``student``: :func:`predict_plate` of the student alone (``"default"``: the
        ``ensemble.student`` block's default architecture with random weights; or a
        ``student.keras`` / a bundle with a student).

    ``ensemble`` (an ``ensemble.tsv`` or a model bundle) benchmarks trained checkpoints
    instead of ``n_models`` random ``model`` networks; ``tile`` must then be their input
    size.  The measurements are interleaved ``repeats`` times and the best time of each
    is reported (``all_s`` has every time).

    Returns
    -------
    dict
        Seconds, patches/s and MPx/s of each, and the ratios ``b_over_a``
        (pipeline throughput / raw model throughput; 1 means all I/O, tiling,
        blending and voting is hidden), ``b_over_c`` (pipeline speed-up over
        the paper's approach at equal overlap) and ``b_over_c_nonoverlap``; with a
        student also ``student_patches_per_s``, ``ensemble_patches_per_s`` (image tiles
        per second through the pipeline), ``speedup``, ``student_flops``,
        ``ensemble_flops`` (one tile, all members) and ``flops_ratio``.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    images = [rng.random((h, w), dtype=np.float32) for _ in range(n_images)]
    if ensemble is not None:
        models = _load_models(ensemble)
        model, n_models = str(ensemble), len(models)
    else:
        models = [_bench_model(model, tile, seed + i) for i in range(n_models)]
    predictors = [make_predictor(m, batch_size, tile) for m in models]
    student_model = _student_model(student, tile, seed) if student else None
    student_predictors = (
        [make_predictor(student_model, batch_size, tile)] if student_model is not None else []
    )
    mpx = n_images * h * w / 1e6
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    try:
        root = Path(tmp.name)
        store, store_kind = _make_bench_store(root / "bench.ome.zarr", images)
        # warm-up: trace the functions and the Keras predict path once
        warm = np.zeros((batch_size, tile, tile, 3), dtype=np.float32)
        for p, m in zip(predictors, models, strict=True):
            np.asarray(p(warm))
            m.predict(warm, batch_size=batch_size, verbose=0)
        for p in student_predictors:
            np.asarray(p(warm))

        # (d) the student alone through the same pipeline
        def student_pipeline() -> float:
            t0 = time.perf_counter()
            predict_plate(
                store,
                student_predictors,
                tile=tile,
                overlap=overlap,
                batch_size=batch_size,
                tta=tta,
                skip_existing=False,
                desc="bench student",
            )
            return time.perf_counter() - t0

        # (b) pipeline, zarr to zarr
        def pipeline() -> float:
            t0 = time.perf_counter()
            df = predict_plate(
                store,
                predictors,
                tile=tile,
                overlap=overlap,
                batch_size=batch_size,
                tta=tta,
                skip_existing=False,
                desc="bench",
            )
            engine.update(df.attrs["engine"])
            return time.perf_counter() - t0

        # (a) the same number of forward passes on in-memory batches of real tiles
        first = np.pad(images[0], ((0, max(0, tile - h)), (0, max(0, tile - w))), mode="reflect")
        corners = (tile_grid(*first.shape, tile, overlap) * batch_size)[:batch_size]
        batch = np.stack([first[y : y + tile, x : x + tile] for y, x in corners])
        batch = np.repeat(batch[..., None], 3, axis=-1)

        def raw() -> float:
            t0 = time.perf_counter()
            for _ in range(engine["n_batches"]):
                for p in predictors:
                    np.asarray(p(batch))
            return time.perf_counter() - t0

        # (c) the paper's approach, zarr to zarr, at equal and at zero overlap
        def paper(ov: int) -> float:
            t0 = time.perf_counter()
            for image_id in store.images["image_id"]:
                img = store.read(image_id)
                prob, mask = _paper_predict(
                    img, models, tile=tile, overlap=ov, batch_size=batch_size, threshold=0.5
                )
                for name, arr in (("prob_paper", prob), ("mask_paper", mask)):
                    store.create_label(image_id, name, np.uint8)
                    store.write_label(image_id, name, arr)
            return time.perf_counter() - t0

        engine: dict = {}
        times: dict[str, list[float]] = {"b": [], "a": [], "c": [], "c0": []}
        if student_predictors:
            times["d"] = []
        for _ in range(repeats):  # interleaved, best of `repeats` (shared machines are noisy)
            times["b"].append(pipeline())
            times["a"].append(raw())
            times["c"].append(paper(overlap))
            times["c0"].append(paper(0))
            if student_predictors:
                times["d"].append(student_pipeline())
        t_a, t_b, t_c, t_c0 = (min(times[k]) for k in ("a", "b", "c", "c0"))
        n_batches = engine["n_batches"]
        n_tiles = engine["n_tiles"]
    finally:
        tmp.cleanup()
    patches = n_batches * batch_size * n_models
    out = {
        "model": model,
        "n_models": n_models,
        "n_images": n_images,
        "shape": tuple(shape),
        "tile": tile,
        "overlap": overlap,
        "batch_size": batch_size,
        "tta": tta,
        "store": store_kind,
        "n_batches": n_batches,
        "model_patches": patches,
        "a_s": t_a,
        "b_s": t_b,
        "c_s": t_c,
        "c_nonoverlap_s": t_c0,
        "a_patches_per_s": patches / t_a,
        "b_patches_per_s": patches / t_b,
        "a_mpx_per_s": mpx / t_a,
        "b_mpx_per_s": mpx / t_b,
        "c_mpx_per_s": mpx / t_c,
        "c_nonoverlap_mpx_per_s": mpx / t_c0,
        "b_compute_s": engine["compute_s"],
        "repeats": repeats,
        "all_s": times,
        "b_over_a": t_a / t_b,
        "b_over_c": t_c / t_b,
        "b_over_c_nonoverlap": t_c0 / t_b,
    }
    if student_model is not None:
        from ..distill import count_flops

        t_d = min(times["d"])
        student_flops = count_flops(student_model)
        ensemble_flops = sum(count_flops(m) for m in models)
        out.update(
            student=str(student),
            student_s=t_d,
            student_patches_per_s=n_tiles / t_d,
            ensemble_patches_per_s=n_tiles / t_b,
            speedup=t_b / t_d,
            student_flops=student_flops,
            ensemble_flops=ensemble_flops,
            flops_ratio=student_flops / ensemble_flops,
        )
    if verbose:
        for key, value in out.items():
            print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")
    return out
