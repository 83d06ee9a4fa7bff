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

import torch
from torch import Tensor, nn

from lit_sr.data.resize import imresize
from lit_sr.losses import Reduction, mse, scale_balance_weights
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


# ---------------------------------------------------------------------------------------------------
# Registered variants, timm style, one line each: keyword arguments override the variant's defaults;
# a scale in the variant's name is passed outside them, so overriding it is an error.


@register_model  # The paper network: 20 layers, 64 channels (665,921 parameters)
def vdsr(**kw: Any) -> VDSRNet: return VDSRNet(**{"depth": 20, "width": 64, **kw})
@register_model  # CPU quick preset: 10 layers, 32 channels (74,593 parameters)
def vdsr_small(**kw: Any) -> VDSRNet: return VDSRNet(**{"depth": 10, "width": 32, **kw})


class VDSR(SRMethod):
    """VDSR training: MSE on the residual of the ILR input; one model for every trained scale.

    Loss term ``mse`` (``stages[i].loss_weights.mse``, default 1). ``scale_balance: bicubic`` weights each
    sample by 1 / its scale's bicubic MSE in the batch (``losses.scale_balance_weights``) [proposal, off in the
    paper recipe]: x4 residuals are several times larger than x2 ones, so with the plain sum the x4 samples
    dominate the gradient and a short mixed-scale run gains little at x2.
    """

    name = "vdsr"
    network_type = VDSRNet
    batch_needs = ("ilr",)
    loss_terms = ("mse",)

    def __init__(
        self,
        variant: str = "vdsr",
        reduction: Reduction = "paper",
        scale_balance: Literal["none", "bicubic"] = "none",
        **kwargs: Any,
    ) -> None:
        """``reduction``: ``paper`` (1/2N sum, what lr 0.1 and theta assume) or ``mean`` (per pixel)."""
        super().__init__(variant=variant, **kwargs)
        self.reduction, self.scale_balance = reduction, scale_balance

    def sr_forward(self, lr: Tensor, scale: int) -> Tensor:
        return self.net(imresize(lr, scale))

    def _mse(self, pred: Tensor, target: Tensor) -> Tensor:
        return mse(pred, target, self.reduction)

    def compute_loss(self, groups: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        ilr = torch.cat([g["ilr"] for g in groups])
        hr = torch.cat([g["hr"] for g in groups])
        scale = torch.cat([g["scale"] for g in groups])
        weight = scale_balance_weights(ilr, hr, scale) if self.scale_balance == "bicubic" else None
        loss = mse(self.net(ilr), hr, self.reduction, weight)
        return self.loss_weight("mse") * loss, {"mse": loss}

    def reference_loss(self, groups: list[dict]) -> dict[str, Tensor]:
        return {"bicubic": self.bicubic_loss(groups, self._mse)}
