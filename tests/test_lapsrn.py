"""LapSRN / MS-LapSRN networks: parameter counts, shapes, init, weight sharing, local skips."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_sr.methods.lapsrn import LapSRN, LapSRNNet, MSLapSRN, MSLapSRNNet
from lit_sr.registry import build_registered, registered_models
from lit_sr.typed import FieldError


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("lapsrn_x2", {}, 407_441),
        ("lapsrn_x4", {}, 814_242),
        ("lapsrn_x8", {}, 667_123),
        ("lapsrn_x4", {"upconv_kernel": 4}, 871_586),
        ("lapsrn_x4", {"bias": False}, 812_768),
        ("lapsrn_ns_d10r1", {}, 407_441),
        ("ms_lapsrn_d5r2", {}, 222_801),
        ("ms_lapsrn_d5r5", {}, 222_801),
        ("ms_lapsrn_d5r8", {}, 222_801),
        ("ms_lapsrn_d5r8", {"scales": (2,)}, 222_801),
        ("ms_lapsrn_d2r5", {}, 112_017),
        ("ms_lapsrn_d4r4", {}, 185_873),
        ("ms_lapsrn_d5r8", {"depth": 4}, 185_873),
    ],
)
def test_parameter_counts_match_spec(name, overrides, expected):
    assert n_params(build_registered(name, **overrides)) == expected


def test_registered_variants_and_types():
    names = set(registered_models())
    lapsrn = {"lapsrn_x2", "lapsrn_x4", "lapsrn_x8", "lapsrn_x4_small"}
    ms = {"ms_lapsrn_d5r2", "ms_lapsrn_d5r5", "ms_lapsrn_d5r8", "ms_lapsrn_d2r5", "ms_lapsrn_d4r4"}
    ms |= {"lapsrn_ns_d10r1", "ms_lapsrn_small"}
    assert lapsrn | ms <= names
    for name in lapsrn:
        assert isinstance(build_registered(name), LapSRNNet)
    for name in ms:
        assert isinstance(build_registered(name), MSLapSRNNet)
    small = build_registered("lapsrn_x4_small")
    assert (small.scale, small.num_levels, small.supported_scales) == (4, 2, (2, 4))
    assert n_params(small) < n_params(build_registered("lapsrn_x4")) / 10
    ns = build_registered("lapsrn_ns_d10r1")
    assert (ns.depth, ns.recursions, ns.skip) == (10, 1, "NS")
    with pytest.raises(ValueError, match="does not accept"):
        build_registered("lapsrn_x4", scale=8)  # the scale is the variant's name


def test_bias_parameters_are_named_bias():
    # The stage engine gives biases lr x0.1 by name: every bias element must sit in a '.bias' tensor.
    model = build_registered("lapsrn_x4")
    n_bias = sum(p.numel() for name, p in model.named_parameters() if name.endswith(".bias"))
    assert n_bias == 814_242 - 812_768
    ms = build_registered("ms_lapsrn_d5r8")
    assert sum(p.numel() for name, p in ms.named_parameters() if name.endswith(".bias")) == 222_801 - 222_352


@pytest.mark.parametrize(
    ("name", "sizes"), [("lapsrn_x2", [2]), ("lapsrn_x4", [2, 4]), ("lapsrn_x8", [2, 4, 8])]
)
def test_lapsrn_level_output_sizes(name, sizes):
    model = build_registered(name, channels=8)
    with torch.no_grad():
        outs = model(torch.rand(2, 1, 7, 9))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 7 * s, 9 * s) for s in sizes]
    assert model.supported_scales == tuple(sizes)


def test_lapsrn_partial_scale_is_prefix_of_full_forward():
    model = build_registered("lapsrn_x8", channels=8)
    x = torch.rand(1, 1, 6, 5)
    with torch.no_grad():
        full, part = model(x), model(x, scale=4)
    assert len(part) == 2
    for a, b in zip(part, full[:2]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"outputs scales \(2, 4, 8\), got 16"):
        model(x, scale=16)


@pytest.mark.parametrize("kernel", [3, 4])
def test_feature_upsampler_doubles_size_exactly(kernel):
    up = build_registered("lapsrn_x2", channels=4, upconv_kernel=kernel).levels[0].upconv
    assert up.kernel_size == (kernel, kernel)
    for h, w in [(1, 1), (5, 8), (13, 7)]:
        assert up(torch.rand(1, 4, h, w)).shape[-2:] == (2 * h, 2 * w)


def test_image_upsampler_init_is_bilinear_with_dimmed_borders():
    img_up = build_registered("lapsrn_x4").levels[1].img_up
    assert img_up.weight.requires_grad  # trained, not fixed
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    expected_kernel = torch.outer(taps, taps)
    torch.testing.assert_close(img_up.weight[0, 0], expected_kernel)
    with torch.no_grad():
        out = img_up(torch.full((1, 1, 6, 6), 0.8))[0, 0] / 0.8
    assert out.shape == (12, 12)
    torch.testing.assert_close(out[1:-1, 1:-1], torch.ones(10, 10))
    for edge in (out[0, 1:-1], out[-1, 1:-1], out[1:-1, 0], out[1:-1, -1]):
        torch.testing.assert_close(edge, torch.full((10,), 0.75))
    torch.testing.assert_close(out[[0, 0, -1, -1], [0, -1, 0, -1]], torch.full((4,), 0.5625))


def test_image_upsampler_is_trained():
    model = build_registered("lapsrn_x2", channels=4)
    model(torch.rand(1, 1, 5, 5))[0].square().mean().backward()
    assert model.levels[0].img_up.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["lapsrn_x4", "ms_lapsrn_d5r8"])
def test_initialisation(name):
    torch.manual_seed(0)
    model = build_registered(name)
    # input conv: N(0, 1e-3^2), not He.
    std_in = model.input_conv.weight.std().item()
    assert 0.8e-3 < std_in < 1.2e-3
    # other convs and the feature upsampler: He normal, sigma = sqrt(2 / (9 * 64)) as in the official code.
    he = math.sqrt(2 / (9 * 64))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    others = [m for m in convs if m is not model.input_conv and m.weight.shape[-1] == 3]
    assert len(others) == (2 * 12 if name == "lapsrn_x4" else 7)
    for conv in others:
        assert conv.weight.std().item() == pytest.approx(
            he, rel=0.015 if conv.weight.numel() > 10_000 else 0.12
        )
    for conv in convs:
        if conv.bias is not None:
            assert torch.count_nonzero(conv.bias) == 0


def test_ms_lapsrn_outputs_per_scale_share_weights():
    model = build_registered("ms_lapsrn_d5r2", channels=8)
    x = torch.rand(2, 1, 5, 6)
    with torch.no_grad():
        outs = {s: model(x, s) for s in (2, 4, 8)}
    for s, levels in outs.items():
        assert len(levels) == int(math.log2(s))
        assert [tuple(o.shape) for o in levels] == [
            (2, 1, 5 * 2**i, 6 * 2**i) for i in range(1, len(levels) + 1)
        ]
    # One set of weights: the x4 and x8 graphs start with exactly the x2 / x4 levels.
    torch.testing.assert_close(outs[4][0], outs[2][0])
    torch.testing.assert_close(outs[8][1], outs[4][1])
    assert len(model(x)) == 3  # default: largest scale
    with pytest.raises(ValueError, match=r"built for scales \(2, 4, 8\), got 3"):
        model(x, 3)


def test_ms_lapsrn_depth_formula():
    model = build_registered("ms_lapsrn_d5r8")
    assert model.depth_layers(4) == 84
    assert model.depth_layers(2) == 43
    assert build_registered("lapsrn_ns_d10r1").depth_layers(8) == 35


def _zero_block(model: MSLapSRNNet, last_bias: float = 0.0) -> None:
    convs = [m for m in model.block if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
            conv.bias.zero_()
        convs[-1].bias.fill_(last_bias)


def test_ss_skip_with_zeroed_block_returns_x0_at_every_recursion():
    model = build_registered("ms_lapsrn_small", recursions=4)
    _zero_block(model)
    seen: list[torch.Tensor] = []
    model.block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    x0 = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        out = model.recursive_block(x0)
    # The block runs R times; its input at recursion r is x_{r-1}, and every x_r equals x0.
    assert len(seen) == 4
    for x in [*seen, out]:
        torch.testing.assert_close(x, x0)


@pytest.mark.parametrize(("skip", "expected_offset"), [("NS", None), ("DS", 3 * 0.5), ("SS", 0.5)])
def test_local_residual_variants(skip, expected_offset):
    # Block with zero weights and last bias b computes F(x) = b: NS gives b, DS x0 + R*b, SS x0 + b.
    model = build_registered("ms_lapsrn_small", recursions=3, skip=skip)
    _zero_block(model, last_bias=0.5)
    x0 = torch.randn(1, 32, 4, 5)
    with torch.no_grad():
        out = model.recursive_block(x0)
    expected = torch.full_like(x0, 0.5) if expected_offset is None else x0 + expected_offset
    torch.testing.assert_close(out, expected)


def test_user_errors_have_clear_messages():
    with pytest.raises(ValueError, match="scale must be a power of two >= 2.*got 3.*x4"):
        LapSRNNet(scale=3)
    with pytest.raises(ValueError, match=r"LapSRNNet.upconv_kernel: 5 is not one of \[3, 4\]"):
        LapSRNNet(upconv_kernel=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"MSLapSRNNet.skip: 'XS' is not one of \['NS', 'DS', 'SS'\]"):
        MSLapSRNNet(skip="XS")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MSLapSRN scales: scale must be a power of two.*got 6"):
        MSLapSRNNet(scales=(2, 6))
    with pytest.raises(ValueError, match=r"\(N, 1, h, w\), got shape \(1, 3, 8, 8\).*to_y"):
        build_registered("lapsrn_x4_small")(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, h, w\), got shape \(1, 8, 8\)"):
        build_registered("ms_lapsrn_small")(torch.rand(1, 8, 8), 2)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        (LapSRN, {"eps": 0}, "model.init_args.eps must be a positive number, got 0"),
        (MSLapSRN, {"eps": "1e-3"}, "model.init_args.eps must be a positive number, got '1e-3'"),
        (LapSRN, {"coarse_level_weight": -0.5}, "model.init_args.coarse_level_weight must be a number >= 0, got -0.5"),
        (MSLapSRN, {"coarse_level_weight": None},
         "model.init_args.coarse_level_weight must be a number >= 0, got None"),
        (LapSRN, {"net": {"upconv_kernel": 5}}, "model.init_args.net.upconv_kernel: 5 is not one of [3, 4]"),
        (MSLapSRN, {"net": {"skip": "XS"}}, "model.init_args.net.skip: 'XS' is not one of ['NS', 'DS', 'SS']"),
    ],
)  # fmt: skip
def test_a_bad_typed_method_option_names_the_key(method, options, message):
    """The typed options (PositiveFloat, NonNegativeFloat, ...) are checked by SRMethod from Python as by jsonargparse;
    ``net`` overrides by the registry against the network's constructor hints."""
    variant = "lapsrn_x4_small" if method is LapSRN else "ms_lapsrn_small"
    with pytest.raises(FieldError) as err:
        method(variant=variant, **options)
    assert str(err.value) == message


def test_the_bounds_of_the_typed_options_are_accepted():
    method = LapSRN(variant="lapsrn_x4_small", eps=1e-6, coarse_level_weight=0)
    assert (method.eps, method.coarse_level_weight) == (1e-6, 0.0)
