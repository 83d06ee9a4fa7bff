"""DRN training: the loss terms, the Y option, skipping exploding batches, and the one evaluation path (RGB)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from memory_logger import logger

from lit_sr.checkpoint import load_method
from lit_sr.cli import SRCLI, main
from lit_sr.data.color import rgb_to_y
from lit_sr.data.images import list_images, modcrop, read_image
from lit_sr.data.resize import imresize
from lit_sr.evaluate import run_benchmark
from lit_sr.losses import gradient_sensitive_loss
from lit_sr.methods import method_class
from lit_sr.methods.drn import DRN, DRNNet
from lit_sr.metrics import psnr_y, quantize
from lit_sr.paths import REPO

TINY_NET = {"n_blocks": 1, "n_feats": 4}


def tiny(**kw) -> DRN:
    torch.manual_seed(0)
    return DRN(variant="drn_small_x4", net=TINY_NET, **kw)


def group(n: int = 2, c: int = 3, p: int = 32) -> dict:
    torch.manual_seed(1)
    hr = torch.rand(n, c, p, p)
    return {
        "hr": hr,
        "lr": imresize(hr, 0.25),
        "pyramid": [imresize(hr, 0.5), hr],
        "scale": torch.full((n,), 4),
    }


def test_registered_as_drn_with_rgb_channels_and_lr_pyramid_needs():
    assert method_class("drn") is DRN
    method = tiny()
    assert method.channels == "rgb" and DRN.batch_needs == ("lr", "pyramid")
    assert method.supported_scales == [4] and method.net.n_colors == 3


@pytest.mark.parametrize("loss", ["gsl", "l1"])
def test_loss_is_final_plus_intermediate_plus_weighted_duals(loss):
    method = tiny(loss=loss, dual_weight=0.3, mask_mode="hard", grad_form="masked_grad", gsl_l1_weight=0.5)
    g = group()
    total, parts = method.compute_loss([g])
    outs = method.net(g["lr"])
    targets = [g["lr"], *g["pyramid"]]
    if loss == "gsl":
        final = gradient_sensitive_loss(
            outs[-1], g["hr"], l1_weight=0.5, mask_mode="hard", grad_form="masked_grad"
        )[0]
        assert {"gsl_high", "gsl_low", "gsl_l1"} <= set(parts)
    else:
        final = F.l1_loss(outs[-1], g["hr"])
        assert "gsl_high" not in parts
    intermediate = F.l1_loss(outs[0], targets[0]) + F.l1_loss(outs[1], targets[1])
    duals = [method.net.duals[i](outs[i + 1]) for i in range(2)]
    dual = F.l1_loss(duals[0], targets[0]) + F.l1_loss(duals[1], targets[1])
    torch.testing.assert_close(parts["final"], final)
    torch.testing.assert_close(parts["intermediate"], intermediate)
    torch.testing.assert_close(parts["dual"], dual)
    torch.testing.assert_close(total, final + intermediate + 0.3 * dual)
    # bicubic reference: the same final loss for MATLAB bicubic of the LR input, detached
    bicubic = imresize(g["lr"], size=(32, 32))
    ref = method.final_loss(bicubic, g["hr"])[0]
    reference = method.reference_loss([g])["bicubic"]
    torch.testing.assert_close(reference, ref)
    assert not reference.requires_grad


def test_groups_are_weighted_by_their_share_of_the_batch():
    method = tiny(loss="l1")
    a, b = group(1), group(3)
    _, parts_a = method.compute_loss([a])
    _, parts_b = method.compute_loss([b])
    _, parts = method.compute_loss([a, b])
    torch.testing.assert_close(parts["final"], 0.25 * parts_a["final"] + 0.75 * parts_b["final"])


def test_y_option_builds_a_one_channel_network_and_trains_on_y():
    method = tiny(channels="y")
    assert method.channels == "y" and DRN.channels == "rgb"  # per instance, the class default is unchanged
    assert isinstance(method.net, DRNNet) and method.net.n_colors == 1
    total, _ = method.compute_loss([group(c=1)])
    assert torch.isfinite(total)
    lr_rgb = torch.rand(1, 3, 8, 8)
    sr = method.sr_y({"lr_y": rgb_to_y(lr_rgb), "lr": lr_rgb}, 4)  # the base evaluates Y methods on lr_y
    assert sr.shape == (1, 1, 32, 32)


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match=r"model.init_args.loss: 'l2' is not one of \['gsl', 'l1'\]"):
        tiny(loss="l2")
    with pytest.raises(ValueError, match=r"model.init_args.mask_quantile must be a number in \(0, 1\), got 1.0"):
        tiny(mask_quantile=1.0)
    with pytest.raises(ValueError, match="supported_scales"):
        tiny(supported_scales=[2])
    with pytest.raises(ValueError, match="'vdsr_small' builds a VDSRNet, but DRN trains DRNNet variants"):
        DRN(variant="vdsr_small")
    with pytest.raises(ValueError, match="contradicts channels"):
        DRN(variant="drn_small_x4", net={"n_colors": 3}, channels="y")


# ---- real fits through the CLI -------------------------------------------------------------------------------


def fit(tmp_path, name: str, model: dict, data: dict, trainer: dict) -> SRCLI:
    override = {"model": {"init_args": model}, "data": data, "trainer": {**trainer, "logger": logger(tmp_path / name)}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(override))
    args = ["fit", "--config", str(REPO / "experiments/drn/quick.yaml"), "--config", str(path)]
    args += ["--run_dir", str(tmp_path / name), "--trainer.enable_progress_bar", "false"]
    return SRCLI(args=args)


TINY_DATA = {
    "train_sources": ["291"],
    "batches_per_epoch": 4,
    "batch_size": 2,
    "patch_size": 32,
    "num_workers": 0,
    "val_sets": ["Set14"],
    "allow_selection_on_test": True,
    "test_sets": [],
    "val_max_images": 2,
}
TINY_TRAINER = {"precision": "32-true", "log_every_n_steps": 1, "check_val_every_n_epoch": 1}


class SnapshotEachEpoch(Callback):
    """Forces every batch of epoch 1 to look exploding, and keeps the parameters at each epoch's start/end."""

    def __init__(self) -> None:
        self.start: dict[int, list[torch.Tensor]] = {}
        self.end: dict[int, list[torch.Tensor]] = {}
        self.real_mean: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start[trainer.current_epoch] = [p.detach().clone() for p in pl_module.net.parameters()]
        if trainer.current_epoch == 1:
            self.real_mean = pl_module.previous_epoch_loss
            pl_module.previous_epoch_loss = 1e-30  # any real loss now exceeds skip_factor x this
        if trainer.current_epoch == 2:  # an all-skipped epoch keeps the threshold: restore the real one
            pl_module.previous_epoch_loss = self.real_mean

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end[trainer.current_epoch] = [p.detach().clone() for p in pl_module.net.parameters()]


