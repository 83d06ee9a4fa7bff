"""MATLAB-compatible ``imresize(..., 'bicubic')`` on tensors.

Keys cubic kernel with a = -0.5; when downscaling the kernel is widened by 1/scale (antialiasing);
output size ``ceil(in * scale)``; symmetric (mirrored) borders. Written as two dense resampling
matrices, ``out = Mh @ x @ Mw^T``: exact, batched over leading dims, differentiable, on any device.
PIL, OpenCV and ``F.interpolate`` use a = -0.75 without antialiasing and cost tenths of a dB to
several dB, so every LR image in lit_sr comes from here.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def output_length(in_len: int, scale: float) -> int:
    """MATLAB's ``ceil(in * scale)``, robust to 1/3-style float error."""
    return max(1, math.ceil(in_len * scale - 1e-9))


@lru_cache(maxsize=512)
def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The (out_len, in_len) float64 matrix of MATLAB's ``contributions`` for one dimension."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel = lambda x: scale * _cubic(scale * x)  # noqa: E731
        kernel_width /= scale
    else:
        kernel = _cubic
    # 1-based output coordinates mapped into input space, as in MATLAB's imresize.
    x = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(x - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = kernel(x[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    columns = mirror[np.mod(indices - 1, 2 * in_len).astype(np.int64)]
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], columns.shape)
    np.add.at(matrix, (rows, columns), weights)
    return matrix


_TORCH_CACHE: dict[tuple, Tensor] = {}


def _matrix(in_len: int, out_len: int, scale: float, antialias: bool, like: Tensor) -> Tensor:
    key = (in_len, out_len, scale, antialias, like.dtype, like.device)
    m = _TORCH_CACHE.get(key)
    # A matrix made under inference mode (validation) cannot enter an autograd graph: make it again outside.
    if m is None or (m.is_inference() and not torch.is_inference_mode_enabled()):
        if len(_TORCH_CACHE) > 1024:
            _TORCH_CACHE.clear()
        m = torch.from_numpy(resize_weights(in_len, out_len, scale, antialias)).to(like.device, like.dtype)
        _TORCH_CACHE[key] = m
    return m


def imresize(
    x: Tensor,
    scale: float | tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> Tensor:
    """Resize the last two dims of float tensor ``x`` exactly like MATLAB ``imresize(x, scale, 'bicubic')``.

    Give ``scale`` (e.g. ``1/3`` or ``4``; a pair for H and W) or an output ``size`` (H, W), as in
    MATLAB. The result is not clipped or rounded. ``x`` may be any float dtype, any leading shape.
    """
    if not torch.is_floating_point(x):
        raise TypeError(
            f"imresize needs a float tensor in [0, 1], got {x.dtype}; convert with x.float() / 255"
        )
    if x.dim() < 2:
        raise ValueError(f"imresize needs at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if scale is None and size is None:
        raise ValueError("imresize needs a scale or an output size")
    if scale is not None:
        sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
        if sh <= 0 or sw <= 0:
            raise ValueError(f"imresize scale must be positive, got {scale}")
        oh, ow = (output_length(h, sh), output_length(w, sw)) if size is None else size
    else:
        oh, ow = size
        sh, sw = oh / h, ow / w
    out = x
    if (oh, sh) != (h, 1.0):
        out = torch.matmul(_matrix(h, oh, float(sh), antialias, x), out)
    if (ow, sw) != (w, 1.0):
        out = torch.matmul(out, _matrix(w, ow, float(sw), antialias, x).T)
    return out
