"""DDP on CPU (gloo): validation on two ranks gives exactly the single-process numbers (no padded shards)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import wandb
import yaml
from wandb_offline import read_finished

from lit_sr.cli import SRCLI
from lit_sr.paths import REPO

pytestmark = pytest.mark.slow  # trains and runs lit-sr processes: `make test-fast` leaves it out

QUICK = REPO / "experiments" / "vdsr" / "quick.yaml"


def test_ddp_validation_counts_each_image_once(tmp_path, data_root):
    override = tmp_path / "small.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "init_args": {
                        "net": {"depth": 4, "width": 8},
                        "stages": [{"name": "s", "steps": 2, "optimizer": {"name": "adam", "lr": 1e-3}}],
                    }
                },
                "data": {
                    "val_max_images": 5,  # of the default hold-out of training images: 3 + 2 over two ranks
                    "test_sets": [],
                    "val_scales": [2, 3],
                    "batches_per_epoch": 2,
                    "batch_size": 2,
                    "num_workers": 0,
                },
                "trainer": {"precision": "32-true"},
            }
        )
    )
    base = ["--config", str(QUICK), "--config", str(override), "--trainer.enable_progress_bar", "false"]
    try:  # a checkpoint both runs load (in this process: two steps, no validation)
        SRCLI(args=["fit", *base, "--run_dir", str(tmp_path / "fit"), "--trainer.limit_val_batches", "0"])
    finally:
        wandb.finish()
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    validate = [*base, "--ckpt_path", str(ckpt)]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    stdout, stderr = tmp_path / "ddp.out", tmp_path / "ddp.err"
    with stdout.open("w") as out, stderr.open("w") as err:  # two ranks: rank 0 in a subprocess starts rank 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "lit_sr.cli", "validate", *validate, "--run_dir", str(tmp_path / "ddp"), *ddp],
            cwd=tmp_path, env=dict(os.environ), stdout=out, stderr=err,
        )  # fmt: skip
    try:
        try:  # one process: this one, while the two ranks start
            SRCLI(args=["validate", *validate, "--run_dir", str(tmp_path / "single")])
        finally:
            wandb.finish()
        proc.wait(timeout=600)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr.read_text()[-4000:]
    assert "MEMBER: 2/2" in stderr.read_text()  # really two ranks
    results = {}
    for name in ("single", "ddp"):
        run = read_finished(tmp_path / name)
        results[name] = {
            k: run.series(k)[-1]
            for k in ("val/holdout/x2/psnr_y", "val/holdout/x3/psnr_y", "val/holdout/x2/ssim_y", "val/psnr_y")
        }
    for key, value in results["single"].items():
        assert results["ddp"][key] == pytest.approx(value, abs=1e-9), key


def _ddp_fit(tmp_path, preset: str, override: dict) -> subprocess.CompletedProcess:
    """``lit-sr fit`` of ``experiments/<preset>`` with ``override`` on two gloo ranks, rank 1's step-1 batch NaN."""
    config = tmp_path / "override.yaml"
    config.write_text(yaml.safe_dump(override))
    cmd = [sys.executable, "-m", "lit_sr.cli", "fit", "--config", str(REPO / "experiments" / preset), "--config",
           str(config), "--run_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
           "--trainer.logger", "false", "--trainer.strategy", "ddp", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu", "--trainer.callbacks+=cluster_helpers.NaNBatchOnRank",
           "--trainer.callbacks.step=1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


TINY_DATA = {"train_sources": ["builtin"], "batches_per_epoch": 3, "batch_size": 2, "num_workers": 0,
             "val_max_images": 2, "test_sets": [], "scales": [2], "scale_mode": "per_batch", "val_scales": [2]}


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_message(tmp_path, data_root):
    stages = [{"name": "s", "steps": 3, "optimizer": {"name": "adam", "lr": 1e-3}}]
    done = _ddp_fit(tmp_path, "vdsr/quick.yaml", {
        "model": {"init_args": {"net": {"depth": 3, "width": 8}, "stages": stages}},
        "data": TINY_DATA, "trainer": {"precision": "32-true"}})  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]  # the user error's code, not a crashed peer's 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("lit-sr: error: ")]
    assert len(lines) == 1, lines  # rank 0's, naming the rank that diverged; rank 1 exits quietly
    assert "non-finite training loss nan on rank 1 of 2 at step 1 (stage s" in lines[0], lines


def test_drn_skips_a_batch_that_explodes_on_one_rank(tmp_path, data_root):
    stages = [{"name": "train", "steps": 3, "optimizer": {"name": "adam", "lr": 1e-3}}]
    done = _ddp_fit(tmp_path, "drn/quick.yaml", {
        "model": {"init_args": {"variant": "drn_small_x4", "net": {"n_blocks": 1, "n_feats": 4}, "stages": stages}},
        "data": {**TINY_DATA, "scales": [4], "val_scales": [4], "patch_size": 32},
        "trainer": {"precision": "32-true"}})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]  # Lightning refuses a skipped (None) step under DDP
    assert "DRN: skipped the batch at step 1: loss nan on rank 1 of 2 exceeds" in done.stderr  # the rank that did
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())
