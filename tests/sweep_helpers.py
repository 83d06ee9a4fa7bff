"""Shared by the sweep tests: a tiny sweep file on the VDSR quick preset, its environment, study access."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from lit_sr.sweep.study import make_storage

LR = "model.init_args.stages.0.optimizer.lr"
# 3 layers of 8 channels, 2 epochs of 4 batches, validation on one image after every epoch.
TINY_FIXED = {
    "model.init_args.net": {"depth": 3, "width": 8},
    "model.init_args.stages.0.epochs": 2,
    "model.init_args.stages.0.optimizer": {"name": "sgd", "lr": 1.0e-3, "momentum": 0.9},
    "model.init_args.stages.0.lr_schedule": {"name": "constant"},
    "data.train_sources": ["builtin"],
    "data.batches_per_epoch": 4,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "data.scales": [2],
    "data.scale_mode": "per_batch",
    "data.val_scales": [2],
    "data.val_max_images": 1,
    "data.test_sets": ["Set5"],  # the report benchmarks the best trial on it
    "trainer.check_val_every_n_epoch": 1,
    "trainer.precision": "32-true",
    "trainer.log_every_n_steps": 1,
}
TEST_SETS = ("Set5", "Set14")  # the benchmarks: never seen by a trial


def write_sweep(folder: Path, name: str, study: dict | None = None, **sections) -> Path:
    """A sweep file on the VDSR quick preset with the tiny budget; ``study`` / sections override defaults."""
    doc = {
        "method": "vdsr",
        "preset": "quick",
        "study": {
            "name": name,
            "n_trials": 2,
            "sampler": {"class_path": "optuna.samplers.TPESampler", "init_args": {"seed": 0}},
            "pruner": {"class_path": "optuna.pruners.NopPruner"},
            "heartbeat_interval": 1,
            "grace_period": 3,
            **(study or {}),
        },
        "fixed": dict(TINY_FIXED),
        # SGD on the paper reduction: lr above about 1e-3 diverges on this network, 10 at once
        "params": {"lr": {"type": "float", "low": 1.0e-5, "high": 3.0e-4, "log": True, "paths": [LR]}},
    }
    doc.update(sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def sweep_env(data_root: Path) -> Iterator[None]:
    """The benchmark images and quiet offline W&B for this process, its workers and their trials."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIT_SR_DATA", str(data_root))
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("LIT_SR_SWEEP_STORAGE", raising=False)  # a developer's own study storage stays untouched
        yield


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(url))


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root / 'optuna.db'}"


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def child_pid(pid: int) -> int | None:
    """The first child process of ``pid`` (Linux ``/proc``), or None."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):  # e.g. the study is not created yet
            if value := predicate():
                return value
        time.sleep(0.2)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
