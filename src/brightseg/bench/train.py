"""``brightseg bench train``: step time per model and precision, and input-pipeline throughput."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import zarr

from ..losses import get_loss
from ..models import build_model
from ..train import PatchData, _dtype_policy, _Sampler, make_dataset

log = logging.getLogger(__name__)


def _synthetic_store(path: Path, n: int, size: int, seed: int = 0) -> tuple[Path, Path]:

    rng = np.random.default_rng(seed)
    store = path / "patches.zarr"
    group = zarr.open_group(str(store), mode="w")
    chunk = (1, size, size)
    img = group.create_array("images", shape=(n, size, size, 3), chunks=(*chunk, 3), dtype="uint8")
    msk = group.create_array("masks", shape=(n, size, size), chunks=chunk, dtype="uint8")
    grey = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    img[...] = np.repeat(grey[..., None], 3, axis=-1)
    masks = (grey > 200).astype(np.uint8)
    msk[...] = masks
    manifest = path / "manifest.parquet"
    split = np.where(np.arange(n) < max(1, n * 3 // 4), "train", "val")
    split[-1] = "val"
    pd.DataFrame(
        {
            "index": np.arange(n),
            "split": split,
            "foreground_fraction": masks.reshape(n, -1).mean(axis=1),
            "source_image": [f"img{i // 4}" for i in range(n)],
        }
    ).to_parquet(manifest, index=False)
    return store, manifest


def bench_train(
    architectures=("small_unet", "vgg16_attention_unet"),
    precisions=("float32", "mixed_bfloat16"),
    batch: int = 16,
    size: int = 256,
    steps: int = 3,
    pipeline_batches: int = 20,
) -> pd.DataFrame:
    """Time training steps per model/precision and the input pipeline.

    The pipeline is measured on a synthetic zarr store (one chunk per patch,
    read from disk, not cached in memory) in a temporary directory:
    ``pipeline_batches_per_s`` after one warm-up batch.  Model steps use
    ``train_on_batch`` on a fixed batch after one warm-up (tracing) step.

    Returns
    -------
    DataFrame
        One row per (architecture, precision): ``architecture, precision,
        batch, size, step_s, model_steps_per_s, pipeline_batches_per_s,
        pipeline_over_model`` (the last should be >= 2 for the pipeline never
        to starve the model).
    """

    with tempfile.TemporaryDirectory() as tmp:
        store, manifest = _synthetic_store(Path(tmp), max(4 * batch, 8), size)
        data = PatchData(store, manifest, in_memory=False)
        sampler = _Sampler(data, batch, pipeline_batches + 1, size, 0, wait=False)
        ds = make_dataset(data, sampler, size)
        it = iter(ds)
        next(it)
        t0 = time.perf_counter()
        for _ in range(pipeline_batches):
            x, y = next(it)
        pipe = pipeline_batches / (time.perf_counter() - t0)
        sampler.close()
        del it
        first = data.train_index[:batch]
        x, y = data.read(np.column_stack([first, np.zeros((first.size, 2), np.int64)]), size)

    rows = []
    for arch in architectures:
        for prec in precisions:
            with _dtype_policy(prec) as policy:
                model = build_model(arch, (size, size, 3), "none")
                model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss("bce_dice"))
                model.train_on_batch(x, y)
                t0 = time.perf_counter()
                for _ in range(steps):
                    model.train_on_batch(x, y)
                step_s = (time.perf_counter() - t0) / steps
                del model
            rows.append(
                {
                    "architecture": arch,
                    "precision": policy,
                    "batch": batch,
                    "size": size,
                    "step_s": step_s,
                    "model_steps_per_s": 1.0 / step_s,
                    "pipeline_batches_per_s": pipe,
                    "pipeline_over_model": pipe * step_s,
                }
            )
            log.info("bench %s %s: %.3f s/step", arch, policy, step_s)
    return pd.DataFrame(rows)
