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


def _reduce(per_pixel: Tensor, reduction: Reduction, weight: Tensor | None = None) -> Tensor:
    if weight is not None:  # one weight per sample
        per_pixel = per_pixel * weight.to(per_pixel.dtype).view(-1, *([1] * (per_pixel.dim() - 1)))
    if reduction == "paper":
        return per_pixel.flatten(1).sum(1).mean()
    if reduction == "mean":
        return per_pixel.mean()
    raise ValueError(f"unknown loss reduction {reduction!r}; use 'paper' or 'mean'")


def mse(pred: Tensor, target: Tensor, reduction: Reduction = "paper", weight: Tensor | None = None) -> Tensor:
    """VDSR's loss: 1/(2N) sum ||y - f(x)||^2 (``paper``), or the per-pixel mean squared error (``mean``).

    ``weight`` (N,) weights each sample's squared error (e.g. :func:`scale_balance_weights`).
    """
    sq = (pred - target).pow(2)
    return 0.5 * _reduce(sq, "paper", weight) if reduction == "paper" else _reduce(sq, reduction, weight)


def scale_balance_weights(bicubic: Tensor, target: Tensor, scale: Tensor) -> Tensor:
    """Per-sample weights for a batch of mixed scales: 1 / the batch's mean bicubic MSE at the sample's scale.

    With them each scale's loss is its error relative to bicubic, so every scale counts by its gain in dB: with
    plain MSE the x4 samples, whose residuals are several times the x2 ones, dominate the gradient. The weights
    are normalised to mean 1 and carry no gradient.
    """
    ref = (bicubic.detach().float() - target.detach().float()).pow(2).flatten(1).mean(1)
    weight = torch.empty_like(ref)
    for s in scale.unique():
        at = scale == s
        weight[at] = 1.0 / ref[at].mean().clamp_min(1e-12)
    return weight / weight.mean()


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


# ---- gradient-sensitive loss (DRN-GSL, arXiv 1809.07099; formulas are the spec's [proposal]) ----------------

MaskMode = Literal["soft", "hard"]
GradForm = Literal["grad_of_masked", "masked_grad"]
_GSL_EPS = 1e-12


def sobel_gradients(x: Tensor) -> Tensor:
    """Raw 3x3 Sobel responses (kornia, kernel [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], replicate border):
    (N, C, H, W) -> (N, C, 2, H, W), x then y."""
    from kornia.filters import spatial_gradient  # kornia loads in about a second: only when a GSL is used

    return spatial_gradient(x, mode="sobel", order=1, normalized=False)


def gradient_magnitude(x: Tensor) -> Tensor:
    """Sobel magnitude sqrt(Gx^2 + Gy^2 + 1e-12) per channel, averaged over channels: (N, C, H, W) -> (N, 1, H, W)."""
    g = sobel_gradients(x)
    return torch.sqrt(g.pow(2).sum(2) + _GSL_EPS).mean(1, keepdim=True)


def gradient_mask(target: Tensor, mode: MaskMode = "soft", quantile: float = 0.8) -> Tensor:
    """Edge mask (N, 1, H, W) in [0, 1] of the (detached) target's Sobel magnitude G.

    ``soft``: per-image min-max normalisation (G - min G) / (max G - min G + 1e-12).
    ``hard``: 1 where G exceeds the image's ``quantile``-quantile of G, else 0.
    """
    g = gradient_magnitude(target.detach().float())
    flat = g.flatten(1)
    if mode == "soft":
        lo, hi = flat.min(1).values, flat.max(1).values
        return ((g - lo.view(-1, 1, 1, 1)) / (hi - lo + _GSL_EPS).view(-1, 1, 1, 1)).to(target.dtype)
    if mode == "hard":
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"gradient_mask: quantile must be in (0, 1) (the spec uses 0.8), got {quantile!r}")
        q = torch.quantile(flat, quantile, dim=1)
        return (g > q.view(-1, 1, 1, 1)).to(target.dtype)
    raise ValueError(f"gradient_mask: mode must be 'soft' or 'hard', got {mode!r}")


def gradient_sensitive_loss(
    pred: Tensor,
    target: Tensor,
    low_weight: float = 1.0,
    l1_weight: float = 0.0,
    mask_mode: MaskMode = "soft",
    quantile: float = 0.8,
    grad_form: GradForm = "grad_of_masked",
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSL = mean|grad(M*pred) - grad(M*target)| + low_weight * mean|(1 - M)(pred - target)|
    + l1_weight * mean|pred - target|, with M = ``gradient_mask(target)`` (detached, so the prediction
    cannot game it) and grad the stacked Sobel x/y responses. ``grad_form="masked_grad"`` uses
    mean|M * (grad pred - grad target)| instead, which does not reward matching the mask's own edges.

    Returns the total and its parts ``high``, ``low``, ``l1`` (unweighted means), all with mean reduction.
    """
    if pred.shape != target.shape:
        raise ValueError(f"gradient_sensitive_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    mask = gradient_mask(target, mask_mode, quantile)
    if grad_form == "grad_of_masked":
        high = (sobel_gradients(mask * pred) - sobel_gradients(mask * target)).abs().mean()
    elif grad_form == "masked_grad":
        high = (mask.unsqueeze(2) * (sobel_gradients(pred) - sobel_gradients(target))).abs().mean()
    else:
        raise ValueError(
            f"gradient_sensitive_loss: grad_form must be 'grad_of_masked' or 'masked_grad', got {grad_form!r}"
        )
    diff = pred - target
    low = ((1 - mask) * diff).abs().mean()
    l1 = diff.abs().mean()
    total = high + low_weight * low + l1_weight * l1
    return total, {"high": high, "low": low, "l1": l1}


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
