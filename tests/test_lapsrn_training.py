"""LapSRN / MS-LapSRN training: per-level Charbonnier, split batches, x3 path, scales, a real fit via SRCLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from memory_logger import logger

from lit_sr.checkpoint import load_method
from lit_sr.cli import SRCLI
from lit_sr.data.datasets import BenchmarkSet, split_sizes
from lit_sr.data.degrade import crop_size, degrade
from lit_sr.data.images import read_image
from lit_sr.data.resize import imresize
from lit_sr.data.sources import resolve_images
from lit_sr.methods.lapsrn import LapSRN, LapSRNNet, MSLapSRN, MSLapSRNNet
from lit_sr.paths import REPO

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

EPS = 1e-3


def tiny_lapsrn(variant: str = "lapsrn_x4_small", **kw) -> LapSRN:
    torch.manual_seed(0)
    return LapSRN(variant=variant, net={"channels": 8}, **kw)


def tiny_ms(**kw) -> MSLapSRN:
    torch.manual_seed(0)
    return MSLapSRN(variant="ms_lapsrn_small", net={"channels": 8}, **kw)


def real_crops(n: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 RGB crops (n, 3, side, side) of a built-in photo, and their ``gray`` flags."""
    _, paths = resolve_images("builtin")
    img = read_image(paths[0])  # astronaut, 512x512 RGB
    crops = [img[40 * i : 40 * i + side, 30 * i : 30 * i + side] for i in range(n)]
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return hr, torch.zeros(n, dtype=torch.bool)


