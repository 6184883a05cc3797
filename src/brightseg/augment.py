"""Data augmentation: 21 variants per annotated patch, and the training store.

Every annotated image/mask pair (a patch) becomes ``n_variants`` (21) samples,
as in the paper (857 pairs -> 17,997 samples):

* variant 0 is the untouched pair;
* variants 1..20 are one *primary* photometric transform (or none) from
  :data:`PRIMARY` followed by one *secondary* geometric transform from
  :data:`SECONDARY`, both drawn per variant.

Everything is deterministic.  A variant's transform choice and the random
parameters albumentations draws come from seeds derived by SHA-256 from
``(seed, pair id, variant index)`` (see :func:`stable_seed`), so rerunning
gives identical arrays and adding an image does not change the variants of
the others.  Masks are warped with nearest-neighbour interpolation and
re-binarised after every primitive transform; images stay uint8 with three
channels.

:func:`build_training_store` streams patches and their variants into a zarr 3
store (``images`` uint8 ``(N, H, W, 3)``, ``masks`` uint8 ``(N, H, W)``) and
writes a parquet manifest with one row per sample.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import zarr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from zarr.codecs import BloscCodec

from .errors import InputError  # noqa: E402
from .io import atomic_path, write_parquet  # noqa: E402
from .patches import make_patches, to_rgb_uint8  # noqa: E402
from .progress import progress  # noqa: E402

log = logging.getLogger(__name__)

NEAREST = cv2.INTER_NEAREST
REFLECT = cv2.BORDER_REFLECT_101

#: A factory takes the patch ``(height, width)`` and returns one albumentations
#: transform (``p=1``); composites return an :class:`albumentations.Sequential`.
TransformFactory = Callable[[int, int], A.BasicTransform | A.BaseCompose]

MANIFEST_COLUMNS = [
    "patch_id",
    "index",
    "source_image",
    "plate",
    "modality",
    "patch_row",
    "patch_col",
    "variant",
    "primary",
    "secondary",
    "foreground_fraction",
    "split",
]

# --------------------------------------------------------------------------- pools


def _none(h: int, w: int) -> A.BasicTransform:
    return A.NoOp(p=1.0)


def _elastic(h: int, w: int) -> A.BasicTransform:
    # albumentations 2.x defaults (alpha=1, sigma=50) move pixels by ~0.01 px.
    # alpha=50, sigma=5 with uniform noise (the classic Simard setting) moves
    # them by ~2 px on average and up to ~5 px: visible, cell-shape preserving.
    return A.ElasticTransform(
        alpha=50.0,
        sigma=5.0,
        noise_distribution="uniform",
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=NEAREST,
        border_mode=REFLECT,
        p=1.0,
    )


def _grid_distortion(h: int, w: int) -> A.BasicTransform:
    return A.GridDistortion(
        num_steps=5,
        distort_limit=(-0.3, 0.3),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=NEAREST,
        border_mode=REFLECT,
        p=1.0,
    )


def _affine(h: int, w: int) -> A.BasicTransform:
    return A.Affine(
        scale=(0.8, 1.2),
        translate_percent=(-0.1, 0.1),
        rotate=(-45.0, 45.0),
        shear=(-10.0, 10.0),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=NEAREST,
        border_mode=REFLECT,
        p=1.0,
    )


def _random_resized_crop(h: int, w: int) -> A.BasicTransform:
    return A.RandomResizedCrop(
        size=(h, w),
        scale=(0.5, 1.0),
        ratio=(0.75, 4.0 / 3.0),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=NEAREST,
        p=1.0,
    )


def pad_and_crop(h: int, w: int) -> A.BaseCompose:
    """PadAndCrop: reflect-pad by 25 % on every side, then randomly crop back.

    The crop window is uniform over the padded image, so the content is
    shifted by up to 25 % of the patch size in each direction, with the
    uncovered border filled by mirrored content instead of black.  This is the
    "pad then random crop" member of the secondary pool.
    """
    pad_h, pad_w = max(1, h // 4), max(1, w // 4)
    return A.Sequential(
        [
            A.Pad(padding=(pad_w, pad_h, pad_w, pad_h), border_mode=REFLECT, p=1.0),
            A.RandomCrop(height=h, width=w, p=1.0),
        ],
        p=1.0,
    )


def division_shift(h: int, w: int) -> A.BaseCompose:
    """DivisionShift: simulate a dividing / moving cell.

    A small, local elastic deformation (alpha 30, sigma 4: ~1-3 px of
    membrane wobble, as when a rounded cell pinches into two) followed by a
    small translation (up to 6 % of the patch) with reflected borders, as the
    daughter cells drift between frames.
    """
    return A.Sequential(
        [
            A.ElasticTransform(
                alpha=30.0,
                sigma=4.0,
                noise_distribution="uniform",
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=NEAREST,
                border_mode=REFLECT,
                p=1.0,
            ),
            A.Affine(
                translate_percent=(-0.06, 0.06),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=NEAREST,
                border_mode=REFLECT,
                p=1.0,
            ),
        ],
        p=1.0,
    )


def motion_crop(h: int, w: int) -> A.BaseCompose:
    """MotionCrop: simulate stage drift during acquisition.

    A linear motion blur (kernel 3-7 px, any direction) of the image followed
    by a random crop of 70-100 % of the area resized back to the patch size
    (the field of view moved while the camera exposed).  The mask is only
    cropped and resized (nearest neighbour), never blurred.
    """
    return A.Sequential(
        [
            A.MotionBlur(blur_limit=(3, 7), p=1.0),
            A.RandomResizedCrop(
                size=(h, w),
                scale=(0.7, 1.0),
                ratio=(0.85, 1.0 / 0.85),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=NEAREST,
                p=1.0,
            ),
        ],
        p=1.0,
    )


def crowding_affine(h: int, w: int) -> A.BaseCompose:
    """CrowdingAffine: simulate a denser well.

    Scale the patch down to 50-80 % (small rotation, slight shear) and fill
    the border by reflection, so the patch holds more, smaller cells, as in a
    confluent well imaged at the same magnification.
    """
    return A.Sequential(
        [
            A.Affine(
                scale=(0.5, 0.8),
                rotate=(-15.0, 15.0),
                shear=(-5.0, 5.0),
                interpolation=cv2.INTER_AREA,
                mask_interpolation=NEAREST,
                border_mode=REFLECT,
                p=1.0,
            )
        ],
        p=1.0,
    )


#: Photometric transforms (the image only; masks untouched).
PRIMARY: dict[str, TransformFactory] = {
    "none": _none,
    "MotionBlur": lambda h, w: A.MotionBlur(blur_limit=(3, 7), p=1.0),
    "Defocus": lambda h, w: A.Defocus(radius=(1, 3), alias_blur=(0.1, 0.3), p=1.0),
    "ZoomBlur": lambda h, w: A.ZoomBlur(max_factor=(1.0, 1.1), step_factor=(0.01, 0.03), p=1.0),
    "GaussNoise": lambda h, w: A.GaussNoise(std_range=(0.02, 0.08), per_channel=False, p=1.0),
    "ISONoise": lambda h, w: A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.5), p=1.0),
    "HueSaturationValue": lambda h, w: A.HueSaturationValue(
        hue_shift_limit=(-20, 20), sat_shift_limit=(-30, 30), val_shift_limit=(-20, 20), p=1.0
    ),
    "ChannelShuffle": lambda h, w: A.ChannelShuffle(p=1.0),
    "RandomBrightnessContrast": lambda h, w: A.RandomBrightnessContrast(
        brightness_limit=(-0.2, 0.2), contrast_limit=(-0.2, 0.2), p=1.0
    ),
    "RandomGamma": lambda h, w: A.RandomGamma(gamma_limit=(80, 120), p=1.0),
    "CLAHE": lambda h, w: A.CLAHE(clip_limit=(1.0, 4.0), tile_grid_size=(8, 8), p=1.0),
    "ToGray": lambda h, w: A.ToGray(num_output_channels=3, p=1.0),
    "InvertImg": lambda h, w: A.InvertImg(p=1.0),
}

#: Colour transforms that mix or reorder the channels: on the three focal planes of a
#: multi-focal image (:mod:`brightseg.focus`) they would blend planes or swap their order,
#: so multi-focal patches draw their primary from the others (which treat every channel
#: alike: one blur kernel, one noise field, one gamma for all planes).
CHANNEL_MIXING = ("ISONoise", "HueSaturationValue", "ChannelShuffle", "CLAHE", "ToGray")

#: Geometric transforms (image and mask warped together), incl. the composites.
SECONDARY: dict[str, TransformFactory] = {
    "ElasticTransform": _elastic,
    "GridDistortion": _grid_distortion,
    "Affine": _affine,
    "RandomResizedCrop": _random_resized_crop,
    "PadAndCrop": pad_and_crop,
    "HorizontalFlip": lambda h, w: A.HorizontalFlip(p=1.0),
    "VerticalFlip": lambda h, w: A.VerticalFlip(p=1.0),
    "RandomRotate90": lambda h, w: A.RandomRotate90(p=1.0),
    "Transpose": lambda h, w: A.Transpose(p=1.0),
    "DivisionShift": division_shift,
    "MotionCrop": motion_crop,
    "CrowdingAffine": crowding_affine,
}

# --------------------------------------------------------------------------- seeding


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from SHA-256 of ``":".join(map(str, parts))``.

    Independent of Python's hash randomisation, the platform and the order in
    which images are processed.
    """
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (2**32)


