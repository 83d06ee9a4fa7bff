"""SRMethod: what every method shares — inference entry point, protocol validation, the stage engine.

A method subclass provides its network (``self.net``, built from a registered variant), ``batch_needs``
(which tensors the DataModule's ``degrade`` step must make), ``sr_forward`` (LR Y -> SR Y) and ``compute_loss``
(batch -> total loss and its named parts). Everything else lives here once:

- ``super_resolve(lr_y, scale)``: the one inference entry point (validation, test, benchmark, sweeps, upscale);
  fp32 whatever the training precision, tiled above ``tile_size`` LR pixels.
- validation / test over every (dataset, scale) the DataModule lists, with the paper-protocol metrics; keys
  ``val/<dataset>/x<scale>/psnr_y`` and ``.../ssim_y`` plus ``val/psnr_y``, the mean over the monitored
  pairs, which checkpointing and Optuna watch.
- the stage engine (``lit_sr.stages``): builds the current stage's optimizer, sets the lr every step, clips,
  switches stages at their boundaries and resumes into the right stage from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from lit_sr.data.color import to_y
from lit_sr.data.resize import imresize
from lit_sr.errors import DivergedError
from lit_sr.inference import tiled_forward, y_to_rgb_sr
from lit_sr.metrics import PSNRY, SSIMY
from lit_sr.registry import build_registered
from lit_sr.stages import (
    Stage,
    StagePlan,
    apply_trainable,
    build_optimizer,
    clip_gradients,
    lr_at,
    parse_stages,
    set_lr,
)

CLASS_KEY = "lit_sr_class"
STAGE_KEY = "lit_sr_stage_index"


def metric_key(split: str, dataset: str, scale: int, name: str) -> str:
    return f"{split}/{dataset}/x{scale}/{name}"


class SRMethod(L.LightningModule):
    """Base LightningModule of every lit_sr method (see the module docstring)."""

    #: tensors the DataModule's degrade step must produce for ``training_step`` (``hr`` always comes).
    batch_needs: tuple[str, ...] = ("ilr",)

    def __init__(
        self,
        variant: str | None = None,
        net: dict[str, Any] | None = None,
        stages: list[dict[str, Any]] | None = None,
        supported_scales: Sequence[int] = (2, 3, 4),
        monitor_sets: list[str] | None = None,
        monitor_scales: list[int] | None = None,
        tile_size: int = 192,
        tile_overlap: int = 16,
        ssim_variant: str = "ssim_index",
        image_log_every_n_epochs: int = 5,
    ) -> None:
        """
        Args:
            variant: registered network name (``lit_sr.list_models()``); ``net`` overrides its arguments.
            stages: the training schedule (see ``lit_sr.stages``); may be omitted for evaluation only.
            supported_scales: the scales this model super-resolves; any other is a clear error.
            monitor_sets / monitor_scales: which validation pairs ``val/psnr_y`` averages (default: all).
            tile_size / tile_overlap: LR inputs larger than ``tile_size`` run tiled (0 disables tiling).
            ssim_variant: ``ssim_index`` (VDSR-era tables) or ``matlab`` (LapSRN evaluator).
            image_log_every_n_epochs: image panels (bicubic | SR | HR) to the logger every N epochs (0: never).
        """
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module | None = build_registered(variant, **(net or {})) if variant else None
        self.stages: list[Stage] = (
            parse_stages(stages, "model.init_args.stages") if stages is not None else []
        )
        self._stage_index = 0
        self._plan: StagePlan | None = None
        self._metrics = nn.ModuleDict()
        self._panels: dict[str, np.ndarray] = {}
        self.last_results: dict[str, dict[str, dict[str, float]]] = {}

    # ---- what a method provides -------------------------------------------------------------------------
    def sr_forward(self, lr_y: Tensor, scale: int) -> Tensor:
        """LR Y (N,1,h,w) -> SR Y (N,1,h*s,w*s), unclipped. Subclasses implement it."""
        raise NotImplementedError

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Training batch (see ``lit_sr.data.degrade``) -> (total loss, named parts)."""
        raise NotImplementedError

    @property
    def supported_scales(self) -> list[int]:
        return [int(s) for s in self.hparams.supported_scales]

    @property
    def stage(self) -> Stage | None:
        return self.stages[self._stage_index] if self.stages else None

    @property
    def loss_weights(self) -> dict[str, float]:
        return dict(self.stage.loss_weights) if self.stage else {}

    # ---- inference ----------------------------------------------------------------------------------------
    def check_scale(self, scale: int) -> int:
        if int(scale) not in self.supported_scales:
            raise ValueError(
                f"{type(self).__name__} supports scales {self.supported_scales}, not x{scale}; "
                "choose one of those (or train a model for that scale)"
            )
        return int(scale)

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float32

    def super_resolve(self, lr_y: Tensor, scale: int) -> Tensor:
        """The single inference entry point: LR Y (N,1,h,w) in [0,1] -> SR Y (N,1,h*s,w*s), fp32, unclipped."""
        scale = self.check_scale(scale)
        x = lr_y.to(self.device, self.compute_dtype)
        with torch.autocast(self.device.type, enabled=False):
            tile = self.hparams.tile_size
            if tile and max(x.shape[-2:]) > tile:
                return tiled_forward(
                    lambda t: self.sr_forward(t, scale), x, tile, self.hparams.tile_overlap, scale
                )
            return self.sr_forward(x, scale)

    def forward(self, lr_y: Tensor, scale: int) -> Tensor:
        return self.super_resolve(lr_y, scale)

    # ---- training -----------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        total, parts = self.compute_loss(batch)
        if not torch.isfinite(total):
            raise DivergedError(
                f"non-finite training loss {total.item()} at step {self.global_step} (stage "
                f"{self.stage.name if self.stage else '?'}, lr {self.trainer.optimizers[0].param_groups[0]['lr']:.4g})"
                "; lower the lr or tighten clipping"
            )
        n = _batch_size(batch)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, batch_size=n)
        return total

    # ---- the stage engine ---------------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        batches = self.trainer.num_training_batches
        if not np.isfinite(batches) or batches < 1:
            raise ValueError("the training DataLoader must have a length (data.batches_per_epoch)")
        return max(1, int(batches) // self.trainer.accumulate_grad_batches)

    def plan(self) -> StagePlan:
        if self._plan is None:
            self._plan = StagePlan(self.stages, self._steps_per_epoch())
        return self._plan

    def configure_optimizers(self):
        if not self.stages:
            raise ValueError("model.init_args.stages is empty: give the method a training schedule to fit it")
        stage = self.stages[self._stage_index]
        apply_trainable(self.net, stage)
        return build_optimizer(self.net, stage)

    def on_train_start(self) -> None:
        plan = self.plan()
        needed = -(-plan.total_steps // plan.steps_per_epoch)
        loop = self.trainer.fit_loop
        if loop.max_epochs is None or loop.max_epochs < 0 or loop.max_epochs > needed:
            loop.max_epochs = needed

    def on_train_batch_start(self, batch, batch_idx: int):
        located = self.plan().locate(self.global_step)
        if located is None:
            self.trainer.should_stop = True
            return -1
        index, step = located
        if index != self._stage_index:
            self._stage_index = index
            self.trainer.strategy.setup_optimizers(
                self.trainer
            )  # calls configure_optimizers for the new stage
        lr = lr_at(self.stages[index], step, self.plan().steps_per_epoch)
        for opt in self.trainer.optimizers:
            set_lr(opt, lr)
        self.log("stage", float(index), on_step=True, on_epoch=False)
        self.log("lr", lr, prog_bar=True, on_step=True, on_epoch=False)
        return None

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        if gradient_clip_val:
            raise ValueError("set clipping in the stage (stages.N.clip), not trainer.gradient_clip_val")
        bound = clip_gradients(optimizer, self.stage.clip)
        if bound is not None:
            self.log("clip_bound", bound, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[STAGE_KEY] = self._stage_index

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before configure_optimizers on resume, so the optimizer of the saved stage gets its saved state.
        self._stage_index = int(checkpoint.get(STAGE_KEY, 0))

    # ---- validation / test ---------------------------------------------------------------------------------
    def _keys(self, split: str) -> list[tuple[str, int]]:
        dm = self.trainer.datamodule
        return list(dm.val_keys if split == "val" else dm.test_keys)

    def _metric(self, split: str, dataset: str, scale: int, name: str):
        key = f"{split}|{dataset}|{scale}|{name}".replace(".", "_")
        if key not in self._metrics:
            metric = (
                PSNRY(shave=scale)
                if name == "psnr_y"
                else SSIMY(shave=scale, variant=self.hparams.ssim_variant)
            )
            self._metrics[key] = metric.to(self.device)
        return self._metrics[key]

    def _eval_step(self, split: str, batch: dict, batch_idx: int, dataloader_idx: int) -> None:
        dataset, scale = self._keys(split)[dataloader_idx]
        sr = self.super_resolve(batch["lr_y"], scale)
        hr = batch["hr_y"].to(sr.device)
        self._metric(split, dataset, scale, "psnr_y").update(sr, hr)
        self._metric(split, dataset, scale, "ssim_y").update(sr, hr)
        every = self.hparams.image_log_every_n_epochs
        if split == "val" and batch_idx == 0 and every and self.current_epoch % every == 0:
            self._panels[f"images/{dataset}/x{scale}"] = _panel(batch, sr, scale)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, batch_idx, dataloader_idx)

    def _eval_epoch_end(self, split: str) -> None:
        results: dict[str, dict[str, dict[str, float]]] = {}
        monitored = []
        sets, scales = self.hparams.monitor_sets, self.hparams.monitor_scales
        for dataset, scale in self._keys(split):
            row = {}
            for name in ("psnr_y", "ssim_y"):
                metric = self._metric(split, dataset, scale, name)
                value = metric.compute()  # per-image values gathered across ranks, then averaged
                row[name] = float(value)
                row["n_images"] = int(
                    metric.values.numel()
                    if isinstance(metric.values, Tensor)
                    else sum(v.numel() for v in metric.values)
                )
                self.log(metric_key(split, dataset, scale, name), value, add_dataloader_idx=False)
                metric.reset()
            results.setdefault(dataset, {})[f"x{scale}"] = row
            if (sets is None or dataset in sets) and (scales is None or scale in scales):
                monitored.append(row["psnr_y"])
        if monitored:
            mean = torch.stack([torch.tensor(v, dtype=torch.float64) for v in monitored]).mean()
            self.log(f"{split}/psnr_y", mean, prog_bar=True, add_dataloader_idx=False)
        self.last_results = results
        if split == "val":
            self._log_panels()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    @rank_zero_only
    def _log_panels(self) -> None:
        panels, self._panels = self._panels, {}
        log_image = getattr(self.logger, "log_image", None)
        if panels and log_image is not None:
            for key, img in panels.items():
                log_image(key=key, images=[img], caption=["bicubic | SR | HR"], step=self.global_step)

    # ---- prediction ----------------------------------------------------------------------------------------
    def upscale_rgb(self, lr: Tensor, scale: int) -> Tensor:
        """LR image (N,C,h,w), C = 1 or 3 -> SR image; a Y network's Cb/Cr come from MATLAB bicubic."""
        sr_y = self.super_resolve(to_y(lr.to(self.device, self.compute_dtype)), scale)
        return y_to_rgb_sr(sr_y, lr.to(sr_y.device, sr_y.dtype), scale)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.upscale_rgb(batch["lr"], int(batch["scale"]))


def _batch_size(batch) -> int:
    if isinstance(batch, (list, tuple)):
        return sum(_batch_size(b) for b in batch)
    return int(batch["hr"].shape[0])


def _panel(batch: dict, sr_y: Tensor, scale: int, size: int = 128) -> np.ndarray:
    """uint8 HxWx3 strip of centre crops: bicubic | SR | HR (colour when the image has colour)."""
    lr, hr = batch["lr"][:1].to(sr_y.device, sr_y.dtype), batch["hr"][:1].to(sr_y.device, sr_y.dtype)
    images = [imresize(lr, scale), y_to_rgb_sr(sr_y[:1], lr, scale), hr]
    h, w = hr.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    crops = [img[0, :, top : top + ch, left : left + cw].clamp(0, 1) for img in images]
    strip = torch.cat([c.expand(3, -1, -1) for c in crops], dim=-1)
    return (strip * 255).round().byte().permute(1, 2, 0).cpu().numpy()


from lit_sr.checkpoint import load_method  # noqa: E402,F401  (moved; re-exported until callers import lit_sr.checkpoint)
