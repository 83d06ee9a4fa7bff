"""Tiled forward, x8 self-ensemble and Y-to-RGB recombination (lit_sr.inference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lit_sr.data.color import rgb_to_y, to_y
from lit_sr.data.resize import imresize
from lit_sr.inference import self_ensemble, tile_spans, tiled_forward, y_to_rgb_sr
from lit_sr.nn import he_init_


class _ResidualConvNet(nn.Module):
    """VDSR-like: ``depth`` 3x3 convs (receptive field 2 * depth + 1) plus the input."""

    def __init__(self, depth: int = 20, width: int = 8) -> None:
        super().__init__()
        # Leaky ReLU keeps a narrow random net from collapsing to a constant.
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)
        he_init_(self, negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _UpsamplerNet(nn.Module):
    """x2 net: 8 LR convs, a 4x4 stride-2 transposed conv, 4 HR convs (radius well under 20 LR px)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        lr = [nn.Conv2d(1, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for _ in range(7):
            lr += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
        hr: list[nn.Module] = [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for _ in range(3):
            hr += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
        hr.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*lr, *hr)
        he_init_(self, negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _calls(fn):
    """Wrap fn to record the spatial size of every call."""
    sizes: list[tuple[int, int]] = []

    def wrapped(t: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(t.shape[-2:]))
        return fn(t)

    return wrapped, sizes


@pytest.mark.parametrize("length", [96, 97, 150, 200, 300, 301, 1000])
@pytest.mark.parametrize(("tile", "overlap"), [(96, 20), (64, 8), (41, 20)])
def test_tile_spans_partition_the_axis_with_margins(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    cores = [(c0, c1) for _, _, c0, c1 in spans]
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(cores[:-1], cores[1:]))
    for t0, t1, c0, c1 in spans:
        assert t1 - t0 == min(tile, length) and 0 <= t0 and t1 <= length
        # Core pixels are >= overlap away from every tile edge that is not the image edge.
        assert t0 == 0 or c0 - t0 >= overlap
        assert t1 == length or t1 - c1 >= overlap


def test_tiled_equals_untiled_for_vdsr_like_net():
    torch.manual_seed(1)
    net = _ResidualConvNet(depth=20).eval()
    x = torch.rand(1, 1, 200, 300)
    with torch.no_grad():
        full = net(x)
        fn, sizes = _calls(net)
        tiled = tiled_forward(fn, x, tile=96, overlap=20)
        too_small = tiled_forward(net, x, tile=96, overlap=4)
        one_short = tiled_forward(net, x, tile=96, overlap=19)
    assert tiled.shape == full.shape == (1, 1, 200, 300)
    assert len(sizes) == 3 * 5 and set(sizes) == {(96, 96)}
    # The net is far from the identity, so the comparison means something.
    assert (full - x).abs().mean() > 0.1
    assert (tiled - full).abs().max() < 1e-6  # requirement: 1 / 255; in fact the same arithmetic
    # The margin is exact: one pixel less than the receptive radius (20) already shows at the seams.
    assert (one_short - full).abs().max() > 1e-6
    # Control: with an overlap below the receptive radius, the seams are visibly wrong.
    assert (too_small - full).abs().max() > 1 / 255


def test_tiled_equals_untiled_for_x2_transposed_conv_net():
    torch.manual_seed(1)
    net = _UpsamplerNet().eval()
    x = torch.rand(1, 1, 200, 301)
    with torch.no_grad():
        full = net(x)
        tiled = tiled_forward(net, x, tile=96, overlap=20, scale=2)
        too_small = tiled_forward(net, x, tile=96, overlap=2, scale=2)
    assert tiled.shape == full.shape == (1, 1, 400, 602)
    assert full.abs().mean() > 0.05
    assert (tiled - full).abs().max() < 1e-6
    assert (too_small - full).abs().max() > 1 / 255


def test_tiled_small_input_is_one_call_and_bad_arguments_are_explained():
    x = torch.rand(1, 1, 96, 50)
    fn, sizes = _calls(lambda t: t * 2)
    assert torch.equal(tiled_forward(fn, x, tile=96, overlap=20), x * 2)
    assert sizes == [(96, 50)]
    with pytest.raises(ValueError, match=r"tile > 2 \* overlap.*tile=40, overlap=20"):
        tiled_forward(fn, x, tile=40, overlap=20)
    with pytest.raises(ValueError, match=r"expected spatial size \(64, 64\) \(scale=2\)"):
        tiled_forward(lambda t: t, torch.rand(1, 1, 100, 100), tile=32, overlap=8, scale=2)


def test_self_ensemble_of_equivariant_fns_is_the_fn():
    torch.manual_seed(2)
    x = torch.rand(2, 3, 17, 23)
    assert torch.allclose(self_ensemble(lambda t: t, x), x, atol=1e-7)
    k1 = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k1[:, None] * k1[None, :] / 16).expand(3, 1, 3, 3)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=1, groups=3)

    assert (self_ensemble(blur, x) - blur(x)).abs().max() < 1e-6
    # A x2 upscaler that is equivariant (nearest) keeps its output size on non-square input.
    up = self_ensemble(lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), x)
    assert up.shape == (2, 3, 34, 46)
    assert torch.allclose(up, F.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-7)


