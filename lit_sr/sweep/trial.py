"""The trial side of a sweep: a Lightning callback in the trial's ``lit-sr fit`` config (see ``study``).

In the child it: dies with its worker (PR_SET_PDEATHSIG; DDP ranks > 0 with rank 0), rebuilds the Optuna
trial from the storage (URL in ``LIT_SR_SWEEP_STORAGE``) and wraps optuna-integration's
``PyTorchLightningPruningCallback`` on the metric (``check_pruned()`` after fit, as its DDP mode needs);
touches ``alive`` in the run dir at every batch (at most once a second: the worker kills a trial silent for
``study.stall_timeout``); logs the knob values to the run's logger; prunes networks over ``max_params``; and
writes ``result.json``: ``complete`` with the score of the checkpoint the sweep chose on the metric (its best
value), ``pruned`` (pruner, size, or a diverging run: ``FloatingPointError``), ``interrupted`` (SIGTERM,
checkpoint saved: retried) or ``fail``, with the reason.
Outside a worker's trial process (``LIT_SR_SWEEP_WORKER_PID`` unset: a trial's config re-run by hand) it
does nothing.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from lightning.pytorch.loggers import WandbLogger
from optuna_integration import PyTorchLightningPruningCallback

from lit_sr.errors import ConfigError, RunInterrupted
from lit_sr.sweep.config import parse
from lit_sr.sweep.study import ALIVE, STORAGE_ENV, WORKER_ENV, make_storage


class OptunaTrialCallback(pl.Callback):
    """Connects one ``lit-sr fit`` run to its Optuna trial (see the module docstring)."""

    def __init__(self, study: str, trial: int, metric: str, result: str, pruner: dict[str, Any],
                 max_params: int | None = None) -> None:
        super().__init__()
        self.metric, self.result, self.max_params = metric, Path(result), max_params
        self.info: dict[str, Any] = {"study": study, "trial": trial}
        self.pruning: PyTorchLightningPruningCallback | None = None
        self.alive: Path | None = None  # rank 0 of a worker's trial touches it
        self.touched = 0.0
        url = os.environ.get(STORAGE_ENV)
        if url is None or WORKER_ENV not in os.environ:  # not a sweep worker's child: a trial re-run by hand
            return
        rank_zero = os.environ.get("LOCAL_RANK", "0") == "0"
        if sys.platform.startswith("linux"):  # die with the worker; DDP ranks > 0 with rank 0, which started them
            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
            parent_died = str(os.getppid()) != os.environ[WORKER_ENV] if rank_zero else os.getppid() == 1
            if parent_died:  # before prctl
                os.kill(os.getpid(), signal.SIGKILL)
        storage = make_storage(url)
        pruner_obj = parse(optuna.pruners.BasePruner, pruner, "study.pruner")
        loaded = optuna.load_study(study_name=study, storage=storage, pruner=pruner_obj)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study), trial)
        self.trial = optuna.Trial(loaded, trial_id)
        self.pruning = PyTorchLightningPruningCallback(self.trial, monitor=metric)
        if rank_zero:
            self.alive = self.result.with_name(ALIVE)
            self._touch()

    def _touch(self) -> None:
        if self.alive is not None and time.monotonic() > self.touched + 1:
            self.alive.touch()
            self.touched = time.monotonic()

    def on_train_batch_end(self, *args: Any) -> None:
        self._touch()

    def on_validation_batch_end(self, *args: Any) -> None:
        self._touch()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.info["n_params"] = sum(p.numel() for p in pl_module.parameters())
        if isinstance(trainer.logger, WandbLogger) and trainer.is_global_zero:
            self.info["wandb_run"] = str(Path(trainer.logger.experiment.dir).parent)
        if self.pruning is None:
            return
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"optuna": {**self.info, "params": self.trial.params}})
        if self.max_params and self.info["n_params"] > self.max_params:
            raise optuna.TrialPruned(f"network has {self.info['n_params']:,} parameters > study.max_params "
                                     f"{self.max_params:,}")
        self.pruning.on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruning is None:
            return
        if not trainer.sanity_checking and self.metric not in trainer.callback_metrics:  # every trial would fail
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise ConfigError(f"study.metric {self.metric} is not logged by this run (it logs {logged}): name a set "
                              "of data.val_sets and a scale of data.val_scales")
        self.pruning.on_validation_end(trainer, pl_module)  # it skips the sanity check itself

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruning is None:
            return
        self.pruning.check_pruned()
        score = trainer.checkpoint_callback.best_model_score  # the sweep's checkpoint monitors the metric
        score = None if score is None else float(score)
        if score is None or not math.isfinite(score):
            self._write(trainer, "fail", reason=f"{self.metric} was never logged with a finite value ({score}): "
                        "does the budget reach a validation (trainer.check_val_every_n_epoch, study.score_from_stage)?")
            return
        self._write(trainer, "complete", value=score)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.pruning is None or isinstance(exception, ConfigError):  # no result: the worker stops the sweep
            return
        if isinstance(exception, RunInterrupted):  # SIGTERM after a saved checkpoint: the worker queues it again
            self._write(trainer, "interrupted", reason=f"stopped by a signal after saving {exception.checkpoint}; "
                        "retried as a new trial that resumes from it")
        elif isinstance(exception, optuna.TrialPruned):
            self._write(trainer, "pruned", reason=f"pruned: {exception}")
        elif isinstance(exception, FloatingPointError):
            self._write(trainer, "pruned", reason=f"diverged: {exception}")
        else:
            self._write(trainer, "fail", reason=f"{type(exception).__name__}: {exception}")

    def _write(self, trainer: pl.Trainer, state: str, **fields: Any) -> None:
        """The outcome for the worker (atomically), also in the W&B run's summary."""
        if not trainer.is_global_zero or self.result.exists():
            return
        ckpt = trainer.checkpoint_callback
        result = {"state": state, "value": None, "reason": None, **self.info, **fields,
                  "checkpoint": (ckpt.best_model_path or ckpt.last_model_path or None) if ckpt else None}
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.experiment.summary.update({f"optuna/{k}": result[k] for k in ("state", "value", "reason")})
        tmp = self.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, self.result)
