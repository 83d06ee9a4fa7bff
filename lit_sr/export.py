"""ONNX export of a trained method: one scale, dynamic height and width, no lit_sr needed to run it.

``export_onnx(method, scale, path)`` traces ``method.sr_forward(lr, scale)`` with the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``). The graph's contract:

* input ``lr``: float32 (N, C, h, w) in [0, 1], C = 1 (MATLAB Y / 255 of the LR image) for Y-only methods,
  3 (RGB) for RGB methods; any h, w >= 2;
* output ``sr``: float32 (N, C, scale*h, scale*w), unclipped (clip to [0, 1], then quantise).

Methods whose network works on the bicubic-upsampled image (VDSR, CMSC, ...) keep that upsampling in the
graph: lit_sr's MATLAB ``imresize`` builds size-dependent matrices, so during export it is swapped for
:class:`BicubicUpsample`, the same MATLAB bicubic written as a 5-tap convolution per output phase plus
symmetric padding (equal to ``imresize`` to float rounding, for any size). Pyramid methods (LapSRN,
MS-LapSRN) export their final level; their x3 (an x4 output resized down) is not exportable.
The scale, channels and method are stored in the model's metadata (``lit_sr.*`` keys).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sr.data import resize
from lit_sr.errors import ConfigError
from lit_sr.methods.base import SRMethod

#: taps of the MATLAB bicubic upsampler around an input pixel: offsets -2..2 cover every phase
_TAPS = 5


def _phase_weights(scale: int) -> np.ndarray:
    """(scale, 5) float64: output pixel ``scale * i + p`` = sum_k w[p, k] * x[i + k - 2] (MATLAB imresize)."""
    length = 16
    matrix = resize.resize_weights(length, length * scale, float(scale), True)
    i = length // 2
    weights = matrix[scale * i : scale * i + scale, i - 2 : i + 3]
    rest = np.abs(matrix[scale * i : scale * i + scale]).sum() - np.abs(weights).sum()
    assert rest < 1e-12, "MATLAB bicubic upsampling reaches beyond two input pixels"
    return weights


def _symmetric_pad(x: Tensor, pad: int, dim: int) -> Tensor:
    """MATLAB's symmetric border (x[-1] = x[0], x[-2] = x[1]) of ``pad`` pixels on both sides of ``dim``."""
    length = x.shape[dim]
    head = x.narrow(dim, 0, pad).flip(dim)
    tail = x.narrow(dim, length - pad, pad).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


class BicubicUpsample(nn.Module):
    """MATLAB ``imresize(x, scale, 'bicubic')`` for an integer ``scale`` >= 1 as convolutions.

    Shape-agnostic (no size-dependent matrices), so it exports to ONNX with dynamic H and W.
    Input (N, C, H, W) with H, W >= 2; output (N, C, scale*H, scale*W).
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"BicubicUpsample needs an integer scale >= 1, got {scale}")
        self.scale = int(scale)
        w = torch.from_numpy(_phase_weights(self.scale)).float()
        self.register_buffer("weight_h", w[:, None, :, None].clone(), persistent=False)  # (s, 1, 5, 1)
        self.register_buffer("weight_w", w[:, None, None, :].clone(), persistent=False)  # (s, 1, 1, 5)

    def forward(self, x: Tensor) -> Tensor:
        s = self.scale
        if s == 1:
            return x
        n, c, h, w = x.shape
        y = x.reshape(n * c, 1, h, w)
        wh, ww = self.weight_h.to(y.dtype), self.weight_w.to(y.dtype)
        y = F.conv2d(_symmetric_pad(y, 2, 2), wh)  # (nc, s, h, w): phase p of every row
        y = y.permute(0, 2, 1, 3).reshape(n * c, 1, h * s, w)
        y = F.conv2d(_symmetric_pad(y, 2, 3), ww)  # (nc, s, hs, w)
        y = y.permute(0, 2, 3, 1).reshape(n, c, h * s, w * s)
        return y


class NoOnnxForm(NotImplementedError):
    """``imresize`` to a size (not an integer upscale) was reached while tracing: it has no dynamic-shape form."""


class _ExportableImresize:
    """Stands in for ``imresize`` while tracing: integer upscales go through :class:`BicubicUpsample`."""

    def __init__(self) -> None:
        self._modules: dict[int, BicubicUpsample] = {}

    def __call__(self, x: Tensor, scale=None, size=None, antialias: bool = True) -> Tensor:
        if size is None and isinstance(scale, (int, float)) and float(scale).is_integer() and scale >= 1:
            s = int(scale)
            if s not in self._modules:
                self._modules[s] = BicubicUpsample(s).to(x.device)
            return self._modules[s](x)
        raise NoOnnxForm(
            f"imresize(scale={scale}, size={size}) has no shape-agnostic form for ONNX export; only integer "
            f"upscales do. Export a scale the network produces directly (e.g. x4 of a pyramid model, not x3)"
        )


@contextlib.contextmanager
def exportable_imresize(method: SRMethod) -> Iterator[None]:
    """Within the block, every module of ``method``'s class hierarchy calls the conv form of ``imresize``."""
    stand_in = _ExportableImresize()
    patched = []
    for cls in inspect.getmro(type(method)):
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, "imresize", None) is resize.imresize:
            patched.append(module)
    try:
        for module in patched:
            module.imresize = stand_in
        yield
    finally:
        for module in patched:
            module.imresize = resize.imresize


