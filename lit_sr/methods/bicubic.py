"""The bicubic baseline as a method: MATLAB ``imresize`` of the LR image, evaluated in float64.

It has no network and no training; ``lit-sr benchmark bicubic`` runs it through the same validation code as
every trained model, so the baseline rows and the model rows of a table are computed identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_sr.data.resize import imresize
from lit_sr.methods.base import SRMethod


class Bicubic(SRMethod):
    """MATLAB bicubic upscaling of the LR Y image (no parameters)."""

    name = "bicubic"

    def __init__(self, supported_scales: Sequence[int] = (2, 3, 4, 8), ssim_variant: str = "ssim_index") -> None:
        super().__init__(variant=None, supported_scales=supported_scales, tile_size=0, ssim_variant=ssim_variant)

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float64

    def sr_forward(self, lr: Tensor, scale: int) -> Tensor:
        return imresize(lr, scale)
