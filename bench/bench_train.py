"""How much VDSR learns in a fixed wall-clock budget: Set5 x2 PSNR gain over bicubic.

Trains the quick VDSR preset (experiments/vdsr/quick.yaml) at x2 on $LIT_SR_DATA/Sun80 for --minutes, then
evaluates the model and bicubic on Set5 x2 through the same protocol code and prints the difference.

    python bench/bench_train.py [--minutes 10] [--preset quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import wandb
import yaml

from lit_sr.cli import SRCLI
from lit_sr.evaluate import run_benchmark
from lit_sr.methods.bicubic import Bicubic
from lit_sr.presets import preset_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--model", default="vdsr")
    args = parser.parse_args()
    minutes = int(args.minutes)
    seconds = round((args.minutes - minutes) * 60)
    override = {
        "data": {
            "train_sources": ["Sun80"],
            "scales": [2],
            "scale_mode": "per_batch",
            "val_scales": [2],
            "test_sets": [],
        },
        "trainer": {
            "max_time": f"00:00:{minutes:02d}:{seconds:02d}",
            "logger": False,
            "check_val_every_n_epoch": 1000,
            "enable_checkpointing": False,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(override))
        start = time.perf_counter()
        cli = SRCLI(
            args=[
                "fit",
                "--config",
                str(preset_path(args.model, args.preset)),
                "--config",
                str(path),
                "--run_dir",
                str(Path(tmp) / "run"),
            ]
        )
        elapsed = time.perf_counter() - start
        wandb.finish()
        steps = cli.trainer.global_step
        model = run_benchmark(cli.model, ["Set5"], [2])["Set5"]["x2"]["psnr_y"]
    bicubic = run_benchmark(Bicubic(), ["Set5"], [2])["Set5"]["x2"]["psnr_y"]
    print(f"{args.model} {args.preset} preset, Sun80 x2, {elapsed / 60:.1f} min, {steps} steps")
    print(f"Set5 x2: model {model:.2f} dB, bicubic {bicubic:.2f} dB, gain {model - bicubic:+.2f} dB")


if __name__ == "__main__":
    main()
