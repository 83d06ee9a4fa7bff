"""The PSNR cost of bf16 training: the quick VDSR preset for the same steps in fp32 and in bf16 autocast.

Both runs are ``lit-sr fit`` of experiments/vdsr/quick.yaml with the same seed (same data order and
initial weights), ``--steps`` steps of the preset's Adam + cosine schedule compressed to them, and only
the precision differing (``32-true`` vs ``bf16-mixed``). They are compared on the validation set
(``val/psnr_y``, the preset's default hold-out; the test benchmarks are not used to decide), together
with the steps per second of each. On a CPU without bf16 units lit-sr trains bf16-mixed in 32-true
(``lit_sr.cluster.precision_for_device``): there is nothing to compare, and the script says so. Not a test.

    python bench/bench_precision.py [--steps 600] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import wandb
import yaml
from common import Clock, emit, preset, table

from lit_sr.cli import SRCLI
from lit_sr.cluster import precision_for_device
from lit_sr.presets import preset_path

COST_LIMIT_DB = 0.05


def run(precision: str, steps: int, tmp: Path) -> dict:
    stage = dict(preset("vdsr")["model"]["init_args"]["stages"][0], epochs=1)
    override = {
        "model": {"init_args": {"stages": [stage]}},
        "data": {"batches_per_epoch": steps, "test_sets": []},
        "trainer": {"precision": precision, "check_val_every_n_epoch": 1, "enable_checkpointing": False,
                    "logger": False, "enable_progress_bar": False},
    }
    path = tmp / f"{precision}.yaml"
    path.write_text(yaml.safe_dump(override))
    try:
        cli = SRCLI(args=["--config", str(preset_path("vdsr", "quick")), "--config", str(path),
                          "--run_dir", str(tmp / precision)], run=False)
        clock = Clock()
        cli.trainer.fit(cli.model, cli.datamodule)
        wall, cpu = clock.wall, clock.cpu
    finally:
        wandb.finish()
    return {"psnr": float(cli.trainer.callback_metrics["val/psnr_y"]), "wall": wall, "cpu": cpu,
            "steps": cli.trainer.global_step, "val": ", ".join(cli.datamodule.val_sets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    if precision_for_device("bf16-mixed", "cpu") != "bf16-mixed":
        emit("This CPU has no bf16 units (AVX512-BF16 or AMX): lit-sr trains bf16-mixed in 32-true here, so there is "
             "no bf16 run to compare.\n", args.markdown)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {p: run(p, args.steps, Path(tmp)) for p in ("32-true", "bf16-mixed")}
    rows = [
        [p, r["steps"], f"{r['psnr']:.3f}", f"{r['wall']:.0f} s", f"{r['cpu']:.0f} s", f"{r['steps'] / r['wall']:.2f}"]
        for p, r in results.items()
    ]
    cost = results["32-true"]["psnr"] - results["bf16-mixed"]["psnr"]
    speed = (results["bf16-mixed"]["steps"] / results["bf16-mixed"]["wall"]) / (
        results["32-true"]["steps"] / results["32-true"]["wall"]
    )
    decision = (
        f"bf16 costs {cost:+.3f} dB (at most {COST_LIMIT_DB} dB allowed) for {speed:.2f}x the steps/s: "
        + ("**bf16-mixed stays the quick presets' default.**" if cost <= COST_LIMIT_DB else
           "**over the limit: the quick presets should train in fp32 (32-true).**")
    )
    text = (
        f"Quick VDSR preset, {args.steps} steps (Adam 1e-3, cosine over those steps), same seed; validation "
        f"`val/psnr_y` on {results['32-true']['val']} (mean over x2/x3/x4).\n\n"
    )
    text += table(["precision", "steps", "val/psnr_y (dB)", "wall", "CPU", "steps/s (wall)"], rows)
    text += f"\n{decision}\n"
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
