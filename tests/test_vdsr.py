"""VDSR network: parameter counts and the global residual."""

import pytest
import torch

import lit_sr
from lit_sr.methods.vdsr import VDSRNet


def count(net):
    return sum(p.numel() for p in net.parameters())


def test_registry_lists_and_builds_vdsr():
    assert {"vdsr", "vdsr_small"} <= set(lit_sr.list_models())
    assert isinstance(lit_sr.create_model("vdsr"), VDSRNet)
    with pytest.raises(ValueError, match="unknown model 'vdsrr'.*vdsr"):
        lit_sr.create_model("vdsrr")
    with pytest.raises(ValueError, match="does not accept"):
        lit_sr.create_model("vdsr", layers=3)


@pytest.mark.parametrize("depth", [8, 20, 30])
def test_parameter_count_formula(depth):
    expected = 1152 + 36864 * (depth - 2) + 64 * (depth - 1) + 1
    assert count(lit_sr.create_model("vdsr", depth=depth)) == expected


def test_paper_parameter_counts():
    assert count(lit_sr.create_model("vdsr")) == 665_921
    assert count(lit_sr.create_model("vdsr", bias=False)) == 664_704


def test_residual_structure():
    net = lit_sr.create_model("vdsr", depth=5, width=8).eval()
    x = torch.rand(2, 1, 23, 17)
    y = net(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y - x, net.residual(x))
    torch.nn.init.zeros_(net.tail.weight)
    torch.nn.init.zeros_(net.tail.bias)
    torch.testing.assert_close(net(x), x)  # a zero residual returns the bicubic input exactly


def test_he_init_fan_modes():
    net = VDSRNet(init_fan_mode="fan_in")
    assert net.body[2].weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)
    assert net.body[0].weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.1)
    out = VDSRNet(init_fan_mode="fan_out")
    assert out.body[0].weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.1)


def test_tiled_super_resolve_equals_the_untiled_forward():
    from lit_sr.methods.vdsr import VDSR

    torch.manual_seed(0)
    method = VDSR(variant="vdsr", tile_size=0).eval()  # the paper network: receptive field 41x41
    lr = torch.rand(1, 1, 70, 90)
    with torch.no_grad():
        whole = method.super_resolve(lr, 3)
        method.hparams.tile_size = 40  # below 2 * overlap + 32: the tile grows to fit the receptive field
        tiled = method.super_resolve(lr, 3)
    assert method.receptive_radius(3) == 9  # 20 convs at the ILR: 20 pixels, 7 LR pixels, plus bicubic's reach
    assert tiled.shape == whole.shape == (1, 1, 210, 270)
    assert (tiled - whole).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match=r"supports scales \[2, 3, 4\], not x8"):
        method.super_resolve(lr, 8)