@pytest.mark.slow  # trains: `make test-fast` leaves it out
def test_exploding_batches_are_skipped_counted_and_do_not_change_the_weights(tmp_path, data_root, monkeypatch):
    snap = SnapshotEachEpoch()
    monkeypatch.setattr(SRCLI, "instantiate_trainer", _with_callback(SRCLI.instantiate_trainer, snap))
    model = {"variant": "drn_small_x4", "net": TINY_NET, "max_consecutive_skips": 100}
    model["stages"] = [{"name": "train", "epochs": 3, "optimizer": {"name": "adam", "lr": 1e-3}}]
    with pytest.warns(UserWarning, match="DRN: skipped the batch"):
        cli = fit(tmp_path, "skip", model, TINY_DATA, TINY_TRAINER)
    changed = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert changed(snap.start[0], snap.end[0]) and changed(snap.start[2], snap.end[2])  # normal epochs train
    assert not changed(snap.start[1], snap.end[1])  # every batch of epoch 1 was skipped: no update
    assert snap.real_mean is not None and snap.real_mean > 0  # epoch 0's mean loss set the threshold
    run = cli.trainer.logger
    assert run.series("train/skipped_batches")[-1] == 4.0  # the 4 batches of epoch 1


def test_too_many_exploding_batches_in_a_row_stop_the_run_with_one_line(tmp_path, data_root, capsys):
    model = {"variant": "drn_small_x4", "net": TINY_NET, "max_consecutive_skips": 1,
             "stages": [{"name": "hot", "steps": 8, "optimizer": {"name": "sgd", "lr": 1e12}}]}  # fmt: skip
    override = {"model": {"init_args": model}, "data": TINY_DATA, "trainer": {**TINY_TRAINER, "logger": False}}
    path = tmp_path / "hot.yaml"
    path.write_text(yaml.safe_dump(override))
    args = ["fit", "--config", str(REPO / "experiments/drn/quick.yaml"), "--config", str(path), "--run_dir",
            str(tmp_path / "hot"), "--trainer.enable_progress_bar", "false"]
    assert main(args) == 2  # a user error (lower the lr), not a crash
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-sr")]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("lit-sr: error: DRN: 2 batches in a row had exploding or non-finite losses")
    assert lines[0].endswith("lower the lr (stages.0.optimizer.lr)")


