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
