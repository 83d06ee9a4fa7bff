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


# ---- local rank space (IRLapSRN) --------------------------------------------------------------------------
# The rank transform of Zabih and Woodfill (1994): the rank of pixel p is the number of its k x k neighbours q
# (q != p) darker than p. Borders use replicate padding, so adding a constant to an image leaves it unchanged.


def _neighbour_differences(x: Tensor, window: int):
    """Yield I(p) - I(q) for every offset q != p of the ``window`` x ``window`` neighbourhood (replicate pad)."""
    if window < 3 or window % 2 == 0:
        raise ValueError(f"rank window must be an odd integer >= 3 (3 or 5 in IRLapSRN), got {window!r}")
    if x.dim() != 4:
        raise ValueError(f"rank transforms take (N, C, H, W) images, got shape {tuple(x.shape)}")
    r = window // 2
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
    for dy in range(window):
        for dx in range(window):
            if dy == r and dx == r:
                continue
            yield x - padded[..., dy : dy + h, dx : dx + w]


def soft_rank_transform(x: Tensor, window: int = 3, tau: float = 0.02) -> Tensor:
    """Differentiable local rank: mean over the k*k - 1 neighbours q of sigmoid((I(p) - I(q)) / tau), in [0, 1].

    As tau -> 0 it tends to :func:`hard_rank_transform` with ties counted half (sigmoid(0) = 0.5).
    """
    if not tau > 0:
        raise ValueError(f"rank tau must be > 0 (0.02 for intensities in [0, 1]), got {tau!r}")
    total = sum(torch.sigmoid(d / tau) for d in _neighbour_differences(x, window))
    return total / (window * window - 1)


def hard_rank_transform(x: Tensor, window: int = 3, ties: float = 0.0) -> Tensor:
    """Zabih-Woodfill rank / (k*k - 1): the share of the k*k - 1 neighbours strictly darker than p.

    ``ties`` is the weight of a neighbour equal to p (0: the original transform; 0.5: the tau -> 0 limit of
    :func:`soft_rank_transform`). Piecewise constant: a metric, never a loss.
    """
    with torch.no_grad():
        total = sum((d > 0).float() + ties * (d == 0).float() for d in _neighbour_differences(x, window))
        return total / (window * window - 1)


def local_rank_loss(
    pred: Tensor,
    target: Tensor,
    window: int = 3,
    tau: float = 0.02,
    eps: float = 1e-3,
    reduction: Reduction = "mean",
    detach_target: bool = True,
) -> Tensor:
    """IRLapSRN's local-rank-space loss: Charbonnier between the soft rank transforms of pred and target.

    The per-pixel term is sqrt(d^2 + eps^2) - eps: Charbonnier's gradient, and exactly 0 for identical images.
    ``detach_target``: the target's rank map is a constant (it carries no useful gradient).
    """
    rank_target = soft_rank_transform(target, window, tau)
    if detach_target:
        rank_target = rank_target.detach()
    d = soft_rank_transform(pred, window, tau) - rank_target
    return _reduce(torch.sqrt(d * d + eps * eps) - eps, reduction)


def rank_agreement(pred: Tensor, target: Tensor, window: int = 3) -> Tensor:
    """Share of pixels whose hard local rank is the same in ``pred`` and ``target`` (1 = same local order)."""
    n = window * window - 1
    same = (hard_rank_transform(pred, window) * n).round() == (hard_rank_transform(target, window) * n).round()
    return same.float().mean()
