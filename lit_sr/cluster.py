"""Running on clusters: device/node keys and Trainer presets, step checkpoints, signals, SLURM requeue.

- ``lit-sr train <method> --devices 2 --nodes 1 --strategy ddp --trainer-preset ddp`` (``make train DEVICES=2
  NODES=1 STRATEGY=ddp TRAINER=ddp``): ``train_overrides`` turns them into LightningCLI arguments; a preset is
  ``trainers/<name>.yaml`` (a ``trainer:`` block) applied after the method's preset.
- ``StepCheckpoint``: ``checkpoints/last.ckpt`` rewritten (atomically, by ``AtomicCheckpointIO``) every
  ``every_n_steps`` optimizer steps, so ``--ckpt_path last`` loses at most that many steps. With the data
  stream's position saved too (``lit_sr.data.resume``) a resumed run continues bit for bit.
- ``SignalCheckpoint``: SIGTERM, and SIGUSR1 under SLURM (``#SBATCH --signal=SIGUSR1@90``), let the current
  step finish on every rank, save ``checkpoints/last.ckpt``, requeue the SLURM job on SIGUSR1, and stop with
  ``RunInterrupted`` (``lit-sr`` prints how to resume and exits 0).
- ``precision_for_device``: a bf16 ``trainer.precision`` on a CPU without bf16 units trains in ``32-true``.
- ``LIT_SR_IGNORE_SLURM=1``: inside a SLURM allocation, this process launches its own DDP ranks on the GPUs it
  sees instead of expecting one ``srun`` task per GPU (sweep trials started by a sweep worker).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_sr.errors import ConfigError, RunInterrupted
from lit_sr.presets import config_roots
from lit_sr.typed import check_arguments, config_entry, positive_int

TRAINER_PRESETS = "trainers"
IGNORE_SLURM_VAR = "LIT_SR_IGNORE_SLURM"
DEFAULT_EVERY_N_STEPS = 100


# ---- device / node keys and Trainer presets ---------------------------------------------------------------
def trainer_preset_names() -> list[str]:
    return sorted({p.stem for root in config_roots() for p in (root / TRAINER_PRESETS).glob("*.yaml")})


def trainer_preset(name: str) -> Path:
    """``trainers/<name>.yaml``, looked up like the method presets (current folder, checkout, installed)."""
    for root in config_roots():
        path = root / TRAINER_PRESETS / f"{name}.yaml"
        if path.is_file():
            return path
    raise ConfigError(
        f"--trainer-preset {name}: no {TRAINER_PRESETS}/{name}.yaml; available: {', '.join(trainer_preset_names())}"
    )


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    """The device keys of ``lit-sr train`` (and ``make train``): shortcuts for ``--trainer.*``."""
    parser.add_argument("--devices", default=None, help="trainer.devices: N per node, 'auto', or a list '0,1'")
    parser.add_argument("--nodes", type=positive_int, default=None, help="trainer.num_nodes")
    parser.add_argument("--strategy", default=None, help="trainer.strategy, e.g. ddp")
    parser.add_argument(
        "--trainer-preset",
        default=None,
        metavar="NAME",
        help=f"a Trainer preset {TRAINER_PRESETS}/NAME.yaml ({', '.join(trainer_preset_names())})",
    )


def train_overrides(args: argparse.Namespace) -> list[str]:
    """LightningCLI arguments for ``--trainer-preset/--devices/--nodes/--strategy`` (explicit keys win)."""
    out: list[str] = []
    if getattr(args, "trainer_preset", None):
        out += ["--config", str(trainer_preset(args.trainer_preset))]
    if getattr(args, "devices", None) is not None:
        out += ["--trainer.devices", str(args.devices)]
    if getattr(args, "nodes", None) is not None:  # a positive int: argparse checked it (``positive_int``)
        out += ["--trainer.num_nodes", str(args.nodes)]
    if getattr(args, "strategy", None):
        out += ["--trainer.strategy", args.strategy]
    return out


# ---- SLURM ---------------------------------------------------------------------------------------------------
def under_slurm() -> bool:
    """True inside a SLURM job (and not told to ignore it)."""
    return "SLURM_JOB_ID" in os.environ and os.environ.get(IGNORE_SLURM_VAR) != "1"


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array element, else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this job; returns a short note for the stop message."""
    job = slurm_job_id()
    if not job or not re.fullmatch(r"[0-9_]+", job):
        return "no SLURM job id to requeue"
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeue of SLURM job {job} failed ({err}); resubmit it"
    if proc.returncode != 0:
        return f"requeue of SLURM job {job} failed ({proc.stderr.strip() or proc.returncode}); resubmit it"
    return f"SLURM job {job} requeued"


