"""Inference helpers: tiled forward for large images, x8 self-ensemble, Y-only output back to RGB.

``fn`` is any callable from an (N, C, h, w) tensor to (N, C', h*scale, w*scale): a network, or a
method's forward wrapped in a lambda. Nothing here switches grad mode or device; callers do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lit_sr.data.color import rgb_to_ycbcr, ycbcr_to_rgb
from lit_sr.data.resize import imresize

Forward = Callable[[Tensor], Tensor]


def min_tile(overlap: int) -> int:
    """The smallest tile that keeps a 32-px core between its two ``overlap`` margins (what exact tiling needs)."""
    return 2 * overlap + 32


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Split one axis into tiles: (tile_start, tile_end, core_start, core_end) per tile.

    Tiles have size ``min(tile, length)`` and step ``tile - 2 * overlap`` (the last one is moved back to
    end at ``length``). Neighbouring cores meet in the middle of the tiles' overlap, so every core
    pixel is at least ``overlap`` pixels away from any tile edge that is not an image edge.
    """
    size = min(tile, length)
    if size == length:
        return [(0, length, 0, length)]
    step = size - 2 * overlap
    count = math.ceil((length - size) / step) + 1
    starts = sorted({min(i * step, length - size) for i in range(count)})
    bounds = [0]
    for left, right in zip(starts[:-1], starts[1:]):
        bounds.append((right + left + size) // 2)  # middle of the overlap [right, left + size)
    bounds.append(length)
    return [(s, s + size, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def tiled_forward(fn: Forward, x: Tensor, tile: int, overlap: int, scale: int = 1) -> Tensor:
    """Run ``fn`` over overlapping ``tile`` x ``tile`` crops of ``x`` (N, C, H, W) and stitch the results.

    Each output pixel comes from the tile where it lies farthest from a tile edge, i.e. at least
    ``overlap`` input pixels inside it. With ``overlap`` >= the network's receptive-field radius
    (20 for a 20-layer 3x3 net) the result equals ``fn(x)`` up to float rounding, at the memory cost
    of one tile. ``tile`` and ``overlap`` count input pixels; ``scale`` is fn's output/input size ratio
    (1 for networks working on the bicubic-upsampled image). Inputs no larger than ``tile`` on both
    sides go through one call.
    """
    if tile <= 0 or overlap < 0 or 2 * overlap >= tile:
        raise ValueError(
            f"tiled_forward needs tile > 2 * overlap >= 0, got tile={tile}, overlap={overlap}; "
            f"use a larger tile or a smaller overlap"
        )
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"tiled_forward scale must be a positive integer, got {scale}")
    if x.dim() != 4:
        raise ValueError(f"tiled_forward expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    scale = int(scale)
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return fn(x)

    out: Tensor | None = None
    for ty0, ty1, cy0, cy1 in tile_spans(height, tile, overlap):
        for tx0, tx1, cx0, cx1 in tile_spans(width, tile, overlap):
            y = fn(x[..., ty0:ty1, tx0:tx1].contiguous())
            expected = ((ty1 - ty0) * scale, (tx1 - tx0) * scale)
            if y.dim() != 4 or tuple(y.shape[-2:]) != expected or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"tiled_forward: fn returned shape {tuple(y.shape)} for a tile of shape "
                    f"{tuple(x[..., ty0:ty1, tx0:tx1].shape)}, expected spatial size {expected} "
                    f"(scale={scale}); pass the scale the network really upsamples by"
                )
            if out is None:
                out = y.new_empty(y.shape[0], y.shape[1], height * scale, width * scale)
            out[..., cy0 * scale : cy1 * scale, cx0 * scale : cx1 * scale] = y[
                ...,
                (cy0 - ty0) * scale : (cy1 - ty0) * scale,
                (cx0 - tx0) * scale : (cx1 - tx0) * scale,
            ]
    assert out is not None
    return out


def _d4(x: Tensor, k: int, flip: bool) -> Tensor:
    """One of the 8 D4 transforms of the last two dims: optional horizontal flip, then k quarter turns."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _d4_inverse(y: Tensor, k: int, flip: bool) -> Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if flip else y


def self_ensemble(fn: Forward, x: Tensor) -> Tensor:
    """x8 geometric self-ensemble: mean of ``inverse_t(fn(t(x)))`` over the 8 flips/rotations t.

    Non-square inputs are fine as long as ``fn`` accepts the transposed size. Combine with tiling as
    ``self_ensemble(lambda t: tiled_forward(net, t, 96, 20), x)``.
    """
    total: Tensor | None = None
    for flip in (False, True):
        for k in range(4):
            y = _d4_inverse(fn(_d4(x, k, flip)), k, flip)
            total = y if total is None else total + y
    assert total is not None
    return total / 8


def y_to_rgb_sr(sr_y: Tensor, lr_rgb: Tensor, scale: float) -> Tensor:
    """RGB super-resolved image from a Y-only network output and the LR image it came from.

    ``sr_y`` (..., 1, H, W) is the network's Y / 255; Cb and Cr are the LR image's, upsampled by
    MATLAB bicubic (the usual display convention of Y-only SR papers). The result is clipped to [0, 1].
    A one-channel ``lr_rgb`` is a grayscale image: its Y is the image, so ``sr_y`` is returned as is.
    """
    if lr_rgb.shape[-3] == 1:
        return sr_y
    if sr_y.shape[-3] != 1:
        raise ValueError(f"y_to_rgb_sr expects a one-channel Y image, got shape {tuple(sr_y.shape)}")
    cbcr = imresize(rgb_to_ycbcr(lr_rgb)[..., 1:3, :, :], scale=scale)
    if cbcr.shape[-2:] != sr_y.shape[-2:]:
        raise ValueError(
            f"y_to_rgb_sr: the LR image {tuple(lr_rgb.shape[-2:])} upsampled by {scale} is "
            f"{tuple(cbcr.shape[-2:])}, but sr_y is {tuple(sr_y.shape[-2:])}; pass the LR image and "
            f"scale that produced sr_y"
        )
    ycbcr = torch.cat([sr_y.to(cbcr.dtype), cbcr], dim=-3)
    return ycbcr_to_rgb(ycbcr).clamp(0.0, 1.0)
