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

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_sr.methods.lapsrn import LEAK, PerLevelPyramid
from lit_sr.registry import register_model

__all__ = ["InceptionResidualBlock", "IRLapSRNNet"]


class InceptionResidualBlock(nn.Module):
    """Inception-ResNet-A style block without BN: three branches (1x1; 1x1-3x3; 1x1-3x3-3x3) of
    ``branch_width`` channels, concatenated, a linear 1x1 back to ``channels``, plus the identity."""

    def __init__(
        self,
        channels: int = 64,
        branch_width: int = 32,
        slope: float = LEAK,
        bias: bool = True,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if channels < 1 or branch_width < 1:
            raise ValueError(f"IRB: channels and branch_width must be >= 1, got {channels} and {branch_width}")

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

    model_name = "IRLapSRN"

    def __init__(
        self,
        scale: int = 4,
        irb_per_level: int = 8,
        branch_width: int = 32,
        channels: int = 64,
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
        if irb_per_level < 1:
            raise ValueError(f"IRLapSRN: irb_per_level must be >= 1, got {irb_per_level}")
        if channels < 1 or branch_width < 1:
            raise ValueError(f"IRLapSRN: channels and branch_width must be >= 1, got {channels} and {branch_width}")

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
# Registered variants, timm style; keyword arguments override the defaults (not the scale).


def _irlapsrn(scale: int, **kwargs: Any) -> IRLapSRNNet:
    return IRLapSRNNet(scale=scale, **kwargs)


@register_model
def irlapsrn_x2(**kwargs: Any) -> IRLapSRNNet:
    """IRLapSRN x2: 1 level, B = 8, branch width 32 (396,625 parameters)."""
    return _irlapsrn(scale=2, **kwargs)


@register_model
def irlapsrn_x4(**kwargs: Any) -> IRLapSRNNet:
    """IRLapSRN x4: 2 levels, B = 8, branch width 32 (792,610 parameters)."""
    return _irlapsrn(scale=4, **kwargs)


@register_model
def irlapsrn_x8(**kwargs: Any) -> IRLapSRNNet:
    """IRLapSRN x8: 3 levels, B = 8, branch width 32 (1,188,595 parameters)."""
    return _irlapsrn(scale=8, **kwargs)


@register_model
def irlapsrn_small(**kwargs: Any) -> IRLapSRNNet:
    """Small IRLapSRN x4 for quick CPU runs: B = 2, 32 channels, branch width 16."""
    return _irlapsrn(scale=4, **{"irb_per_level": 2, "channels": 32, "branch_width": 16, **kwargs})
