"""DDP on CPU (gloo): validation on two ranks gives exactly the single-process numbers (no padded shards)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import wandb
import yaml
from wandb_offline import read_finished

from lit_sr.cli import SRCLI
from lit_sr.paths import REPO

pytestmark = pytest.mark.slow  # trains and runs lit-sr processes: `make test-fast` leaves it out

QUICK = REPO / "experiments" / "vdsr" / "quick.yaml"


def lit_sr(*args, cwd):
    cmd = [sys.executable, "-m", "lit_sr.cli", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


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
    try:  # one process: in this one
        SRCLI(args=["validate", *validate, "--run_dir", str(tmp_path / "single")])
    finally:
        wandb.finish()
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    proc = lit_sr("validate", *validate, "--run_dir", str(tmp_path / "ddp"), *ddp, cwd=tmp_path)
    assert "MEMBER: 2/2" in proc.stderr  # really two ranks
    results = {}
    for name in ("single", "ddp"):
        run = read_finished(tmp_path / name)
        results[name] = {
            k: run.series(k)[-1]
            for k in ("val/holdout/x2/psnr_y", "val/holdout/x3/psnr_y", "val/holdout/x2/ssim_y", "val/psnr_y")
        }
    for key, value in results["single"].items():
        assert results["ddp"][key] == pytest.approx(value, abs=1e-9), key
