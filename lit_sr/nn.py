"""Small building blocks shared by several networks (plain torch, no Lightning)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def he_init_(
    module: nn.Module, mode: Literal["fan_in", "fan_out"] = "fan_in", negative_slope: float = 0.0
) -> None:
    """He-normal init of every conv / transposed-conv weight in ``module``; biases set to zero."""
    nonlinearity = "relu" if negative_slope == 0 else "leaky_relu"
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, a=negative_slope, mode=mode, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def bilinear_kernel(size: int = 4) -> torch.Tensor:
    """(size, size) bilinear upsampling kernel of a stride-size/2 transposed conv (outer product)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).float()


class BilinearUpsample2x(nn.ConvTranspose2d):
    """Learnable x2 upsampler (transposed conv 4x4, stride 2, padding 1) that starts as bilinear."""

    def __init__(self, channels: int = 1, bias: bool = False) -> None:
        super().__init__(channels, channels, 4, stride=2, padding=1, bias=bias)
        with torch.no_grad():
            self.weight.zero_()
            for c in range(channels):
                self.weight[c, c] = bilinear_kernel(4)
            if self.bias is not None:
                self.bias.zero_()
