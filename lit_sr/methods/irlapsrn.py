"""IRLapSRN (Tang et al., "Deep Inception-Residual Laplacian Pyramid Networks", TNNLS, arXiv 1711.05431).

Spec: shared/docs/methods/irlapsrn.md (the paper calls it DIRLPN). The LapSRN pyramid (``lit_sr.methods.lapsrn``:
``PerLevelPyramid``, the same image branch, feature upsampler and residual head) with each level's conv stack
replaced by B inception-residual blocks (IRBs) and one 3x3 conv + LReLU. The network takes the LR Y image
(N, 1, h, w) at its native size and returns one output per level, coarse to fine.

Registered variants (``lit_sr.registry.build_registered(name, **overrides)``):

- ``irlapsrn_x2``, ``irlapsrn_x4``, ``irlapsrn_x8``: B = 8 IRBs per level, branch width 32, 64 channels,
  3x3 feature upsampler (396,625 / 792,610 / 1,188,595 parameters = 640 + L * (40,192 * B + 74,449)).
- ``irlapsrn_small``: x4, B = 2, 32 channels, branch width 16: the quick CPU preset's network.

Everything beyond the paper's abstract is a [proposal] of the spec and an option here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_sr.losses import Reduction, charbonnier, local_rank_loss, rank_agreement
from lit_sr.methods.lapsrn import LEAK, PerLevelPyramid, PyramidMethod
from lit_sr.registry import register_model
from lit_sr.stages import merge_stages
from lit_sr.typed import check_arguments

__all__ = ["IRLapSRN", "InceptionResidualBlock", "IRLapSRNNet"]


class InceptionResidualBlock(nn.Module):
    """Inception-ResNet-A style block without BN: three branches (1x1; 1x1-3x3; 1x1-3x3-3x3) of
    ``branch_width`` channels, concatenated, a linear 1x1 back to ``channels``, plus the identity."""

    def __init__(
        self,
        channels: PositiveInt = 64,
        branch_width: PositiveInt = 32,
        slope: float = LEAK,
        bias: bool = True,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_arguments(InceptionResidualBlock.__init__, locals(), "InceptionResidualBlock.")

        def conv(cin: int, k: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, branch_width, k, padding=k // 2, bias=bias), nn.LeakyReLU(slope, inplace=True)]

        w = branch_width
        self.branch_a = nn.Sequential(*conv(channels, 1))
        self.branch_b = nn.Sequential(*conv(channels, 1), *conv(w, 3))
        self.branch_c = nn.Sequential(*conv(channels, 1), *conv(w, 3), *conv(w, 3))
        self.project = nn.Conv2d(3 * w, channels, 1, bias=bias)  # linear: no activation, none after the add
        self.residual_scale = float(residual_scale)

    def forward(self, x: Tensor) -> Tensor:
        branches = torch.cat([self.branch_a(x), self.branch_b(x), self.branch_c(x)], dim=1)
        return x + self.residual_scale * self.project(branches)


class IRLapSRNNet(PerLevelPyramid):
    """IRLapSRN: log2(scale) levels, each B x IRB -> 3x3 conv + LReLU -> LapSRN's upsamplers and residual head.

    Parameter names follow the levels (``levels.<l-1>.*`` is level l; ``input_conv`` feeds level 1), which the
    greedy pretraining stages name in ``trainable``.
    """

    def __init__(
        self,
        scale: int = 4,
        irb_per_level: PositiveInt = 8,
        branch_width: PositiveInt = 32,
        channels: PositiveInt = 64,
        upconv_kernel: Literal[3, 4] = 3,
        act_slope: float = LEAK,
        bias: bool = True,
        input_init: Literal["he", "lapsrn"] = "he",
        residual_scale: float = 1.0,
    ) -> None:
        """
        Args:
            scale: 2, 4 or 8 (1, 2 or 3 levels).
            irb_per_level: B, IRBs per level (8; unknown in the paper).
            branch_width: channels of each IRB branch (32).
            channels: feature channels (64).
            upconv_kernel: feature-upsampler kernel, 3 (LapSRN code) or 4 (LapSRN paper text).
            act_slope: LeakyReLU slope everywhere (0.2).
            bias: biases in every conv (the image upsampler has none, as in LapSRN).
            input_init: ``he`` (the spec's default) or ``lapsrn`` (N(0, 1e-3^2) for the input conv).
            residual_scale: constant multiplying each IRB's branch output before the identity add (1 = the
                spec; Inception-ResNet scales by 0.1-0.3 for stability: with He init and scale 1 the
                activations grow about 2x in variance per IRB, so an untrained x4 outputs std ~500).
        """
        check_arguments(IRLapSRNNet.__init__, locals(), "IRLapSRNNet.")

        def irb_branch() -> nn.Sequential:
            blocks: list[nn.Module] = [
                InceptionResidualBlock(channels, branch_width, act_slope, bias, residual_scale)
                for _ in range(irb_per_level)
            ]
            conv = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
            return nn.Sequential(*blocks, conv, nn.LeakyReLU(act_slope, inplace=True))

        super().__init__(scale, channels, upconv_kernel, bias, irb_branch, act_slope, input_init)
        self.irb_per_level = irb_per_level

    def level_prefixes(self, level: int) -> list[str]:
        """Parameter-name prefixes of pyramid level ``level`` (1 = coarsest); level 1 includes the input conv."""
        if not 1 <= level <= self.num_levels:
            raise ValueError(f"IRLapSRN x{self.scale} has levels 1..{self.num_levels}, got {level!r}")
        return (["input_conv"] if level == 1 else []) + [f"levels.{level - 1}"]


# ---------------------------------------------------------------------------------------------------
# Registered variants, timm style, one line each: keyword arguments override the variant's defaults;
# a scale in the variant's name is passed outside them, so overriding it is an error.

IRLAPSRN_SMALL = dict(irb_per_level=2, channels=32, branch_width=16)
RANK_WEIGHT = 0.1  # lambda_rank where a stage's loss_weights leave it out
SMALL_TAU = 0.01  # below it the rank loss's gradients near ties are very large: clipping stays on (spec gotcha)


@register_model  # IRLapSRN x2: 1 level, B = 8, branch width 32 (396,625 parameters)
def irlapsrn_x2(**kw: Any) -> IRLapSRNNet: return IRLapSRNNet(scale=2, **{"irb_per_level": 8, "branch_width": 32, **kw})
@register_model  # IRLapSRN x4: 2 levels, B = 8, branch width 32 (792,610 parameters)
def irlapsrn_x4(**kw: Any) -> IRLapSRNNet: return IRLapSRNNet(scale=4, **{"irb_per_level": 8, "branch_width": 32, **kw})
@register_model  # IRLapSRN x8: 3 levels, B = 8, branch width 32 (1,188,595 parameters)
def irlapsrn_x8(**kw: Any) -> IRLapSRNNet: return IRLapSRNNet(scale=8, **{"irb_per_level": 8, "branch_width": 32, **kw})
@register_model  # Small IRLapSRN x4 for quick CPU runs: B = 2, 32 channels, branch width 16 (78,370 parameters)
def irlapsrn_small(**kw: Any) -> IRLapSRNNet: return IRLapSRNNet(scale=4, **{**IRLAPSRN_SMALL, **kw})


# ---------------------------------------------------------------------------------------------------
# Training: greedy per-level pretraining, then fine-tuning (stages in experiments/irlapsrn/*.yaml).

class IRLapSRN(PyramidMethod):
    """IRLapSRN training: image-space Charbonnier + lambda_rank x local-rank loss, on the levels a stage names.

    ``stages[i].targets`` says which levels a stage supervises (the schedule is data, ``lit_sr.stages``):

    - ``level_<l>``: level l only (the network runs levels 1..l), against HR MATLAB-bicubic-downsampled to
      level l's size (the batch's ``pyramid``). The greedy pretraining stages ``pretrain_level_1..L`` use it,
      with ``trainable`` = that level's modules (``IRLapSRNNet.level_prefixes``): lower levels are frozen and,
      by the engine's ``frozen_eval``, in eval mode.
    - ``all_levels``: every level against its own downsampled target (joint pretraining).
    - ``hr`` (or null): the finest level against HR, every other level against its downsampled target with
      weight ``loss_weights.intermediate`` (w_int, default 0: the abstract names only HR).

    ``loss_weights``: ``image`` (default 1), ``rank`` (lambda_rank, default 0.1), ``intermediate`` (w_int).
    ``stage1_mode="joint"`` merges the consecutive ``level_<l>`` stages into one ``pretrain_joint`` stage (all
    levels trainable, target ``all_levels``, as long as all of them, the first one's optimizer and clip).
    Loss parts: ``image``, ``rank``; ``reference_loss``: ``bicubic`` (the same loss for MATLAB bicubic against HR);
    ``train/rank_agreement`` (hard-rank agreement at the finest supervised level) is logged as a metric.
    """

    name: ClassVar[str] = "irlapsrn"
    channels: ClassVar[Literal["y", "rgb"]] = "y"
    batch_needs: ClassVar[tuple[str, ...]] = ("lr", "pyramid")
    loss_terms: ClassVar[tuple[str, ...]] = ("image", "rank", "intermediate")
    stage_targets: ClassVar[tuple[str, ...]] = ("level_1", "level_2", "level_3", "all_levels", "hr")
    network_type = IRLapSRNNet

    def __init__(
        self,
        variant: str = "irlapsrn_x4",
        eps: PositiveFloat = 1e-3,
        reduction: Reduction = "mean",
        rank_window: int = 3,
        rank_tau: PositiveFloat = 0.02,
        stage1_mode: Literal["greedy", "joint"] = "greedy",
        small_tau_clip: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            variant: registered IRLapSRN network; ``net`` (in kwargs) overrides its arguments.
            eps: Charbonnier epsilon of both loss spaces (1e-3).
            reduction: ``mean`` (per pixel and sample: what the spec's lrs assume) or ``paper`` (per-sample sum).
            rank_window: k of the k x k local-rank neighbourhood (3 or 5).
            rank_tau: temperature of the soft rank (0.02 for intensities in [0, 1]).
            stage1_mode: ``greedy`` (one stage per level, as written) or ``joint`` (see the class docstring).
            small_tau_clip: with ``rank_tau`` < 0.01, a stage without clipping whose rank weight is not 0 (the
                finetune) clips each gradient element at the bound the first clipped stage starts with (theta / its
                lr for adjustable clipping): small tau gives very large gradients near ties (spec gotcha: keep
                clipping on in stage 2 then) [proposal: how it clips].
            kwargs: ``SRMethod`` arguments (``net``, ``stages``, ``monitor_scales``, ...).

        The typed arguments are checked by jsonargparse (a config) or ``SRMethod`` (a Python call).
        """
        if not isinstance(rank_window, int) or rank_window < 3 or rank_window % 2 == 0:  # no type hint says odd
            raise ValueError(
                f"model.init_args.rank_window must be an odd integer >= 3 (3 or 5), got {rank_window!r}"
            )
        super().__init__(variant=variant, eps=eps, reduction=reduction, **kwargs)
        self.rank_window, self.rank_tau, self.stage1_mode = rank_window, float(rank_tau), stage1_mode
        self._check_stage_levels()
        clipped = [stage for stage in self.stages if stage.clip.mode != "none"]
        unclipped = [s.name for s in self.stages if s.clip.mode == "none" and s.loss_weights.get("rank", RANK_WEIGHT)]
        if small_tau_clip and self.rank_tau < SMALL_TAU and clipped and unclipped:
            first = clipped[0]  # an adjustable bound is theta / the current lr: the bound at that stage's lr
            clip = replace(first.clip, mode="value", value=first.clip.theta / first.optimizer.lr) if (
                first.clip.mode == "adjustable") else first.clip
            self.stages = [replace(s, clip=clip) if s.name in unclipped else s for s in self.stages]
            rank_zero_info(f"IRLapSRN: rank_tau {self.rank_tau:g} < {SMALL_TAU:g}: stage(s) {', '.join(unclipped)} "
                           f"clip {clip.mode} {clip.value:.3g} (small_tau_clip; stage {first.name} clips)")
        if stage1_mode == "joint":
            level_stages = [s.name for s in self.stages if (s.targets or "").startswith("level_")]
            if level_stages:
                self.stages = merge_stages(
                    self.stages, level_stages, "pretrain_joint", trainable=None, targets="all_levels"
                )
        self._rank_agreement: Tensor | None = None

    def _check_stage_levels(self) -> None:
        for i, stage in enumerate(self.stages):
            if (stage.targets or "").startswith("level_"):
                level = int(stage.targets.removeprefix("level_"))
                if level > self.net.num_levels:
                    raise ValueError(
                        f"model.init_args.stages.{i}.targets={stage.targets!r}: {self.hparams.variant} has "
                        f"levels 1..{self.net.num_levels}; use level_1..level_{self.net.num_levels}, all_levels "
                        "or hr"
                    )

    @property
    def trainable_scales(self) -> list[int]:
        """One model per scale: IRLapSRN trains the scale of its finest level only."""
        return [self.net.scale]

    def supervised_levels(self) -> tuple[int, dict[int, float]]:
        """(levels to run, {level: weight}) for the current stage's ``targets``; levels are 1-based."""
        top = self.net.num_levels
        target = self.stage_target or "hr"
        if target.startswith("level_"):
            level = int(target.removeprefix("level_"))
            return level, {level: 1.0}
        if target == "all_levels":
            return top, dict.fromkeys(range(1, top + 1), 1.0)
        w_int = self.loss_weight("intermediate", 0.0)
        weights = {level: w_int for level in range(1, top) if w_int}
        return top, {**weights, top: 1.0}

    def level_loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(image-space Charbonnier, local-rank loss) of one level, with this method's eps / reduction / rank."""
        image = charbonnier(pred, target, self.eps, self.reduction)
        rank = local_rank_loss(pred, target, self.rank_window, self.rank_tau, self.eps, self.reduction)
        return image, rank

    def _weighted_level_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        image, rank = self.level_loss(pred, target)
        return self.loss_weight("image", 1.0) * image + self.loss_weight("rank", RANK_WEIGHT) * rank

    def compute_loss(self, groups: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        run, weights = self.supervised_levels()
        w_image, w_rank = self.loss_weight("image", 1.0), self.loss_weight("rank", RANK_WEIGHT)
        n_total = sum(int(g["hr"].shape[0]) for g in groups)
        image = rank = torch.zeros((), device=groups[0]["hr"].device)
        agreement = []
        for group in groups:
            scale = int(group["scale"][0])
            if scale != self.net.scale:
                raise ValueError(f"{self.hparams.variant} trains x{self.net.scale} only, got a x{scale} batch")
            preds = self.net(group["lr"], 2**run)
            share = group["hr"].shape[0] / n_total
            for level, weight in weights.items():
                pred, target = preds[level - 1].float(), group["pyramid"][level - 1].float()
                level_image, level_rank = self.level_loss(pred, target)
                image = image + share * weight * level_image
                rank = rank + share * weight * level_rank
            finest = max(weights)
            finest_pred = preds[finest - 1].detach().float()
            agreement.append(share * rank_agreement(finest_pred, group["pyramid"][finest - 1], self.rank_window))
        self._rank_agreement = torch.stack(agreement).sum()
        return w_image * image + w_rank * rank, {"image": image, "rank": rank}

    def reference_loss(self, groups: list[dict]) -> dict[str, Tensor]:
        return {"bicubic": self.bicubic_loss(groups, self._weighted_level_loss)}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        total = super().training_step(batch, batch_idx)
        if self._rank_agreement is not None and self.is_logging_step():
            self.log("train/rank_agreement", self._rank_agreement, on_step=True, on_epoch=False)
        return total
