"""Trainer add-ons every run gets: the stage in the progress bar, image panels, run-folder checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from lit_sr.data.resize import imresize
from lit_sr.errors import ConfigError
from lit_sr.inference import y_to_rgb_sr
from lit_sr.typed import check_arguments


class StageProgressBar(TQDMProgressBar):
    """TQDM bar with the current stage's name next to epoch, loss and lr.

    Redrawn every ``refresh_rate`` (default 10) batches: a redraw reads every progress-bar metric back to the
    host and formats it, about 3 ms, a tenth of a quick VDSR step on 2 CPU cores (``make bench``, section 2).
    """

    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        stage = getattr(pl_module, "stage", None)
        if stage is not None and trainer.training:
            items["stage"] = stage.name
        return items


class RunCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (by ``val/psnr_y``) and ``last.ckpt`` in ``<run_dir>/checkpoints`` (the trainer's root).

    ``carry_best``: a run resumed from another folder's checkpoint keeps that run's best score and checkpoint
    (Lightning drops them when the folder changes), so that one training split over folders (a sweep's retried
    trial) has one best. A new best is written here; the old folder's files are never removed.
    ``from_stage``: only validations in this stage of the method's schedule, or a later one, compete for the
    best (IRLapSRN's sweep objective is the PSNR after stage 2, not during its pretraining).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "best",
        monitor: str = "val/psnr_y",
        mode: str = "max",
        save_last: bool = True,
        carry_best: bool = False,
        from_stage: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, mode=mode, save_last=save_last, **kwargs)
        self.carry_best, self.from_stage = carry_best, from_stage
        self._first_stage: int | None = None  # the index of from_stage in the method's stages

    def check_monitor_top_k(self, trainer, current: Tensor | None = None) -> bool:
        if self._first_stage is not None and trainer.lightning_module.stage_index < self._first_stage:
            return False
        return super().check_monitor_top_k(trainer, current)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        carried = self.carry_best and state_dict.get("monitor") == self.monitor
        super().load_state_dict({**state_dict, "dirpath": self.dirpath} if carried else state_dict)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        if self.from_stage is not None:
            names = [s.name for s in getattr(pl_module, "stages", [])]
            if self.from_stage not in names:
                raise ConfigError(f"RunCheckpoint.from_stage {self.from_stage!r} is no stage of this run's "
                                  f"model.init_args.stages {names}: name one of them")
            self._first_stage = names.index(self.from_stage)
        super().setup(trainer, pl_module, stage)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file, fsync it and rename it into place: a killed run or a crashed node
    never leaves a torn file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb+") as written:  # on disk before the rename: a crashed node keeps a whole file
                os.fsync(written.fileno())
            os.replace(tmp, path)
            if hasattr(os, "O_DIRECTORY"):  # the rename itself (POSIX)
                folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        finally:
            tmp.unlink(missing_ok=True)


def panel(batch: dict, sr_y: Tensor, scale: int, size: int = 128) -> np.ndarray:
    """uint8 HxWx3 strip of centre crops: bicubic | SR | HR (colour when the image has colour)."""
    lr, hr = batch["lr"][:1].to(sr_y.device, sr_y.dtype), batch["hr"][:1].to(sr_y.device, sr_y.dtype)
    images = [imresize(lr, scale), y_to_rgb_sr(sr_y[:1], lr, scale), hr]
    h, w = hr.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    crops = [img[0, :, top : top + ch, left : left + cw].clamp(0, 1) for img in images]
    strip = torch.cat([c.expand(3, -1, -1) for c in crops], dim=-1)
    return (strip * 255).round().byte().permute(1, 2, 0).cpu().numpy()


class ImagePanels(Callback):
    """Every ``every_n_epochs`` validations (0: never), log bicubic | SR | HR of the first image of each (set,
    scale). The typed argument is checked by jsonargparse (``trainer.callbacks``) and here (a Python call)."""

    def __init__(self, every_n_epochs: NonNegativeInt = 5) -> None:
        args = check_arguments(ImagePanels.__init__, locals(), "ImagePanels.")
        self.every_n_epochs: int = args["every_n_epochs"]
        self._panels: dict[str, np.ndarray] = {}
        self._validations = 0  # finished validations (not the sanity check): validations run at epochs N-1, 2N-1, ...

    def state_dict(self) -> dict[str, int]:
        return {"validations": self._validations}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._validations = int(state.get("validations", 0))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        every = self.every_n_epochs
        due = every and self._validations % every == 0 and not trainer.sanity_checking
        if batch_idx == 0 and due and isinstance(outputs, Tensor):
            scale = int(batch["scale"][0])
            self._panels[f"images/{batch['set'][0]}/x{scale}"] = panel(batch, outputs, scale)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._validations += not trainer.sanity_checking
        self._log_panels(trainer)

    @rank_zero_only
    def _log_panels(self, trainer) -> None:
        panels, self._panels = self._panels, {}
        log_image = getattr(trainer.logger, "log_image", None)
        if log_image is not None and not trainer.sanity_checking:
            for key, img in panels.items():
                log_image(key=key, images=[img], caption=["bicubic | SR | HR"], step=trainer.global_step)
