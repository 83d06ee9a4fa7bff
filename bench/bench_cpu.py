"""CPU training speed per method: forward + backward + Adam steps per second and achieved GFLOP/s.

Each method's quick-preset network, loss and batch (its SRDataModule's patches, degraded once up front, so
no data loading is timed) in five settings, measured one after the other in this run:

* ``fp32``: eager float32;  ``fp32 + channels_last``;
* ``bf16``: eager with ``torch.autocast("cpu", torch.bfloat16)`` (what ``precision: bf16-mixed`` does);
* ``bf16 + channels_last``;  ``bf16 + compile``: ``torch.compile`` of the network (compile time excluded).

FLOPs of one step (forward + backward) are counted once with ``torch.utils.flop_counter.FlopCounterMode``
in fp32 eager (the same arithmetic in every setting); GFLOP/s = FLOPs per step x steps per second.

    python bench/bench_cpu.py [--seconds 5] [--methods vdsr cmsc] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
from common import available_methods, build_method, emit, preset, table
from torch.utils.flop_counter import FlopCounterMode

from lit_sr.data.datamodule import SRDataModule

SETTINGS = ("fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last", "bf16 + compile")


def training_batches(model: str, count: int) -> tuple[list, dict]:
    """``count`` degraded training batches of the preset's data config, and that config."""
    data = dict(preset(model)["data"])
    data.update(num_workers=0, batches_per_epoch=count, test_sets=[])
    dm = SRDataModule(**data)
    method = build_method(model)
    dm.setup("fit")
    batches = [method.on_after_batch_transfer(raw, 0) for raw, _ in zip(dm.train_dataloader(), range(count))]
    return batches, data


def _map(batch, fn):
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: _map(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map(v, fn) for v in batch)
    return batch


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.is_floating_point() else t


def step_fn(method, setting: str):
    """One training step closure for ``setting``; returns (step, prepared batch transform)."""
    bf16 = setting.startswith("bf16")
    if "channels_last" in setting:
        method.net = method.net.to(memory_format=torch.channels_last)
    if "compile" in setting:
        method.net = torch.compile(method.net)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-4)

    def step(batch) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss, _ = method.compute_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prepare = (lambda b: _map(b, _channels_last)) if "channels_last" in setting else (lambda b: b)
    return step, prepare


def flops_per_step(model: str, batches: list) -> float:
    method = build_method(model, channels_last=False).train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = method.compute_loss(batches[0])
        loss.backward()
    return float(counter.get_total_flops())


def measure(model: str, setting: str, batches: list, seconds: float) -> float:
    """Steps per second of ``setting`` after a warm-up pass over every batch (compilation included there)."""
    torch.manual_seed(0)
    method = build_method(model, channels_last=False).train()
    step, prepare = step_fn(method, setting)
    batches = [prepare(copy.copy(b)) for b in batches]
    for b in batches:
        step(b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        step(batches[count % len(batches)])
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per method and setting")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches cycled through")
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    rows = []
    for model in args.methods or available_methods():
        batches, data = training_batches(model, args.batches)
        flops = flops_per_step(model, batches)
        variant = preset(model)["model"]["init_args"].get("variant", model)
        row = [model, variant, f"{data['batch_size']} x {data['patch_size']}²", f"{flops / 1e9:.2f}"]
        for setting in args.settings:
            rate = measure(model, setting, batches, args.seconds)
            row.append(f"{rate:.2f} / {rate * flops / 1e9:.0f}")
            print(f"{model:10s} {setting:22s} {rate:7.2f} steps/s {rate * flops / 1e9:6.0f} GFLOP/s", flush=True)
        rows.append(row)
    header = ["method", "network", "batch x HR patch", "GFLOP / step", *args.settings]
    text = (
        f"Forward + backward + Adam step of each quick preset's loss and batch, {args.seconds:g} s per cell after a "
        f"warm-up (compile time excluded), {torch.get_num_threads()} threads. Cells: steps/s / achieved GFLOP/s. "
        "FLOPs counted by "
        "`torch.utils.flop_counter` (fp32 eager, same arithmetic in every setting).\n\n"
    )
    text += table(header, rows)
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
