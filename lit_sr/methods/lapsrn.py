"""LapSRN (Lai et al., CVPR 2017) and MS-LapSRN (Lai et al., TPAMI 2018) on the LR Y channel.

Spec: shared/docs/methods/lapsrn.md. Both networks (``LapSRNNet``, ``MSLapSRNNet``) take the LR Y image
(N, 1, h, w) in [0, 1] at its native size and return a list of level outputs from coarse to fine (x2, x4,
...): each level adds a predicted residual to a learned x2 upsampling (``BilinearUpsample2x``, trained) of
the previous level. The LightningModules ``LapSRN`` and ``MSLapSRN`` train them (see ``PyramidSRMethod``).

Registered variants (``lit_sr.registry.build_registered(name, **overrides)``; keyword arguments override
the variant's defaults, all but the scale a LapSRN variant is named by):

- ``lapsrn_x2``, ``lapsrn_x4``: d = 10 per level, as released (407,441 / 814,242 parameters).
- ``lapsrn_x8``: d = 5 per level on 3 levels, as released (667,123 parameters).
- ``lapsrn_x4_small``: d = 3, 32 channels; quick CPU preset.
- ``ms_lapsrn_d5r2``, ``ms_lapsrn_d5r5``, ``ms_lapsrn_d5r8``: released MS-LapSRN models, SS skip
  (222,801 parameters each, for any R and scale).
- ``ms_lapsrn_d2r5`` (112,017), ``ms_lapsrn_d4r4`` (185,873): smaller shared blocks, SS skip.
- ``lapsrn_ns_d10r1``: MS-LapSRN with D = 10, R = 1 and no skip (407,441): weights shared across
  levels only.
- ``ms_lapsrn_small``: D = 2, R = 2, 32 channels; quick CPU preset.

Training (``experiments/lapsrn/``, ``experiments/ms_lapsrn/``): Charbonnier (eps 1e-3) at every level
against the HR image MATLAB-bicubic-downsampled to that level (the DataModule's ``pyramid``), with the
official reduction (per-sample pixel sum, batch mean; lr 1e-5 is tuned for it); SGD momentum 0.9, biases
at 0.1x the lr (a stage ``param_groups`` rule). LapSRN trains one scale (``per_batch``); MS-LapSRN splits
every batch over {2, 4, 8} (``split``) and sums the losses over all scales and levels. x3 = the x4
pyramid, then MATLAB bicubic to the x3 size.

Porting the official MatConvNet weights needs a different feature-upsampler alignment (padding 0, then
drop the last row and column); the ``padding=1, output_padding=1`` used here gives the same size shifted
by one pixel, which is fine for training from scratch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from lit_sr.data.resize import imresize
from lit_sr.losses import Reduction, charbonnier
from lit_sr.methods.base import SRMethod
from lit_sr.nn import BilinearUpsample2x, he_init_
from lit_sr.registry import register_model
from lit_sr.typed import check_arguments

__all__ = [
    "LaplacianPyramid",
    "LapSRN",
    "LapSRNNet",
    "MSLapSRN",
    "MSLapSRNNet",
    "PerLevelPyramid",
    "PyramidMethod",
    "PyramidLevel",
    "PyramidSRMethod",
]

log = logging.getLogger(__name__)

LEAK = 0.2
X3_METHOD = "the x4 pyramid's output, MATLAB-bicubic-resized to the x3 size"
INPUT_CONV_STD = 1e-3


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


class PyramidLevel(nn.Module):
    """One level of a per-level pyramid (LapSRN, IRLapSRN): ``features`` (the level's feature branch: conv
    stack or IRBs), feature upsampler + LReLU, residual head; the image upsampler of the image branch."""

    def __init__(
        self, features: nn.Module, channels: int, upconv_kernel: int, bias: bool, slope: float = LEAK
    ) -> None:
        super().__init__()
        self.features = features
        self.upconv = _feature_upsampler(channels, upconv_kernel, bias)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.residual_conv = nn.Conv2d(channels, 1, 3, padding=1, bias=bias)
        self.img_up = BilinearUpsample2x(1)

    def forward(self, feat: Tensor, img: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.act(self.upconv(self.features(feat)))
        return feat, self.img_up(img) + self.residual_conv(feat)


class LaplacianPyramid(nn.Module):
    """The progressive x2 pyramid every LapSRN-family network shares.

    ``forward(lr, scale)`` checks the LR Y input, embeds it (``embed``), then runs log2(scale) levels
    (``level_step(i, feat, img) -> (feat, img)``: the level's features and out_l = up(out_{l-1}) + residual_l)
    and returns the level outputs coarse to fine. Subclasses provide ``embed``, ``level_step`` and
    ``supported_scales``; ``model_name`` and ``scale_error`` word the errors.
    """

    @property
    def model_name(self) -> str:
        """How errors name the network: its class name without ``Net`` (``LapSRN``, ``MSLapSRN``)."""
        return type(self).__name__.removesuffix("Net")

    @property
    def supported_scales(self) -> tuple[int, ...]:
        raise NotImplementedError

    def embed(self, lr: Tensor) -> Tensor:
        raise NotImplementedError

    def level_step(self, index: int, feat: Tensor, img: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def scale_error(self, scale: object) -> str:
        return f"{self.model_name} outputs scales {self.supported_scales}, got {scale!r}"

    def forward(self, lr: Tensor, scale: int | None = None) -> list[Tensor]:
        """Level outputs [x2, x4, ...] up to ``scale`` (default: the largest supported scale)."""
        _check_lr(lr, self.model_name)
        if scale is None:
            scale = max(self.supported_scales)
        if scale not in self.supported_scales:
            raise ValueError(self.scale_error(scale))
        feat, img = self.embed(lr), lr
        outputs = []
        for index in range(_num_levels(scale, self.model_name)):
            feat, img = self.level_step(index, feat, img)
            outputs.append(img)
        return outputs


class PerLevelPyramid(LaplacianPyramid):
    """A pyramid with its own weights at every level (LapSRN, IRLapSRN): input conv + LReLU, then one
    ``PyramidLevel`` per x2 step around the feature branch ``make_features()`` builds; He init (sigma =
    sqrt(2 / fan_in)) everywhere except ``img_up`` (bilinear) and, with ``input_init="lapsrn"``, the input
    conv (N(0, 1e-3^2))."""

    def __init__(
        self,
        scale: int,
        channels: int,
        upconv_kernel: int,
        bias: bool,
        make_features: Callable[[], nn.Module],
        slope: float = LEAK,
        input_init: Literal["lapsrn", "he"] = "lapsrn",
    ) -> None:
        super().__init__()
        check_arguments(PerLevelPyramid.__init__, locals(), f"{self.model_name}.")
        self.num_levels = _num_levels(scale, self.model_name)
        self.scale = scale
        self.input_conv = nn.Conv2d(1, channels, 3, padding=1, bias=bias)
        self.input_act = nn.LeakyReLU(slope, inplace=True)
        self.levels = nn.ModuleList(
            PyramidLevel(make_features(), channels, upconv_kernel, bias, slope) for _ in range(self.num_levels)
        )
        for level in self.levels:
            he_init_(level.features)
            he_init_(level.upconv)
            he_init_(level.residual_conv)
        if input_init == "lapsrn":
            _init_input_conv(self.input_conv)
        else:
            he_init_(self.input_conv)

    @property
    def supported_scales(self) -> tuple[int, ...]:
        """The scales this model outputs: 2, 4, ... up to ``scale`` (one per level)."""
        return tuple(2**i for i in range(1, self.num_levels + 1))

    def scale_error(self, scale: object) -> str:
        return f"{self.model_name} x{self.scale} outputs scales {self.supported_scales}, got {scale!r}"

    def embed(self, lr: Tensor) -> Tensor:
        return self.input_act(self.input_conv(lr))

    def level_step(self, index: int, feat: Tensor, img: Tensor) -> tuple[Tensor, Tensor]:
        return self.levels[index](feat, img)


class LapSRNNet(PerLevelPyramid):
    """LapSRN: log2(scale) levels, each with its own d x (3x3 conv, LReLU) stack; outputs coarse to fine."""

    def __init__(
        self,
        scale: int = 4,
        depth_per_level: PositiveInt = 10,
        channels: PositiveInt = 64,
        upconv_kernel: Literal[3, 4] = 3,
        bias: bool = True,
    ) -> None:
        check_arguments(LapSRNNet.__init__, locals(), "LapSRNNet.")

        def conv_stack() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(depth_per_level):
                layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=bias), nn.LeakyReLU(LEAK, inplace=True)]
            return nn.Sequential(*layers)

        super().__init__(scale, channels, upconv_kernel, bias, conv_stack)


class MSLapSRNNet(LaplacianPyramid):
    """MS-LapSRN: one recursive block, feature upsampler, residual head and image upsampler shared
    across all levels and scales; ``forward(lr, scale)`` returns log2(scale) level outputs."""

    def __init__(
        self,
        depth: PositiveInt = 5,
        recursions: PositiveInt = 8,
        channels: PositiveInt = 64,
        skip: Literal["NS", "DS", "SS"] = "SS",
        scales: tuple[int, ...] = (2, 4, 8),
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_arguments(MSLapSRNNet.__init__, locals(), "MSLapSRNNet.")
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

    def scale_error(self, scale: object) -> str:
        return (
            f"MSLapSRN was built for scales {self.scales}, got {scale!r}; "
            "for x3 run x4 and bicubic-resize the output"
        )

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

    def embed(self, lr: Tensor) -> Tensor:
        return self.input_conv(lr)  # no activation after input_conv

    def level_step(self, index: int, feat: Tensor, img: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.upconv(self.up_act(self.recursive_block(feat)))  # no activation after upconv
        return feat, self.img_up(img) + self.residual_conv(feat)


# ---------------------------------------------------------------------------------------------------
# Registered variants, timm style, one line each: keyword arguments override the variant's defaults;
# a scale in the variant's name is passed outside them, so overriding it is an error.


@register_model  # Released LapSRN x2: 1 level, d = 10 (407,441 parameters)
def lapsrn_x2(**kw: Any) -> LapSRNNet: return LapSRNNet(scale=2, **{"depth_per_level": 10, **kw})
@register_model  # Released LapSRN x4: 2 levels, d = 10 (814,242 parameters; the paper's 812k counts weights only)
def lapsrn_x4(**kw: Any) -> LapSRNNet: return LapSRNNet(scale=4, **{"depth_per_level": 10, **kw})
@register_model  # Released LapSRN x8: 3 levels, d = 5 (667,123 parameters)
def lapsrn_x8(**kw: Any) -> LapSRNNet: return LapSRNNet(scale=8, **{"depth_per_level": 5, **kw})
@register_model  # Small LapSRN x4 for quick CPU runs: d = 3, 32 channels (74,914 parameters)
def lapsrn_x4_small(**kw: Any) -> LapSRNNet: return LapSRNNet(scale=4, **{"depth_per_level": 3, "channels": 32, **kw})
@register_model  # Released MS-LapSRN D5R2 (222,801 parameters)
def ms_lapsrn_d5r2(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 5, "recursions": 2, **kw})
@register_model  # Released MS-LapSRN D5R5 (222,801 parameters)
def ms_lapsrn_d5r5(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 5, "recursions": 5, **kw})
@register_model  # Released MS-LapSRN D5R8, the paper's best model (222,801 parameters; 84 layers at x4)
def ms_lapsrn_d5r8(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 5, "recursions": 8, **kw})
@register_model  # MS-LapSRN D2R5 (112,017 parameters), the paper's smallest shared block
def ms_lapsrn_d2r5(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 2, "recursions": 5, **kw})
@register_model  # MS-LapSRN D4R4 (185,873 parameters)
def ms_lapsrn_d4r4(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 4, "recursions": 4, **kw})
@register_model  # MS-LapSRN NS-D10R1: weights shared across levels only, no recursion, no skip (407,441 parameters)
def lapsrn_ns_d10r1(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 10, "recursions": 1, "skip": "NS", **kw})
@register_model  # Small MS-LapSRN for quick CPU runs: D = 2, R = 2, 32 channels (28,369 parameters)
def ms_lapsrn_small(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 2, "recursions": 2, "channels": 32, **kw})


# ---------------------------------------------------------------------------------------------------
# Training: the LightningModules.


class PyramidMethod(SRMethod):
    """What every LapSRN-family method shares: a ``LaplacianPyramid`` network of the right type, its scales
    (the pyramid's, plus x3 through x4), ``sr_forward`` (the finest level; x3 runs the x4 pyramid, then MATLAB
    bicubic to the x3 size, as ``SR_LapSRN.m``; logged once) and the Charbonnier options ``eps`` and
    ``reduction``. Subclasses add the loss (``PyramidSRMethod`` for LapSRN / MS-LapSRN, ``IRLapSRN``)."""

    batch_needs = ("lr", "pyramid")

    def __init__(
        self,
        variant: str,
        eps: PositiveFloat = 1e-3,
        reduction: Reduction = "paper",
        supported_scales: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            variant: registered network name; ``net`` (in kwargs) overrides its arguments.
            eps: Charbonnier epsilon (1e-3 in the papers; change it only for ablations).
            reduction: ``paper`` (per-sample pixel sum, batch mean) or ``mean`` (per pixel).
            supported_scales: fixed by the network; must stay unset.
            kwargs: ``SRMethod`` arguments (``net``, ``stages``, ``monitor_scales``, ...).

        The typed arguments are checked by jsonargparse (a config) or ``SRMethod`` (a Python call).
        """
        if supported_scales is not None:
            raise ValueError(
                f"model.init_args.supported_scales={list(supported_scales)} cannot be set for "
                f"{type(self).__name__}: the network variant fixes its scales; remove the key"
            )
        super().__init__(variant=variant, supported_scales=(), **kwargs)
        self.eps = float(eps)
        self.reduction: Reduction = reduction
        self._x3_logged = False

    @property
    def supported_scales(self) -> list[int]:
        """The network's pyramid scales, plus x3 when it has an x4 output."""
        scales = set(self.net.supported_scales)
        if 4 in scales:
            scales.add(3)
        return sorted(scales)

    @property
    def trainable_scales(self) -> list[int]:
        """The pyramid's own scales (x3 is evaluated through x4, never trained)."""
        return list(self.net.supported_scales)

    def sr_forward(self, lr: Tensor, scale: int) -> Tensor:
        if scale == 3:
            if not self._x3_logged:
                log.info("%s x3: %s", type(self).__name__, X3_METHOD)
                self._x3_logged = True
            h, w = lr.shape[-2:]
            return imresize(self.net(lr, 4)[-1], size=(3 * h, 3 * w))
        return self.net(lr, scale)[-1]

    def _charbonnier(self, pred: Tensor, target: Tensor) -> Tensor:
        return charbonnier(pred, target, self.eps, self.reduction)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.logger is not None and 3 in self.supported_scales:  # the run's config says how x3 is made
            self.logger.log_hyperparams({"x3_method": X3_METHOD})


class PyramidSRMethod(PyramidMethod):
    """Training shared by LapSRN and MS-LapSRN: Charbonnier at every level of every scale in the batch.

    ``compute_loss`` takes the list of groups, one per scale (``per_batch``: one group; ``split``: one per
    scale). Level l (1 = coarsest, output x2^l) of scale S is the loss part
    ``x<S>_level<l>``, and the total is the sum of those parts. Each part is ``n_S / N * charbonnier``
    (n_S samples of scale S in a batch of N): with the ``paper`` reduction the total is then the sum over
    all pixels of all levels and scales divided by N, the objective of the official MatConvNet trainer (one
    graph for the whole batch, gradients divided by the batch size), so lr 1e-5 means the same for any
    split. ``bicubic_x<S>`` (not in the total) is the same loss for MATLAB bicubic at the finest level: a
    run that learns gets its finest-level part below it.
    """

    def __init__(self, variant: str, coarse_level_weight: NonNegativeFloat = 1.0, **kwargs: Any) -> None:
        """
        Args:
            variant: registered network name; ``net`` (in kwargs) overrides its arguments.
            coarse_level_weight: loss weight of every level but the finest (1 in the papers; sweep knob).
            kwargs: ``PyramidMethod`` arguments (``eps``, ``reduction``) and ``SRMethod`` ones.
        """
        super().__init__(variant=variant, **kwargs)
        self.coarse_level_weight = float(coarse_level_weight)

    def compute_loss(self, groups: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        n_total = sum(int(g["hr"].shape[0]) for g in groups)
        parts: dict[str, Tensor] = {}
        for group in groups:
            scale = int(group["scale"][0])
            preds, targets = self.net(group["lr"], scale), group["pyramid"]
            if len(preds) != len(targets):
                raise ValueError(
                    f"x{scale} batch has {len(targets)} pyramid targets, but the network made "
                    f"{len(preds)} levels"
                )
            share = group["hr"].shape[0] / n_total
            for level, (pred, target) in enumerate(zip(preds, targets), start=1):
                weight = 1.0 if level == len(preds) else self.coarse_level_weight
                parts[f"x{scale}_level{level}"] = share * weight * self._charbonnier(pred, target)
        return torch.stack(list(parts.values())).sum(), parts

    def reference_loss(self, groups: list[dict]) -> dict[str, Tensor]:
        """Per scale (its levels are logged per scale): the batch share of bicubic's Charbonnier loss against HR."""
        total = sum(len(g["hr"]) for g in groups)
        return {f"bicubic_x{int(g['scale'][0])}": len(g["hr"]) / total * self.bicubic_loss([g], self._charbonnier)
                for g in groups}



class LapSRN(PyramidSRMethod):
    """LapSRN training: one model per scale (``per_batch`` batches of that scale), deep supervision."""

    name = "lapsrn"
    network_type = LapSRNNet

    def __init__(self, variant: str = "lapsrn_x4", **kwargs: Any) -> None:
        super().__init__(variant=variant, **kwargs)


class MSLapSRN(PyramidSRMethod):
    """MS-LapSRN training: one shared model for x2, x4 and x8 (``split`` batches), x3 through x4."""

    name = "ms_lapsrn"
    network_type = MSLapSRNNet

    def __init__(self, variant: str = "ms_lapsrn_d5r8", **kwargs: Any) -> None:
        super().__init__(variant=variant, **kwargs)
