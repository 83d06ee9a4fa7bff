"""Paper-protocol PSNR / SSIM on Y, as torchmetrics Metrics that are exact under DDP.

Protocol (VDSR / LapSRN tables): SR quantised to 8 bits, ``shave`` pixels (= scale) dropped on every
side, PSNR = 10 log10(255^2 / MSE) per image, then the mean over images (not a pooled MSE).
SSIM variant ``"ssim_index"`` is Wang et al.'s ``ssim_index`` (Gaussian 11x11, sigma 1.5, valid region,
K = 0.01/0.03, L = 255), used by SRCNN/VDSR-era tables; ``"matlab"`` is MATLAB's built-in ``ssim``
(same window, replicate padding, full map), used by the LapSRN evaluator.
The states are per-image lists concatenated across ranks, so DDP counts each image exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

SSIMVariant = Literal["ssim_index", "matlab"]


def quantize(y: Tensor) -> Tensor:
    """[0, 1] image -> float64 grey levels rounded to 0..255, as saving an 8-bit image would."""
    return torch.round(y.double().clamp(0, 1) * 255.0)


def _prepare(sr_y: Tensor, hr_y: Tensor, shave: int) -> tuple[Tensor, Tensor]:
    if sr_y.shape != hr_y.shape:
        raise ValueError(f"SR and HR shapes differ: {tuple(sr_y.shape)} vs {tuple(hr_y.shape)}")
    if sr_y.dim() != 4 or sr_y.shape[1] != 1:
        raise ValueError(f"expected Y images shaped (N, 1, H, W), got {tuple(sr_y.shape)}")
    sr, hr = quantize(sr_y), quantize(hr_y)
    if shave > 0:
        if min(sr.shape[-2:]) <= 2 * shave:
            raise ValueError(f"image {tuple(sr.shape[-2:])} is too small to shave {shave} pixels per side")
        sr, hr = sr[..., shave:-shave, shave:-shave], hr[..., shave:-shave, shave:-shave]
    return sr, hr


def psnr_y(sr_y: Tensor, hr_y: Tensor, shave: int) -> Tensor:
    """Per-image PSNR (N,) in dB of (N, 1, H, W) Y images in [0, 1]."""
    sr, hr = _prepare(sr_y, hr_y, shave)
    mse = (sr - hr).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian_1d(device: torch.device, size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _valid_filter(x: Tensor, taps: Tensor, dim: int) -> Tensor:
    """``x`` correlated with the 1-D ``taps`` along ``dim``, valid region only, as a sum of shifted slices.

    The 11x11 Gaussian is separable, so SSIM's window is two such passes. Two float64 ``conv2d`` passes on the
    CPU are about 11x slower than this (``bench/bench_eval.py``); the result equals the 2-D window within 1e-12
    (tests/test_protocol.py).
    """
    weights, size = taps.tolist(), x.shape[dim] - taps.numel() + 1
    out = x.narrow(dim, 0, size) * weights[0]
    for k, w in enumerate(weights[1:], start=1):
        out.add_(x.narrow(dim, k, size), alpha=w)
    return out


def ssim_y(sr_y: Tensor, hr_y: Tensor, shave: int, variant: SSIMVariant = "ssim_index") -> Tensor:
    """Per-image SSIM (N,) of (N, 1, H, W) Y images in [0, 1]; see the module doc for the variants."""
    sr, hr = _prepare(sr_y, hr_y, shave)
    g = _gaussian_1d(sr.device)
    if variant == "matlab":
        pad = g.numel() // 2
        sr, hr = (F.pad(t, (pad,) * 4, mode="replicate") for t in (sr, hr))
    elif variant != "ssim_index":
        raise ValueError(f"unknown SSIM variant {variant!r}; use 'ssim_index' or 'matlab'")
    return ssim_of_moments(lambda m: _valid_filter(_valid_filter(m, g, -2), g, -1), sr, hr)


def ssim_of_moments(window: Callable[[Tensor], Tensor], sr: Tensor, hr: Tensor) -> Tensor:
    """Per-image mean SSIM map of 8-bit grey levels, ``window`` applying the Gaussian window to the five
    moments (x, y, x^2, y^2, xy) stacked in one batch."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y, xx, yy, xy = window(torch.cat([sr, hr, sr * sr, hr * hr, sr * hr])).split(sr.shape[0])
    sxx, syy, sxy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1)


class _PerImageMean(Metric):
    """Mean over images of a per-image score; the per-image values are kept and concatenated."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, shave: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shave = shave
        self.n_images = 0  # images behind the last compute(), over every rank
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def _score(self, sr_y: Tensor, hr_y: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, sr_y: Tensor, hr_y: Tensor) -> None:
        self.values.append(self._score(sr_y, hr_y).to(torch.float64))

    def compute(self) -> Tensor:
        # torchmetrics syncs the states across ranks around compute() only, so the count is taken here.
        values = self.values if isinstance(self.values, Tensor) else torch.cat(self.values)
        self.n_images = int(values.numel())
        return values.mean()


class PSNRY(_PerImageMean):
    """Mean per-image PSNR on Y with the paper protocol (8-bit, ``shave``-pixel border)."""

    def _score(self, sr_y: Tensor, hr_y: Tensor) -> Tensor:
        return psnr_y(sr_y, hr_y, self.shave)


class SSIMY(_PerImageMean):
    """Mean per-image SSIM on Y with the paper protocol; ``variant`` as in :func:`ssim_y`."""

    def __init__(self, shave: int, variant: SSIMVariant = "ssim_index", **kwargs) -> None:
        super().__init__(shave, **kwargs)
        self.variant = variant

    def _score(self, sr_y: Tensor, hr_y: Tensor) -> Tensor:
        return ssim_y(sr_y, hr_y, self.shave, self.variant)
