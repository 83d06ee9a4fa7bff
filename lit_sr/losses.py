"""Losses with the papers' reductions.

``reduction="paper"``: sum over the pixels of each sample, mean over the batch (VDSR additionally halves the
squared error). The papers' learning rates and VDSR's clipping theta are tuned for these sums; a per-pixel
``"mean"`` shrinks gradients by the patch area (1681 on 41x41), so lr and theta must be re-tuned with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["paper", "mean"]


def _reduce(per_pixel: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "paper":
        return per_pixel.flatten(1).sum(1).mean()
    if reduction == "mean":
        return per_pixel.mean()
    raise ValueError(f"unknown loss reduction {reduction!r}; use 'paper' or 'mean'")


def mse(pred: Tensor, target: Tensor, reduction: Reduction = "paper") -> Tensor:
    """VDSR's loss: 1/(2N) sum ||y - f(x)||^2 (``paper``), or the per-pixel mean squared error (``mean``)."""
    sq = (pred - target).pow(2)
    return 0.5 * _reduce(sq, "paper") if reduction == "paper" else _reduce(sq, reduction)


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3, reduction: Reduction = "paper") -> Tensor:
    """LapSRN's robust L1: sqrt((pred - target)^2 + eps^2), summed per sample and averaged over the batch."""
    return _reduce(torch.sqrt((pred - target).pow(2) + eps * eps), reduction)


def multi_level(
    preds: Sequence[Tensor], targets: Sequence[Tensor], loss_fn, weights: Sequence[float] | None = None
) -> Tensor:
    """Weighted sum of ``loss_fn`` over pyramid levels (deep supervision); equal weights by default."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
    weights = weights or [1.0] * len(preds)
    return sum(w * loss_fn(p, t) for w, p, t in zip(weights, preds, targets))
