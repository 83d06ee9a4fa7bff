"""The trial side of a sweep: a Lightning callback that a trial's ``lit-sr fit`` config carries.

A worker (``lit_sr.sweep.study``) writes ``<run_dir>/trial.yaml`` with this callback under
``trainer.callbacks`` (init arg ``spec``: the trial's ``trial_spec.json``) and runs
``python -m lit_sr.cli fit --config trial.yaml`` in a child process, so a trial is exactly a normal fit.
The callback, in that child:

- dies with the worker (PR_SET_PDEATHSIG), so a killed worker leaves no trial training;
- rebuilds the Optuna trial from the storage (URL in ``LIT_SR_SWEEP_STORAGE``, study name and trial id in
  the spec) and wraps optuna-integration's ``PyTorchLightningPruningCallback`` on the monitored metric,
  calling ``check_pruned()`` after fit (what its DDP mode needs);
- logs the trial's params to the run's logger (W&B config ``optuna.params``, ``optuna.paths``, ...);
- prunes trials over ``max_params`` parameters before training;
- writes ``result.json`` atomically: ``complete`` with the best value of the metric, ``pruned`` (pruner,
  size limit, or a diverging run: non-finite loss) or ``fail`` with the reason, plus the W&B run and the
  checkpoint. The worker reads it and tells Optuna.

Without ``LIT_SR_SWEEP_STORAGE`` (re-running a trial's saved config by hand) the callback does nothing.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from optuna_integration import PyTorchLightningPruningCallback

from lit_sr.sweep.study import STORAGE_ENV, die_with_parent, make_pruner, make_storage


class OptunaTrialCallback(pl.Callback):
    """Connects one ``lit-sr fit`` run to its Optuna trial (see the module docstring)."""

    def __init__(self, spec: str) -> None:
        """``spec``: path of the trial's ``trial_spec.json``, written by the sweep worker."""
        super().__init__()
        self.spec_path = spec
        self.spec: dict[str, Any] = json.loads(Path(spec).read_text())
        self.metric: str = self.spec["metric"]
        self.maximize = self.spec.get("direction", "maximize") == "maximize"
        self.values: list[tuple[int, float]] = []
        self.info: dict[str, Any] = {}
        self.pruning: PyTorchLightningPruningCallback | None = None
        self._written = False
        url = os.environ.get(STORAGE_ENV)
        if url is None:
            rank_zero_warn(f"{STORAGE_ENV} is not set: {spec} runs as a plain fit, without its Optuna trial")
            return
        first_process = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
        die_with_parent(signal.SIGKILL, int(self.spec["parent_pid"]) if first_process else None)
        study = optuna.load_study(
            study_name=self.spec["study"],
            storage=make_storage(url),
            sampler=optuna.samplers.RandomSampler(),  # never samples: the worker set every param
            pruner=make_pruner(self.spec["pruner"]),
        )
        trial = optuna.Trial(study, int(self.spec["trial_id"]))
        self.pruning = PyTorchLightningPruningCallback(trial, monitor=self.metric)

    # ---- hooks -----------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n_params = sum(p.numel() for p in pl_module.parameters())
        self.info["n_params"] = n_params
        logger = trainer.logger
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            run_dir = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>
            self.info["wandb_dir"] = str(run_dir)
            self.info["wandb_run"] = str(run_dir) if run.offline else run.path
        if logger is not None:
            logger.log_hyperparams(
                {
                    "optuna": {
                        "study": self.spec["study"],
                        "trial": self.spec["number"],
                        "params": self.spec["params"],
                        "paths": self.spec["paths"],
                        "n_params": n_params,
                    }
                }
            )
        limit = self.spec.get("max_params")
        if self.pruning is not None and limit and n_params > limit:
            raise optuna.TrialPruned(f"network has {n_params:,} parameters > study.max_params {limit:,}")
        if self.pruning is not None:
            self.pruning.on_fit_start(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.values.append((int(trainer.current_epoch), float(value)))
        if self.pruning is not None:
            self.pruning.on_validation_end(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruning is None:
            return
        self.pruning.check_pruned()
        finite = [(e, v) for e, v in self.values if math.isfinite(v)]
        if not finite:
            self._write(
                trainer,
                "fail",
                reason=(
                    f"{self.metric} was never logged with a finite value: does the budget reach a validation "
                    f"(trainer.check_val_every_n_epoch) and does the metric exist? logged: {self.values}"
                ),
            )
            return
        epoch, best = (max if self.maximize else min)(finite, key=lambda ev: ev[1])
        self._write(trainer, "complete", value=best, best_epoch=epoch)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.pruning is None:
            return
        if isinstance(exception, optuna.TrialPruned):
            self._write(trainer, "pruned", reason=f"pruned: {exception}")
        elif isinstance(exception, FloatingPointError):
            self._write(trainer, "pruned", reason=f"diverged: {exception}")
        elif isinstance(exception, KeyboardInterrupt):
            self._write(trainer, "fail", reason="interrupted")
        else:
            self._write(trainer, "fail", reason=f"{type(exception).__name__}: {exception}")

    # ---- result file -----------------------------------------------------------------------------------
    def _write(self, trainer: pl.Trainer, state: str, **fields: Any) -> None:
        """Close the W&B run with the outcome in its summary, then write the result file for the worker."""
        if self._written or not trainer.is_global_zero:
            return
        self._written = True
        ckpt = trainer.checkpoint_callback
        checkpoint = (ckpt.best_model_path or ckpt.last_model_path) if ckpt is not None else ""
        result = {
            "state": state,
            "value": None,
            "reason": None,
            "checkpoint": checkpoint or None,
            "final_value": self.values[-1][1] if self.values else None,
            "values": self.values,
            **self.info,
            **fields,
        }
        _finish_wandb(result)
        path = Path(self.spec["result"])
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)


def _finish_wandb(result: dict[str, Any]) -> None:
    """Finish the trial's W&B run now: the run file is complete when the worker learns the outcome.

    (Left to wandb's exit hook, the offline run file can still be written after the process ends.)
    """
    import wandb

    if wandb.run is None:
        return
    wandb.run.summary.update({f"optuna/{k}": result.get(k) for k in ("state", "value", "reason")})
    wandb.finish(exit_code=0 if result["state"] == "complete" else 1)
