"""VDSR network: parameter counts and the global residual."""

import pytest
import torch

import lit_sr
from lit_sr.methods.vdsr import VDSR, VDSRNet, vdsr
from lit_sr.registry import network_hints
from lit_sr.typed import FieldError


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


def test_scale_balance_weights_make_each_scale_count_by_its_error_relative_to_bicubic():
    from lit_sr.losses import mse, scale_balance_weights

    torch.manual_seed(0)
    hr = torch.rand(6, 1, 8, 8)
    scale = torch.tensor([2, 4, 2, 4, 3, 3])
    noise = {2: 0.01, 3: 0.03, 4: 0.1}  # bicubic error grows with the scale
    bicubic = hr + torch.stack([noise[int(s)] * torch.randn(1, 8, 8) for s in scale])
    w = scale_balance_weights(bicubic, hr, scale)
    assert w.shape == (6,) and w.mean().item() == pytest.approx(1.0)
    assert w[0] == w[2] and w[1] == w[3]  # one weight per scale
    # weighted, every scale's bicubic error counts the same
    per_scale = {int(s): (w[scale == s].view(-1, 1, 1, 1) * (bicubic - hr)[scale == s].pow(2)).mean() for s in scale}
    assert per_scale[2].item() == pytest.approx(per_scale[4].item(), rel=1e-5)
    assert per_scale[3].item() == pytest.approx(per_scale[4].item(), rel=1e-5)
    # and mse applies them per sample
    manual = 0.5 * (w.view(-1, 1, 1, 1) * (bicubic - hr).pow(2)).flatten(1).sum(1).mean()
    torch.testing.assert_close(mse(bicubic, hr, "paper", w), manual)


def test_channels_last_stores_nhwc_weights_and_keeps_the_output():
    from lit_sr.methods.vdsr import VDSR

    torch.manual_seed(0)
    plain = VDSR(variant="vdsr_small")
    fast = VDSR(variant="vdsr_small", channels_last=True)
    fast.load_state_dict(plain.state_dict())
    conv = fast.net.body[2].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    lr = torch.rand(1, 1, 20, 24)
    torch.testing.assert_close(fast.super_resolve(lr, 2), plain.super_resolve(lr, 2), atol=1e-5, rtol=1e-5)


def test_a_method_argument_its_type_rejects_is_one_message_naming_the_key():
    """SRMethod checks every method's typed arguments (here VDSR's own and the base's) from Python too."""
    with pytest.raises(ValueError, match=r"model.init_args.scale_balance: 'x2' is not one of \['none', 'bicubic'\]"):
        VDSR(scale_balance="x2")
    with pytest.raises(ValueError, match=r"model.init_args.ssim_variant: 'skimage' is not one of"):
        VDSR(ssim_variant="skimage")
    assert VDSR(scale_balance="bicubic").scale_balance == "bicubic"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: lit_sr.create_model("vdsr_small", init_fan_mode="fan_avg"),
         "model.init_args.net.init_fan_mode: 'fan_avg' is not one of ['fan_in', 'fan_out']"),
        (lambda: lit_sr.create_model("vdsr", bias="false"),
         "model.init_args.net.bias must be true or false, got 'false'"),
        (lambda: VDSR(variant="vdsr_small", net={"depth": 3, "width": 8.0}),
         "model.init_args.net.width must be an integer, got 8.0"),
    ],
    ids=["literal", "bool", "through-the-method"],
)  # fmt: skip
def test_a_bad_net_override_names_its_key_under_model_init_args_net(build, message):
    """``model.init_args.net`` is a plain mapping jsonargparse passes on: ``build_registered`` checks it against the
    constructor hints of the network class the variant returns (its return annotation)."""
    with pytest.raises(FieldError) as err:
        build()
    assert str(err.value) == message


def test_network_hints_follow_the_return_annotation_and_skip_what_they_cannot_resolve():
    def unresolvable(**kwargs) -> "NoSuchNet":  # noqa: F821 - the point of the test
        raise AssertionError

    def unannotated(**kwargs):
        raise AssertionError

    assert set(network_hints(vdsr)) == {"depth", "width", "bias", "init_fan_mode"}  # VDSRNet.__init__
    assert network_hints(unresolvable) == {} and network_hints(unannotated) == {}