# ---- checkpoints -----------------------------------------------------------------------------------------------
def _checkpoint_dir(trainer: Any) -> Path:
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.dirpath:
        return Path(cb.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


def save_last(trainer: Any, filename: str = "last.ckpt") -> Path:
    """Save ``checkpoints/<filename>`` now; the run's ModelCheckpoint keeps rewriting that file (no ``last-v1``)."""
    path = _checkpoint_dir(trainer) / filename
    for cb in trainer.checkpoint_callbacks:  # before saving: the saved callback state must name this file too
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath and Path(cb.dirpath) == path.parent:
            cb.last_model_path = str(path)
    trainer.save_checkpoint(path, weights_only=False)  # full state: resume needs optimizer and loops
    return path


def _at_step_boundary(trainer: Any, batch_idx: int) -> bool:
    """After an optimizer step (not inside gradient accumulation; an epoch's last batch always steps)."""
    last = batch_idx + 1 == trainer.num_training_batches
    return last or (batch_idx + 1) % max(1, int(trainer.accumulate_grad_batches)) == 0


class StepCheckpoint(Callback):
    """Rewrite ``checkpoints/last.ckpt`` every ``every_n_steps`` optimizer steps (0: never) for exact resume.

    The last step of an epoch is saved at the end of the epoch instead, after its validation (so a resume never
    skips a validation). Saving at every epoch end also keeps ``last.ckpt`` the newest state: Lightning 2.6's
    ModelCheckpoint rewrites it only when the monitored score improved. The typed arguments are checked by
    jsonargparse (``trainer.callbacks``) and here (a Python call).
    """

    def __init__(self, every_n_steps: NonNegativeInt = DEFAULT_EVERY_N_STEPS, filename: str = "last.ckpt") -> None:
        args = check_arguments(StepCheckpoint.__init__, locals(), "StepCheckpoint.")
        self.every_n_steps: int = args["every_n_steps"]
        self.filename = filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.every_n_steps or trainer.global_step % self.every_n_steps or trainer.sanity_checking:
            return
        if not _at_step_boundary(trainer, batch_idx) or batch_idx + 1 >= trainer.num_training_batches:
            return
        save_last(trainer, self.filename)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_steps and not trainer.sanity_checking:
            save_last(trainer, self.filename)


class SignalCheckpoint(Callback):
    """SIGTERM (and SIGUSR1 under SLURM): finish the step, save ``last.ckpt``, requeue on SIGUSR1, stop cleanly.

    The handlers only set a flag; every rank acts on it at the same step boundary (one all-reduce per step when
    there are several ranks), so the checkpoint is consistent. Installed for ``fit`` only (after Lightning's
    own handlers, which it replaces while training runs).
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def signals(self) -> list[int]:
        return [signal.SIGTERM] + ([signal.SIGUSR1] if under_slurm() else [])

    def _handler(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.signals()}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _stop(self, trainer, when: str) -> None:
        signum = self.received if self.received is not None else signal.SIGTERM
        path = save_last(trainer, self.filename)
        self._restore()
        notes = []
        if signum == getattr(signal, "SIGUSR1", None) and under_slurm() and trainer.is_global_zero:
            notes.append(requeue_slurm_job())
        stage = getattr(trainer.lightning_module, "stage", None)
        run_dir = Path(trainer.default_root_dir)
        message = (
            f"stopped by {signal.Signals(signum).name} {when} (step {trainer.global_step}, epoch "
            f"{trainer.current_epoch}{', stage ' + stage.name if stage is not None else ''}): saved {path}"
            + "".join(f"; {n}" for n in notes)
            + f". Resume with the same command plus --ckpt_path last --run_dir {run_dir}"
        )
        raise RunInterrupted(message, str(path))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not _at_step_boundary(trainer, batch_idx):
            return
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._stop(trainer, "after its training step")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.received is not None:  # arrived after the last step: training is complete, still stop here
            self._stop(trainer, "at the end of training")
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()


def plugin_class(plugin: Any) -> type | None:
    """The class of a Trainer plugin given as an instance or as a config ``class_path`` (None for a string)."""
    class_path = getattr(plugin, "class_path", None) if not isinstance(plugin, (str, type)) else None
    if isinstance(class_path, str):
        import importlib

        module, _, name = class_path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return None
    return None if isinstance(plugin, str) else type(plugin)


def with_cluster_environment(plugins: Any) -> list:
    """Trainer plugins plus, when ``LIT_SR_IGNORE_SLURM=1``, Lightning's local cluster environment (own DDP ranks).

    Added as a ``class_path`` config entry (like lit_sr's callbacks), so the run's saved config.yaml loads again.
    """
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else ([] if plugins is None else [plugins])
    if os.environ.get(IGNORE_SLURM_VAR) != "1":
        return plugins
    from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment

    if any(issubclass(c, ClusterEnvironment) for c in map(plugin_class, plugins) if c is not None):
        return plugins
    return [*plugins, config_entry(LightningEnvironment)]


def precision_for_device(precision: Any, accelerator: Any) -> Any:
    """``precision``, or ``32-true`` for a bf16 one when the run trains on a CPU without bf16 units (AVX512-BF16 or
    AMX): there oneDNN emulates bf16, and a quick VDSR step took 10.4x longer than in fp32 (AVX2 EPYC, torch 2.13).
    A GPU, and a CPU with the units, keep the precision the config asks."""
    import torch

    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()  # what accelerator "auto" picks first
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not gpu)
    if not str(precision).startswith("bf16") or not on_cpu:
        return precision
    cpu = torch.cpu
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: True)() or getattr(cpu, "_is_amx_tile_supported", bool)():
        return precision
    return "32-true"