def variant_plan(
    image_id: str, seed: int, n_variants: int = 21, *, planes: int = 1
) -> list[tuple[int, str, str]]:
    """Which transforms each variant of one pair gets.

    Parameters
    ----------
    image_id : str
        Identifier of the pair (for patches, ``<source image>_r<row>_c<col>``).
    seed : int
        Global seed (from the config).
    n_variants : int
        Number of variants including the untouched variant 0.
    planes : int
        1 for a grey image; 3 for three focal planes, whose primaries exclude
        :data:`CHANNEL_MIXING`.

    Returns
    -------
    list of (k, primary_name, secondary_name)
        Variant 0 is ``(0, "none", "none")``; for ``k >= 1`` the names are drawn
        uniformly from :data:`PRIMARY` (less :data:`CHANNEL_MIXING` for planes) and
        :data:`SECONDARY` with a generator seeded by ``stable_seed(seed, image_id, k)``.
    """
    if n_variants < 1:
        raise InputError(None, f"n_variants must be >= 1, got {n_variants}")
    primaries, secondaries = list(PRIMARY), list(SECONDARY)
    if planes > 1:
        primaries = [p for p in primaries if p not in CHANNEL_MIXING]
    plan = [(0, "none", "none")]
    for k in range(1, n_variants):
        rng = np.random.default_rng(stable_seed(seed, image_id, k))
        p = primaries[int(rng.integers(len(primaries)))]
        s = secondaries[int(rng.integers(len(secondaries)))]
        plan.append((k, p, s))
    return plan


