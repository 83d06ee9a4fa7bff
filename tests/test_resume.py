"""Exact resume: a training SIGKILLed mid-epoch and resumed with ``--ckpt_path last`` ends with the weights of an
uninterrupted run; SIGTERM saves a checkpoint and stops cleanly; the patch stream restarts at a batch index."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from cluster_helpers import subprocess_env
from conftest import TWO_STAGES
from wandb_offline import find_runs, read_run

from lit_sr.cli import main
from lit_sr.data.datasets import TrainPatches
from lit_sr.data.images import ImageCache
from lit_sr.data.resume import ResumableLoader
from lit_sr.data.sources import resolve_images
from lit_sr.paths import REPO

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

QUICK = REPO / "experiments" / "vdsr" / "quick.yaml"
STEPS = 6  # batches per epoch
EVERY = 2  # step-checkpoint interval
# Stage "warm" (Adam) is epoch 0; stage "main" (SGD + momentum, halving lr, adjustable clipping) epochs 1-2.
RESUME_CONFIG = {
    "model": {
        "init_args": {
            "net": {"depth": 4, "width": 8},
            "stages": TWO_STAGES,
        }
    },
    "data": {
        "train_sources": ["builtin"],
        "val_holdout": 2,
        "test_sets": [],
        "val_scales": [2],
        "scales": [2, 3],
        "scale_mode": "per_batch",
        "batches_per_epoch": STEPS,
        "batch_size": 4,
        "num_workers": 1,  # the stream position must reach a persistent worker process
        "val_max_images": 1,
    },
    "trainer": {
        "precision": "32-true",
        "deterministic": True,
        "enable_progress_bar": False,
        "check_val_every_n_epoch": 1,
        "callbacks": [{"class_path": "lit_sr.cluster.StepCheckpoint", "init_args": {"every_n_steps": EVERY}}],
    },
}


def fit_args(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(run_dir), *extra]


def fit_cmd(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lit_sr.cli", *fit_args(config, run_dir, *extra)]


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@contextlib.contextmanager
def like_a_fit_process(cwd: Path):
    """Run ``lit-sr fit`` in this process as ``fit_cmd`` runs it in a subprocess, then undo what the run set.

    One torch thread, as ``subprocess_env()``'s OMP_NUM_THREADS=1 gives the subprocesses (two threads change the
    weights' last bits), and the subprocesses' working directory. Afterwards: the thread count, the deterministic
    algorithms switch (``trainer.deterministic``), cudnn.benchmark and the environment variables the run set.
    """
    threads, environ, here = torch.get_num_threads(), dict(os.environ), os.getcwd()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only, benchmark = torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark
    torch.set_num_threads(1)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        for key in os.environ.keys() - environ.keys():  # PL_GLOBAL_SEED, CUBLAS_WORKSPACE_CONFIG, WANDB_SERVICE, ...
            del os.environ[key]
        os.environ.update(environ)


def test_sigkill_mid_epoch_then_resume_last_gives_the_uninterrupted_weights(tmp_path, data_root):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(RESUME_CONFIG))
    # A random step inside stage "main" whose last step checkpoint is not at an epoch boundary.
    candidates = [k for k in range(STEPS + 1, 3 * STEPS) if (k // EVERY * EVERY) % STEPS and k % STEPS]
    kill_at = random.Random().choice(candidates)
    note = f"(killed at global_step {kill_at})"

    # The run that is killed, in a subprocess; meanwhile the uninterrupted reference run in this process (the same
    # `lit-sr fit` command line, the same single torch thread: it gives the subprocess's weights bit for bit).
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        killed = subprocess.Popen(
            fit_cmd(config, tmp_path / "resumed", "--trainer.callbacks+=cluster_helpers.KillAtStep",
                    f"--trainer.callbacks.step={kill_at}"),
            cwd=tmp_path, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with like_a_fit_process(tmp_path):
            assert main(fit_args(config, tmp_path / "full")) == 0
        killed.wait(timeout=600)
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == kill_at // EVERY * EVERY, note  # the newest step checkpoint survived
    assert saved["global_step"] % STEPS != 0 and saved["lit_sr_stage_index"] == 1, note  # mid-epoch, stage 2
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == saved["global_step"] % STEPS
    assert not list(last.parent.glob(".*tmp*")), "a torn temporary checkpoint was left behind"

    resumed = run(fit_cmd(config, tmp_path / "resumed", "--ckpt_path", "last"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr + resumed.stdout
    killed_file, resumed_file = find_runs(tmp_path / "resumed")  # run-<id>.wandb (the killed one may be empty)
    assert resumed_file.stem == killed_file.stem  # the resume goes on with the killed run's W&B run
    assert read_run(resumed_file).run_id == resumed_file.stem.removeprefix("run-")
    a, b = weights(tmp_path / "full" / "checkpoints" / "last.ckpt"), weights(last)
    assert torch.load(last, weights_only=True)["global_step"] == 3 * STEPS
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after the resume {note}"


def test_a_resume_from_an_epoch_end_checkpoint_continues_with_the_next_epochs_patches(tmp_path, data_root):
    # Lightning hands a loader its saved state only when the saved epoch is unfinished; a run stopped at an epoch's
    # end (max_epochs here; a requeue or a kill between epochs alike) must still draw the next epoch's patches.
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(RESUME_CONFIG))
    with like_a_fit_process(tmp_path):
        assert main(fit_args(config, tmp_path / "full")) == 0
        assert main(fit_args(config, tmp_path / "stopped", "--trainer.max_epochs", "2")) == 0
        last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
        saved = torch.load(last, map_location="cpu", weights_only=True)
        assert saved["global_step"] == 2 * STEPS and saved["lit_sr_stage_index"] == 1
        assert main(fit_args(config, tmp_path / "stopped", "--ckpt_path", "last")) == 0
    a, b = weights(tmp_path / "full" / "checkpoints" / "last.ckpt"), weights(last)
    assert torch.load(last, weights_only=True)["global_step"] == 3 * STEPS
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after the resume from the end of epoch 1"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_sigterm_saves_a_checkpoint_and_stops_with_a_message(tmp_path, data_root):
    long = yaml.safe_load(yaml.safe_dump(RESUME_CONFIG))
    long["model"]["init_args"]["stages"] = [{"name": "long", "steps": 5000, "optimizer": {"name": "adam", "lr": 1e-3}}]
    long["data"].update(num_workers=0, batches_per_epoch=1000)
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(long))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        fit_cmd(config, tmp_path / "run"), cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(ckpt.is_file, 300, "the first step checkpoint")  # training is running
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lit-sr: ")]
    assert len(lines) == 1 and lines[0].startswith("lit-sr: stopped by SIGTERM after its training step"), err[-3000:]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert f"(step {saved['global_step']}, epoch 0, stage long): saved {ckpt}" in lines[0]
    assert f"--ckpt_path last --run_dir {tmp_path / 'run'}" in lines[0]
    assert EVERY <= saved["global_step"] < 5000


def _stream(loader, n: int | None = None) -> list[torch.Tensor]:
    out = []
    for batch in loader:
        out.append(batch["hr"].clone())
        if n is not None and len(out) == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_patch_stream_restarts_at_the_saved_batch(workers):
    paths = resolve_images("builtin")[1][:3]
    images = ImageCache(paths, min_size=84)

    def loader(seed: int | None) -> ResumableLoader:
        ds = TrainPatches(images, [2, 3], 41, batch_size=2, batches_per_epoch=6, mode="mixed", seed=seed)
        return ResumableLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)

    first = loader(None)
    epoch0, epoch1 = _stream(first), _stream(first)
    assert len(epoch0) == len(epoch1) == 6
    assert not torch.equal(epoch0[0], epoch1[0]) and not torch.equal(epoch1[0], epoch1[1])
    # The state after 4 batches of epoch 1 (as the trainer would report it) restarts a fresh loader there.
    state = {"seed": int(first.dataset.position[0]), "epoch": 1, "batches": 4}
    again = loader(seed=12345)  # a different seed: the state's seed must win
    again.load_state_dict(state)
    rest = _stream(again)
    assert len(rest) == 2 and all(torch.equal(x, y) for x, y in zip(rest, epoch1[4:]))
    # A complete epoch in the state continues with the next one.
    done = loader(seed=0)
    done.load_state_dict({**state, "epoch": 0, "batches": 6})
    assert all(torch.equal(x, y) for x, y in zip(_stream(done), epoch1))
