"""The single place where training LR is made: batched MATLAB bicubic on the training device.

The DataLoader ships only uint8 HR crops; :func:`degrade` (called from
``SRMethod.on_after_batch_transfer``) turns them into float patches and their LR / ILR / pyramid
targets; ``SRMethod.on_fit_start`` first checks with :func:`check_patch` that the method's needs can be
cut. Every training method builds on the geometry and keys below.

Crop geometry (shared with ``datasets.TrainPatches``)
----------------------------------------------------
For scales S (e.g. {2, 3, 4}) and patch size P:

* crop size ``Hc = Wc = roundup(P + 2 * 4 * max(S), lcm(S))`` (:func:`crop_size`), common to every
  scale of the data module so samples of different scales stack into one tensor. Hc is a multiple
  of every scale, so a crop of scale s has an exact LR of Hc / s pixels.
* the crop origin in the augmented, modcropped image is a multiple of the sample's scale s, so the
  crop's LR grid is the image's LR grid. The patch lies anywhere in that image; where the crop's margin
  reaches past it, the crop holds the image mirrored (symmetric padding, MATLAB imresize's own boundary
  rule), so an image needs only P + max(S) - 1 pixels a side (:func:`min_train_side`), not Hc.
* the patch sits inside the crop at offset ``o = s * ((Hc - P) // (2 s))`` (:func:`patch_offset`):
  centred, a multiple of s, and at least 4 s from every edge. Bicubic downscaling by s reads HR
  pixels within 2 s of each LR pixel, the x s upscale reads 2 LR pixels around each ILR pixel, so
  4 s of margin make the patch's LR, ILR and pyramid equal (to float rounding) the same window of
  those computed from the whole image: the crop's mirrored borders never reach the patch.
* LR targets need P divisible by s (LR window ``o/s : (o+P)/s``); a pyramid needs s = 2^L and
  level k (1/2^k of HR) uses the window ``o/2^k : (o+P)/2^k``.

Batch from the DataLoader (``TrainPatches``)
--------------------------------------------
``hr`` uint8 (B, 3, Hc, Wc): RGB crops, grey images replicated to 3 channels;
``scale`` int64 (B,); ``gray`` bool (B,): True for samples from one-channel images.

Batch after :func:`degrade`: a list of groups (float32 in [0, 1], C = 1 for ``channels="y"``, 3 for ``"rgb"``)
-----------------------------------------------------------------------------------------------------
A group is a dict whose tensors share their shapes: ``hr`` (n, C, P, P) and ``scale`` int64 (n,) always;
``lr`` (n, C, P/s, P/s) = imresize(hr_crop, 1/s) window, if "lr" in needs;
``ilr`` (n, C, P, P) = imresize(lr_crop, s) window, if "ilr" in needs;
``pyramid`` list of L tensors, coarse to fine: imresize(hr_crop, 1/2^(L-1)), ..., imresize(hr_crop, 1/2),
hr, with L = log2(s), if "pyramid" in needs.
Groups are ascending in scale with one scale each, except that a batch needing only ``ilr`` (whose
tensors have the same size at every scale) is one group in the original sample order, its ``scale``
per sample. Y channel: a grey sample is its own Y (channel 0, full range); RGB samples go through
MATLAB ``rgb2ycbcr`` (``color.rgb_to_y``). With ``channels="rgb"`` a grey sample is replicated to RGB.

How: samples are grouped by scale; each target is the patch window of ``imresize`` applied to the
whole crop, computed directly with the rows of imresize's own weight matrices that the window needs
(:func:`window_bands`), so nothing outside the window is resized. The tests check every target
against the same window of imresize on the whole augmented image (within 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import reduce

import numpy as np
import torch
from torch import Tensor

from lit_sr.data.color import rgb_to_y
from lit_sr.data.resize import output_length, resize_weights

MARGIN = 4  # HR margin around the patch, in units of the scale
MODES = ("per_batch", "mixed", "split")
NEEDS = ("hr", "lr", "ilr", "pyramid")


def crop_size(patch_size: int, scales: Iterable[int]) -> int:
    """The HR crop side shipped by the DataLoader: roundup(P + 2 * 4 * max(S), lcm(S))."""
    scales = [int(s) for s in scales]
    step = reduce(math.lcm, scales, 1)
    need = patch_size + 2 * MARGIN * max(scales)
    return -(-need // step) * step


def min_train_side(patch_size: int, scales: Iterable[int]) -> int:
    """The smallest training image side: a patch fits after modcrop at every scale (the margin is mirrored)."""
    return patch_size + max(int(s) for s in scales) - 1


def patch_offset(crop: int, patch_size: int, scale: int) -> int:
    """Patch offset in a crop of side ``crop``: centred, a multiple of ``scale``, >= 4*scale from edges.

    Raises when the crop is too small for that margin.
    """
    offset = scale * ((crop - patch_size) // (2 * scale))
    if offset < MARGIN * scale or crop - patch_size - offset < MARGIN * scale:
        raise ValueError(
            f"crop of {crop} pixels is too small for a {patch_size}-pixel patch with {MARGIN * scale} "
            f"pixels of margin at x{scale}; make crops with crop_size(patch_size, scales)"
        )
    return offset


def pyramid_levels(scale: int) -> int:
    """L = log2(scale) for a power-of-two scale; ValueError otherwise."""
    if scale < 2 or scale & (scale - 1):
        raise ValueError(
            f"a Laplacian pyramid needs a power-of-two scale (2, 4, 8, ...), got x{scale}; "
            f"remove x{scale} from data.scales for this method"
        )
    return scale.bit_length() - 1


def check_patch(patch_size: int, scales: Sequence[int], needs: Iterable[str]) -> None:
    """Raise one clear error when ``needs`` cannot be cut from ``patch_size`` at ``scales``."""
    needs = set(needs)
    unknown = needs - set(NEEDS)
    if unknown:
        raise ValueError(f"unknown batch needs {sorted(unknown)}; choose from {list(NEEDS)}")
    scales = sorted({int(s) for s in scales})
    if "pyramid" in needs:
        for s in scales:
            pyramid_levels(s)
    if needs & {"lr", "pyramid"}:
        bad = [s for s in scales if patch_size % s]
        if bad:
            fix = math.lcm(*scales)
            example = max(fix, patch_size // fix * fix)
            raise ValueError(
                f"data.patch_size={patch_size} is not divisible by scale(s) {bad}, so the LR patch would "
                f"not align; use a multiple of {fix} (e.g. {example}) for data.patch_size"
            )


Band = tuple[int, int, Tensor]  # input pixels [start, stop) and the (rows, stop - start) weights
_BANDS: dict[tuple, list[Band]] = {}


def window_bands(
    crop: int, steps: tuple[float, ...], offset: int, size: int, dtype: torch.dtype, device: torch.device
) -> list[Band]:
    """One axis of a chain of MATLAB imresize steps (e.g. ``(1/s, s)`` for ILR) on a crop, cut to a window.

    The output pixels ``offset .. offset+size`` of the chain, split into bands of about 16 outputs;
    each band ``(start, stop, A)`` gives its outputs as ``A @ x[start:stop]``. The matrices are rows of
    ``resize_weights`` (the ones ``imresize`` uses) composed in float64, so the result is imresize's;
    banding only skips the zero weights (a 2-3x saving on CPU). Cached per geometry and device.
    """
    key = (crop, steps, offset, size, dtype, device)
    bands = _BANDS.get(key)
    if bands is None:
        m, n = np.eye(crop), crop
        for step in steps:
            out = output_length(n, step)
            m = resize_weights(n, out, float(step)) @ m
            n = out
        m = m[offset : offset + size]
        edges = np.linspace(0, size, max(1, size // 16) + 1).round().astype(int)
        bands = []
        for r0, r1 in zip(edges[:-1], edges[1:]):
            used = np.flatnonzero(np.abs(m[r0:r1]).max(axis=0) > 0)
            c0, c1 = int(used[0]), int(used[-1]) + 1
            bands.append((c0, c1, torch.from_numpy(np.ascontiguousarray(m[r0:r1, c0:c1])).to(device, dtype)))
        if len(_BANDS) > 512:
            _BANDS.clear()
        _BANDS[key] = bands
    return bands


def _resize_window(x: Tensor, bands: list[Band], lo: int) -> Tensor:
    """Apply one axis's bands to the rows, then to the columns, of ``x`` (whose pixel 0 is crop pixel lo)."""
    rows = torch.cat([a @ x[..., c0 - lo : c1 - lo, :] for c0, c1, a in bands], dim=-2)
    return torch.cat([rows[..., c0 - lo : c1 - lo] @ a.T for c0, c1, a in bands], dim=-1)