# --------------------------------------------------------------------------- applying


def _primitives(transform) -> list:
    """Flatten nested compositions into their primitive transforms."""
    if isinstance(transform, A.BaseCompose):
        out = []
        for t in transform.transforms:
            out.extend(_primitives(t))
        return out
    return [transform]


def _check_u8_pair(image: np.ndarray, mask: np.ndarray, name: str | None):
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            name, f"expected a uint8 (H, W, 3) image, got {image.dtype} of shape {image.shape}"
        )
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise InputError(name, f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    values = np.unique(mask)
    if not (np.all(np.isin(values, (0, 1))) or np.all(np.isin(values, (0, 255)))):
        raise InputError(name, "mask must be binary (0/1 or 0/255)")
    return image, (mask > 0).astype(np.uint8)


def _resolve(name: str, pool: Mapping[str, TransformFactory], kind: str) -> TransformFactory:
    if name == "none":
        return _none
    try:
        return pool[name]
    except KeyError:
        raise InputError(
            None, f"unknown {kind} transform {name!r}; choose from {sorted(pool)}"
        ) from None


def augment_variant(
    image: np.ndarray,
    mask: np.ndarray,
    primary: str,
    secondary: str,
    *,
    seed: int,
    extra: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Apply one primary and one secondary transform to a pair.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3)
    mask : ndarray of uint8, shape (H, W)
        0/1 or 0/255.
    primary, secondary : str
        Keys of :data:`PRIMARY` and :data:`SECONDARY` (``"none"`` allowed for
        both).
    seed : int
        Seeds the random parameters; step ``i`` of the chain uses
        ``stable_seed(seed, i)``.
    extra : list of ndarray, optional
        Further integer maps (instance labels, nucleus labels; uint16) warped with the mask,
        nearest interpolation, values kept.  They do not change the image or mask drawn.

    Returns
    -------
    image : ndarray of uint8, shape (H, W, 3)
    mask : ndarray of uint8, shape (H, W), values in {0, 1}
    extra : list of ndarray
        Only when ``extra`` is given: the warped maps.
    """
    image, mask = _check_u8_pair(image, mask, None)
    h, w = mask.shape
    chain = _primitives(_resolve(primary, PRIMARY, "primary")(h, w))
    chain += _primitives(_resolve(secondary, SECONDARY, "secondary")(h, w))
    img = image
    m255 = mask * np.uint8(255)
    maps = None if extra is None else [np.ascontiguousarray(e) for e in extra]
    for i, t in enumerate(chain):
        if isinstance(t, A.NoOp):
            continue
        if maps is None:
            out = A.Compose([t], seed=stable_seed(seed, i))(image=img, mask=m255)
        else:
            out = A.Compose([t], seed=stable_seed(seed, i))(image=img, mask=m255, masks=maps)
            maps = [np.ascontiguousarray(e) for e in out["masks"]]
        img = np.ascontiguousarray(out["image"])
        # re-binarise after every primitive (nearest interpolation keeps 0/255,
        # this guards against any interpolating or filling step).
        m255 = np.where(np.asarray(out["mask"]) > 127, 255, 0).astype(np.uint8)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape != image.shape or m255.shape != mask.shape:
        raise RuntimeError(f"{primary}+{secondary} changed the shape {image.shape} -> {img.shape}")
    if maps is not None:
        return img, (m255 > 127).astype(np.uint8), maps
    return img, (m255 > 127).astype(np.uint8)


def augment_pair(
    image_u8_hw3: np.ndarray,
    mask_u8_hw: np.ndarray,
    image_id: str,
    *,
    seed: int,
    n_variants: int = 21,
    planes: int = 1,
    extra: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """All variants of one image/mask pair.

    Parameters
    ----------
    image_u8_hw3 : ndarray of uint8, shape (H, W, 3)
    mask_u8_hw : ndarray of uint8, shape (H, W)
        0/1 or 0/255.
    image_id : str
        Stable identifier of the pair; with ``seed`` and the variant index it
        determines everything random.
    seed : int
        Global seed.
    n_variants : int
        Number of variants, including the untouched variant 0.
    planes : int
        3 when the channels are focal planes (see :func:`variant_plan`); a geometric
        transform moves all channels alike either way.
    extra : dict of str to ndarray, optional
        Integer maps warped with the mask (e.g. ``labels``, ``nuclei``), see
        :func:`augment_variant`; each variant then has them under the same keys.

    Returns
    -------
    list of dict
        Keys ``k``, ``primary``, ``secondary``, ``image`` (uint8 (H, W, 3)) and
        ``mask`` (uint8 (H, W) in {0, 1}), plus the keys of ``extra``; variant 0 equals
        the input.
    """
    image, mask = _check_u8_pair(image_u8_hw3, mask_u8_hw, image_id)
    names = list(extra or {})
    out = []
    for k, p, s in variant_plan(image_id, seed, n_variants, planes=planes):
        maps: list[np.ndarray] = []
        if k == 0:
            img, m = image.copy(), mask.copy()
            maps = [np.array(extra[n]) for n in names]
        elif names:
            img, m, maps = augment_variant(
                image,
                mask,
                p,
                s,
                seed=stable_seed(seed, image_id, k, "t"),
                extra=[extra[n] for n in names],
            )
        else:
            img, m = augment_variant(image, mask, p, s, seed=stable_seed(seed, image_id, k, "t"))
        out.append(
            {
                "k": k,
                "primary": p,
                "secondary": s,
                "image": img,
                "mask": m,
                **dict(zip(names, maps, strict=True)),
            }
        )
    return out


# --------------------------------------------------------------------------- store


class _BlockWriter:
    """Append samples to growing zarr arrays in chunk-aligned blocks."""

    def __init__(self, images, masks, block: int, extra: dict | None = None):
        self.images, self.masks, self.block = images, masks, block
        self.extra = dict(extra or {})
        self.buf_img: list[np.ndarray] = []
        self.buf_mask: list[np.ndarray] = []
        self.buf_extra: dict[str, list[np.ndarray]] = {k: [] for k in self.extra}
        self.n = 0

    def add(self, image: np.ndarray, mask: np.ndarray, extra: dict | None = None) -> int:
        self.buf_img.append(image)
        self.buf_mask.append(mask)
        for k in self.extra:
            self.buf_extra[k].append(extra[k])
        index = self.n + len(self.buf_img) - 1
        if len(self.buf_img) >= self.block:
            self.flush()
        return index

    def flush(self) -> None:
        if not self.buf_img:
            return
        m = len(self.buf_img)
        start, stop = self.n, self.n + m
        self.images.resize((stop, *self.images.shape[1:]))
        self.masks.resize((stop, *self.masks.shape[1:]))
        self.images[start:stop] = np.stack(self.buf_img)
        self.masks[start:stop] = np.stack(self.buf_mask)
        for k, arr in self.extra.items():
            arr.resize((stop, *arr.shape[1:]))
            arr[start:stop] = np.stack(self.buf_extra[k]).astype(arr.dtype)
            self.buf_extra[k] = []
        self.n = stop
        self.buf_img, self.buf_mask = [], []


def _pair_field(pair: Mapping, key: str, index: int):
    try:
        return pair[key]
    except (KeyError, TypeError):
        raise InputError(
            None, f"training pair #{index} lacks the {key!r} field (has {list(pair)})"
        ) from None


def _label_field(pair: Mapping, key: str, index: int, size: int) -> np.ndarray:
    """A pair's label map as uint16, padded like :func:`make_patches` pads the image."""
    arr = np.asarray(_pair_field(pair, key, index))
    shape = np.asarray(_pair_field(pair, "mask", index)).shape
    if arr.shape != shape:
        raise InputError(
            str(pair.get("image_id")), f"{key} shape {arr.shape} != mask shape {shape}"
        )
    if arr.dtype.kind not in "iub" or (arr.size and (arr.min() < 0 or arr.max() > 65535)):
        raise InputError(str(pair.get("image_id")), f"{key} must be integer labels in [0, 65535]")
    h, w = shape
    pad = ((0, max(0, size - h)), (0, max(0, size - w)))
    if pad[0][1] or pad[1][1]:
        arr = np.pad(arr, pad, mode="reflect")
    return arr.astype(np.uint16)


def build_training_store(
    pairs: Iterable[Mapping],
    out_zarr: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    patch_size: int = 256,
    stride: int | None = None,
    min_foreground: float = 0.0,
    n_variants: int = 21,
    seed: int = 0,
    chunk_samples: int = 8,
    with_labels: bool = False,
    with_nuclei: bool = False,
    working_pixel_size_um: float | None = None,
) -> pd.DataFrame:
    """Tile, augment and store a training set.

    Parameters
    ----------
    pairs : iterable of dict
        Each with ``image_id`` (unique str), ``plate``, ``modality``, ``image``
        (float32 2-D in [0, 1], or ``(H, W, 3)``: three focal planes) and ``mask``
        (uint8 2-D, 0/1).  Consumed once, one pair at a time (a generator is fine).
        Grey and three-plane images cannot be mixed (:class:`InputError`); a store
        of three-plane images has the attribute ``planes: 3``.
    out_zarr : path-like
        Destination zarr 3 group with arrays ``images`` (uint8 (N, H, W, 3))
        and ``masks`` (uint8 (N, H, W)), chunked ``(chunk_samples, H, W[, 3])``,
        blosc/zstd.  Written atomically.
    out_manifest : path-like
        Destination parquet, one row per sample (columns
        :data:`MANIFEST_COLUMNS`; ``index`` is the row in the zarr arrays,
        ``split`` is empty until :func:`brightseg.split.apply_split`).
    patch_size, stride, min_foreground
        See :func:`brightseg.patches.make_patches`.
    n_variants : int
        Variants per patch (21: the original plus 20 augmentations).
    seed : int
        Global seed; each patch's variants are seeded from
        ``(seed, "<image_id>_r<row>_c<col>", k)``.
    chunk_samples : int
        Samples per zarr chunk.
    with_labels, with_nuclei : bool
        Also store the pairs' ``labels`` (instance labels) and ``nuclei`` (nucleus labels or
        mask) as uint16 arrays ``labels`` / ``nuclei`` ``(N, H, W)``, cut and warped exactly
        like the masks (nearest interpolation): the 3-class and border-weighted targets of
        :mod:`brightseg.targets` are computed from them at training time.  Off, the store is
        byte-identical to one written without these options.
    working_pixel_size_um : float, optional
        Recorded as the store's attribute ``working_pixel_size_um``: the pairs are already
        resampled to it (:func:`brightseg.scale.pair_to_working`); training copies it into
        the model card, and inference resamples images to it.

    Returns
    -------
    pandas.DataFrame
        The manifest.

    Notes
    -----
    Memory holds one source image's variants plus a write block, never the
    whole set.  Variant sample ids are ``f"{image_id}_r{row}_c{col}_v{k:02d}"``.
    """

    out_zarr, out_manifest = Path(out_zarr), Path(out_manifest)
    size = int(patch_size)
    block = chunk_samples * max(1, -(-64 // chunk_samples))
    rows: list[dict] = []
    seen: set[str] = set()
    plane_kinds: dict[int, str] = {}  # planes -> first image with that many
    with atomic_path(out_zarr, is_dir=True) as tmp:
        root = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        codec = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
        images = root.create_array(
            name="images",
            shape=(0, size, size, 3),
            chunks=(chunk_samples, size, size, 3),
            dtype="uint8",
            compressors=[codec],
            fill_value=0,
            dimension_names=("sample", "y", "x", "c"),
        )
        masks = root.create_array(
            name="masks",
            shape=(0, size, size),
            chunks=(chunk_samples, size, size),
            dtype="uint8",
            compressors=[codec],
            fill_value=0,
            dimension_names=("sample", "y", "x"),
        )
        extra_names = [n for n, on in (("labels", with_labels), ("nuclei", with_nuclei)) if on]
        extra_arrays = {
            n: root.create_array(
                name=n,
                shape=(0, size, size),
                chunks=(chunk_samples, size, size),
                dtype="uint16",
                compressors=[codec],
                fill_value=0,
                dimension_names=("sample", "y", "x"),
            )
            for n in extra_names
        }
        writer = _BlockWriter(images, masks, block, extra_arrays)
        for i, pair in enumerate(progress(pairs, desc="augment")):
            image_id = str(_pair_field(pair, "image_id", i))
            if image_id in seen:
                raise InputError(image_id, "image_id occurs twice among the training pairs")
            seen.add(image_id)
            plate = str(_pair_field(pair, "plate", i))
            modality = str(_pair_field(pair, "modality", i))
            image = _pair_field(pair, "image", i)
            planes = int(np.shape(image)[2]) if np.ndim(image) == 3 else 1
            plane_kinds.setdefault(planes, f"{image_id} (plate {plate})")
            if len(plane_kinds) > 1:
                raise InputError(
                    out_manifest,
                    "training images differ in focal planes: "
                    + ", ".join(f"{n} plane(s) e.g. {ex}" for n, ex in plane_kinds.items())
                    + "; train on images with the same planes (sheet z_planes / z_select)",
                )
            patches = make_patches(
                image,
                _pair_field(pair, "mask", i),
                size=size,
                stride=stride,
                min_foreground=min_foreground,
                name=image_id,
            )
            if not patches:
                log.warning("%s: no patch reaches min_foreground=%g", image_id, min_foreground)
            full_maps = {n: _label_field(pair, n, i, size) for n in extra_names}
            for r, c, img_patch, mask_patch in patches:
                base = f"{image_id}_r{r}_c{c}"
                maps = {n: m[r : r + size, c : c + size] for n, m in full_maps.items()}
                for v in augment_pair(
                    to_rgb_uint8(img_patch),
                    mask_patch,
                    base,
                    seed=seed,
                    n_variants=n_variants,
                    planes=planes,
                    extra=maps or None,
                ):
                    index = writer.add(v["image"], v["mask"], v)
                    rows.append(
                        {
                            "patch_id": f"{base}_v{v['k']:02d}",
                            "index": index,
                            "source_image": image_id,
                            "plate": plate,
                            "modality": modality,
                            "patch_row": r,
                            "patch_col": c,
                            "variant": v["k"],
                            "primary": v["primary"],
                            "secondary": v["secondary"],
                            "foreground_fraction": float(v["mask"].mean()),
                            "split": "",
                        }
                    )
        writer.flush()
        if not seen:
            raise InputError(out_manifest, "no annotated image/mask pairs to build a training set")
        if not rows:
            raise InputError(
                out_manifest,
                f"every patch has less than min_foreground={min_foreground} foreground",
            )
        root.attrs.update(
            {
                "patch_size": size,
                "stride": stride if stride is None else int(stride),
                "n_variants": int(n_variants),
                "seed": int(seed),
                "min_foreground": float(min_foreground),
                "n_samples": len(rows),
                "n_source_images": len(seen),
                **({"planes": max(plane_kinds)} if max(plane_kinds) > 1 else {}),
                **(
                    {"working_pixel_size_um": float(working_pixel_size_um)}
                    if working_pixel_size_um is not None
                    else {}
                ),
            }
        )
    # the manifest is written last: it marks the store as complete
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("index", "patch_row", "patch_col", "variant"):
        manifest[col] = manifest[col].astype(np.int64)
    write_parquet(manifest, out_manifest)
    log.info(
        "training store: %d samples from %d patches of %d images",
        len(manifest),
        int((manifest["variant"] == 0).sum()),
        len(seen),
    )
    return manifest


def open_training_store(path: str | os.PathLike):
    """Open a store written by :func:`build_training_store` read-only.

    Returns
    -------
    images, masks : zarr.Array
        uint8 ``(N, H, W, 3)`` and ``(N, H, W)``; index them with the
        manifest's ``index`` column.
    """

    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "training store does not exist")
    try:
        root = zarr.open_group(store=str(path), mode="r")
        return root["images"], root["masks"]
    except Exception as exc:  # noqa: BLE001 - corrupt store is bad input
        raise InputError(
            path, f"cannot open training store ({type(exc).__name__}: {exc})"
        ) from None


def training_store_working_pixel_size(path: str | os.PathLike) -> float | None:
    """The pixel size (um) the store's images were resampled to, or None (their own).

    Recorded by :func:`build_training_store` (``working_pixel_size_um``); models trained on
    the store see images at this pixel size (:mod:`brightseg.scale`).
    """
    value = _store_attr(path, "working_pixel_size_um", None)
    return None if value is None else float(value)


def training_store_planes(path: str | os.PathLike) -> int:
    """Focal planes of a training store's images: 3 (multi-focal) or 1 (grey replicated)."""
    return int(_store_attr(path, "planes", 1))


def _store_attr(path: str | os.PathLike, key: str, default):
    """One attribute of a training store (``default`` if absent); a corrupt store is bad input."""
    try:
        return zarr.open_group(store=str(path), mode="r").attrs.get(key, default)
    except Exception as exc:  # noqa: BLE001 - corrupt store is bad input
        raise InputError(
            path, f"cannot open training store ({type(exc).__name__}: {exc})"
        ) from None


# --------------------------------------------------------------------------- gallery

#: Named examples of the gallery figure: (title, primary, secondary).
GALLERY: list[tuple[str, str, str]] = [
    ("original", "none", "none"),
    ("ElasticTransform", "none", "ElasticTransform"),
    ("GridDistortion", "none", "GridDistortion"),
    ("Affine", "none", "Affine"),
    ("PadAndCrop", "none", "PadAndCrop"),
    ("DivisionShift", "none", "DivisionShift"),
    ("MotionCrop", "none", "MotionCrop"),
    ("CrowdingAffine", "none", "CrowdingAffine"),
    ("GaussNoise + HFlip", "GaussNoise", "HorizontalFlip"),
    ("CLAHE + Rot90", "CLAHE", "RandomRotate90"),
    ("Defocus + VFlip", "Defocus", "VerticalFlip"),
    ("InvertImg + Transpose", "InvertImg", "Transpose"),
]


def gallery_figure(examples: list[dict]):
    """Figure of augmentation examples (as the paper's Fig. 2).

    Parameters
    ----------
    examples : list of dict
        Each with ``name`` (column title), ``image`` (uint8 (H, W, 3) or 2-D
        grey) and ``mask`` (2-D binary).

    Returns
    -------
    matplotlib.figure.Figure
        Two rows: images above their masks, one column per example.  Uses an
        Agg canvas, no pyplot state.
    """

    if not examples:
        raise InputError(None, "gallery_figure needs at least one example")
    n = len(examples)
    fig = Figure(figsize=(1.7 * n, 3.7), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False)
    for j, ex in enumerate(examples):
        img = np.asarray(ex["image"])
        if img.ndim == 2:
            axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
        else:
            axes[0, j].imshow(img)
        axes[1, j].imshow(np.asarray(ex["mask"]) > 0, cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(str(ex["name"]), fontsize=7)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("mask", fontsize=8)
    fig.subplots_adjust(left=0.03, right=0.99, top=0.9, bottom=0.02, wspace=0.05, hspace=0.1)
    return fig


def make_gallery(
    image: np.ndarray,
    mask: np.ndarray,
    out_png: str | os.PathLike,
    *,
    seed: int,
    size: int = 256,
) -> list[dict]:
    """Render :data:`GALLERY` for one annotated image and save it as PNG.

    Parameters
    ----------
    image : ndarray
        float 2-D in [0, 1], or uint8 (H, W, 3).
    mask : ndarray
        2-D binary mask.
    out_png : path-like
        Written atomically; the bytes are identical on rerun.
    seed : int
        Global seed; example ``name`` uses ``stable_seed(seed, "gallery", name)``.
    size : int
        A larger image is cut to the ``size`` tile with most foreground.

    Returns
    -------
    list of dict
        The examples drawn (``name``, ``image``, ``mask``).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.dtype == np.uint8:
        grey = image[..., 0].astype(np.float32) / 255.0
    else:
        grey = image
    patches = make_patches(grey, mask, size=size, name="gallery")
    best = max(range(len(patches)), key=lambda i: (float(patches[i][3].mean()), -i))
    img_u8 = to_rgb_uint8(patches[best][2])
    m = patches[best][3]
    examples = []
    for name, p, s in GALLERY:
        if p == "none" and s == "none":
            ei, em = img_u8, m
        else:
            ei, em = augment_variant(img_u8, m, p, s, seed=stable_seed(seed, "gallery", name))
        examples.append({"name": name, "image": ei, "mask": em})
    fig = gallery_figure(examples)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None}, dpi=100)
    return examples
