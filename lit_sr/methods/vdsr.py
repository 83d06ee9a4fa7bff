"""VDSR (Kim, Lee, Lee, CVPR 2016): a plain 20-layer 3x3 CNN predicting the residual of the bicubic input.

Variants:
    vdsr        the paper network: 20 layers, 64 channels, biases (665,921 parameters)
    vdsr_small  10 layers, 32 channels: the CPU quick preset's network

Training (``experiments/vdsr/paper.yaml``): SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 every
20 epochs for 80 epochs, adjustable gradient clipping (theta / lr per element), MSE with the paper's
reduction (1/2N sum), scales {2, 3, 4} mixed in every batch.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from lit_sr.data.resize import imresize
from lit_sr.losses import Reduction, mse
from lit_sr.methods.base import SRMethod
from lit_sr.nn import he_init_
from lit_sr.registry import register_model


class VDSRNet(nn.Module):
    """depth 3x3 convs (1 -> width -> ... -> 1), ReLU between, output = input + predicted residual."""

    def __init__(
        self,
        depth: int = 20,
        width: int = 64,
        bias: bool = True,
        init_fan_mode: Literal["fan_in", "fan_out"] = "fan_in",
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"VDSR depth must be >= 2, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.tail = nn.Conv2d(width, 1, 3, padding=1, bias=bias)
        he_init_(self, mode=init_fan_mode)

    def residual(self, ilr: Tensor) -> Tensor:
        return self.tail(self.body(ilr))

    def forward(self, ilr: Tensor) -> Tensor:
        """ILR Y (N,1,H,W): the bicubic-upsampled LR image -> SR Y of the same size."""
        return ilr + self.residual(ilr)


@register_model
def vdsr(**kwargs: Any) -> VDSRNet:
    return VDSRNet(**{"depth": 20, "width": 64, **kwargs})


@register_model
def vdsr_small(**kwargs: Any) -> VDSRNet:
    return VDSRNet(**{"depth": 10, "width": 32, **kwargs})


class VDSR(SRMethod):
    """VDSR training: MSE on the residual of the ILR input; one model for every trained scale."""

    batch_needs = ("ilr",)

    def __init__(self, variant: str = "vdsr", reduction: Reduction = "paper", **kwargs: Any) -> None:
        """``reduction``: ``paper`` (1/2N sum, what lr 0.1 and theta assume) or ``mean`` (per pixel)."""
        super().__init__(variant=variant, **kwargs)
        self.reduction = reduction

    def sr_forward(self, lr_y: Tensor, scale: int) -> Tensor:
        return self.net(imresize(lr_y, scale))

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        loss = mse(self.net(batch["ilr"]), batch["hr"], self.reduction)
        # The loss of the bicubic input itself: a run that learns stays below it ("stuck at bicubic" does not).
        bicubic = mse(batch["ilr"], batch["hr"], self.reduction).detach()
        return loss, {"mse": loss, "bicubic": bicubic}