def test_the_exploding_batch_rule_goes_on_from_a_mid_epoch_checkpoint():
    trained = tiny()
    trained.previous_epoch_loss, trained.epoch_loss_sum, trained.epoch_batches = 0.02, 0.09, 3
    trained.skipped_total, trained.skipped_in_a_row = 5, 2
    checkpoint: dict = {}
    trained.on_save_checkpoint(checkpoint)
    resumed = tiny()
    resumed.on_load_checkpoint(torch.load(_saved(checkpoint), weights_only=True))
    for method in (trained, resumed):
        method.on_train_epoch_end()
    # the epoch's mean counts the batches before the checkpoint; the in-a-row count goes on
    assert resumed.previous_epoch_loss == trained.previous_epoch_loss == pytest.approx(0.03)
    assert (resumed.skipped_total, resumed.skipped_in_a_row) == (5, 2)


def _saved(checkpoint: dict):
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer


def _with_callback(original, callback):
    def instantiate_trainer(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.insert(0, callback)
        return trainer

    return instantiate_trainer


@pytest.mark.slow  # trains: `make test-fast` leaves it out
def test_rgb_method_evaluates_through_the_one_path(tmp_path, data_root):
    """Validation numbers = benchmark numbers of the checkpoint; the metric is Y of the rounded RGB output."""
    model = {"variant": "drn_small_x4", "net": TINY_NET, "loss": "gsl"}
    model["stages"] = [{"name": "train", "epochs": 2, "optimizer": {"name": "adam", "lr": 1e-3}}]
    data = {**TINY_DATA, "val_max_images": 5}
    cli = fit(tmp_path, "eval", model, data, {**TINY_TRAINER, "check_val_every_n_epoch": 2})
    run = cli.trainer.logger
    logged = run.series("val/Set14/x4/psnr_y")[-1]
    assert run.series("train/loss_gsl_high") and run.series("train/loss_dual") and run.series("train/loss_bicubic")
    ckpt = tmp_path / "eval" / "checkpoints" / "last.ckpt"
    method = load_method(str(ckpt))
    assert isinstance(method, DRN) and method.channels == "rgb"
    bench = {**run_benchmark(method, ["Set14"], [4], max_images=5), **run_benchmark(method, ["Set5"], [4])}
    assert bench["Set14"]["x4"]["psnr_y"] == pytest.approx(logged, abs=1e-6)
    assert bench["Set14"]["x4"]["n_images"] == 5
    assert cli.model.last_results["Set14"]["x4"]["psnr_y"] == pytest.approx(logged, abs=1e-6)
    # by hand on Set5: RGB LR -> RGB SR -> 8-bit -> Y, against Y of the 8-bit HR, 4-pixel shave
    by_hand = []
    for path in list_images(data_root / "Set5"):
        hr = torch.from_numpy(np.ascontiguousarray(modcrop(read_image(path), 4))).permute(2, 0, 1)[None]
        hr = hr.double() / 255.0
        with torch.no_grad():
            sr = method.super_resolve(imresize(hr, 0.25).float(), 4)
        sr_y = rgb_to_y(quantize(sr) / 255.0)
        by_hand.append(psnr_y(sr_y, rgb_to_y(hr), 4).item())
    assert bench["Set5"]["x4"]["psnr_y"] == pytest.approx(float(np.mean(by_hand)), abs=1e-4)
