"""MATLAB ``rgb2ycbcr`` / ``ycbcr2rgb`` (BT.601 studio range) on [0, 1] tensors, channel dim -3.

Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in [0, 1]); lit_sr keeps Y / 255 in [16/255, 235/255].
A one-channel image is its own Y (full range): converting it as RGB would compress it to 16..235 and
add about 1.32 dB to its PSNR. Never use kornia's ``rgb_to_y`` for metrics (full-range JPEG coefficients).
"""

from __future__ import annotations

import torch
from torch import Tensor

_RGB2YCBCR = (
    torch.tensor(
        [
            [65.481, 128.553, 24.966],
            [-37.797, -74.203, 112.0],
            [112.0, -93.786, -18.214],
        ],
        dtype=torch.float64,
    )
    / 255.0
)
_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0


def _apply(matrix: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x.device, x.dtype), x)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> YCbCr / 255 as MATLAB ``rgb2ycbcr`` on doubles."""
    _check_channels(rgb, 3)
    return _apply(_RGB2YCBCR, rgb) + _OFFSET.to(rgb.device, rgb.dtype)[:, None, None]


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (not clipped)."""
    _check_channels(ycbcr, 3)
    shifted = ycbcr - _OFFSET.to(ycbcr.device, ycbcr.dtype)[:, None, None]
    return _apply(torch.linalg.inv(_RGB2YCBCR), shifted)


def rgb_to_y(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) MATLAB Y / 255."""
    _check_channels(rgb, 3)
    return _apply(_RGB2YCBCR[:1], rgb) + 16.0 / 255.0


def to_y(img: Tensor) -> Tensor:
    """Y of an image: a one-channel image is used as it is, an RGB one goes through :func:`rgb_to_y`."""
    if img.shape[-3] == 1:
        return img
    return rgb_to_y(img)


def _check_channels(x: Tensor, n: int) -> None:
    if x.dim() < 3 or x.shape[-3] != n:
        raise ValueError(f"expected {n} channels in dim -3, got shape {tuple(x.shape)}")
