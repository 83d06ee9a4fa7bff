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
  the 2020 DRN-S / DRN-L (primal 4,804,065 / 5,403,000 / 9,825,893 / 10,004,018 parameters counting the
  two frozen MeanShift convs; duals 2 x 864 / 3 x 432 / 2 x 1,080 / 3 x 540).
- ``drn_small_x4`` (B 4, F 8): the quick CPU preset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_sr.losses import gradient_mask
from lit_sr.metrics import quantize
from lit_sr.registry import register_model

__all__ = ["DRNDual", "DRNNet", "DRNPrimal", "RCAB", "edge_psnr_y"]

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


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding (``sign`` = +1) or subtracting (-1) a per-channel mean."""

    def __init__(self, mean: Sequence[float], sign: int) -> None:
        channels = len(mean)
        super().__init__(channels, channels, 1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
            self.bias.copy_(sign * torch.tensor(mean, dtype=torch.float32))
        # The 2020 code sets requires_grad on the module object (a no-op); here the shift really is frozen.
        for p in self.parameters():
            p.requires_grad_(False)


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
# Registered variants: defaults are the named configuration; any argument can be overridden.


def _drn(scale: int, n_blocks: int, n_feats: int, n_colors: Literal[1, 3] = 3, **kwargs: Any) -> DRNNet:
    if kwargs:
        raise TypeError(f"unexpected DRN arguments {sorted(kwargs)}; use n_blocks, n_feats, n_colors")
    return DRNNet(scale, n_blocks, n_feats, n_colors)


@register_model
def drn_s_x4(n_blocks: int = 30, n_feats: int = 16, **kwargs: Any) -> DRNNet:
    """DRN-S x4 (primal 4,804,065 parameters, duals 2 x 864)."""
    return _drn(4, n_blocks, n_feats, **kwargs)


@register_model
def drn_s_x8(n_blocks: int = 30, n_feats: int = 8, **kwargs: Any) -> DRNNet:
    """DRN-S x8 (primal 5,403,000 parameters, duals 3 x 432)."""
    return _drn(8, n_blocks, n_feats, **kwargs)


@register_model
def drn_l_x4(n_blocks: int = 40, n_feats: int = 20, **kwargs: Any) -> DRNNet:
    """DRN-L x4 (primal 9,825,893 parameters, duals 2 x 1,080)."""
    return _drn(4, n_blocks, n_feats, **kwargs)


@register_model
def drn_l_x8(n_blocks: int = 36, n_feats: int = 10, **kwargs: Any) -> DRNNet:
    """DRN-L x8 (primal 10,004,018 parameters, duals 3 x 540)."""
    return _drn(8, n_blocks, n_feats, **kwargs)


@register_model
def drn_small_x4(n_blocks: int = 4, n_feats: int = 8, **kwargs: Any) -> DRNNet:
    """Small DRN x4 for quick CPU runs: B = 4, F = 8."""
    return _drn(4, n_blocks, n_feats, **kwargs)