def test_self_ensemble_averages_a_shift_over_the_four_directions():
    # A one-pixel shift is not equivariant; its D4 average is the mean of the 4 neighbours.
    x = torch.rand(1, 1, 9, 12, dtype=torch.float64)
    shift = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    shift[0, 0, 1, 2] = 1.0
    cross = torch.tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], dtype=torch.float64)[None, None]
    out = self_ensemble(lambda t: F.conv2d(t, shift, padding=1), x)
    assert (out - F.conv2d(x, cross, padding=1)).abs().max() < 1e-12
    assert (out - F.conv2d(x, shift, padding=1)).abs().max() > 0.1


def _load(path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_y_to_rgb_sr_of_bicubic_y_gives_bicubic_rgb(data_root, dtype):
    hr = _load(data_root / "Set5" / "butterfly.png").to(dtype)
    hr = hr[..., : hr.shape[-2] // 3 * 3, : hr.shape[-1] // 3 * 3]
    lr = imresize(hr, scale=1 / 3)
    up = imresize(lr, scale=3)
    out = y_to_rgb_sr(rgb_to_y(up), lr, 3)
    assert out.shape == hr.shape and out.dtype == dtype
    assert up.min() < 0 or up.max() > 1  # bicubic overshoots: the clipping is exercised
    assert (out - up.clamp(0, 1)).abs().max() < 1e-6
    # The colour really comes from Cb/Cr: a constant-Y output is not grey.
    flat = y_to_rgb_sr(torch.full_like(rgb_to_y(up), 0.5), lr, 3)
    assert (flat[:, 0] - flat[:, 2]).abs().max() > 0.1


def test_y_to_rgb_sr_grayscale_and_size_mismatch():
    lr_gray = torch.rand(1, 1, 10, 12)
    sr_y = torch.rand(1, 1, 20, 24)
    assert y_to_rgb_sr(sr_y, lr_gray, 2) is sr_y
    with pytest.raises(ValueError, match=r"upsampled by 2 is \(20, 24\), but sr_y is \(20, 22\)"):
        y_to_rgb_sr(torch.rand(1, 1, 20, 22), torch.rand(1, 3, 10, 12), 2)


@pytest.mark.parametrize(
    ("method", "variant", "thin", "scale", "image"),
    [
        ("vdsr", "vdsr", {"width": 8}, 2, "face.png"),
        ("lapsrn", "lapsrn_x4", {"channels": 8}, 4, "baboon.png"),
        ("ms_lapsrn", "ms_lapsrn_d5r8", {"channels": 8}, 2, "baboon.png"),
        ("cmsc", "cmsc", {"channels": 8}, 2, "face.png"),
    ],
)
def test_tiled_inference_equals_whole_image_for_every_default_variant(method, variant, thin, scale, image, data_root):
    """The tile overlap comes from the network's measured receptive field, so stitching changes nothing.

    The default variants keep their depth (which sets the receptive field) with fewer channels, in float64 so the
    comparison sees the stitching and not float32 rounding.
    """
    from lit_sr.methods import method_class

    m = method_class(method)(variant=variant, net=thin, tile_size=64).double().eval()
    radius = m.receptive_radius(scale)
    tile = max(64, 2 * radius + 32)
    # Two tiles down, one across: a seam runs through the image, and the forwards stay small.
    lr = imresize(to_y(_load(data_root / "Set14" / image)), 1 / scale)[..., : tile + 16, : tile // 2]
    assert lr.shape[-2:] == (tile + 16, tile // 2)
    with torch.no_grad():
        whole = m.sr_forward(lr, scale)
        tiled = tiled_forward(lambda t: m.sr_forward(t, scale), lr, tile, radius, scale)
        # Many small tiles with a third of the overlap: cores now end closer to tile edges than the field reaches.
        too_little = tiled_forward(lambda t: m.sr_forward(t, scale), lr, radius + 8, max(1, radius // 3), scale)
    assert (tiled - whole).abs().max() < 1e-6
    assert (too_little - whole).abs().max() > 1e-6  # the check can fail: a smaller overlap shows seams


def test_a_network_that_pools_globally_has_no_radius_and_runs_whole(monkeypatch):
    """DRN's channel attention makes every output pixel depend on the whole image: no overlap makes tiles exact,
    so its radius is None (no probe runs) and ``super_resolve`` runs images larger than the tile whole."""
    from lit_sr.methods.drn import DRN

    torch.manual_seed(0)
    m = DRN(variant="drn_small_x4", net={"n_blocks": 1, "n_feats": 4}, tile_size=16).eval()
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: pytest.fail("the radius was probed"))
    assert m.pools_globally and m.receptive_radius(4) is None
    lr = torch.rand(1, 3, 40, 30)
    with torch.no_grad():
        assert torch.equal(m.super_resolve(lr, 4), m.sr_forward(lr, 4))
        tiled = tiled_forward(lambda t: m.sr_forward(t, 4), lr, 16, 4, 4)
    assert (tiled - m.sr_forward(lr, 4)).abs().max() > 1e-6  # what tiling would have given: seams


def test_resize_matrices_cached_under_inference_mode_still_serve_autograd():
    """Validation (inference mode) fills the resize cache; a later graph through imresize must still work.

    A sweep's IRLapSRN trial measured its x3 receptive field (x4 net + bicubic) after such a validation and failed.
    """
    with torch.inference_mode():
        imresize(torch.rand(1, 1, 10, 10), size=(30, 30))
    x = torch.rand(1, 1, 10, 10, requires_grad=True)
    imresize(x, size=(30, 30)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
