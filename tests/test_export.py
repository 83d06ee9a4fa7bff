"""ONNX export: every registered method runs in onnxruntime and matches PyTorch at two input sizes."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lit_sr.data.resize import imresize
from lit_sr.errors import ConfigError, user_error_message
from lit_sr.export import BicubicUpsample, export_onnx, exportable_scales, method_channels
from lit_sr.methods import SRMethod, registered_methods

SIZES = [(17, 23), (40, 29)]


METHODS: dict[str, type[SRMethod]] = registered_methods()  # new method files are covered automatically


def _ort(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_bicubic_upsample_is_matlab_imresize(scale):
    x = torch.rand(2, 3, 9, 14, dtype=torch.float64)
    assert (BicubicUpsample(scale).double()(x) - imresize(x, scale)).abs().max() < 1e-6
    tiny = torch.rand(1, 1, 2, 2, dtype=torch.float64)  # the smallest size the symmetric pad allows
    assert (BicubicUpsample(scale).double()(tiny) - imresize(tiny, scale)).abs().max() < 1e-6


# Fewer repeated blocks, the same graph: DRN-S's 30 blocks per level and IRLapSRN's 8 IRBs take 10-20 s to trace.
SMALLER = {"drn": {"variant": "drn_small_x4"}, "irlapsrn": {"net": {"irb_per_level": 2}},
           "ms_lapsrn": {"net": {"recursions": 2}}, "lapsrn": {"net": {"depth_per_level": 2}},
           "cmsc": {"net": {"num_modules": 2}}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_exported_model_matches_pytorch_at_two_sizes(name, tmp_path):
    torch.manual_seed(0)
    # the default (paper) network with fewer repeated blocks, random weights: the graph is what is tested
    method = METHODS[name](**SMALLER.get(name, {})).eval()
    exportable = [s for s in method.supported_scales if s != 3 or "pyramid" not in method.batch_needs]
    scale = max(exportable)
    path = export_onnx(method, scale, tmp_path / f"{name}.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["lit_sr.scale"] == str(scale)
    session = _ort(path)
    c = method_channels(method)
    for h, w in SIZES:
        lr = torch.rand(1, c, h, w)
        with torch.no_grad():
            expected = method.sr_forward(lr, scale).numpy()
        (got,) = session.run(["sr"], {"lr": lr.numpy()})
        assert got.shape == (1, c, h * scale, w * scale)
        # 1e-4 of the output's range: random weights of a deep paper network can reach hundreds (CMSC ~600)
        tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
        assert np.abs(got - expected).max() < tolerance, f"{name} x{scale} at {h}x{w}"


def test_pyramid_x3_is_refused_in_one_line_naming_the_exportable_scales(tmp_path, monkeypatch):
    from lit_sr.methods.lapsrn import LapSRN

    def no_trace(*args, **kwargs):
        raise AssertionError("torch.onnx.export was called")

    monkeypatch.setattr(torch.onnx, "export", no_trace)  # refused before the exporter's trace (and its error dump)
    method = LapSRN(variant="lapsrn_x4_small")
    assert exportable_scales(method) == [2, 4]
    with pytest.raises(ConfigError) as refused:
        export_onnx(method, 3, tmp_path / "sub" / "x3.onnx")
    message = user_error_message(refused.value)
    assert re.fullmatch(r"--scale 3: LapSRN makes x3 by resizing .*; this checkpoint exports --scale 2 or --scale 4",
                        message), message
    assert not (tmp_path / "sub").exists()
