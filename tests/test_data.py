"""Training patches, on-device degradation, benchmark sets and the DataModule, on real images."""

from __future__ import annotations

import gc
import math
import os
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lit_sr.data.color import rgb_to_y
from lit_sr.data.datamodule import SRDataModule
from lit_sr.data.datasets import BenchmarkSet, TrainPatches, d4_view, d4_window, split_sizes
from lit_sr.data.degrade import crop_size, degrade, patch_offset
from lit_sr.data.images import ImageCache, ImageError, modcrop
from lit_sr.data.resize import imresize
from lit_sr.data.sources import resolve_images
from lit_sr.metrics import psnr_y


@pytest.fixture(scope="module")
def photos() -> ImageCache:
    """Four builtin photos: three RGB and one grayscale (camera), all at least 427 pixels."""
    _, paths = resolve_images("builtin")
    keep = {"astronaut.png", "rocket.jpg", "motorcycle_left.png", "camera.png"}
    return ImageCache([p for p in paths if p.name in keep], min_size=200)


def _whole_y(img: np.ndarray) -> torch.Tensor:
    """Y of a whole uint8 HxWxC image in float64: grey as is, RGB through MATLAB rgb2ycbcr."""
    x = torch.from_numpy(np.array(img.transpose(2, 0, 1))).double() / 255
    return x if x.shape[0] == 1 else rgb_to_y(x)


def _crops(ds: TrainPatches, photos: ImageCache, scales: list[int], seed: int):
    """One crop per scale (cycling over the photos), plus what is needed to redo it on the whole image."""
    rng = np.random.default_rng(seed)
    hr, gray, info = [], [], []
    for i, s in enumerate(scales):
        img = photos[i % len(photos)]
        crop, ci = ds.sample_crop(img, s, rng)
        hr.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).expand(3, -1, -1))
        gray.append(crop.shape[2] == 1)
        info.append((img, ci))
    return torch.stack(hr), torch.tensor(scales), torch.tensor(gray), info


def _window(x: torch.Tensor, y0: int, x0: int, size: int) -> torch.Tensor:
    return x[..., y0 : y0 + size, x0 : x0 + size]


# ---- the key property: a patch's LR / ILR / pyramid equal the same window of the whole image's
@pytest.mark.parametrize("mode", ["mixed", "split"])
def test_patch_ilr_41_equals_whole_image_window(photos, mode):
    scales, p = [2, 3, 4], 41
    ds = TrainPatches(photos, scales, p, batch_size=6, batches_per_epoch=1, mode=mode, rescale=(1.0, 1.0))
    batch_scales = [2, 3, 4, 4, 3, 2] if mode == "mixed" else [2, 2, 3, 3, 4, 4]
    hr, scale, gray, info = _crops(ds, photos, batch_scales, seed=1)
    assert gray.any() and not gray.all() and {ci.d4 for _, ci in info} != {0}
    (out,) = degrade(hr, scale, gray, ("ilr",), p)  # ILR of every scale has one size: one group
    assert out["scale"].tolist() == batch_scales  # in the original sample order
    assert out["hr"].shape == out["ilr"].shape == (6, 1, p, p) and out["ilr"].dtype == torch.float32
    for n, ((img, ci), s) in enumerate(zip(info, batch_scales)):
        assert ci.origin[0] % s == 0 and ci.origin[1] % s == 0
        y_whole = _whole_y(modcrop(d4_view(img, ci.d4), s))  # the augmented, modcropped image
        ilr_whole = imresize(imresize(y_whole, 1 / s), s)
        o = patch_offset(ds.crop_size, p, s)
        y0, x0 = ci.origin[0] + o, ci.origin[1] + o
        assert torch.allclose(out["hr"][n].double(), _window(y_whole, y0, x0, p), atol=1e-6)
        assert (out["ilr"][n].double() - _window(ilr_whole, y0, x0, p)).abs().max() < 1e-5


