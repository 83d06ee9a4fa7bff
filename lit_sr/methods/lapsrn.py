"""LapSRN (Lai et al., CVPR 2017) and MS-LapSRN (Lai et al., TPAMI 2018) on the LR Y channel.

Spec: shared/docs/methods/lapsrn.md. Both networks take the LR Y image (N, 1, h, w) in [0, 1] at its
native size and return a list of level outputs from coarse to fine (x2, x4, ...): each level adds a
predicted residual to a learned x2 upsampling (``BilinearUpsample2x``, trained) of the previous level.

Registered variants (``lit_sr.registry.build_registered(name, **overrides)``; every constructor argument
can be overridden by keyword):

- ``lapsrn_x2``, ``lapsrn_x4``: d = 10 per level, as released (407,441 / 814,242 parameters).
- ``lapsrn_x8``: d = 5 per level on 3 levels, as released (667,123 parameters).
- ``lapsrn_x4_small``: d = 3, 32 channels; quick CPU preset.
- ``ms_lapsrn_d5r2``, ``ms_lapsrn_d5r5``, ``ms_lapsrn_d5r8``: released MS-LapSRN models, SS skip
  (222,801 parameters each, for any R and scale).
- ``ms_lapsrn_d2r5`` (112,017), ``ms_lapsrn_d4r4`` (185,873): smaller shared blocks, SS skip.
- ``lapsrn_ns_d10r1``: MS-LapSRN with D = 10, R = 1 and no skip (407,441): weights shared across
  levels only.
- ``ms_lapsrn_small``: D = 2, R = 2, 32 channels; quick CPU preset.

Porting the official MatConvNet weights needs a different feature-upsampler alignment (padding 0, then
drop the last row and column); the ``padding=1, output_padding=1`` used here gives the same size shifted
by one pixel, which is fine for training from scratch.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from lit_sr.nn import BilinearUpsample2x, he_init_
from lit_sr.registry import register_model

__all__ = ["LapSRN", "MSLapSRN"]

LEAK = 0.2
INPUT_CONV_STD = 1e-3
SKIPS = ("NS", "DS", "SS")


def _num_levels(scale: int, what: str) -> int:
    """log2(scale) for a power-of-two scale >= 2, else a clear error naming ``what``."""
    if not isinstance(scale, int) or scale < 2 or scale & (scale - 1):
        raise ValueError(
            f"{what}: scale must be a power of two >= 2 (2, 4, 8, ...), got {scale!r}; "
            "for x3 run the x4 model and bicubic-resize its output"
        )
    return int(math.log2(scale))


def _check_lr(lr: Tensor, model: str) -> None:
    if lr.dim() != 4 or lr.shape[1] != 1:
        raise ValueError(
            f"{model} takes the LR Y channel as (N, 1, h, w), got shape {tuple(lr.shape)}; "
            "convert RGB with lit_sr.data.color.to_y first"
        )


def _feature_upsampler(channels: int, kernel: int, bias: bool) -> nn.ConvTranspose2d:
    """Stride-2 transposed conv giving exactly 2h x 2w for a 3x3 or 4x4 kernel."""
    if kernel == 3:
        return nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1, bias=bias)
    if kernel == 4:
        return nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=bias)
    raise ValueError(f"upconv_kernel must be 3 (released code) or 4 (paper text), got {kernel!r}")


def _init_input_conv(conv: nn.Conv2d) -> None:
    """N(0, 1e-3^2) weights and zero bias, as in the official code (not He)."""
    nn.init.normal_(conv.weight, 0.0, INPUT_CONV_STD)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _LapSRNLevel(nn.Module):
    """One pyramid level: d x (conv, LReLU), feature upsampler + LReLU, residual head, image upsampler."""

    def __init__(self, depth: int, channels: int, upconv_kernel: int, bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=bias),
                nn.LeakyReLU(LEAK, inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.upconv = _feature_upsampler(channels, upconv_kernel, bias)
        self.act = nn.LeakyReLU(LEAK, inplace=True)
        self.residual_conv = nn.Conv2d(channels, 1, 3, padding=1, bias=bias)
        self.img_up = BilinearUpsample2x(1)

    def forward(self, feat: Tensor, img: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.act(self.upconv(self.features(feat)))
        return feat, self.img_up(img) + self.residual_conv(feat)


class LapSRN(nn.Module):
    """LapSRN: log2(scale) levels, each with its own weights; returns the level outputs coarse to fine."""

    def __init__(
        self,
        scale: int = 4,
        depth_per_level: int = 10,
        channels: int = 64,
        upconv_kernel: Literal[3, 4] = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_levels = _num_levels(scale, "LapSRN")
        if depth_per_level < 1 or channels < 1:
            raise ValueError(
                f"LapSRN: depth_per_level and channels must be >= 1, got {depth_per_level} and {channels}"
            )
        self.scale = scale
        self.input_conv = nn.Conv2d(1, channels, 3, padding=1, bias=bias)
        self.input_act = nn.LeakyReLU(LEAK, inplace=True)
        self.levels = nn.ModuleList(
            _LapSRNLevel(depth_per_level, channels, upconv_kernel, bias) for _ in range(self.num_levels)
        )
        for level in self.levels:
            # He normal with sigma = sqrt(2 / (k*k*channels)) as in the official code; img_up stays bilinear.
            he_init_(level.features)
            he_init_(level.upconv)
            he_init_(level.residual_conv)
        _init_input_conv(self.input_conv)

    @property
    def supported_scales(self) -> tuple[int, ...]:
        """The scales this model outputs: 2, 4, ... up to ``scale`` (one per level)."""
        return tuple(2**i for i in range(1, self.num_levels + 1))

    def forward(self, lr: Tensor, scale: int | None = None) -> list[Tensor]:
        """Level outputs [x2, x4, ...] up to ``scale`` (default: all levels, up to ``self.scale``)."""
        _check_lr(lr, "LapSRN")
        levels = self.num_levels
        if scale is not None:
            if scale not in self.supported_scales:
                raise ValueError(
                    f"LapSRN x{self.scale} outputs scales {self.supported_scales}, got {scale!r}"
                )
            levels = _num_levels(scale, "LapSRN")
        feat, img = self.input_act(self.input_conv(lr)), lr
        outputs = []
        for level in self.levels[:levels]:
            feat, img = level(feat, img)
            outputs.append(img)
        return outputs


class MSLapSRN(nn.Module):
    """MS-LapSRN: one recursive block, feature upsampler, residual head and image upsampler shared
    across all levels and scales; ``forward(lr, scale)`` returns log2(scale) level outputs."""

    def __init__(
        self,
        depth: int = 5,
        recursions: int = 8,
        channels: int = 64,
        skip: Literal["NS", "DS", "SS"] = "SS",
        scales: tuple[int, ...] = (2, 4, 8),
        bias: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1 or recursions < 1 or channels < 1:
            raise ValueError(
                f"MSLapSRN: depth (D), recursions (R) and channels must be >= 1, "
                f"got {depth}, {recursions}, {channels}"
            )
        if skip not in SKIPS:
            raise ValueError(f"MSLapSRN: skip must be one of {SKIPS}, got {skip!r}")
        scales = tuple(scales)
        if not scales:
            raise ValueError("MSLapSRN: scales is empty; give e.g. (2, 4, 8)")
        for s in scales:
            _num_levels(s, "MSLapSRN scales")
        self.depth, self.recursions, self.skip = depth, recursions, skip
        self.scales = tuple(sorted(set(scales)))
        self.input_conv = nn.Conv2d(1, channels, 3, padding=1, bias=bias)
        layers: list[nn.Module] = []
        for _ in range(depth):  # pre-activation: LReLU -> conv (a fresh module each time)
            layers += [nn.LeakyReLU(LEAK), nn.Conv2d(channels, channels, 3, padding=1, bias=bias)]
        self.block = nn.Sequential(*layers)
        self.up_act = nn.LeakyReLU(LEAK)
        self.upconv = _feature_upsampler(channels, 3, bias)
        self.residual_conv = nn.Conv2d(channels, 1, 3, padding=1, bias=bias)
        self.img_up = BilinearUpsample2x(1)
        he_init_(self.block)
        he_init_(self.upconv)
        he_init_(self.residual_conv)
        _init_input_conv(self.input_conv)

    @property
    def supported_scales(self) -> tuple[int, ...]:
        return self.scales

    def depth_layers(self, scale: int) -> int:
        """Network depth at ``scale`` as counted in the paper: (D*R + 1) * L + 2."""
        return (self.depth * self.recursions + 1) * _num_levels(scale, "MSLapSRN.depth_layers") + 2

    def recursive_block(self, x0: Tensor) -> Tensor:
        """R recursions of the shared block from x0, with the NS / DS / SS local residual."""
        x = x0
        for _ in range(self.recursions):
            f = self.block(x)
            if self.skip == "NS":
                x = f
            elif self.skip == "DS":
                x = f + x
            else:
                x = f + x0
        return x

    def forward(self, lr: Tensor, scale: int | None = None) -> list[Tensor]:
        """Level outputs [x2, x4, ...] for ``scale`` (default: the largest of ``scales``)."""
        _check_lr(lr, "MSLapSRN")
        if scale is None:
            scale = self.scales[-1]
        if scale not in self.scales:
            raise ValueError(
                f"MSLapSRN was built for scales {self.scales}, got {scale!r}; "
                "for x3 run x4 and bicubic-resize the output"
            )
        feat, img = self.input_conv(lr), lr  # no activation after input_conv
        outputs = []
        for _ in range(_num_levels(scale, "MSLapSRN")):
            feat = self.upconv(self.up_act(self.recursive_block(feat)))  # no activation after upconv
            img = self.img_up(img) + self.residual_conv(feat)
            outputs.append(img)
        return outputs


# ---------------------------------------------------------------------------------------------------
# Registered variants: defaults are the named configuration; any argument can be overridden.


@register_model
def lapsrn_x2(
    depth_per_level: int = 10, channels: int = 64, upconv_kernel: Literal[3, 4] = 3, bias: bool = True
) -> LapSRN:
    """Released LapSRN x2: 1 level, d = 10 (407,441 parameters)."""
    return LapSRN(2, depth_per_level, channels, upconv_kernel, bias)


@register_model
def lapsrn_x4(
    depth_per_level: int = 10, channels: int = 64, upconv_kernel: Literal[3, 4] = 3, bias: bool = True
) -> LapSRN:
    """Released LapSRN x4: 2 levels, d = 10 (814,242 parameters; the paper's 812k counts weights only)."""
    return LapSRN(4, depth_per_level, channels, upconv_kernel, bias)


@register_model
def lapsrn_x8(
    depth_per_level: int = 5, channels: int = 64, upconv_kernel: Literal[3, 4] = 3, bias: bool = True
) -> LapSRN:
    """Released LapSRN x8: 3 levels, d = 5 (667,123 parameters)."""
    return LapSRN(8, depth_per_level, channels, upconv_kernel, bias)


@register_model
def lapsrn_x4_small(
    depth_per_level: int = 3, channels: int = 32, upconv_kernel: Literal[3, 4] = 3, bias: bool = True
) -> LapSRN:
    """Small LapSRN x4 for quick CPU runs: d = 3, 32 channels."""
    return LapSRN(4, depth_per_level, channels, upconv_kernel, bias)


@register_model
def ms_lapsrn_d5r2(
    depth: int = 5,
    recursions: int = 2,
    channels: int = 64,
    skip: Literal["NS", "DS", "SS"] = "SS",
    scales: tuple[int, ...] = (2, 4, 8),
    bias: bool = True,
) -> MSLapSRN:
    """Released MS-LapSRN D5R2 (222,801 parameters)."""
    return MSLapSRN(depth, recursions, channels, skip, scales, bias)


@register_model
def ms_lapsrn_d5r5(
    depth: int = 5,
    recursions: int = 5,
    channels: int = 64,
    skip: Literal["NS", "DS", "SS"] = "SS",
    scales: tuple[int, ...] = (2, 4, 8),
    bias: bool = True,
) -> MSLapSRN:
    """Released MS-LapSRN D5R5 (222,801 parameters)."""
    return MSLapSRN(depth, recursions, channels, skip, scales, bias)


@register_model
def ms_lapsrn_d5r8(
    depth: int = 5,
    recursions: int = 8,
    channels: int = 64,
    skip: Literal["NS", "DS", "SS"] = "SS",
    scales: tuple[int, ...] = (2, 4, 8),
    bias: bool = True,
) -> MSLapSRN:
    """Released MS-LapSRN D5R8, the paper's best model (222,801 parameters; 84 layers at x4)."""
    return MSLapSRN(depth, recursions, channels, skip, scales, bias)


@register_model
def ms_lapsrn_d2r5(
    depth: int = 2,
    recursions: int = 5,
    channels: int = 64,
    skip: Literal["NS", "DS", "SS"] = "SS",
    scales: tuple[int, ...] = (2, 4, 8),
    bias: bool = True,
) -> MSLapSRN:
    """MS-LapSRN D2R5 (112,017 parameters), the paper's smallest shared block."""
    return MSLapSRN(depth, recursions, channels, skip, scales, bias)


@register_model
def ms_lapsrn_d4r4(
    depth: int = 4,
    recursions: int = 4,
    channels: int = 64,
    skip: Literal["NS", "DS", "SS"] = "SS",
    scales: tuple[int, ...] = (2, 4, 8),
    bias: bool = True,
) -> MSLapSRN:
    """MS-LapSRN D4R4 (185,873 parameters)."""
    return MSLapSRN(depth, recursions, channels, skip, scales, bias)


@register_model
def lapsrn_ns_d10r1(
    depth: int = 10,
    recursions: int = 1,
    channels: int = 64,
    skip: Literal["NS", "DS", "SS"] = "NS",
    scales: tuple[int, ...] = (2, 4, 8),
    bias: bool = True,
) -> MSLapSRN:
    """MS-LapSRN NS-D10R1: weights shared across levels only, no recursion, no skip (407,441 parameters)."""
    return MSLapSRN(depth, recursions, channels, skip, scales, bias)


@register_model
def ms_lapsrn_small(
    depth: int = 2,
    recursions: int = 2,
    channels: int = 32,
    skip: Literal["NS", "DS", "SS"] = "SS",
    scales: tuple[int, ...] = (2, 4, 8),
    bias: bool = True,
) -> MSLapSRN:
    """Small MS-LapSRN for quick CPU runs: D = 2, R = 2, 32 channels."""
    return MSLapSRN(depth, recursions, channels, skip, scales, bias)
