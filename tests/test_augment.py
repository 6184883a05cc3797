from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from brightseg import augment as G  # noqa: E402
from brightseg.errors import InputError  # noqa: E402
from brightseg.patches import make_patches, to_rgb_uint8  # noqa: E402

N = 96


def disc_pair(n: int = N, centre=(36, 58), radius=18, seed=0):
    """A float image with a bright textured disc off-centre, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    mask = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < radius**2).astype(np.uint8)
    img = 0.35 + 0.3 * mask + 0.05 * np.sin(xx / 3.0) + 0.03 * rng.standard_normal((n, n))
    return np.clip(img, 0, 1).astype(np.float32), mask


def test_pools_hold_the_paper_transforms():
    assert set(G.PRIMARY) == {
        "none",
        "MotionBlur",
        "Defocus",
        "ZoomBlur",
        "GaussNoise",
        "ISONoise",
        "HueSaturationValue",
        "ChannelShuffle",
        "RandomBrightnessContrast",
        "RandomGamma",
        "CLAHE",
        "ToGray",
        "InvertImg",
    }
    assert {
        "ElasticTransform",
        "GridDistortion",
        "Affine",
        "RandomResizedCrop",
        "PadAndCrop",
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "Transpose",
        "DivisionShift",
        "MotionCrop",
        "CrowdingAffine",
    } <= set(G.SECONDARY)


@pytest.mark.parametrize("name", sorted(G.PRIMARY))
def test_primary_transform_keeps_mask_and_uint8_rgb(name):
    img, mask = disc_pair()
    u8 = to_rgb_uint8(img)
    changed = False
    for seed in range(3):
        out_img, out_mask = G.augment_variant(u8, mask, name, "none", seed=seed)
        assert out_img.dtype == np.uint8 and out_img.shape == (N, N, 3)
        assert out_mask.dtype == np.uint8 and out_mask.shape == (N, N)
        # photometric: the mask is returned untouched (and therefore binary)
        np.testing.assert_array_equal(out_mask, mask)
        changed |= not np.array_equal(out_img, u8)
    # on a grey (equal-channel) image these are identities by construction
    if name not in ("none", "ChannelShuffle", "ToGray"):
        assert changed, f"{name} never changed the image"
    else:
        assert not changed


@pytest.mark.parametrize("name", sorted(G.SECONDARY))
def test_secondary_transform_keeps_binary_mask_and_uint8_rgb(name):
    img, mask = disc_pair()
    u8 = to_rgb_uint8(img)
    changed = False
    for seed in range(3):
        out_img, out_mask = G.augment_variant(u8, mask, "GaussNoise", name, seed=seed)
        assert out_img.dtype == np.uint8 and out_img.shape == (N, N, 3)
        assert out_mask.dtype == np.uint8 and out_mask.shape == (N, N)
        assert set(np.unique(out_mask)) <= {0, 1}
        # the warped disc stays a sizeable object (not erased, not flooded)
        assert 0.3 * mask.sum() < out_mask.sum() < 3.0 * mask.sum() + 0.3 * N * N
        changed |= not np.array_equal(out_mask, mask)
    assert changed, f"{name} never moved the mask"


@pytest.mark.parametrize("name", sorted(G.SECONDARY))
def test_secondary_transforms_warp_image_and_mask_together(name):
    # image = 255 * mask: after any geometric transform the image (minus
    # interpolation at the boundary) must still agree with the mask
    _, mask = disc_pair()
    u8 = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    out_img, out_mask = G.augment_variant(u8, mask, "none", name, seed=5)
    agree = np.mean((out_img[..., 0] > 127) == (out_mask > 0))
    assert agree > 0.97, f"{name}: image and mask disagree on {1 - agree:.1%} of pixels"


def _mean_displacement(transform, n=128, seed=0):
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    coords = np.stack([xx / n, yy / n, np.zeros_like(xx)], axis=-1)
    out = A.Compose([transform], seed=seed)(image=coords)["image"]
    disp = np.hypot(out[..., 0] - coords[..., 0], out[..., 1] - coords[..., 1]) * n
    return float(disp[16:-16, 16:-16].mean())


def test_elastic_transform_actually_moves_pixels():
    # albumentations 2.x defaults barely move anything (~0.01 px) ...
    assert _mean_displacement(A.ElasticTransform(p=1.0)) < 0.1
    # ... our setting moves pixels visibly (mean 1-4 px on a 128 px patch)
    moved = _mean_displacement(G.SECONDARY["ElasticTransform"](128, 128))
    assert 1.0 < moved < 4.0
    # and on a disc mask a clear band of boundary pixels changes
    img, mask = disc_pair()
    _, out_mask = G.augment_variant(to_rgb_uint8(img), mask, "none", "ElasticTransform", seed=3)
    perimeter = 2 * np.pi * 18
    assert np.sum(out_mask != mask) > 0.8 * perimeter


def test_pad_and_crop_shifts_content_with_reflection():
    _, mask = disc_pair()
    u8 = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    shifts = set()
    for seed in range(6):
        _, m = G.augment_variant(u8, mask, "none", "PadAndCrop", seed=seed)
        cy, cx = np.argwhere(m).mean(axis=0)
        shifts.add((round(cy - 36), round(cx - 58)))
        # pure translation by at most 25 % of the size: the disc stays a disc
        assert abs(cy - 36) <= N // 4 + 1 and abs(cx - 58) <= N // 4 + 1
    assert len(shifts) > 3


def test_crowding_affine_shrinks_cells():
    _, mask = disc_pair(centre=(48, 48))
    u8 = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    _, m = G.augment_variant(u8, mask, "none", "CrowdingAffine", seed=0)
    from scipy import ndimage

    labels, n = ndimage.label(m)
    sizes = np.bincount(labels.ravel())[1:]
    # scale 0.5-0.8: the central disc's area shrinks to 25-64 %, reflected copies appear
    assert 0.2 * mask.sum() < sizes.max() < 0.7 * mask.sum()


def test_stable_seed_is_sha256_based():
    expected = int.from_bytes(hashlib.sha256(b"7:img_a:3").digest()[:8], "big") % 2**32
    assert G.stable_seed(7, "img_a", 3) == expected


def test_variant_plan_deterministic_and_covers_pools():
    plan = G.variant_plan("img_a", seed=1)
    assert len(plan) == 21
    assert plan[0] == (0, "none", "none")
    assert [k for k, _, _ in plan] == list(range(21))
    assert plan == G.variant_plan("img_a", seed=1)
    assert plan != G.variant_plan("img_b", seed=1)
    assert plan != G.variant_plan("img_a", seed=2)
    # the plan of variant k only depends on (seed, id, k)
    assert G.variant_plan("img_a", seed=1, n_variants=5) == plan[:5]
    primaries, secondaries = set(), set()
    for i in range(60):
        for _, p, s in G.variant_plan(f"img{i}", seed=0)[1:]:
            primaries.add(p)
            secondaries.add(s)
    assert primaries == set(G.PRIMARY)
    assert secondaries == set(G.SECONDARY)


def test_augment_pair_21_variants_variant0_identity_and_deterministic():
    img, mask = disc_pair()
    u8 = to_rgb_uint8(img)
    out = G.augment_pair(u8, mask, "plateA_img1_r0_c0", seed=11)
    assert len(out) == 21
    assert [v["k"] for v in out] == list(range(21))
    np.testing.assert_array_equal(out[0]["image"], u8)
    np.testing.assert_array_equal(out[0]["mask"], mask)
    plan = G.variant_plan("plateA_img1_r0_c0", seed=11)
    assert [(v["k"], v["primary"], v["secondary"]) for v in out] == plan
    for v in out:
        assert v["image"].dtype == np.uint8 and v["image"].shape == (N, N, 3)
        assert v["mask"].dtype == np.uint8 and set(np.unique(v["mask"])) <= {0, 1}
    again = G.augment_pair(u8, mask * 255, "plateA_img1_r0_c0", seed=11)
    for a, b in zip(out, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    # augmented variants differ from the original
    assert sum(not np.array_equal(v["image"], u8) for v in out[1:]) >= 18


def test_augment_pair_rejects_bad_input():
    img, mask = disc_pair()
    with pytest.raises(InputError, match="uint8"):
        G.augment_pair(img, mask, "x", seed=0)
    with pytest.raises(InputError, match="binary"):
        G.augment_pair(to_rgb_uint8(img), mask * 3, "x", seed=0)
    with pytest.raises(InputError, match="unknown secondary"):
        G.augment_variant(to_rgb_uint8(img), mask, "none", "Nope", seed=0)


# --------------------------------------------------------------------------- store


def make_pairs(ids, n=N):
    pairs = []
    for i, image_id in enumerate(ids):
        seed = int(hashlib.sha256(image_id.encode()).hexdigest()[:6], 16)
        img, mask = disc_pair(n, centre=(30 + i * 7, 40 + i * 5), seed=seed)
        pairs.append(
            {
                "image_id": image_id,
                "plate": "P1" if i % 2 == 0 else "P2",
                "modality": "brightfield" if i % 2 == 0 else "phase",
                "image": img,
                "mask": mask,
            }
        )
    return pairs


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_build_training_store_layout(tmp_path):
    pairs = make_pairs(["A01_f1", "B02_f1"])
    manifest = G.build_training_store(
        iter(pairs), tmp_path / "patches.zarr", tmp_path / "manifest.parquet", patch_size=64, seed=3
    )
    # 96 px with 64 px tiles -> starts 0 and 32 on both axes: 4 patches x 21 variants x 2
    assert len(manifest) == 2 * 4 * 21
    assert list(manifest.columns) == G.MANIFEST_COLUMNS
    on_disk = pd.read_parquet(tmp_path / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, manifest)
    assert manifest["index"].tolist() == list(range(len(manifest)))
    assert (manifest["split"] == "").all()
    assert manifest["patch_id"].is_unique
    assert "A01_f1_r32_c0_v07" in set(manifest["patch_id"])

    images, masks = G.open_training_store(tmp_path / "patches.zarr")
    assert images.shape == (168, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (168, 64, 64) and masks.dtype == np.uint8
    assert images.chunks == (8, 64, 64, 3) and masks.chunks == (8, 64, 64)
    assert "zstd" in str(images.compressors)
    all_masks = masks[:]
    assert set(np.unique(all_masks)) <= {0, 1}
    np.testing.assert_allclose(
        manifest["foreground_fraction"], all_masks.reshape(168, -1).mean(axis=1)
    )

    # variant 0 rows hold the untouched tiles; others follow variant_plan
    ref = {
        (r, c): (ip, mp)
        for r, c, ip, mp in make_patches(pairs[1]["image"], pairs[1]["mask"], size=64)
    }
    rows = manifest[(manifest["source_image"] == "B02_f1")]
    for row in rows.itertuples():
        if row.variant == 0:
            ip, mp = ref[(row.patch_row, row.patch_col)]
            np.testing.assert_array_equal(images[row.index], to_rgb_uint8(ip))
            np.testing.assert_array_equal(masks[row.index], mp)
        plan = G.variant_plan(f"B02_f1_r{row.patch_row}_c{row.patch_col}", seed=3)
        assert (row.primary, row.secondary) == plan[row.variant][1:]
    assert set(rows["modality"]) == {"phase"} and set(rows["plate"]) == {"P2"}


def test_build_training_store_is_byte_deterministic(tmp_path):
    hashes = []
    for run in ("a", "b"):
        out = tmp_path / run
        G.build_training_store(
            make_pairs(["A01_f1", "B02_f1"]),
            out / "patches.zarr",
            out / "manifest.parquet",
            patch_size=64,
            seed=0,
        )
        hashes.append(file_hashes(out))
    assert hashes[0] == hashes[1]
    assert any(k.startswith("patches.zarr/images/c/") for k in hashes[0])
    assert "manifest.parquet" in hashes[0]
    # no temporary leftovers beside the outputs
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "manifest.parquet",
        "patches.zarr",
    ]


def test_adding_an_image_keeps_other_variants(tmp_path):
    base = make_pairs(["A01_f1", "B02_f1"])
    extra = make_pairs(["C03_f2", "A01_f1", "B02_f1"])[:1]
    m1 = G.build_training_store(base, tmp_path / "1.zarr", tmp_path / "1.parquet", patch_size=64)
    m2 = G.build_training_store(
        extra + base, tmp_path / "2.zarr", tmp_path / "2.parquet", patch_size=64
    )
    assert len(m2) == len(m1) + 4 * 21
    i1, k1 = G.open_training_store(tmp_path / "1.zarr")
    i2, k2 = G.open_training_store(tmp_path / "2.zarr")
    idx2 = dict(zip(m2["patch_id"], m2["index"], strict=True))
    a1, a2, b1, b2 = i1[:], i2[:], k1[:], k2[:]
    for pid, idx in zip(m1["patch_id"], m1["index"], strict=True):
        np.testing.assert_array_equal(a1[idx], a2[idx2[pid]])
        np.testing.assert_array_equal(b1[idx], b2[idx2[pid]])


def test_build_training_store_errors_leave_nothing(tmp_path):
    pairs = make_pairs(["A01_f1"])
    with pytest.raises(InputError, match="twice"):
        G.build_training_store(
            pairs + pairs, tmp_path / "p.zarr", tmp_path / "m.parquet", patch_size=64
        )
    with pytest.raises(InputError, match="no annotated"):
        G.build_training_store([], tmp_path / "p.zarr", tmp_path / "m.parquet", patch_size=64)
    bad = [dict(pairs[0], mask=np.full((N, N), 7, np.uint8))]
    with pytest.raises(InputError, match="A01_f1.*binary"):
        G.build_training_store(bad, tmp_path / "p.zarr", tmp_path / "m.parquet", patch_size=64)
    with pytest.raises(InputError, match="modality"):
        G.build_training_store(
            [{k: v for k, v in pairs[0].items() if k != "modality"}],
            tmp_path / "p.zarr",
            tmp_path / "m.parquet",
            patch_size=64,
        )
    assert list(tmp_path.iterdir()) == []


def test_min_foreground_filters_store(tmp_path):
    pairs = make_pairs(["A01_f1"])
    full = G.build_training_store(pairs, tmp_path / "a.zarr", tmp_path / "a.parquet", patch_size=32)
    kept = G.build_training_store(
        pairs, tmp_path / "b.zarr", tmp_path / "b.parquet", patch_size=32, min_foreground=0.05
    )
    originals = full[full["variant"] == 0]
    expected = int((originals["foreground_fraction"] >= 0.05).sum())
    assert 0 < expected < len(originals)
    assert int((kept["variant"] == 0).sum()) == expected


# --------------------------------------------------------------------------- gallery


def test_gallery_png_is_byte_identical(tmp_path):
    img, mask = disc_pair(128, centre=(60, 70), radius=25)
    ex1 = G.make_gallery(img, mask, tmp_path / "g1.png", seed=4, size=96)
    G.make_gallery(img, mask, tmp_path / "g2.png", seed=4, size=96)
    data = (tmp_path / "g1.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data == (tmp_path / "g2.png").read_bytes()
    assert b"Software" not in data
    assert [e["name"] for e in ex1] == [name for name, _, _ in G.GALLERY]
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[1] == round(1.7 * len(G.GALLERY) * 100)


def test_gallery_figure_layout():
    img, mask = disc_pair()
    fig = G.gallery_figure([{"name": "a", "image": to_rgb_uint8(img), "mask": mask}] * 3)
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "a", "a"]