def test_patch_lr_equals_whole_image_window_x2_x3_x4(photos):
    p = 48  # divisible by 2, 3 and 4
    ds = TrainPatches(
        photos, [2, 3, 4], p, batch_size=6, batches_per_epoch=1, mode="split", rescale=(1.0, 1.0)
    )
    batch_scales = [2, 2, 3, 3, 4, 4]
    hr, scale, gray, info = _crops(ds, photos, batch_scales, seed=2)
    parts = degrade(hr, scale, gray, ("lr", "ilr"), p)
    assert [g["scale"].tolist() for g in parts] == [[2, 2], [3, 3], [4, 4]]  # one group per scale
    flat = [(part, j) for part in parts for j in range(len(part["scale"]))]
    for n, ((img, ci), s) in enumerate(zip(info, batch_scales)):
        part, j = flat[n]
        whole = modcrop(d4_view(img, ci.d4), s)
        lr_whole = imresize(_whole_y(whole), 1 / s)
        o = patch_offset(ds.crop_size, p, s)
        ly, lx = (ci.origin[0] + o) // s, (ci.origin[1] + o) // s
        assert part["lr"][j].shape == (1, p // s, p // s)
        assert (part["lr"][j].double() - _window(lr_whole, ly, lx, p // s)).abs().max() < 1e-5
        ilr_whole = imresize(lr_whole, s)
        assert (part["ilr"][j].double() - _window(ilr_whole, ly * s, lx * s, p)).abs().max() < 1e-5


def test_patch_pyramid_128_x4_equals_whole_image(photos):
    p, s = 128, 4
    ds = TrainPatches(photos, [s], p, batch_size=4, batches_per_epoch=1, mode="per_batch", rescale=(1.0, 1.0))
    assert ds.crop_size == 160
    hr, scale, gray, info = _crops(ds, photos, [s] * 4, seed=3)
    (out,) = degrade(hr, scale, gray, ("lr", "pyramid"), p)
    assert [t.shape[-1] for t in out["pyramid"]] == [64, 128] and out["lr"].shape == (4, 1, 32, 32)
    assert out["pyramid"][-1] is out["hr"]
    o = patch_offset(160, p, s)
    for n, (img, ci) in enumerate(info):
        y_whole = _whole_y(modcrop(d4_view(img, ci.d4), s))
        y0, x0 = ci.origin[0] + o, ci.origin[1] + o
        half = imresize(y_whole, 1 / 2)
        assert (out["pyramid"][0][n].double() - _window(half, y0 // 2, x0 // 2, 64)).abs().max() < 1e-5
        lr = imresize(y_whole, 1 / 4)
        assert (out["lr"][n].double() - _window(lr, y0 // 4, x0 // 4, 32)).abs().max() < 1e-5


def test_rgb_channels_and_grey_rule(photos):
    ds = TrainPatches(photos, [2], 16, batch_size=2, batches_per_epoch=1, rescale=(1.0, 1.0), d4=False)
    hr, scale, gray, _ = _crops(ds, photos, [2] * 4, seed=4)  # photo 3 is the grey camera
    assert gray.tolist() == [False, False, False, True]
    (rgb,) = degrade(hr, scale, gray, ("ilr",), 16, channels="rgb")
    (y,) = degrade(hr, scale, gray, ("ilr",), 16, channels="y")
    assert rgb["hr"].shape == (4, 3, 16, 16) and y["hr"].shape == (4, 1, 16, 16)
    # A grey sample is its own Y (full range); converting it as RGB would give 16/255 + 219/255 * v.
    assert torch.allclose(y["hr"][3], rgb["hr"][3, :1])
    assert torch.allclose(y["hr"][0], rgb_to_y(rgb["hr"][0]), atol=1e-6)


def test_d4_window_cuts_the_same_pixels_from_the_unrotated_image():
    img = np.arange(7 * 11 * 2).reshape(7, 11, 2)
    for k in range(8):
        view = d4_view(img, k)
        assert view.shape[:2] == ((7, 11) if k in (0, 2, 5, 7) else (11, 7))
        for y in range(view.shape[0] - 2):
            for x in range(view.shape[1] - 2):
                r, c = d4_window(k, 7, 11, y, x, 3)
                assert np.array_equal(d4_view(img[r : r + 3, c : c + 3], k), view[y : y + 3, x : x + 3])
    assert len({d4_view(img, k).tobytes() for k in range(8)}) == 8  # eight distinct transforms


# ---- batch modes
def test_per_batch_mode(photos):
    torch.manual_seed(0)
    ds = TrainPatches(photos, [2, 3, 4], 41, batch_size=4, batches_per_epoch=30, mode="per_batch")
    batches = list(ds)
    assert len(batches) == len(ds) == 30
    seen = set()
    for b in batches:
        assert b["hr"].shape == (4, 3, 84, 84) and b["hr"].dtype == torch.uint8
        assert b["scale"].dtype == torch.int64 and b["gray"].dtype == torch.bool
        assert len(set(b["scale"].tolist())) == 1
        seen |= set(b["scale"].tolist())
    assert seen == {2, 3, 4}
    assert batches[0]["patch_size"] == 41
    (out,) = degrade(**{k: batches[0][k] for k in ("hr", "scale", "gray")}, needs=("lr",), patch_size=48)
    assert out["lr"].shape[-1] == 48 // int(batches[0]["scale"][0])


def test_mixed_mode(photos):
    torch.manual_seed(0)
    ds = TrainPatches(photos, [2, 3, 4], 41, batch_size=16, batches_per_epoch=2, mode="mixed")
    b = next(iter(ds))
    assert b["hr"].shape == (16, 3, 84, 84) and set(b["scale"].tolist()) == {2, 3, 4}
    (out,) = degrade(b["hr"], b["scale"], b["gray"], ("ilr",), 41)
    assert out["ilr"].shape == out["hr"].shape == (16, 1, 41, 41)
    assert torch.equal(out["scale"], b["scale"])  # original sample order kept
    # Each sample matches degrading it alone (regrouping by scale kept the order).
    for n in (0, 7, 15):
        (alone,) = degrade(b["hr"][n : n + 1], b["scale"][n : n + 1], b["gray"][n : n + 1], ("ilr",), 41)
        assert torch.equal(alone["ilr"][0], out["ilr"][n])
    # LR patches differ in size between scales: a mixed batch then comes as one group per scale, ascending.
    groups = degrade(b["hr"], b["scale"], b["gray"], ("lr",), 48)
    assert [int(g["scale"][0]) for g in groups] == [2, 3, 4]
    assert [g["lr"].shape[-1] for g in groups] == [24, 16, 12]
    assert sum(len(g["hr"]) for g in groups) == 16


def test_split_mode_22_22_20(photos):
    assert (
        split_sizes(64, 3) == [22, 22, 20]
        and split_sizes(16, 3) == [6, 6, 4]
        and split_sizes(5, 4) == [2, 1, 1, 1]
    )
    ds = TrainPatches(photos, [8, 2, 4], 64, batch_size=64, batches_per_epoch=1, mode="split")
    assert ds.crop_size == crop_size(64, [2, 4, 8]) == 128
    b = next(iter(ds))
    assert b["hr"].shape == (64, 3, 128, 128)
    assert b["scale"].tolist() == [2] * 22 + [4] * 22 + [8] * 20
    parts = degrade(b["hr"], b["scale"], b["gray"], ("lr", "pyramid"), 64)
    assert [len(x["scale"]) for x in parts] == [22, 22, 20]
    assert [x["lr"].shape for x in parts] == [(22, 1, 32, 32), (22, 1, 16, 16), (20, 1, 8, 8)]
    assert [[t.shape[-1] for t in x["pyramid"]] for x in parts] == [[64], [32, 64], [16, 32, 64]]


def test_area_sampling_draws_each_image_in_proportion_to_its_pixels(photos, monkeypatch):
    """VDSR and CMSC train on the non-overlapping sub-images of every image: as many patches from an image as it
    has sub-images, i.e. in proportion to its area (``data.image_sampling: area``)."""
    ds = TrainPatches(photos, [2], 41, batch_size=16, batches_per_epoch=1, image_sampling="area", seed=0)
    areas = np.array([np.prod(photos.shape(i)[:2]) for i in range(len(photos))])
    assert np.allclose(ds.image_p, areas / areas.sum())
    drawn = []

    def record(img, scale, rng):
        drawn.append(int(np.prod(img.shape[:2])))
        return np.zeros((ds.crop_size, ds.crop_size, 3), np.uint8), None

    monkeypatch.setattr(ds, "sample_crop", record)
    for index in range(150):
        ds.make_batch(ds.batch_rng(0, index))
    sizes = sorted(set(areas))  # two photos are 512 x 512: compare the share of each size
    share = np.array([drawn.count(a) for a in sizes]) / len(drawn)
    expected = np.array([ds.image_p[areas == a].sum() for a in sizes])
    assert np.abs(share - expected).max() < 0.02, (share, expected)  # 2,400 draws
    assert TrainPatches(photos, [2], 41, batch_size=16, batches_per_epoch=1).image_p is None  # uniform


def test_rescale_raises_factor_for_small_images(tmp_path):
    rng = np.random.default_rng(0)
    img = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).resize((100, 50)))
    Image.fromarray(img).save(tmp_path / "small.png")
    cache = ImageCache([tmp_path / "small.png"], min_size=44)
    ds = TrainPatches(cache, [2, 3, 4], 41, batch_size=2, batches_per_epoch=1, rescale=(0.5, 1.0))
    assert ds.factors.tolist() == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0] and (ds.crop_size, ds.min_side) == (84, 44)
    factors = {ds.sample_crop(img, 2, rng)[1].factor for _ in range(40)}
    assert factors == {0.9, 1.0}  # 50 * 0.8 = 40 < 44 = 41 + 4 - 1, the side a patch needs after modcrop
    big = np.asarray(Image.fromarray(img).resize((400, 300)))
    drawn = [ds.sample_crop(big, 4, rng) for _ in range(60)]
    assert {ci.factor for _, ci in drawn} == {0.5, 0.6, 0.7, 0.8, 0.9, 1.0}  # 300 * 0.5 = 150 >= 44: all fit
    assert all(c.shape == (84, 84, 3) and c.dtype == np.uint8 for c, _ in drawn)


@pytest.fixture(scope="module")
def small_photos(photos) -> list[np.ndarray]:
    """Corners of the builtin photos, smaller than a 192-pixel crop: 140x151 RGB and 153x140 grey."""
    return [np.ascontiguousarray(photos[0][:140, -151:]), np.ascontiguousarray(photos[3][-153:, :140])]


@pytest.mark.parametrize(("scales", "patch"), [([2, 4, 8], 128), ([2, 3, 4], 41)])
def test_an_image_smaller_than_the_crop_is_used_as_is_and_border_patches_equal_the_whole_image(
    photos, small_photos, scales, patch
):
    """MS-LapSRN's 128-pixel patch at {2, 4, 8} comes in a 192-pixel crop: a 140-pixel image is not enlarged,
    its patch lies anywhere, and the crop's margin past the image is the image mirrored, which is MATLAB
    imresize's boundary rule, so LR and ILR equal the same window of imresize on the whole image."""
    ds = TrainPatches(photos, scales, patch, batch_size=1, batches_per_epoch=1)
    assert ds.min_side == patch + max(scales) - 1 <= 140  # < the 192-pixel crop at {2, 4, 8}
    rng = np.random.default_rng(4)
    mirrored = 0
    for n in range(24):
        img, s = small_photos[n % 2], scales[n % len(scales)]
        crop, ci = ds.sample_crop(img, s, rng)
        o = patch_offset(ds.crop_size, patch, s)
        y0, x0 = ci.origin[0] + o, ci.origin[1] + o  # the patch in the whole (D4, modcropped) image
        mirrored += min(ci.origin) < 0  # the crop reaches past the image's top or left edge
        hr = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None].expand(1, 3, -1, -1)
        gray = torch.tensor([crop.shape[2] == 1])
        parts = degrade(hr, torch.tensor([s]), gray, ("lr", "ilr"), patch)
        y_whole = _whole_y(modcrop(d4_view(img, ci.d4), s))
        lr_whole = imresize(y_whole, 1 / s)
        assert torch.allclose(parts[0]["hr"][0].double(), _window(y_whole, y0, x0, patch), atol=1e-6)
        assert (parts[0]["lr"][0].double() - _window(lr_whole, y0 // s, x0 // s, patch // s)).abs().max() < 1e-5
        ilr = _window(imresize(lr_whole, s), y0, x0, patch)
        assert (parts[0]["ilr"][0].double() - ilr).abs().max() < 1e-5
    assert mirrored >= 3, mirrored


# ---- benchmark sets: the protocol that reproduces the bicubic table
def test_benchmark_set5_x4_bicubic(data_root):
    ds = BenchmarkSet.from_source(str(data_root / "Set5"), 4)
    assert ds.name == "Set5" and len(ds) == 5
    psnrs = []
    for item in ds:
        assert item["hr"].dtype == item["lr_y"].dtype == torch.float64
        h, w = item["hr"].shape[-2:]
        assert h % 4 == 0 and w % 4 == 0 and item["lr"].shape == (3, h // 4, w // 4)
        sr = imresize(item["lr_y"], 4)
        psnrs.append(float(psnr_y(sr[None], item["hr_y"][None], shave=4)))
    assert sum(psnrs) / len(psnrs) == pytest.approx(28.42, abs=0.01)
    assert ds[0]["lr_y"] is ds[0]["lr_y"]  # LR computed once and kept


def test_benchmark_grey_image_is_its_own_y(data_root):
    cache = ImageCache([data_root / "Set14" / "bridge.png"])
    item = BenchmarkSet(cache, 3, "Set14")[0]
    assert item["hr"].shape[0] == 1 and torch.equal(item["hr_y"], item["hr"])
    assert item["lr"].shape == item["lr_y"].shape == (1, 512 // 3, 512 // 3)


# ---- the DataModule
def _fake_trainer(world_size=1, rank=0):
    return SimpleNamespace(training=True, global_rank=rank, world_size=world_size)


@pytest.mark.parametrize("workers", [0, 2])
def test_datamodule_end_to_end(workers, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_SR_DATA", str(tmp_path))  # no data root: the built-in photos, no test sets
    dm = SRDataModule(
        train_sources=["auto"],
        batch_size=8,
        batches_per_epoch=4,
        num_workers=workers,
        val_max_images=1,
        cache_dir=str(tmp_path),
        memmap_threshold_mb=0 if workers else 2048,  # the workers share one memory-mapped cache
    )
    assert dm.train_names == ["builtin"] and dm.val_sets == ["builtin_val"] and dm.test_sets == []
    dm.setup("fit")
    assert dm.train_images().uses_memmap == (workers > 0)
    loader = dm.train_dataloader()
    assert loader.batch_size is None and len(loader) == 4
    epoch1 = list(loader)
    epoch2 = list(loader)
    assert len(epoch1) == len(epoch2) == 4
    # Different workers and different epochs give different patches.
    assert not torch.equal(epoch1[0]["hr"], epoch1[1]["hr"])
    assert not torch.equal(epoch1[0]["hr"], epoch2[0]["hr"])
    assert epoch1[0]["patch_size"] == 41 and epoch1[0]["hr"].dtype == torch.uint8
    val = dm.val_dataloader()
    assert len(val) == 3 and len(val[0]) == 1
    item = next(iter(val[2]))
    assert item["set"] == ["builtin_val"] and int(item["scale"]) == 4
    assert item["name"] == ["chelsea"] and item["lr_y"].shape[-1] == math.ceil(451 // 4 * 4 / 4)
    with pytest.raises(ValueError, match=r"no test sets: set data.test_sets"):
        dm.test_dataloader()


def test_a_datamodule_built_in_a_function_is_freed_when_it_returns(tmp_path, monkeypatch):
    """No reference cycle keeps a DataModule, its loaders and their workers: Lightning's save_hyperparameters keeps
    its own frame in a local when it looks the caller up, and a persistent-worker loader collected by the cyclic GC
    together with its queues cannot stop its workers (each join then waits 5 s)."""
    monkeypatch.setenv("LIT_SR_DATA", str(tmp_path))

    def build() -> tuple[weakref.ref, weakref.ref]:
        dm = SRDataModule(train_sources=["auto"], batch_size=8, batches_per_epoch=2, num_workers=2,
                          val_max_images=1, cache_dir=str(tmp_path), memmap_threshold_mb=0)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert len(list(loader)) == 2
        return weakref.ref(dm), weakref.ref(loader)

    gc.disable()
    try:
        dm, loader = build()
        assert dm() is None and loader() is None  # freed by reference counting, workers stopped on return
    finally:
        gc.enable()


def test_datamodule_ddp_shards(data_root):
    loaders = []
    for rank in (0, 1):
        dm = SRDataModule(train_sources=["builtin"], val_sets=["Set5"], test_sets=[], scales=[2], num_workers=0,
                          batches_per_epoch=5, allow_selection_on_test=True)
        dm.trainer = _fake_trainer(world_size=2, rank=rank)
        loaders.append(dm.val_dataloader()[0])
        assert len(dm.train_dataloader()) == 3  # ceil(5 / 2): equal steps on every rank
    names = [[b["name"][0] for b in loader] for loader in loaders]
    assert names == [["baby", "butterfly", "woman"], ["bird", "head"]]  # every image once, no padding
    # a set smaller than the world: a process without an image would skip validation and hang the others
    dm = SRDataModule(train_sources=["builtin"], val_sets=["Set5"], test_sets=[], scales=[2], num_workers=0,
                      val_max_images=1, allow_selection_on_test=True)
    dm.trainer = _fake_trainer(world_size=2, rank=1)
    too_few = (r"^data: Set5 has 1 image\(s\) for 2 processes: each process scores at least one; give more images "
               r"\(data.val_max_images, data.val_holdout\) or run on fewer devices$")
    with pytest.raises(ValueError, match=too_few):
        dm.val_dataloader()
    with pytest.raises(ValueError, match=too_few):  # found in setup, before any training
        dm.setup("fit")


def test_datamodule_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data.scales holds 1.5"):
        SRDataModule(scales=[2, 1.5])
    with pytest.raises(ValueError, match=r"data.patch_size must be an integer >= 8"):
        SRDataModule(patch_size=6)
    with pytest.raises(ValueError, match=r"data.batch_size must be an integer >= 3"):
        SRDataModule(scale_mode="split", batch_size=2)
    with pytest.raises(ValueError, match=r"data.rescale"):
        SRDataModule(rescale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"^data.rescale_step=0.7 does not divide data.rescale \[0.5, 1.0\] into whole "
                                         r"steps, so the grid of factors would miss 1.0; choose a step such as 0.1$"):
        SRDataModule(rescale=(0.5, 1.0), rescale_step=0.7)
    assert SRDataModule(train_sources=["builtin"], rescale=(0.5, 1.0), rescale_step=0.25).rescale == (0.5, 1.0)
    # the typed arguments (PositiveInt, NonNegativeInt, Literal, ...) are checked from Python as from a config
    with pytest.raises(ValueError, match=r"^data.batches_per_epoch must be a positive integer, got 0$"):
        SRDataModule(batches_per_epoch=0)
    with pytest.raises(ValueError, match=r"^data.num_workers must be an integer >= 0, got -1$"):
        SRDataModule(num_workers=-1)
    with pytest.raises(ValueError, match=r"^data.val_max_images must be a positive integer, got 2.5$"):
        SRDataModule(val_max_images=2.5)
    with pytest.raises(ValueError, match=r"^data.scale_mode: 'splt' is not one of \['per_batch', 'mixed', 'split'\]$"):
        SRDataModule(scale_mode="splt")
    with pytest.raises(ImageError, match=r"unknown image source 'NoSuchSet'"):
        SRDataModule(train_sources=["NoSuchSet"])


# ---- the three roles: train, val (model selection), test (report only)
def test_holdout_is_deterministic_and_disjoint_from_training(data_root):
    dm = SRDataModule(train_sources=["291"], val_holdout=10)
    again = SRDataModule(train_sources=["291"], val_holdout=10)
    held = dm.eval_paths("holdout")
    assert dm.val_sets == ["holdout"] and len(held) == 10 and held == again.eval_paths("holdout")
    assert not set(held) & set(dm.train_paths) and len(dm.train_paths) == 291 - 10
    # A stable hash of the file name, not the order of the folder listing.
    from lit_sr.data.datamodule import holdout_split

    train, held_reversed = holdout_split(list(reversed(held + dm.train_paths)), 10)
    assert sorted(held_reversed) == sorted(held)
    assert dm.test_sets == ["Set5", "Set14"]


def test_near_copy_of_a_test_image_leaves_training(data_root):
    """Set5's woman is BSD200's 302003 downscaled by 0.72: 291 drops it while Set5 is a test set."""
    dm = SRDataModule(train_sources=["291"], test_sets=["Set5"], num_workers=0)
    with pytest.warns(UserWarning, match=r"302003\.png is a near-copy of test image .*woman\.png"):
        images = dm.train_images()
    assert [e["train"].endswith("302003.png") and e["test"].endswith("woman.png") for e in dm.excluded] == [True]
    assert len(images) == 291 - 10 - 1 and not any(p.name == "302003.png" for p in images.paths)
    assert dm.summary()["excluded_from_training"] == dm.excluded
    strict = SRDataModule(train_sources=["291"], test_sets=["Set5"], near_duplicates="error")
    with pytest.raises(ImageError, match=r"302003\.png is a near-copy of test image .*woman\.png"):
        strict.train_images()


@pytest.mark.parametrize("memmap", [False, True])
def test_images_left_out_of_training_leave_the_others_decoded_once(data_root, tmp_path, monkeypatch, memmap):
    import lit_sr.data.images as images

    paths = sorted((data_root / "Set5").glob("*.png"))  # 512, 288, 256, 280 and 228 pixels on the short side
    cache = ImageCache(paths, min_size=300, enlarge_small=True, cache_dir=str(tmp_path),
                       memmap_threshold_mb=0 if memmap else 2048)
    monkeypatch.setattr(images, "read_image", lambda path: pytest.fail(f"{path} decoded again"))
    kept = cache.without({1, 3})
    assert kept.paths == [paths[0], paths[2], paths[4]] and kept.uses_memmap == memmap
    assert all(np.array_equal(kept[i], cache[j]) for i, j in enumerate((0, 2, 4)))
    assert [p.name for p in kept.enlarged] == ["butterfly.png", "woman.png"] and len(cache) == 5


def test_renamed_copy_of_a_test_image_in_training_is_an_error(data_root, tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for name in sorted(os.listdir(data_root / "Sun80"))[:3]:  # ordinary training photos...
        (train / name).write_bytes((data_root / "Sun80" / name).read_bytes())
    (train / "holiday.png").write_bytes((data_root / "Set5" / "butterfly.png").read_bytes())  # ...and a copy
    dm = SRDataModule(train_sources=[str(train)], val_sets=["builtin_val"], test_sets=["Set5"])
    same = r"train/holiday\.png is the same picture \(or a flip/rotation of it\) as test image .*butterfly\.png"
    with pytest.raises(ImageError, match=same):
        dm.setup("fit")


def test_flipped_or_rotated_copies_of_test_images_are_caught_like_plain_ones(data_root, tmp_path):
    """Training's D4 augmentation turns a mirrored or rotated copy back into the test image itself."""
    train = tmp_path / "train"
    train.mkdir()
    for name in sorted(os.listdir(data_root / "Sun80"))[:3]:
        (train / name).write_bytes((data_root / "Sun80" / name).read_bytes())
    baby = Image.open(data_root / "Set5" / "baby.png")
    baby.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(train / "mirrored.png")
    dm = SRDataModule(train_sources=[str(train)], val_sets=["builtin_val"], test_sets=["Set5"])
    same = r"train/mirrored\.png is the same picture \(or a flip/rotation of it\) as test image .*baby\.png"
    with pytest.raises(ImageError, match=same):
        dm.setup("fit")
    (train / "mirrored.png").unlink()
    bird = Image.open(data_root / "Set5" / "bird.png")
    bird.rotate(90, expand=True).resize((200, 200), Image.Resampling.LANCZOS).save(train / "turned.png")
    dm = SRDataModule(train_sources=[str(train)], val_sets=["builtin_val"], test_sets=["Set5"])
    with pytest.warns(UserWarning, match=r"turned\.png is a near-copy of test image .*bird\.png"):
        assert sorted(p.name for p in dm.train_images().paths) == sorted(os.listdir(data_root / "Sun80"))[:3]


def test_a_training_image_twice_with_one_copy_held_out_leaves_training_not_the_run(data_root, tmp_path):
    """T91 holds one picture twice (t36, t65): a data.val_holdout that holds out one copy must not stop the run."""
    from lit_sr.data.datamodule import holdout_split

    train = tmp_path / "train"
    train.mkdir()
    for name in sorted(os.listdir(data_root / "Sun80"))[:3]:
        (train / name).write_bytes((data_root / "Sun80" / name).read_bytes())
    _, (held,) = holdout_split(sorted(train.iterdir()), 1)
    copy = next(f"copy{i}.png" for i in range(99) if holdout_split([held, train / f"copy{i}.png"], 1)[1] == [held])
    (train / copy).write_bytes(held.read_bytes())
    dm = SRDataModule(train_sources=[str(train)], val_holdout=1, test_sets=[], num_workers=0)
    assert dm.eval_paths("holdout") == [held]
    with pytest.warns(UserWarning, match=rf"{copy} is the same picture as .*{held.name}, held out for validation"):
        kept = dm.train_images()
    rest = sorted(p.name for p in train.iterdir() if p not in (held, train / copy))
    assert sorted(p.name for p in kept.paths) == rest
    assert dm.excluded == [{"train": str(train / copy), "val": str(held), "correlation": "1.0000"}]


def test_selecting_on_a_test_set_needs_permission_and_is_recorded(data_root):
    with pytest.raises(ValueError, match=r"data.val_sets \['Set5'\] include test set.*allow_selection_on_test"):
        SRDataModule(train_sources=["builtin"], val_sets=["Set5"], test_sets=["Set5", "Set14"])
    with pytest.warns(UserWarning, match=r"model selection uses a test set"):
        dm = SRDataModule(train_sources=["builtin"], val_sets=["Set5"], allow_selection_on_test=True)
    assert dm.selection_on_test and dm.summary()["selection_on_test"] is True


def test_datamodule_bad_image_is_named_before_workers(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (120, 130, 3), dtype=np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    dm = SRDataModule(train_sources=[str(tmp_path)], val_sets=["builtin_val"], num_workers=2)
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        dm.setup("fit")
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        dm.train_dataloader()  # also without an explicit setup
    dm = SRDataModule(
        train_sources=[str(tmp_path)],
        val_sets=["builtin_val"],
        num_workers=0,
        on_bad_image="warn",
        batches_per_epoch=1,
    )
    with pytest.warns(UserWarning, match=r"skipping .*broken\.jpg"):
        dm.setup("fit")
    assert len(dm.train_images()) == 2 and len(list(dm.train_dataloader())) == 1