def _degrade_group(
    hr: Tensor, gray: Tensor, idx: Tensor | None, s: int, needs: set[str], patch_size: int, channels: str
) -> dict:
    """Float patches and targets of the uint8 crops ``hr[idx]`` (all when idx is None) of one scale.

    Each target is the patch window of imresize applied to the whole crop (see :func:`window_bands`);
    only the crop pixels some target reads are converted.
    """
    hc, wc = hr.shape[-2:]
    if hc != wc or hc % s:
        raise ValueError(f"HR crops must be square with a side divisible by x{s}, got {hc}x{wc}")
    o, p = patch_offset(hc, patch_size, s), patch_size
    plan: dict[str, tuple[tuple[float, ...], int, int]] = {}
    if "lr" in needs:
        plan["lr"] = ((1.0 / s,), o // s, p // s)
    if "ilr" in needs:
        plan["ilr"] = ((1.0 / s, float(s)), o, p)
    levels = pyramid_levels(s) if "pyramid" in needs else 0
    for k in range(levels - 1, 0, -1):
        plan[f"level{k}"] = ((1.0 / 2**k,), o // 2**k, p // 2**k)
    ops = {key: window_bands(hc, *spec, torch.float32, hr.device) for key, spec in plan.items()}
    lo = min([o] + [c0 for bands in ops.values() for c0, _, _ in bands])
    hi = max([o + p] + [c1 for bands in ops.values() for _, c1, _ in bands])

    x = hr[..., lo:hi, lo:hi]
    if idx is not None:
        x, gray = x.index_select(0, idx), gray.index_select(0, idx)
    x = x.float().div_(255.0)
    if channels == "y":
        y = rgb_to_y(x)
        x = torch.where(gray.view(-1, 1, 1, 1), x[:, :1], y) if bool(gray.any()) else y
    # channels == "rgb": grey samples already arrive replicated to three channels
    out = {"hr": x[..., o - lo : o - lo + p, o - lo : o - lo + p].contiguous()}
    targets = {key: _resize_window(x, bands, lo) for key, bands in ops.items()}
    if "lr" in needs:
        out["lr"] = targets["lr"]
    if "ilr" in needs:
        out["ilr"] = targets["ilr"]
    if levels:
        out["pyramid"] = [targets[f"level{k}"] for k in range(levels - 1, 0, -1)] + [out["hr"]]
    return out


def degrade(
    hr: Tensor, scale: Tensor, gray: Tensor, needs: Iterable[str], patch_size: int, channels: str = "y"
) -> list[dict]:
    """uint8 HR crops (N, 3, Hc, Wc) -> the list of float32 groups described in the module doc."""
    needs = set(needs)
    if hr.dtype != torch.uint8 or hr.dim() != 4 or hr.shape[1] != 3:
        raise ValueError(f"degrade expects uint8 HR crops (N, 3, Hc, Wc), got {hr.dtype} {tuple(hr.shape)}")
    if channels not in ("y", "rgb"):
        raise ValueError(f"unknown channels {channels!r}; use 'y' or 'rgb'")
    scale = scale.to(hr.device, torch.int64)
    present = sorted(set(scale.tolist()))  # their patch was checked once, at fit start (check_patch)
    gray = gray.to(hr.device, torch.bool)
    if len(present) == 1:
        return [dict(_degrade_group(hr, gray, None, present[0], needs, patch_size, channels), scale=scale)]
    groups = []
    for s in present:
        idx = (scale == s).nonzero().squeeze(1)
        out = _degrade_group(hr, gray, idx, s, needs, patch_size, channels)
        groups.append((idx, dict(out, scale=torch.full((len(idx),), s, dtype=torch.int64, device=hr.device))))
    if needs - {"ilr"}:
        return [group for _, group in groups]
    merged: dict = {"scale": scale}  # ILR and HR patches have one size at every scale: one group
    for key in ("hr", "ilr"):
        if key in groups[0][1]:
            first = groups[0][1][key]
            buf = first.new_empty((len(scale), *first.shape[1:]))
            for idx, group in groups:
                buf.index_copy_(0, idx, group[key])
            merged[key] = buf
    return [merged]
