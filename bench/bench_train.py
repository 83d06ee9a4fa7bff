"""How much each method learns in a fixed wall-clock budget: Set5 gain over bicubic after --minutes of training.

Each method's quick preset (``experiments/<method>/quick.yaml``: its network, data, batch, optimizer) trains
through ``lit-sr fit`` for ``--minutes`` of wall-clock time, validation off. The budget, not the preset's step
count, ends the run: a short calibration run measures the preset's steps per second, every stage's epochs are
scaled so that the schedule (cosine decay, greedy pretraining stages) spans the budget, and the Trainer's
``max_time`` stops the run at the budget whatever the calibration said. The model is then scored on Set5 through
the protocol code (``lit_sr.evaluate.run_benchmark``) at x4 and, for methods that train it, x2.

    python bench/bench_train.py [--minutes 2] [--methods vdsr lapsrn] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
from pathlib import Path

import wandb
import yaml
from common import available_methods, emit, preset, table
from lightning.pytorch.callbacks import Timer

from lit_sr.cli import SRCLI
from lit_sr.evaluate import run_benchmark
from lit_sr.methods.bicubic import Bicubic

TEST_SET = "Set5"
CALIBRATION_S = 20


def _fit(config: dict, seconds: float, tmp: Path, name: str) -> tuple[SRCLI, float]:
    """``lit-sr fit`` of ``config`` stopped by ``max_time`` after ``seconds`` of training; the CLI and the
    training seconds (Lightning's ``Timer``: the fit loop only, without start-up)."""
    cfg = copy.deepcopy(config)
    cfg.setdefault("data", {})["test_sets"] = []
    minutes, secs = divmod(int(math.ceil(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    cfg.setdefault("trainer", {}).update(
        max_time=f"00:{hours:02d}:{minutes:02d}:{secs:02d}",
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        cli = SRCLI(args=["fit", "--config", str(path), "--run_dir", str(tmp / name)])
    finally:
        wandb.finish()
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, Timer))
    return cli, timer.time_elapsed("train")


def budget_config(config: dict, steps: int) -> dict:
    """``config`` with every stage's epochs scaled by one factor so that the whole schedule is ``steps`` long."""
    cfg = copy.deepcopy(config)
    stages = cfg["model"]["init_args"]["stages"]
    per_epoch = int(cfg["data"]["batches_per_epoch"])
    total = sum(int(s["epochs"]) for s in stages) * per_epoch
    factor = steps / total
    for stage in stages:
        stage["epochs"] = max(1, round(int(stage["epochs"]) * factor))
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="training wall-clock budget per method")
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    budget = 60 * args.minutes
    bicubic = run_benchmark(Bicubic(), [TEST_SET], [2, 4])[TEST_SET]
    rows = []
    for model in args.methods or available_methods():
        config = preset(model, "quick")
        with tempfile.TemporaryDirectory() as tmp:
            cli, wall = _fit(config, CALIBRATION_S, Path(tmp), "calibrate")
            rate = cli.trainer.global_step / wall
            cli, wall = _fit(budget_config(config, max(1, int(rate * budget))), budget, Path(tmp), "train")
            steps, method = cli.trainer.global_step, cli.model
            scales = [s for s in (2, 4) if s in config["data"]["scales"] or s == 4]  # trained scales, and x4
            result = run_benchmark(method, [TEST_SET], scales)[TEST_SET]
        cells = []
        for s in (2, 4):
            if s in scales:
                psnr = result[f"x{s}"]["psnr_y"]
                cells.append(f"{psnr:.2f} ({psnr - bicubic[f'x{s}']['psnr_y']:+.2f})")
            else:
                cells.append("-")
        rows.append([model, method.hparams.variant, steps, f"{wall / 60:.1f}", *cells])
        print(f"{model}: {steps} steps in {wall / 60:.1f} min; Set5 {cells}", flush=True)
    text = (
        f"Each quick preset trained for {args.minutes:g} min of wall-clock time (schedule scaled to the budget from a "
        f"{CALIBRATION_S} s calibration run; validation off), then {TEST_SET} through the protocol metrics. "
        f"Bicubic: x2 {bicubic['x2']['psnr_y']:.2f}, x4 {bicubic['x4']['psnr_y']:.2f} dB.\n\n"
    )
    text += table(["method", "network", "steps", "wall min", f"{TEST_SET} x2 (gain)", f"{TEST_SET} x4 (gain)"], rows)
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
