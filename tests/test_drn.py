"""DRN-GSL networks and the gradient-sensitive loss: parameter counts, shapes, the mask, the loss, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.losses import gradient_mask, gradient_sensitive_loss
from lit_sr.methods.drn import DRN, DRNNet, edge_psnr_y
from lit_sr.metrics import psnr_y
from lit_sr.registry import build_registered, registered_models
from lit_sr.typed import FieldError


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "primal", "duals"),
    [
        ("drn_s_x4", 4_804_065, [864, 864]),
        ("drn_s_x8", 5_403_000, [432, 432, 432]),
        ("drn_l_x4", 9_825_893, [1_080, 1_080]),
        ("drn_l_x8", 10_004_018, [540, 540, 540]),
    ],
)
def test_parameter_counts_match_spec(name, primal, duals):
    net = build_registered(name)
    assert isinstance(net, DRNNet)
    # the spec (2020 code) counts the two MeanShift convs (2 x 12); here they are constant buffers
    shift = sum(b.numel() for m in (net.primal.sub_mean, net.primal.add_mean) for b in m.buffers())
    assert shift == 24 and n_params(net.primal) == primal - 24
    assert [n_params(d) for d in net.duals] == duals


def test_variants_registered_and_scale_is_fixed_by_the_name():
    assert {"drn_s_x4", "drn_s_x8", "drn_l_x4", "drn_l_x8", "drn_small_x4"} <= set(registered_models())
    small = build_registered("drn_small_x4")
    assert small.supported_scales == (4,) and n_params(small.primal) == 933_369  # DRN-S x4 with 4 RCABs
    with pytest.raises(ValueError, match="does not accept"):
        build_registered("drn_s_x4", scale=8)
    with pytest.raises(ValueError, match="power of two"):
        DRNNet(scale=3)


@pytest.mark.parametrize(("scale", "n_colors"), [(4, 3), (8, 3), (4, 1)])
def test_outputs_at_every_x2_step_and_duals_halve(scale, n_colors):
    torch.manual_seed(0)
    net = DRNNet(scale=scale, n_blocks=1, n_feats=4, n_colors=n_colors)
    lr = torch.rand(2, n_colors, 6, 5)
    outs = net(lr)
    sizes = [(6 * 2**k, 5 * 2**k) for k in range(len(outs))]
    assert len(outs) == {4: 3, 8: 4}[scale]
    assert [tuple(o.shape) for o in outs] == [(2, n_colors, *s) for s in sizes]
    duals = net.dual_outputs(outs)
    assert [tuple(d.shape) for d in duals] == [(2, n_colors, *s) for s in sizes[:-1]]
    for dual in net.duals:
        x = torch.rand(1, n_colors, 16, 12)
        assert dual(x).shape == (1, n_colors, 8, 6)


def test_mean_shift_is_added_back_to_every_output():
    net = DRNNet(scale=4, n_blocks=1, n_feats=4)
    for tail in net.primal.tail:
        nn.init.zeros_(tail.weight), nn.init.zeros_(tail.bias)
    outs = net(torch.rand(1, 3, 4, 4))
    for out in outs:
        assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.4488, 0.4371, 0.4040]))


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match=r"takes \(N, 3, h, w\)"):
        DRNNet(scale=4, n_blocks=1, n_feats=4)(torch.rand(1, 1, 8, 8))


# ---- the gradient-sensitive loss --------------------------------------------------------------------------


def step_edge(size: int = 32) -> torch.Tensor:
    y = torch.full((1, 1, size, size), 0.2)
    y[..., size // 2 :] = 0.8
    return y


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_mask_is_one_on_a_step_edge_and_zero_on_flat(mode):
    y = step_edge()
    mask = gradient_mask(y, mode)
    assert mask.shape == (1, 1, 32, 32)
    assert torch.all(mask[..., 15:17] == 1)  # the two columns the 3x3 Sobel sees the step in
    flat = torch.cat([mask[..., :14], mask[..., 18:]], dim=-1)
    assert torch.allclose(flat, torch.zeros_like(flat), atol=1e-6)


def test_soft_mask_is_graded_and_hard_mask_takes_the_top_fraction():
    torch.manual_seed(0)
    y = torch.rand(2, 3, 24, 24)
    soft, hard = gradient_mask(y, "soft"), gradient_mask(y, "hard", quantile=0.75)
    assert soft.shape == hard.shape == (2, 1, 24, 24)
    assert torch.allclose(soft.flatten(1).amin(1), torch.zeros(2)) and torch.allclose(
        soft.flatten(1).amax(1), torch.ones(2)
    )
    assert ((soft > 0.05) & (soft < 0.95)).float().mean() > 0.5
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(hard.flatten(1).mean(1), torch.full((2,), 0.25), atol=2 / 576)


def test_mask_is_detached_from_the_target():
    y = step_edge().requires_grad_(True)
    assert not gradient_mask(y).requires_grad


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("grad_form", ["grad_of_masked", "masked_grad"])
def test_gsl_zero_for_identical_images(mode, grad_form):
    torch.manual_seed(0)
    y = torch.rand(2, 3, 16, 16)
    total, parts = gradient_sensitive_loss(y.clone(), y, l1_weight=0.5, mask_mode=mode, grad_form=grad_form)
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("grad_form", ["grad_of_masked", "masked_grad"])
def test_gsl_penalises_a_blurred_edge_more_than_a_brightness_offset_of_equal_l1(mode, grad_form):
    y = step_edge()
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256)[None, None]
    blurred = F.conv2d(F.pad(y, (2, 2, 2, 2), mode="replicate"), k)
    l1 = (blurred - y).abs().mean()
    offset = y + l1
    assert torch.isclose((offset - y).abs().mean(), l1, rtol=1e-5)
    blur_loss, blur_parts = gradient_sensitive_loss(blurred, y, mask_mode=mode, grad_form=grad_form)
    off_loss, _ = gradient_sensitive_loss(offset, y, mask_mode=mode, grad_form=grad_form)
    assert blur_loss > 2 * off_loss
    assert blur_parts["l1"] == pytest.approx(l1.item())  # plain L1 cannot tell the two apart
    # mu (l1_weight) adds the plain L1 on top
    with_l1, _ = gradient_sensitive_loss(blurred, y, l1_weight=1.0, mask_mode=mode, grad_form=grad_form)
    assert with_l1.item() == pytest.approx(blur_loss.item() + l1.item(), rel=1e-5)


def test_gsl_bad_options_are_named():
    y = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="mode must be 'soft' or 'hard'"):
        gradient_sensitive_loss(y, y, mask_mode="gaussian")
    with pytest.raises(ValueError, match="grad_form must be"):
        gradient_sensitive_loss(y, y, grad_form="sobel")
    with pytest.raises(ValueError, match="quantile must be in"):
        gradient_mask(y, "hard", quantile=1.5)


@pytest.mark.parametrize("dual_weight", [0.1, 0.0])
def test_gsl_gradients_reach_primal_and_dual_parameters(dual_weight):
    torch.manual_seed(0)
    net = DRNNet(scale=4, n_blocks=1, n_feats=4)
    lr, hr = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 24, 24)
    outs = net(lr)
    pyramid = [lr, F.interpolate(hr, scale_factor=0.5, mode="area"), hr]
    loss = gradient_sensitive_loss(outs[-1], hr)[0]
    loss = loss + sum(F.l1_loss(o, t) for o, t in zip(outs[:-1], pyramid[:-1]))
    loss = loss + dual_weight * sum(F.l1_loss(d, t) for d, t in zip(net.dual_outputs(outs), pyramid[:-1]))
    loss.backward()

    def grad_norm(module: nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert all(p.grad is not None for p in net.parameters())
    for name in ("head", "down", "up_blocks", "tail"):
        assert grad_norm(getattr(net.primal, name)) > 0, name
    assert all((grad_norm(d) > 0) == (dual_weight > 0) for d in net.duals)


# ---- edge-region PSNR -------------------------------------------------------------------------------------


def test_edge_psnr_counts_only_the_edge_region():
    hr = step_edge(40)
    flat_error = hr.clone()
    flat_error[..., 5:10, 5:10] += 0.1  # far from the edge
    edge_error = hr.clone()
    edge_error[..., 10:30, 19:21] += 0.1  # on the edge columns
    assert torch.isinf(edge_psnr_y(flat_error, hr, shave=4)).all()  # flat-region error is ignored
    assert torch.isfinite(psnr_y(flat_error, hr, shave=4)).all()
    # 20 x 2 = 40 wrong pixels among the 2 x 32 edge pixels inside the border: MSE = 40/64 * 25.5^2 (8-bit)
    expected = 10 * torch.log10(torch.tensor(255.0**2 / (40 / 64 * 26.0**2)))
    assert edge_psnr_y(edge_error, hr, shave=4).item() == pytest.approx(expected.item(), abs=0.3)
    assert edge_psnr_y(edge_error, hr, shave=4) < psnr_y(edge_error, hr, shave=4)


def test_edge_psnr_rejects_a_flat_image():
    flat = torch.full((1, 1, 16, 16), 0.5)
    with pytest.raises(ValueError, match="no edge pixels"):
        edge_psnr_y(flat, flat, shave=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss": "l2"}, "model.init_args.loss: 'l2' is not one of ['gsl', 'l1']"),
        ({"dual_weight": -0.1}, "model.init_args.dual_weight must be a number >= 0, got -0.1"),
        ({"gsl_low_weight": -1}, "model.init_args.gsl_low_weight must be a number >= 0, got -1"),
        ({"gsl_l1_weight": "0"}, "model.init_args.gsl_l1_weight must be a number >= 0, got '0'"),
        ({"mask_mode": "gaussian"}, "model.init_args.mask_mode: 'gaussian' is not one of ['soft', 'hard']"),
        ({"mask_quantile": 1.0}, "model.init_args.mask_quantile must be a number in (0, 1), got 1.0"),
        ({"grad_form": "sobel"}, "model.init_args.grad_form: 'sobel' is not one of ['grad_of_masked', 'masked_grad']"),
        ({"channels": "ycbcr"}, "model.init_args.channels: 'ycbcr' is not one of ['rgb', 'y']"),
        ({"max_consecutive_skips": 0}, "model.init_args.max_consecutive_skips must be a positive integer, got 0"),
        ({"skip_factor": "big"}, "model.init_args.skip_factor must be a number, got 'big'"),
        ({"net": {"n_feats": 1.5}}, "model.init_args.net.n_feats must be an integer, got 1.5"),
    ],
)  # fmt: skip
def test_a_bad_typed_method_option_names_the_key(options, message):
    """DRN's typed options (Literal, NonNegativeFloat, ...) are checked by SRMethod from Python as by jsonargparse."""
    with pytest.raises(FieldError) as err:
        DRN(variant="drn_small_x4", **options)
    assert str(err.value) == message


def test_skip_factor_must_exceed_one():
    """What no type says (> 1) is DRN's one explicit check."""
    with pytest.raises(ValueError) as err:
        DRN(variant="drn_small_x4", skip_factor=1)
    assert str(err.value) == "model.init_args.skip_factor must be a number > 1 (1e6 in the 2020 code), got 1"


def test_the_gsl_loss_is_fp32_under_bf16_autocast():
    method = DRN(variant="drn_small_x4")
    pred, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    fp32, parts = method.final_loss(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the quick preset's bf16-mixed
        mixed, mixed_parts = method.final_loss(pred, target)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, fp32)  # its Sobel convolutions ran in fp32 too
    assert all(torch.equal(mixed_parts[k], parts[k]) for k in parts)
