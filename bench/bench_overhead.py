"""Lightning overhead: steps/s of the quick VDSR preset through ``lit-sr fit`` against a bare PyTorch loop.

Both sides train the same network (the preset's ``vdsr_small``, seed 0) on the same SRDataModule
(``train_dataloader`` with the preset's workers, uint8 crops degraded on the training device by
the method's ``on_after_batch_transfer``), batch 16, Adam at the preset's lr, bf16 autocast (the preset's ``precision:
bf16-mixed``). The Lightning side is the real ``SRCLI`` fit of experiments/vdsr/quick.yaml: Trainer,
stage engine (lr set every step), logging to offline W&B, progress bar; only validation and
checkpointing are off, so the comparison is per training step. Steps are timed after ``--warmup``
steps; the two sides alternate ``--repeats`` times in this one run and the medians are compared.

    python bench/bench_overhead.py [--steps 200] [--repeats 3] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import wandb
import yaml
from common import REPO, build_method, emit, preset, table

from lit_sr.cli import SRCLI
from lit_sr.data.datamodule import SRDataModule


class StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.end = time.perf_counter()
        self.steps = trainer.global_step

    @property
    def rate(self) -> float:
        return (self.steps - self.warmup) / (self.end - self.start)


def lightning_rate(steps: int, warmup: int, tmp: Path) -> float:
    cfg = preset("vdsr")
    stage = dict(cfg["model"]["init_args"]["stages"][0], epochs=1)
    override = {
        "model": {"init_args": {"stages": [stage]}},
        "data": {"batches_per_epoch": steps},
        "trainer": {"limit_val_batches": 0, "enable_checkpointing": False, "max_epochs": 1},
    }
    path = tmp / "overhead.yaml"
    path.write_text(yaml.safe_dump(override))
    timer = StepTimer(warmup)
    args = ["--config", str(REPO / "experiments/vdsr/quick.yaml"), "--config", str(path)]  # run=False: no subcommand
    args += ["--run_dir", str(tmp / f"run{time.monotonic_ns()}")]
    try:
        cli = SRCLI(args=args, run=False)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        wandb.finish()
    return timer.rate


def bare_rate(steps: int, warmup: int) -> float:
    cfg = preset("vdsr")
    torch.manual_seed(0)
    method = build_method("vdsr").train()
    dm = SRDataModule(**cfg["data"])
    dm.setup("fit")
    lr = cfg["model"]["init_args"]["stages"][0]["optimizer"]["lr"]
    optimizer = torch.optim.Adam(method.net.parameters(), lr=lr)
    start = None
    for i, raw in enumerate(dm.train_dataloader()):
        if i == warmup:
            start = time.perf_counter()
        if i == steps:
            break
        batch = method.on_after_batch_transfer(raw, 0)  # the on-device degrade lit-sr fit runs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = method.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    bare, lit = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            bare.append(bare_rate(args.steps, args.warmup))
            lit.append(lightning_rate(args.steps, args.warmup, Path(tmp)))
            print(f"bare {bare[-1]:.2f} steps/s, lit-sr fit {lit[-1]:.2f} steps/s", flush=True)
    b, m = statistics.median(bare), statistics.median(lit)
    text = (
        f"Quick VDSR preset (vdsr_small, batch 16 of 41², x2-x4 mixed, Adam, bf16 autocast, on-device degrade), "
        f"{args.steps - args.warmup} timed steps after {args.warmup}, {args.repeats} alternating repeats.\n\n"
    )
    text += table(
        ["loop", "steps/s (median)", "each repeat"],
        [
            ["bare PyTorch", f"{b:.2f}", ", ".join(f"{r:.2f}" for r in bare)],
            ["lit-sr fit (Trainer + stage engine + W&B offline)", f"{m:.2f}", ", ".join(f"{r:.2f}" for r in lit)],
        ],
    )
    text += f"\nRatio lit-sr / bare: **{m / b:.3f}** (goal >= 0.95).\n"
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
