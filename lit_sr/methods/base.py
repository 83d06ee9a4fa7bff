"""SRMethod: what every method shares, so that a method file holds only its network and its loss.

A method subclass sets a few class attributes and implements two functions:

- ``name`` (e.g. ``"vdsr"``): registers the class; ``experiments/<name>/`` and ``sweeps/<name>.yaml`` hold
  its presets. ``channels``: ``"y"`` (the network sees and returns MATLAB luminance) or ``"rgb"``.
  ``batch_needs``: which of ``lr``, ``ilr``, ``pyramid`` a training batch must carry. ``loss_terms`` and
  ``stage_targets``: what ``stages[i].loss_weights`` and ``stages[i].targets`` may say.
- ``sr_forward(lr, scale)``: LR (N, C, h, w) -> SR (N, C, h*s, w*s), unclipped.
- ``compute_loss(groups)``: the training batch, always a list of groups (``lit_sr.data.degrade``), ->
  (total loss, named parts).

Everything else lives here once: the training batch is degraded on the training device
(``on_after_batch_transfer``), the data is checked against the method before fit, the network's config and
parameter count are logged, ``super_resolve`` is the one inference entry point (fp32, tiled with an
overlap derived from the measured receptive field), validation/test score every (set, scale) the loaders
carry with the paper-protocol metrics (``<split>/<set>/x<scale>/psnr_y``, ``ssim_y``, and ``val/psnr_y``,
the mean over the monitored pairs, which checkpoints and Optuna watch), and the stage engine
(``lit_sr.stages``) switches optimizers, schedules, clipping, frozen modules, loss weights and targets.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from lit_sr.data.color import to_y
from lit_sr.data.degrade import check_patch, degrade
from lit_sr.data.resize import imresize
from lit_sr.errors import ConfigError, DivergedError
from lit_sr.inference import min_tile, tiled_forward, y_to_rgb_sr
from lit_sr.metrics import PSNRY, SSIMY, quantize
from lit_sr.registry import build_registered, variants_of
from lit_sr.stages import (
    Stage,
    StageConfigError,
    StagePlan,
    apply_trainable,
    build_optimizer,
    clip_gradients,
    lr_at,
    parse_stages,
    set_lr,
)
from lit_sr.typed import check_typed, class_path, type_hints

STAGE_KEY = "lit_sr_stage_index"
# Degrading on the method's side of the transfer is the design (the method knows its channels and needs).
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule`")
_METHODS: dict[str, type[SRMethod]] = {}

LossFn = Callable[[Tensor, Tensor], Tensor]


#: modules whose output depends on the whole input (the global pooling of channel attention)
GLOBAL_POOLING = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                  nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def metric_key(split: str, dataset: str, scale: int, name: str) -> str:
    return f"{split}/{dataset}/x{scale}/{name}"


def registered_methods() -> dict[str, type[SRMethod]]:
    """Every registered method, by name (``lit_sr.methods`` imports all method files first)."""
    return dict(sorted(_METHODS.items()))


def method_class(name: str) -> type[SRMethod]:
    """The method registered as ``name``; a clear error listing the others."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]



def on_ranks(ranks: list[int], world: int) -> str:
    """`` on rank 1, 3 of 4`` under DDP, nothing in one process: for messages about some ranks' losses."""
    return f" on rank {', '.join(map(str, ranks))} of {world}" if world > 1 else ""

