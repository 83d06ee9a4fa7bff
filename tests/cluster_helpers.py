"""Helpers the cluster / resume tests run in subprocesses (not a test module).

``python tests/cluster_helpers.py OUT [lit-sr train device keys] [LightningCLI args]`` runs ``lit-sr fit`` in
this process and writes this rank's final weights (``rank<R>.pt``) and validation results (``rank<R>.json``).
``KillAtStep`` SIGKILLs its own process in the middle of a training step (after backward, before the
optimizer step): nothing is flushed or saved, as with a node failure. ``HangAtStep`` stops making progress
(a deadlocked collective, say).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

TESTS = Path(__file__).resolve().parent


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a ``lit-sr`` subprocess: this repository and ``tests/`` importable, one torch thread.

    No WANDB_SERVICE: each subprocess starts its own W&B service, as from a shell. This process's service (wandb
    puts its address there) would still hold a SIGKILLed run's id when the resume goes on with it ("run ID in use").
    """
    environ = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


class KillAtStep(Callback):
    """SIGKILL this process inside the training step that would make ``global_step`` = ``step`` + 1."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            sys.stderr.write(f"KillAtStep: SIGKILL at global_step {trainer.global_step}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def session_processes(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid`` (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return sorted(found)


class HangAtStep(Callback):
    """At ``global_step == step``, every rank sleeps for an hour in the training loop; rank 0 first writes the
    live processes of this session (its DDP ranks, DataLoader workers) to ``out`` as JSON."""

    def __init__(self, step: int, out: str) -> None:
        self.step, self.out = step, Path(out)

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            if trainer.is_global_zero:
                tmp = self.out.with_suffix(".tmp")
                tmp.write_text(json.dumps(session_processes(os.getsid(0))))
                tmp.replace(self.out)
            time.sleep(3600)


class NaNBatchOnRank(Callback):
    """Turn the training batch of ``step`` into NaNs on global rank ``rank`` only (a bad batch on one GPU)."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            for group in batch:  # the float groups degrade made: lr or ilr, hr, pyramid levels
                for value in group.values():
                    for t in value if isinstance(value, list) else [value]:
                        if hasattr(t, "is_floating_point") and t.is_floating_point():
                            t.fill_(float("nan"))


class OptimizerStateAtStart(Callback):
    """Keep a copy of the optimizer's ``state_dict`` when training starts (after a resume restored it)."""

    def __init__(self) -> None:
        self.state: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        import copy

        self.state = copy.deepcopy(trainer.optimizers[0].state_dict())


def main(argv: list[str]) -> int:
    import torch

    from lit_sr.cli import SRCLI
    from lit_sr.cluster import add_trainer_arguments, train_overrides

    out = Path(argv[0])
    parser = argparse.ArgumentParser()
    add_trainer_arguments(parser)
    args, rest = parser.parse_known_args(argv[1:])
    cli = SRCLI(args=["fit", *train_overrides(args), *rest])
    rank = cli.trainer.global_rank
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in cli.model.state_dict().items()}, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(cli.model.last_results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