def charbonnier_by_hand(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The papers' reduction written out: per-sample sum of sqrt(d^2 + eps^2), mean over the batch."""
    per_pixel = torch.sqrt((pred - target) ** 2 + EPS**2)
    return torch.stack([per_pixel[i].sum() for i in range(pred.shape[0])]).mean()


def test_loss_with_known_offsets_equals_the_closed_form_sum_over_levels():
    # Targets = the network's own outputs shifted by a constant per level: every pixel of level l costs
    # sqrt(offset_l^2 + eps^2), so the loss is sum_l area_l * sqrt(offset_l^2 + eps^2), whatever the net.
    method = tiny_lapsrn()
    lr = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        outs = method.net(lr, 4)
    offsets = [0.25, -0.1]
    pyramid = [o + d for o, d in zip(outs, offsets)]
    batch = {"hr": pyramid[-1], "lr": lr, "pyramid": pyramid, "scale": torch.full((3,), 4)}
    total, parts = method.compute_loss([batch])
    level1 = 16 * 16 * math.sqrt(0.25**2 + EPS**2)
    level2 = 32 * 32 * math.sqrt(0.1**2 + EPS**2)
    assert parts["x4_level1"].item() == pytest.approx(level1, rel=1e-5)
    assert parts["x4_level2"].item() == pytest.approx(level2, rel=1e-5)
    assert total.item() == pytest.approx(level1 + level2, rel=1e-5)


def test_loss_of_a_degraded_batch_equals_hand_computed_charbonnier_per_level():
    method = tiny_lapsrn()
    hr, gray = real_crops(4, crop_size(32, [4]))
    (batch,) = degrade(hr, torch.full((4,), 4), gray, LapSRN.batch_needs, 32)
    assert [tuple(t.shape) for t in batch["pyramid"]] == [(4, 1, 16, 16), (4, 1, 32, 32)]
    total, parts = method.compute_loss([batch])
    preds = method.net(batch["lr"], 4)
    by_hand = [charbonnier_by_hand(p, t) for p, t in zip(preds, batch["pyramid"])]
    assert set(parts) == {"x4_level1", "x4_level2"}
    torch.testing.assert_close(parts["x4_level1"], by_hand[0])
    torch.testing.assert_close(parts["x4_level2"], by_hand[1])
    torch.testing.assert_close(total, by_hand[0] + by_hand[1])
    bicubic = charbonnier_by_hand(imresize(batch["lr"], 4), batch["hr"])
    assert set(method.reference_loss([batch])) == {"bicubic_x4"}
    torch.testing.assert_close(method.reference_loss([batch])["bicubic_x4"], bicubic)
    # The coarse-level weight scales every level but the finest.
    half, _ = tiny_lapsrn(coarse_level_weight=0.5).compute_loss([batch])
    torch.testing.assert_close(half, 0.5 * by_hand[0] + by_hand[1])


def test_ms_lapsrn_split_batch_loss_covers_every_scale_and_level():
    method = tiny_ms()
    n, patch, scales = 8, 32, [2, 4, 8]
    sizes = split_sizes(n, 3)
    hr, gray = real_crops(n, crop_size(patch, scales))
    scale = torch.tensor([s for s, k in zip(scales, sizes) for _ in range(k)])
    batch = degrade(hr, scale, gray, MSLapSRN.batch_needs, patch)
    assert isinstance(batch, list) and [int(b["scale"][0]) for b in batch] == scales
    total, parts = method.compute_loss(batch)
    levels = [k for k in parts if not k.startswith("bicubic")]
    assert levels == ["x2_level1", "x4_level1", "x4_level2", "x8_level1", "x8_level2", "x8_level3"]  # 1+2+3
    torch.testing.assert_close(total, torch.stack([parts[k] for k in levels]).sum())
    # The official objective: all pixels of all levels of all scales summed, divided by the whole batch.
    pixel_sum = 0.0
    for group in batch:
        preds = method.net(group["lr"], int(group["scale"][0]))
        for pred, target in zip(preds, group["pyramid"]):
            pixel_sum = pixel_sum + torch.sqrt((pred - target) ** 2 + EPS**2).sum()
    torch.testing.assert_close(total, pixel_sum / n)
    # Each part is its scale's share of the batch times that level's per-sample loss.
    x8 = batch[2]
    x8_level3 = charbonnier_by_hand(method.net(x8["lr"], 8)[-1], x8["pyramid"][-1])
    torch.testing.assert_close(parts["x8_level3"], sizes[2] / n * x8_level3)


@pytest.mark.parametrize("make", [tiny_lapsrn, tiny_ms])
def test_x3_runs_the_x4_pyramid_then_matlab_bicubic(make, data_root):
    method = make().eval()
    item = BenchmarkSet.from_source("Set5", 3, max_images=1)[0]  # baby: LR 170x170, HR 510x510
    lr_y = item["lr_y"][None].float()
    with torch.no_grad():
        sr = method.super_resolve(lr_y, 3)
        x4 = method.net(lr_y, 4)[-1]
    assert sr.shape[-2:] == item["hr_y"].shape[-2:] == (3 * lr_y.shape[-2], 3 * lr_y.shape[-1])
    torch.testing.assert_close(sr, imresize(x4, size=tuple(sr.shape[-2:])))
    assert x4.shape[-2:] == (4 * lr_y.shape[-2], 4 * lr_y.shape[-1])


def test_sr_forward_returns_the_finest_level_of_each_scale():
    method = tiny_ms().eval()
    lr = torch.rand(1, 1, 6, 7)
    with torch.no_grad():
        for s in (2, 4, 8):
            torch.testing.assert_close(method.super_resolve(lr, s), method.net(lr, s)[-1])
            assert method.super_resolve(lr, s).shape[-2:] == (6 * s, 7 * s)


def test_supported_scales_come_from_the_network_and_others_fail_clearly():
    assert LapSRN(variant="lapsrn_x2").supported_scales == [2]
    assert LapSRN(variant="lapsrn_x4").supported_scales == [2, 3, 4]
    assert LapSRN(variant="lapsrn_x8").supported_scales == [2, 3, 4, 8]
    assert MSLapSRN(variant="ms_lapsrn_d5r8").supported_scales == [2, 3, 4, 8]
    assert MSLapSRN(variant="ms_lapsrn_small", net={"scales": [2]}).supported_scales == [2]
    method = tiny_lapsrn()
    with pytest.raises(ValueError, match=r"LapSRN supports scales \[2, 3, 4\], not x8"):
        method.super_resolve(torch.rand(1, 1, 8, 8), 8)
    with pytest.raises(ValueError, match=r"supported_scales=\[2, 3\] cannot be set for LapSRN.*remove the key"):
        LapSRN(variant="lapsrn_x4", supported_scales=[2, 3])
    with pytest.raises(ValueError, match="'ms_lapsrn_d5r8' builds a MSLapSRNNet, but LapSRN trains LapSRNNet"):
        LapSRN(variant="ms_lapsrn_d5r8")
    with pytest.raises(ValueError, match="'lapsrn_x4' builds a LapSRNNet.*class_path to lit_sr.methods.lapsrn.LapSRN"):
        MSLapSRN(variant="lapsrn_x4")
    with pytest.raises(ValueError, match=r"model.init_args.reduction: 'sum' is not one of \['paper', 'mean'\]"):
        LapSRN(reduction="sum")
    assert isinstance(LapSRN().net, LapSRNNet) and isinstance(MSLapSRN().net, MSLapSRNNet)


# ---- a real fit through the CLI -----------------------------------------------------------------------

STEPS = 12


def fit(tmp_path, name: str, preset: str, override: dict):
    path = tmp_path / f"{name}.yaml"
    trainer = {**override.get("trainer", {}), "logger": logger(tmp_path / name)}  # read back as cli.trainer.logger
    path.write_text(yaml.safe_dump({**override, "trainer": trainer}))
    args = ["fit", "--config", str(REPO / preset), "--config", str(path), "--run_dir", str(tmp_path / name),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    return SRCLI(args=args)


def one_stage(optimizer: dict) -> list[dict]:
    bias = {"match": r"\.bias$", "lr_mult": 0.1}
    return [{"name": "train", "epochs": 2, "optimizer": optimizer, "param_groups": [bias]}]


@pytest.fixture(scope="module")
def ms_run(tmp_path_factory, data_root):
    """MS-LapSRN quick preset, shrunk: 2 epochs of 12 split batches (2+2+2 patches of 32 px), SGD."""
    tmp = tmp_path_factory.mktemp("ms")
    override = {
        "model": {"init_args": {"net": {"channels": 8},
                                "stages": one_stage({"name": "sgd", "lr": 1.0e-5, "momentum": 0.9})}},
        "data": {"batch_size": 6, "patch_size": 32, "batches_per_epoch": STEPS, "num_workers": 0,
                 "val_sets": ["Sun80"], "test_sets": [], "val_scales": [2, 3, 4, 8], "val_max_images": 1},
        "trainer": {"log_every_n_steps": 1, "check_val_every_n_epoch": 2, "precision": "32-true"},
    }
    return tmp, fit(tmp, "ms", "experiments/ms_lapsrn/quick.yaml", override)


def test_ms_lapsrn_fit_logs_every_level_and_gives_a_checkpoint_for_every_scale(ms_run):
    tmp, cli = ms_run
    assert cli.trainer.global_step == 2 * STEPS
    run = cli.trainer.logger
    logged = {k for row in run.rows for k in row}
    levels = {"x2_level1", "x4_level1", "x4_level2", "x8_level1", "x8_level2", "x8_level3"}
    assert {f"train/loss_{k}" for k in levels} | {"train/loss_bicubic_x8"} <= logged
    row = next(r for r in run.rows if "train/loss" in r and "train/loss_x8_level3" in r)
    assert row["train/loss"] == pytest.approx(sum(row[f"train/loss_{k}"] for k in levels), rel=1e-5)
    assert {f"val/Sun80/x{s}/psnr_y" for s in (2, 3, 4, 8)} <= logged
    # Biases train at 0.1x the lr.
    groups = {g["group_name"]: g["lr"] for g in cli.trainer.optimizers[0].param_groups}
    assert groups == {r"\.bias$": pytest.approx(1e-6), "default": pytest.approx(1e-5)}
    method = load_method(str(tmp / "ms" / "checkpoints" / "last.ckpt"))
    assert isinstance(method, MSLapSRN) and method.supported_scales == [2, 3, 4, 8]
    with torch.no_grad():
        for s in (2, 3, 4, 8):
            assert method.super_resolve(torch.rand(1, 1, 5, 6), s).shape[-2:] == (5 * s, 6 * s)


def test_lapsrn_fit_with_a_scale_the_network_lacks_fails_before_training(tmp_path, data_root):
    override = {"model": {"init_args": {"net": {"channels": 4}}},
                "data": {"scales": [8], "patch_size": 32, "batch_size": 2, "batches_per_epoch": 2, "num_workers": 0,
                         "val_sets": ["Sun80"], "test_sets": [], "val_scales": [4], "val_max_images": 1}}
    with pytest.raises(ValueError, match=r"data.scales=\[8\] holds \[8\], but LapSRN \(lapsrn_x4_small\) trains "
                                         r"\[2, 4\] only"):
        fit(tmp_path, "bad", "experiments/lapsrn/quick.yaml", override)


def test_lapsrn_fit_with_a_patch_the_pyramid_cannot_cut_fails_before_training(tmp_path, data_root):
    override = {"model": {"init_args": {"net": {"channels": 4}}},
                "data": {"scales": [2, 4], "patch_size": 42, "batch_size": 2, "batches_per_epoch": 2, "num_workers": 0,
                         "val_sets": ["Sun80"], "test_sets": [], "val_scales": [2], "val_max_images": 1}}
    with pytest.raises(ValueError, match=r"data.patch_size=42 is not divisible by scale\(s\) \[4\], so the LR patch "
                                         r"would not align; use a multiple of 4 \(e.g. 40\)"):
        fit(tmp_path, "bad", "experiments/lapsrn/quick.yaml", override)
    assert not (tmp_path / "bad" / "checkpoints").exists()  # nothing trained