def method_channels(method: SRMethod) -> int:
    """1 for Y-only methods, 3 for RGB ones (``channels`` class attribute; Y when absent)."""
    return 3 if getattr(method, "channels", "y") == "rgb" else 1


def _exportable(method: SRMethod, scale: int, example: Tensor) -> bool:
    """``method.sr_forward`` at ``scale`` runs with the export's ``imresize`` (no resize to a size on the way)."""
    with torch.no_grad(), exportable_imresize(method):
        try:
            method.sr_forward(example, scale)
        except NoOnnxForm:
            return False
    return True


def exportable_scales(method: SRMethod, example_size: tuple[int, int] = (24, 32)) -> list[int]:
    """The supported scales ``method`` can be exported at (a pyramid's x3, an x4 output resized down, cannot)."""
    example = torch.rand(1, method_channels(method), *example_size, device=method.device)
    return [s for s in method.supported_scales if _exportable(method, s, example)]


def check_exportable(method: SRMethod, scale: int, example_size: tuple[int, int] = (24, 32)) -> int:
    """``scale`` if ``method`` supports and can export it; otherwise a one-line error naming the scales it can."""
    scale = method.check_scale(scale)
    if _exportable(method, scale, torch.rand(1, method_channels(method), *example_size, device=method.device)):
        return scale
    name = type(method).__name__
    can = [f"--scale {s}" for s in exportable_scales(method, example_size)]
    options = f"this checkpoint exports {' or '.join(can)}" if can else "this checkpoint exports no scale"
    raise ConfigError(
        f"--scale {scale}: {name} makes x{scale} by resizing another scale's output to the image size, which ONNX "
        f"export with dynamic height and width cannot express; {options}"
    )


class SRGraph(nn.Module):
    """``method.sr_forward(lr, scale)`` as a one-input module, fp32, for tracing."""

    def __init__(self, method: SRMethod, scale: int) -> None:
        super().__init__()
        self.method = method
        self.scale = method.check_scale(scale)

    def forward(self, lr: Tensor) -> Tensor:
        return self.method.sr_forward(lr, self.scale)


def export_onnx(
    method: SRMethod, scale: int, path: str | Path, example_size: tuple[int, int] = (24, 32), opset: int = 18
) -> Path:
    """Write ``method`` at ``scale`` to ``path`` as ONNX with dynamic batch, height and width; returns the path.

    The result runs in onnxruntime without lit_sr (see the module docstring for the input/output contract).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as err:
        raise SystemExit(
            f"ONNX export needs the export extra ({err.name} is missing): pip install 'lit_sr[export]'"
        ) from err
    path = Path(path)
    # channels_last weights (a training-speed option) make torch.export guard on the batch size: export plain NCHW
    method = method.to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    scale = check_exportable(method, scale, example_size)  # before the exporter's long trace and its error dump
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = SRGraph(method, scale).eval()
    example = torch.rand(1, method_channels(method), *example_size)
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("h", min=2), 3: torch.export.Dim("w", min=2)}
    with torch.no_grad(), exportable_imresize(method):
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_shapes={"lr": dims},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    meta = {
        "lit_sr.method": type(method).__name__,
        "lit_sr.scale": str(graph.scale),
        "lit_sr.channels": getattr(method, "channels", "y"),
        "lit_sr.input": "lr: float32 (N, C, h, w) in [0, 1]; C=1 is MATLAB Y/255, C=3 is RGB",
        "lit_sr.output": f"sr: float32 (N, C, {graph.scale}h, {graph.scale}w), unclipped",
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path
