"""An in-memory Lightning logger for the tests: what a run hands its logger, read back without a logging backend.

``lit-sr fit`` logs to W&B unless ``trainer.logger`` says otherwise; the training tests set ``logger(run_dir)``
there and read ``cli.trainer.logger``. Real offline W&B runs are read by ``staged_run`` in ``tests/test_training.py``
(the training side's one W&B smoke test), ``tests/test_wandb_offline.py``, ``tests/test_ddp.py`` (its ranks run in
a subprocess) and the sweep tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


def logger(run_dir: str | Path) -> dict[str, Any]:
    """``trainer.logger`` of a config: a MemoryLogger whose ``save_dir`` (where ``config.yaml`` goes) is the run's."""
    return {"class_path": "memory_logger.MemoryLogger", "init_args": {"save_dir": str(run_dir)}}


class MemoryLogger(Logger):
    """Every ``log_metrics`` row with its step, and the hyperparameters merged as W&B's config merges them."""

    def __init__(self, save_dir: str) -> None:
        super().__init__()
        self._save_dir = save_dir
        self.rows: list[dict[str, Any]] = []
        self.config: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Any, *args: Any, **kwargs: Any) -> None:
        self.config.update(params if isinstance(params, Mapping) else vars(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.rows.append({**metrics, "step": step})

    def series(self, key: str) -> list[Any]:
        """The values of ``key`` in the order they were logged; ``KeyError`` listing the keys when it never was."""
        if not (values := [row[key] for row in self.rows if key in row]):
            raise KeyError(f"{key!r} was never logged; logged keys: {sorted({k for row in self.rows for k in row})}")
        return values
