"""DRN-GSL (Guo et al., arXiv 1809.07099): primal LR->HR and dual HR->LR networks, gradient-sensitive loss.

Spec: shared/docs/methods/drn.md. The 2018 paper's architecture is not available, so the networks follow the
authors' public 2020 dual-regression code (guoyongcs/DRN ``model/drn.py``, ``model/common.py``) [code]:

- ``DRNPrimal``: in-model PyTorch bicubic upsampling of the LR image to the HR size, a MeanShift, a head
  conv, log2(s) stride-2 down phases (keeping each phase's input for the skip), then per phase B RCABs
  (channel attention), a pixel-shuffle x2 upsampler, a 1x1 conv halving the channels and a concatenation
  with the matching down-path copy. A tail conv makes an image at every resolution, so ``forward`` returns
  log2(s) + 1 images, coarse (LR size) first. Works in [0, 1] (the 2020 code works in 0..255; every
  loss term is linear in the range, so the weights keep their meaning) on RGB (default) or Y.
- ``DRNDual``: one per x2 step, conv3x3 stride 2 -> LeakyReLU(0.2) -> conv3x3, no biases; dual i maps
  output i+1 down to the size of output i.
- ``DRNNet`` holds both, so one registered variant builds the whole closed loop.

Registered variants (``lit_sr.create_model(name, **overrides)``):

- ``drn_s_x4`` (B 30, F 16), ``drn_s_x8`` (B 30, F 8), ``drn_l_x4`` (B 40, F 20), ``drn_l_x8`` (B 36, F 10):
  the 2020 DRN-S / DRN-L (primal 4,804,065 / 5,403,000 / 9,825,893 / 10,004,018 parameters in the 2020
  count, which includes the two MeanShift convs: here those 24 values are constant buffers; duals 2 x 864 /
  3 x 432 / 2 x 1,080 / 3 x 540).
- ``drn_small_x4`` (B 4, F 16): the quick CPU preset (primal 933,369 parameters here, 933,393 in the 2020 count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, OpenUnitInterval, PositiveInt
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lit_sr.errors import DivergedError
from lit_sr.losses import GradForm, MaskMode, gradient_mask, gradient_sensitive_loss
from lit_sr.methods.base import SRMethod, on_ranks
from lit_sr.metrics import quantize
from lit_sr.registry import register_model

__all__ = ["DRN", "DRNDual", "DRNNet", "DRNPrimal", "RCAB", "edge_psnr_y"]

SKIP_RULE_KEY = "drn_skip_rule"  # checkpoint key of DRN's exploding-batch rule state
SKIP_RULE_STATE = ("previous_epoch_loss", "epoch_loss_sum", "epoch_batches", "skipped_total", "skipped_in_a_row")

#: DIV2K RGB mean of the 2020 code (in [0, 1]); the Y value is its BT.601 studio-range luma.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
DIV2K_Y_MEAN = (16.0 + 65.481 * 0.4488 + 128.553 * 0.4371 + 24.966 * 0.4040) / 255.0
LEAK = 0.2


def _num_phases(scale: int) -> int:
    if not isinstance(scale, int) or scale < 2 or scale & (scale - 1):
        raise ValueError(f"DRN: scale must be a power of two >= 2 (4 or 8 as published), got {scale!r}")
    return int(math.log2(scale))


def _conv(cin: int, cout: int, kernel: int = 3, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias)


class MeanShift(nn.Module):
    """1x1 conv adding (``sign`` = +1) or subtracting (-1) a per-channel mean, held as constant buffers.

    The 2020 code makes it a Conv2d and sets ``requires_grad`` on the module object (a no-op), so its 2 x 12
    parameters are trained and counted; here they are buffers, so no optimizer or stage ``trainable`` rule
    can change them (the spec's primal counts minus 24).
    """

    def __init__(self, mean: Sequence[float], sign: int) -> None:
        super().__init__()
        channels = len(mean)
        self.register_buffer("weight", torch.eye(channels).view(channels, channels, 1, 1))
        self.register_buffer("bias", sign * torch.tensor(mean, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 (n -> n/r) -> ReLU -> 1x1 -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.body = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.body(x)


class RCAB(nn.Module):
    """Residual channel-attention block: conv3x3 -> ReLU -> conv3x3 -> channel attention, plus identity."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels),
            nn.ReLU(inplace=True),
            _conv(channels, channels),
            ChannelAttention(channels, reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _down_block(cin: int, cmid: int, cout: int) -> nn.Sequential:
    """conv3x3 stride 2 (no bias) -> LeakyReLU(0.2) -> conv3x3 (no bias): halves the resolution."""
    return nn.Sequential(
        nn.Conv2d(cin, cmid, 3, stride=2, padding=1, bias=False),
        nn.LeakyReLU(LEAK, inplace=True),
        nn.Conv2d(cmid, cout, 3, padding=1, bias=False),
    )


class DRNPrimal(nn.Module):
    """The primal LR -> HR network; ``forward`` returns log2(scale) + 1 images, coarse (LR size) first."""

    def __init__(
        self, scale: int = 4, n_blocks: int = 30, n_feats: int = 16, n_colors: Literal[1, 3] = 3
    ) -> None:
        super().__init__()
        phases = _num_phases(scale)
        if n_blocks < 0 or n_feats < 1:
            raise ValueError(f"DRN: n_blocks must be >= 0 and n_feats >= 1, got {n_blocks} and {n_feats}")
        if n_colors not in (1, 3):
            raise ValueError(f"DRN: n_colors must be 3 (RGB) or 1 (Y), got {n_colors!r}")
        self.scale, self.phases, self.n_colors = scale, phases, n_colors
        mean = DIV2K_RGB_MEAN if n_colors == 3 else (DIV2K_Y_MEAN,)
        # PyTorch bicubic (a = -0.75, no antialiasing) is part of the model [code]; the data LR stays MATLAB's.
        self.upsample = nn.Upsample(scale_factor=scale, mode="bicubic", align_corners=False)
        self.sub_mean = MeanShift(mean, -1)
        self.add_mean = MeanShift(mean, +1)
        self.head = _conv(n_colors, n_feats)
        f = n_feats
        self.down = nn.ModuleList(_down_block(f * 2**p, f * 2**p, f * 2 ** (p + 1)) for p in range(phases))
        up_blocks = []
        for idx in range(phases):
            # Up block idx works at width w: F*2^P first, then the concatenated width 2 * F*2^(P-idx).
            width = f * 2**phases if idx == 0 else 2 * f * 2 ** (phases - idx)
            out = f * 2 ** (phases - idx - 1)
            up_blocks.append(
                nn.Sequential(
                    *(RCAB(width) for _ in range(n_blocks)),
                    _conv(width, 4 * width),
                    nn.PixelShuffle(2),
                    _conv(width, out, kernel=1),
                )
            )
        self.up_blocks = nn.ModuleList(up_blocks)
        tail_widths = [f * 2**phases] + [f * 2**p for p in range(phases, 0, -1)]
        self.tail = nn.ModuleList(_conv(w, n_colors) for w in tail_widths)

    def forward(self, lr: Tensor) -> list[Tensor]:
        if lr.dim() != 4 or lr.shape[1] != self.n_colors:
            raise ValueError(
                f"DRN primal built for {self.n_colors} channel(s) takes (N, {self.n_colors}, h, w), "
                f"got shape {tuple(lr.shape)}"
            )
        x = self.head(self.sub_mean(self.upsample(lr)))
        copies = []
        for down in self.down:
            copies.append(x)
            x = down(x)
        results = [self.add_mean(self.tail[0](x))]
        for idx, up in enumerate(self.up_blocks):
            x = torch.cat((up(x), copies[self.phases - idx - 1]), dim=1)
            results.append(self.add_mean(self.tail[idx + 1](x)))
        return results


class DRNDual(nn.Module):
    """One dual HR -> LR step: conv3x3 stride 2 (C -> F, no bias) -> LeakyReLU(0.2) -> conv3x3 (F -> C)."""

    def __init__(self, n_feats: int = 16, n_colors: int = 3) -> None:
        super().__init__()
        self.body = _down_block(n_colors, n_feats, n_colors)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class DRNNet(nn.Module):
    """Primal plus one dual per x2 step (``duals[i]`` maps primal output i+1 to the size of output i)."""

    def __init__(
        self, scale: int = 4, n_blocks: int = 30, n_feats: int = 16, n_colors: Literal[1, 3] = 3
    ) -> None:
        super().__init__()
        self.primal = DRNPrimal(scale, n_blocks, n_feats, n_colors)
        self.duals = nn.ModuleList(DRNDual(n_feats, n_colors) for _ in range(self.primal.phases))
        self.scale, self.n_colors = scale, n_colors

    @property
    def supported_scales(self) -> tuple[int, ...]:
        return (self.scale,)

    def forward(self, lr: Tensor) -> list[Tensor]:
        """The primal outputs, coarse first (the last is the SR image)."""
        return self.primal(lr)

    def dual_outputs(self, outputs: Sequence[Tensor]) -> list[Tensor]:
        """``duals[i](outputs[i + 1])`` for every x2 step: the closed loop back to each coarser size."""
        return [dual(outputs[i + 1]) for i, dual in enumerate(self.duals)]


def edge_psnr_y(sr_y: Tensor, hr_y: Tensor, shave: int, quantile: float = 0.8) -> Tensor:
    """Per-image PSNR (N,) restricted to the edge region of HR: the GSL's hard mask (Sobel magnitude above
    the image's ``quantile``-quantile) of the 8-bit HR Y, computed on the whole image, then the protocol's
    8-bit rounding and ``shave``-pixel border applied to SR, HR and mask alike. Measures what GSL targets."""
    if sr_y.shape != hr_y.shape or sr_y.dim() != 4 or sr_y.shape[1] != 1:
        raise ValueError(
            f"edge_psnr_y takes Y images shaped (N, 1, H, W) alike, got {tuple(sr_y.shape)} and {tuple(hr_y.shape)}"
        )
    sr, hr = quantize(sr_y), quantize(hr_y)
    mask = gradient_mask(hr / 255.0, "hard", quantile)
    if shave > 0:
        if min(sr.shape[-2:]) <= 2 * shave:
            raise ValueError(f"image {tuple(sr.shape[-2:])} is too small to shave {shave} pixels per side")
        sr, hr, mask = (t[..., shave:-shave, shave:-shave] for t in (sr, hr, mask))
    n_edge = mask.flatten(1).sum(1)
    if bool((n_edge == 0).any()):
        raise ValueError("edge_psnr_y: an HR image has no edge pixels inside the shaved border (flat image)")
    mse = (mask * (sr - hr).pow(2)).flatten(1).sum(1) / n_edge
    return 10.0 * torch.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------------------------------
# Registered variants, timm style, one line each: keyword arguments override the variant's defaults;
# a scale in the variant's name is passed outside them, so overriding it is an error.
# Primal counts: ours / the 2020 code's, which also counts the two MeanShift convs (24 constant buffers here).


@register_model  # DRN-S x4 (primal 4,804,041 / 4,804,065 parameters, duals 2 x 864)
def drn_s_x4(**kw: Any) -> DRNNet: return DRNNet(scale=4, **{"n_blocks": 30, "n_feats": 16, **kw})
@register_model  # DRN-S x8 (primal 5,402,976 / 5,403,000 parameters, duals 3 x 432)
def drn_s_x8(**kw: Any) -> DRNNet: return DRNNet(scale=8, **{"n_blocks": 30, "n_feats": 8, **kw})
@register_model  # DRN-L x4 (primal 9,825,869 / 9,825,893 parameters, duals 2 x 1,080)
def drn_l_x4(**kw: Any) -> DRNNet: return DRNNet(scale=4, **{"n_blocks": 40, "n_feats": 20, **kw})
@register_model  # DRN-L x8 (primal 10,003,994 / 10,004,018 parameters, duals 3 x 540)
def drn_l_x8(**kw: Any) -> DRNNet: return DRNNet(scale=8, **{"n_blocks": 36, "n_feats": 10, **kw})
@register_model  # Small DRN x4 for quick CPU runs: DRN-S x4 with B = 4 (primal 933,369 / 933,393, duals 2 x 864)
def drn_small_x4(**kw: Any) -> DRNNet: return DRNNet(scale=4, **{"n_blocks": 4, "n_feats": 16, **kw})


# ---------------------------------------------------------------------------------------------------
# Training: the LightningModule.


class DRN(SRMethod):
    """DRN-GSL training: primal and dual networks trained jointly in one stage.

    Loss per group (one scale; each group weighted by its share n / N of the batch), all with mean reduction:

        L = L_final(y_P, hr) + sum_{i<P} L1(y_i, x_i) + dual_weight * sum_i L1(D_i(y_{i+1}), x_i)

    with y_0..y_P the primal outputs (coarse first), x_0 the LR input and x_1.. the HR pyramid (MATLAB bicubic,
    the DataModule's ``pyramid``). ``loss="gsl"`` makes L_final the gradient-sensitive loss
    (``lit_sr.losses.gradient_sensitive_loss``: mask from the detached HR's Sobel magnitude, ``mask_mode``
    soft/hard, ``grad_form``, ``gsl_low_weight`` = lambda_L, ``gsl_l1_weight`` = mu); ``loss="l1"`` is the 2020
    DRN baseline. Logged parts: ``final``, ``intermediate``, ``dual`` (unweighted sums), the GSL's ``gsl_high``,
    ``gsl_low``, ``gsl_l1`` and ``bicubic`` (L_final of MATLAB bicubic against HR, the level to go below).

    Optimizer: the stage's one optimizer over ``self.net``, i.e. primal and dual parameters together. The 2020
    code steps one Adam for the primal and one per dual with identical settings; Adam is per-parameter, so
    with equal hyper-parameters one Adam over all parameters gives the same updates, and it keeps Lightning's
    automatic optimisation and the stage engine. Separate
    optimizers would only matter when sweeping dual-specific hyper-parameters, which the spec does not.

    Exploding batches: a batch whose loss exceeds ``skip_factor`` (1e6, the 2020 ``skip_threshold``) times
    the previous epoch's mean training loss, or is not finite, is skipped (its gradients are dropped after the
    backward, so the optimizer changes no weight or state), counted in ``train/skipped_batches`` and warned
    about; more than ``max_consecutive_skips`` in a row is an error. Under DDP the decision is shared, so every
    rank skips together, and every rank still runs its backward (the gradient all-reduce).

    ``channels``: ``rgb`` (the paper's; metrics are Y of the 8-bit RGB output) or ``y`` (the network sees and
    returns Y, built with one colour channel).
    """

    name = "drn"
    network_type = DRNNet
    channels = "rgb"
    batch_needs = ("lr", "pyramid")

    def __init__(
        self,
        variant: str = "drn_s_x4",
        loss: Literal["gsl", "l1"] = "gsl",
        dual_weight: NonNegativeFloat = 0.1,
        gsl_low_weight: NonNegativeFloat = 1.0,
        gsl_l1_weight: NonNegativeFloat = 0.0,
        mask_mode: MaskMode = "soft",
        mask_quantile: OpenUnitInterval = 0.8,
        grad_form: GradForm = "grad_of_masked",
        channels: Literal["rgb", "y"] = "rgb",
        skip_factor: float = 1e6,
        max_consecutive_skips: PositiveInt = 20,
        net: dict[str, Any] | None = None,
        supported_scales: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            variant: registered DRN network (``drn_s_x4``, ``drn_s_x8``, ``drn_l_x4``, ``drn_l_x8``,
                ``drn_small_x4``); ``net`` overrides its ``n_blocks`` / ``n_feats``.
            loss: the final output's loss, ``gsl`` (DRN-GSL) or ``l1`` (the 2020 DRN).
            dual_weight: lambda_D of the dual L1 terms (0.1 in the 2020 code).
            gsl_low_weight, gsl_l1_weight: lambda_L and mu of the GSL (1 and 0).
            mask_mode, mask_quantile: the GSL mask, ``soft`` (min-max) or ``hard`` (above the quantile).
            grad_form: ``grad_of_masked`` or ``masked_grad`` (see the GSL).
            channels: ``rgb`` or ``y``.
            skip_factor, max_consecutive_skips: the exploding-batch rule above.
            supported_scales: fixed by the variant; must stay unset.

        The typed arguments are checked by jsonargparse (a config) or ``SRMethod`` (a Python call).
        """
        if supported_scales is not None:
            raise ValueError(
                f"model.init_args.supported_scales={list(supported_scales)} cannot be set for DRN: the variant "
                "fixes its one scale (drn_*_x4 or drn_*_x8); remove the key"
            )
        n_colors = 1 if channels == "y" else 3
        net = dict(net or {})
        if net.get("n_colors", n_colors) != n_colors:
            raise ValueError(
                f"model.init_args.net.n_colors={net['n_colors']} contradicts channels={channels!r}; "
                "remove net.n_colors (channels sets it)"
            )
        if channels == "y":
            net["n_colors"] = 1
        super().__init__(variant=variant, net=net, supported_scales=(), **kwargs)
        if not skip_factor > 1:  # SRMethod checked that it is a number; no type hint says > 1
            raise ValueError(
                f"model.init_args.skip_factor must be a number > 1 (1e6 in the 2020 code), got {skip_factor}"
            )
        self.channels = channels  # per instance: every base path (degrade, evaluation, upscale) reads self.channels
        self.loss, self.dual_weight = loss, float(dual_weight)
        self.gsl_options = {
            "low_weight": float(gsl_low_weight),
            "l1_weight": float(gsl_l1_weight),
            "mask_mode": mask_mode,
            "quantile": float(mask_quantile),
            "grad_form": grad_form,
        }
        self.skip_factor, self.max_consecutive_skips = float(skip_factor), int(max_consecutive_skips)
        # The exploding-batch rule's state, all saved in checkpoints (a resume mid-epoch goes on with the same rule):
        #: mean loss of the last epoch: a batch over skip_factor x this is skipped
        self.previous_epoch_loss: float | None = None
        self.epoch_loss_sum, self.epoch_batches = 0.0, 0  # of this epoch's kept batches
        self.skipped_total, self.skipped_in_a_row = 0, 0
        self._drop_gradients = False

    @property
    def supported_scales(self) -> list[int]:
        return [self.net.scale]

    def sr_forward(self, lr: Tensor, scale: int) -> Tensor:
        return self.net(lr)[-1]

    def final_loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The final output's loss (GSL or L1) in fp32, with the GSL's parts. Autocast is off, so that under
        bf16-mixed its Sobel convolutions run in fp32, as they do for the bicubic reference loss."""
        pred, target = pred.float(), target.float()
        if self.loss == "l1":
            return F.l1_loss(pred, target), {}
        with torch.autocast(pred.device.type, enabled=False):
            total, parts = gradient_sensitive_loss(pred, target, **self.gsl_options)
        return total, {f"gsl_{k}": v for k, v in parts.items()}

    def compute_loss(self, groups: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        n_total = sum(len(g["hr"]) for g in groups)
        sums: dict[str, Tensor] = {}
        for group in groups:
            outputs = self.net(group["lr"])
            targets = [group["lr"], *group["pyramid"]]
            if len(targets) != len(outputs):
                raise ValueError(
                    f"x{int(group['scale'][0])} batch has {len(targets)} LR/pyramid targets, but "
                    f"{self.hparams.variant} made {len(outputs)} outputs (it is a x{self.net.scale} model)"
                )
            share = len(group["hr"]) / n_total
            final, gsl_parts = self.final_loss(outputs[-1], targets[-1])
            coarse = [F.l1_loss(o.float(), t.float()) for o, t in zip(outputs[:-1], targets[:-1])]
            duals = [F.l1_loss(d.float(), t.float()) for d, t in zip(self.net.dual_outputs(outputs), targets[:-1])]
            parts = {"final": final, "intermediate": torch.stack(coarse).sum(), "dual": torch.stack(duals).sum()}
            for key, value in {**parts, **gsl_parts}.items():
                sums[key] = sums.get(key, 0.0) + share * value
        return sums["final"] + sums["intermediate"] + self.dual_weight * sums["dual"], sums

    def reference_loss(self, groups: list[dict]) -> dict[str, Tensor]:
        return {"bicubic": self.bicubic_loss(groups, lambda p, t: self.final_loss(p, t)[0])}

    # ---- skipping exploding batches -------------------------------------------------------------------
    def training_step(self, batch: list[dict], batch_idx: int) -> Tensor:
        total, parts = self.compute_loss(batch)
        value = float(total.detach())
        limit = math.inf if self.previous_epoch_loss is None else self.skip_factor * self.previous_epoch_loss
        losses = self.losses_by_rank(total)  # every rank skips together: one exploding batch is enough
        if bad := [rank for rank, loss in enumerate(losses) if not loss <= limit]:
            self.skipped_total += 1
            self.skipped_in_a_row += 1
            self.log("train/skipped_batches", float(self.skipped_total), on_step=True, on_epoch=False)
            where = f"loss {losses[bad[0]]:.4g}{on_ranks(bad, len(losses))}"
            rank_zero_warn(
                f"DRN: skipped the batch at step {self.global_step}: {where} exceeds {self.skip_factor:g} x the "
                f"previous epoch's mean {self.previous_epoch_loss} or is not finite ({self.skipped_total} skipped so "
                "far)"
            )
            if self.skipped_in_a_row > self.max_consecutive_skips:
                raise DivergedError(  # on every rank at once: rank 0 prints it
                    f"DRN: {self.skipped_in_a_row} batches in a row had exploding or non-finite losses (last "
                    f"{where}) at step {self.global_step}; lower the lr (stages.0.optimizer.lr)",
                    quiet=self.global_rank != 0,
                )
            # Not None, which Lightning refuses under DDP: every rank runs its backward (the gradient all-reduce),
            # then on_after_backward drops the gradients, and an optimizer leaves a parameter without one alone.
            self._drop_gradients = True
            return total * 0.0
        self.skipped_in_a_row = 0
        self.epoch_loss_sum += value
        self.epoch_batches += 1
        self.log_loss(batch, total, parts)
        return total

    def on_after_backward(self) -> None:
        if self._drop_gradients:  # a skipped batch: no weight, momentum or step count changes
            for p in self.parameters():
                p.grad = None
            self._drop_gradients = False

    def on_train_epoch_end(self) -> None:
        if self.epoch_batches:
            self.previous_epoch_loss = self.epoch_loss_sum / self.epoch_batches
        self.epoch_loss_sum, self.epoch_batches = 0.0, 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[SKIP_RULE_KEY] = {key: getattr(self, key) for key in SKIP_RULE_STATE}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(SKIP_RULE_KEY) or {  # a checkpoint of lit_sr before 2026-12 kept two of them
            "previous_epoch_loss": checkpoint.get("drn_previous_epoch_loss"),
            "skipped_total": checkpoint.get("drn_skipped_batches", 0)}
        for key, value in state.items():
            setattr(self, key, value)