class SRMethod(L.LightningModule):
    """Base LightningModule of every lit_sr method (see the module docstring)."""

    name: ClassVar[str] = ""
    channels: ClassVar[Literal["y", "rgb"]] = "y"
    batch_needs: ClassVar[tuple[str, ...]] = ()
    loss_terms: ClassVar[tuple[str, ...]] = ()
    stage_targets: ClassVar[tuple[str, ...]] = ()
    #: the network class this method trains: ``variant`` must name one of its registered variants
    network_type: ClassVar[type[nn.Module]] = nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            other = _METHODS.get(name)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise ValueError(f"method name {name!r} is registered twice ({other.__module__}, {cls.__module__})")
            _METHODS[name] = cls

    def __init__(
        self,
        variant: str | None = None,
        net: dict[str, Any] | None = None,
        stages: list[dict[str, Any]] | None = None,
        supported_scales: Sequence[int] = (2, 3, 4),
        monitor_scales: list[int] | None = None,
        tile_size: int = 192,
        ssim_variant: Literal["ssim_index", "matlab"] = "ssim_index",
        channels_last: bool = False,
    ) -> None:
        """
        Args:
            variant: registered network name (``lit_sr.list_models()``); ``net`` overrides its arguments.
            stages: the training schedule (see ``lit_sr.stages``); may be omitted for evaluation only.
            supported_scales: the scales this model super-resolves; any other is a clear error.
            monitor_scales: which validation scales ``val/psnr_y`` averages (default: all).
            tile_size: LR inputs larger than this run tiled, with the receptive field as overlap (0: never).
            ssim_variant: ``ssim_index`` (VDSR-era tables) or ``matlab`` (LapSRN evaluator).
            channels_last: store the network's conv weights NHWC, so convolutions run channels-last (faster on
                CPU with oneDNN; ``make bench`` measures it). The same arithmetic: outputs match to float rounding.
        """
        super().__init__()
        # Our frame, passed: Lightning's own lookup keeps inspect.currentframe() in a local, a reference cycle that
        # holds the caller's frame (and whatever its locals hold, e.g. DataLoader workers) until the cyclic GC runs.
        self.save_hyperparameters(frame=inspect.currentframe())
        # The typed arguments of every __init__ from here to the method (``Literal``, ``PositiveFloat``, ...),
        # checked as jsonargparse checks a config, also when the method is built from Python or a checkpoint.
        inits = [c.__init__ for c in reversed(type(self).__mro__) if issubclass(c, SRMethod) and "__init__" in vars(c)]
        check_typed(dict(self.hparams), {k: v for f in inits for k, v in type_hints(f).items()}, "model.init_args.")
        self.net: nn.Module | None = build_registered(variant, **(net or {})) if variant else None
        if self.net is not None and not isinstance(self.net, self.network_type):
            other = [class_path(c) for c in registered_methods().values()
                     if c.network_type is type(self.net)]
            raise ValueError(
                f"model.init_args.variant={variant!r} builds a {type(self.net).__name__}, but "
                f"{type(self).__name__} trains {self.network_type.__name__} variants "
                f"({', '.join(variants_of(self.network_type))}); pick one of those"
                + (f", or set model.class_path to {other[0]}" if other else "")
            )
        if channels_last and self.net is not None:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.stages: list[Stage] = parse_stages(stages, "model.init_args.stages") if stages is not None else []
        for i, stage in enumerate(self.stages):
            path = f"model.init_args.stages.{i}"
            unknown = sorted(set(stage.loss_weights) - set(self.loss_terms))
            if unknown:
                raise StageConfigError(
                    f"{path}.loss_weights: {type(self).__name__} reads no loss term {unknown}; "
                    f"its terms are {list(self.loss_terms) or 'none (remove loss_weights)'}"
                )
            if stage.targets is not None and stage.targets not in self.stage_targets:
                raise StageConfigError(
                    f"{path}.targets={stage.targets!r}: {type(self).__name__} takes "
                    f"{list(self.stage_targets) or 'no targets (remove the key)'}"
                )
        self._stage_index = 0
        self._plan: StagePlan | None = None
        self._metrics = nn.ModuleDict()
        self._radius: dict[int, int | None] = {}
        self.last_results: dict[str, dict[str, dict[str, float]]] = {}

    # ---- what a method provides -------------------------------------------------------------------------
    def sr_forward(self, lr: Tensor, scale: int) -> Tensor:
        """LR (N, C, h, w) -> SR (N, C, h*s, w*s), unclipped; C is 1 (``channels`` y) or 3 (rgb)."""
        raise NotImplementedError

    def compute_loss(self, groups: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training groups (see ``lit_sr.data.degrade``) -> (total loss, named parts)."""
        raise NotImplementedError

    @property
    def supported_scales(self) -> list[int]:
        return [int(s) for s in self.hparams.supported_scales]

    @property
    def trainable_scales(self) -> list[int]:
        """Scales the training data may hold (default: every supported scale)."""
        return self.supported_scales

    @property
    def stage_index(self) -> int:
        """Index of the current training stage."""
        return self._stage_index

    @property
    def stage(self) -> Stage | None:
        return self.stages[self._stage_index] if self.stages else None

    def loss_weight(self, term: str, default: float = 1.0) -> float:
        """The current stage's weight of loss term ``term`` (one of ``loss_terms``), else ``default``."""
        return float(self.stage.loss_weights.get(term, default)) if self.stage else default

    @property
    def stage_target(self) -> str | None:
        """The current stage's ``targets`` value (None when unset)."""
        return self.stage.targets if self.stage else None

    def reference_loss(self, groups: list[dict]) -> dict[str, Tensor]:
        """Reference parts logged beside the loss on logging steps only, usually ``{"bicubic": self.bicubic_loss(
        groups, <the method's loss>)}``: the level a learning run goes below. Default: none."""
        return {}

    def bicubic_loss(self, groups: list[dict], loss_fn: LossFn) -> Tensor:
        """``loss_fn`` of MATLAB bicubic against HR, batch-share weighted: the level a learning run goes below."""
        total = sum(len(g["hr"]) for g in groups)
        parts = []
        with torch.no_grad(), torch.autocast(groups[0]["hr"].device.type, enabled=False):
            for g in groups:
                hr = g["hr"].float()
                bicubic = g["ilr"].float() if "ilr" in g else imresize(g["lr"].float(), size=tuple(hr.shape[-2:]))
                parts.append(len(hr) / total * loss_fn(bicubic, hr))
        return torch.stack(parts).sum()

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

    @property
    def pools_globally(self) -> bool:
        """The network pools over the whole image (channel attention, e.g. DRN's RCAB): every output pixel
        depends on every input pixel, so no tiling reproduces the untiled output."""
        return any(isinstance(m, GLOBAL_POOLING) for m in self.modules())

    def receptive_radius(self, scale: int) -> int | None:
        """How many LR pixels away an output pixel still depends on the input, measured by backpropagation;
        None when it depends on the whole image (global pooling, or no end inside the largest probe, 768 px).

        Measured on a copy of the network with positive random weights, so that the answer is the architecture's
        (a zero-initialised branch would otherwise hide its reach until it has trained).
        """
        if scale not in self._radius and self.pools_globally:
            self._radius[scale] = None
        if scale not in self._radius:
            c = 1 if self.channels == "y" else 3
            dtype = next((p.dtype for p in self.parameters()), self.compute_dtype)
            net = self.net
            if net is not None:
                with torch.inference_mode(False), torch.no_grad():  # eval runs in inference mode: copy outside it
                    probe = copy.deepcopy(net)
                    for p in probe.parameters():
                        p.data = torch.empty_like(p, device=p.device).uniform_(0.5, 1.0) / (
                            p[0].numel() if p.dim() > 1 else 1
                        )
                self.net = probe
            size = 48
            try:
                while True:
                    # inference_mode(False): validation and test run under inference mode, which forbids graphs.
                    with (
                        torch.inference_mode(False),
                        torch.enable_grad(),
                        torch.autocast(self.device.type, enabled=False),
                    ):
                        x = torch.rand(1, c, size, size, device=self.device, dtype=dtype, requires_grad=True)
                        y = self.sr_forward(x, scale)
                        (grad,) = torch.autograd.grad(y[..., y.shape[-2] // 2, y.shape[-1] // 2].sum(), x)
                    rows, cols = np.nonzero(grad.abs().sum((0, 1)).cpu().numpy())
                    centre = size // 2
                    radius = int(max(np.abs(rows - centre).max(), np.abs(cols - centre).max())) + 1
                    if radius < centre - 2 or size >= 512:
                        break
                    size *= 2
            finally:
                if net is not None:
                    self.net = net
            self._radius[scale] = radius if radius < centre - 2 else None
        return self._radius[scale]

    def super_resolve(self, lr: Tensor, scale: int) -> Tensor:
        """The single inference entry point: LR (N, C, h, w) in [0, 1] -> SR (N, C, h*s, w*s), fp32, unclipped."""
        scale = self.check_scale(scale)
        x = lr.to(self.device, self.compute_dtype)
        with torch.autocast(self.device.type, enabled=False):
            tile = self.hparams.tile_size
            # a network whose output depends on the whole image runs whole: tiles could not reproduce it
            if tile and max(x.shape[-2:]) > tile and (overlap := self.receptive_radius(scale)) is not None:
                tile = max(tile, min_tile(overlap))
                return tiled_forward(lambda t: self.sr_forward(t, scale), x, tile, overlap, scale)
            return self.sr_forward(x, scale)

    def forward(self, lr: Tensor, scale: int) -> Tensor:
        return self.super_resolve(lr, scale)

    def network_input(self, lr: Tensor) -> Tensor:
        """An LR image (N, 1 or 3, h, w) in the channels the network sees, on its device and in its dtype."""
        lr = lr.to(self.device, self.compute_dtype)
        if self.channels == "y":
            return to_y(lr)
        return lr.expand(-1, 3, -1, -1) if lr.shape[1] == 1 else lr

    def to_rgb(self, sr: Tensor, lr: Tensor, scale: int) -> Tensor:
        """The network's output ``sr`` for ``lr`` (N, C, h, w), C = 1 or 3, as an image of C channels in [0, 1]:
        a Y network's Cb/Cr come from MATLAB bicubic of ``lr``."""
        if self.channels == "y":
            return y_to_rgb_sr(sr, lr.to(sr.device, sr.dtype), scale)
        return sr.mean(1, keepdim=True).clamp(0, 1) if lr.shape[1] == 1 else sr.clamp(0, 1)

    def upscale_rgb(self, lr: Tensor, scale: int) -> Tensor:
        """LR image (N, C, h, w), C = 1 or 3 -> SR image of the same C (the network, then :meth:`to_rgb`)."""
        return self.to_rgb(self.super_resolve(self.network_input(lr), scale), lr, scale)

    def sr_y(self, batch: dict, scale: int) -> Tensor:
        """The evaluated Y of a validation/test batch: the network's Y, or Y of the 8-bit RGB output."""
        if self.channels == "y":
            return self.super_resolve(batch["lr_y"], scale)
        rgb = quantize(self.upscale_rgb(batch["lr"], scale)) / 255.0
        return rgb if rgb.shape[1] == 1 else to_y(rgb)

    # ---- training -----------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches of uint8 crops become float groups here, on the training device (``degrade``)."""
        if isinstance(batch, dict) and "patch_size" in batch and batch["hr"].dtype == torch.uint8:
            return degrade(
                batch["hr"], batch["scale"], batch["gray"], self.batch_needs, batch["patch_size"], self.channels
            )
        return batch

    def configure_model(self) -> None:
        """Before DDP wraps the network: a stage that freezes parameters (``trainable``, IRLapSRN's pretraining)
        leaves them without gradients, which DDP must be told to expect (else the second step fails)."""
        ddp_kwargs = getattr(getattr(self._trainer, "strategy", None), "_ddp_kwargs", None)  # DDPStrategy(**kwargs)
        if isinstance(ddp_kwargs, dict) and any(stage.trainable is not None for stage in self.stages):
            ddp_kwargs.setdefault("find_unused_parameters", True)

    def on_fit_start(self) -> None:
        """Fail before training when the data cannot train this method; log the network's config and size."""
        dm = self.trainer.datamodule
        bad = [s for s in dm.scales if s not in self.trainable_scales]
        if bad:
            raise ValueError(
                f"data.scales={dm.scales} holds {bad}, but {type(self).__name__} ({self.hparams.variant}) trains "
                f"{self.trainable_scales} only; drop them from data.scales"
            )
        bad = [s for s in dm.val_scales if s not in self.supported_scales]
        if bad:
            raise ValueError(
                f"data.val_scales={dm.val_scales} holds {bad}, but {type(self).__name__} super-resolves "
                f"{self.supported_scales} only; drop them from data.val_scales"
            )
        check_patch(dm.patch_size, dm.scales, self.batch_needs)
        if self.logger is not None and self.net is not None:
            config = dict(getattr(self.net, "config", None) or self.hparams.net or {})
            params = sum(p.numel() for p in self.net.parameters())
            self.logger.log_hyperparams({"method": self.name, "net_config": config, "net_params": params})
            summary = getattr(dm, "summary", None)
            if summary is not None:
                self.logger.log_hyperparams({"data_summary": summary()})

    def training_step(self, batch: list[dict], batch_idx: int) -> Tensor:
        total, parts = self.compute_loss(batch)
        # every rank stops together (one left behind would wait in the gradient all-reduce); rank 0 says why
        losses = self.losses_by_rank(total)
        if bad := [rank for rank, value in enumerate(losses) if not math.isfinite(value)]:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else float("nan")
            raise DivergedError(
                f"non-finite training loss {losses[bad[0]]}{on_ranks(bad, len(losses))} at step {self.global_step} "
                f"(stage {self.stage.name if self.stage else '?'}, lr {lr:.3g}); lower the lr or tighten clipping",
                quiet=self.global_rank != 0,
            )
        self.log_loss(batch, total, parts)
        return total

    def losses_by_rank(self, total: Tensor) -> list[float]:
        """Every DDP rank's loss of this step (one value in one process): decisions all ranks must share."""
        return self.all_gather(total.detach().float()).reshape(-1).tolist()

    def log_loss(self, groups: list[dict], total: Tensor, parts: dict[str, Tensor]) -> None:
        """``train/loss`` and ``train/loss_<part>`` (with the ``reference_loss`` parts) on logging steps, weighted by
        the batch's sample count."""
        if not self.is_logging_step():
            return
        n = sum(len(g["hr"]) for g in groups)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        for name, value in {**parts, **self.reference_loss(groups)}.items():
            self.log(f"train/loss_{name}", value, batch_size=n)

    def is_logging_step(self) -> bool:
        """Whether Lightning writes this training step to the loggers (every ``trainer.log_every_n_steps``).

        Step-only values (losses, lr, stage, clip bound) are logged on these steps alone: each ``self.log`` costs
        about 0.5 ms on CPU (its result entry walks its own attributes to move them to the value's device), a tenth
        of a quick VDSR step when five were logged every step (``make bench``, section 2). Lightning's own test,
        from public attributes: ``global_step`` counts its batches that stepped, one optimizer step per batch (the
        stage engine's automatic optimization). ``log_every_n_steps: 0`` logs no step.
        """
        trainer, every = self.trainer, self.trainer.log_every_n_steps
        last = trainer.should_stop or self._ends_mid_epoch(trainer.global_step + 1)  # Lightning logs a stop's step
        return every > 0 and ((trainer.global_step + 1) % every == 0 or last)

    # ---- the stage engine ---------------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        batches = self.trainer.num_training_batches
        if not np.isfinite(batches) or batches < 1:
            raise ValueError("the training DataLoader must have a length (data.batches_per_epoch)")
        return max(1, -(-int(batches) // self.trainer.accumulate_grad_batches))  # an epoch's last batch steps too

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

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._ends_mid_epoch(self.global_step):  # stop on this batch, so that Lightning validates it
            self.trainer.should_stop = True

    def _ends_mid_epoch(self, steps_done: int) -> bool:
        """The schedule ends after ``steps_done`` steps, inside an epoch (at an epoch's end max_epochs stops it)."""
        plan = self.plan()
        return steps_done == plan.total_steps and steps_done % plan.steps_per_epoch != 0

    def on_train_batch_start(self, batch, batch_idx: int):
        located = self.plan().locate(self.global_step)
        if located is None:
            self.trainer.should_stop = True
            return -1
        index, step = located
        if index != self._stage_index:
            self._stage_index = index
            self.trainer.strategy.setup_optimizers(self.trainer)  # calls configure_optimizers for the new stage
        lr = lr_at(self.stages[index], step, self.plan().steps_per_epoch)
        for opt in self.trainer.optimizers:
            set_lr(opt, lr)
        if self.is_logging_step():
            self.log("stage", float(index), on_step=True, on_epoch=False)
            self.log("lr", lr, prog_bar=True, on_step=True, on_epoch=False)
        return None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val:
            raise ValueError("set clipping in the stage (stages.N.clip), not trainer.gradient_clip_val")
        bound = clip_gradients(optimizer, self.stage.clip)
        if bound is not None and self.is_logging_step():
            self.log("clip_bound", bound, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[STAGE_KEY] = self._stage_index

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before configure_optimizers on resume, so the optimizer of the saved stage gets its saved state.
        self._stage_index = int(checkpoint.get(STAGE_KEY, 0))
        if self.stages and self._stage_index >= len(self.stages):
            raise ConfigError(f"the checkpoint was saved in stage {self._stage_index} of its schedule, but "
                              f"model.init_args.stages has {len(self.stages)}; resume with the config the run was "
                              "trained with (its run folder's config.yaml)")

    # ---- validation / test ---------------------------------------------------------------------------------
    def _metric(self, split: str, dataset: str, scale: int, name: str):
        key = f"{split}|{dataset}|{scale}|{name}".replace(".", "_")
        if key not in self._metrics:
            metric = PSNRY(shave=scale) if name == "psnr_y" else SSIMY(shave=scale, variant=self.hparams.ssim_variant)
            self._metrics[key] = metric.to(self.device)
        return self._metrics[key]

    def _pairs(self, split: str) -> list[tuple[str, int]]:
        """(set, scale) of every evaluation loader, in order (every rank has them all, even with empty shards)."""
        loaders = self.trainer.val_dataloaders if split == "val" else self.trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        return [(dl.dataset.name, int(dl.dataset.scale)) for dl in loaders]

    def _eval_step(self, split: str, batch: dict) -> Tensor:
        dataset, scale = batch["set"][0], int(batch["scale"][0])
        sr = self.sr_y(batch, scale)
        hr = batch["hr_y"].to(sr.device)
        self._metric(split, dataset, scale, "psnr_y").update(sr, hr)
        self._metric(split, dataset, scale, "ssim_y").update(sr, hr)
        return sr

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._eval_step("test", batch)

    def _eval_epoch_end(self, split: str) -> None:
        results: dict[str, dict[str, dict[str, float]]] = {}
        monitored = []
        for dataset, scale in self._pairs(split):
            row: dict[str, float] = {}
            for name in ("psnr_y", "ssim_y"):
                metric = self._metric(split, dataset, scale, name)
                value = metric.compute()  # per-image values gathered across ranks, then averaged
                row[name] = float(value)
                self.log(metric_key(split, dataset, scale, name), value, add_dataloader_idx=False)
                metric.reset()
            row["n_images"] = metric.n_images
            results.setdefault(dataset, {})[f"x{scale}"] = row
            if self.hparams.monitor_scales is None or scale in self.hparams.monitor_scales:
                monitored.append(row["psnr_y"])
        if monitored:
            self.log(f"{split}/psnr_y", torch.tensor(monitored, dtype=torch.float64).mean(), prog_bar=True)
        self.last_results = results

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ---- prediction ----------------------------------------------------------------------------------------
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.upscale_rgb(batch["lr"], int(batch["scale"]))
