"""CMSC network and cascaded loss: shapes, gradient routing, assembly, loss mix, sizes, a short real fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lit_sr.data.color import to_y
from lit_sr.data.resize import imresize
from lit_sr.methods.cmsc import CMSCNet, CMSCOutput, MSCModule, cascaded_loss, default_alpha
from lit_sr.metrics import psnr_y
from lit_sr.registry import build_registered
from lit_sr.typed import FieldError

FIT_STEPS = 60  # about 5 s on one core; gains about 1.1 dB on butterfly (0.7 dB at 50 steps)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(**kw) -> CMSCNet:
    torch.manual_seed(0)
    return CMSCNet(**{**dict(num_subnets=3, num_modules=1, channels=4), **kw})


def _load_y(path: Path) -> torch.Tensor:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return to_y(torch.from_numpy(rgb).permute(2, 0, 1))[None]


def test_shapes_s_intermediates_plus_assembled():
    model = build_registered("cmsc_small", num_subnets=3)
    out = model(torch.rand(2, 1, 17, 23))
    assert isinstance(out, CMSCOutput)
    final, intermediates = out  # plain tuple unpacking works
    assert final.shape == (2, 1, 17, 23)
    assert len(intermediates) == 3
    assert all(y.shape == (2, 1, 17, 23) for y in intermediates)


def test_loss_on_prediction_s_reaches_subnets_1_to_s_only():
    model = _tiny(share_weights=False)
    assert len(model.subnets) == 3 and model.subnet(0) is not model.subnet(1)
    x, target = torch.rand(1, 1, 10, 10), torch.rand(1, 1, 10, 10)
    for s in range(3):
        model.zero_grad(set_to_none=True)
        F.mse_loss(model(x).intermediates[s], target).backward()
        for j in range(3):
            grads = [p.grad for p in model.subnets[j].parameters()]
            if j <= s:
                assert all(g is not None for g in grads), (s, j)
                assert sum(g.abs().sum().item() for g in grads) > 0, (s, j)
            else:
                assert all(g is None for g in grads), f"loss on prediction {s + 1} reached subnet {j + 1}"
        assert model.reconstruction.weight.grad is not None and model.features[0].weight.grad is not None
        assert model.assembly_param.grad is None  # intermediate losses do not touch the assembly weights


def test_shared_weights_reuse_one_module_object():
    model = build_registered("cmsc")
    assert len(model.subnets) == 1
    assert all(model.subnet(s) is model.subnets[0] for s in range(4))
    # More subnetworks add only their assembly scalars when the modules are shared.
    assert _n_params(build_registered("cmsc", num_subnets=6)) == 1_153_285 + 2


def test_assembled_output_is_weighted_sum_of_intermediates():
    model = _tiny(share_weights=False)
    assert torch.allclose(model.assembly_weights(), torch.full((3,), 1 / 3))  # spec init w_s = 1/S
    with torch.no_grad():
        model.assembly_param.copy_(torch.tensor([0.5, -0.25, 2.0]))
    final, ys = model(torch.rand(2, 1, 9, 11))
    torch.testing.assert_close(final, 0.5 * ys[0] - 0.25 * ys[1] + 2.0 * ys[2])

    soft = _tiny(assembly="softmax")
    with torch.no_grad():
        soft.assembly_param.copy_(torch.tensor([1.0, 2.0, 3.0]).log())  # softmax -> 1/6, 2/6, 3/6
    torch.testing.assert_close(soft.assembly_weights(), torch.tensor([1 / 6, 2 / 6, 3 / 6]))
    final, ys = soft(torch.rand(1, 1, 8, 8))
    torch.testing.assert_close(final, ys[0] / 6 + ys[1] * 2 / 6 + ys[2] * 3 / 6)

    equal = _tiny(assembly="equal")
    assert "assembly_param" not in dict(equal.named_parameters())
    assert "assembly_param" not in equal.state_dict()
    final, ys = equal(torch.rand(1, 1, 8, 8))
    torch.testing.assert_close(final, (ys[0] + ys[1] + ys[2]) / 3)


def test_cascaded_loss_alpha_mix_is_exact():
    target = torch.zeros(1, 1, 2, 2)
    ys = [torch.full_like(target, 1.0), torch.full_like(target, 3.0)]  # MSE 1 and 9, mean 5
    final = torch.full_like(target, 4.0)  # MSE 16
    total, parts = cascaded_loss(final, ys, target, alpha=0.25, base_loss=lambda p, t: F.mse_loss(p, t))
    assert total.item() == pytest.approx(0.25 * 5 + 0.75 * 16)
    assert {k: v.item() for k, v in parts.items()} == {
        "intermediate": 5.0,
        "final": 16.0,
        "sub1": 1.0,
        "sub2": 9.0,
    }
    l1_total, _ = cascaded_loss(final, ys, target, alpha=0.25, base_loss=lambda p, t: (p - t).abs().mean())
    assert l1_total.item() == pytest.approx(0.25 * 2 + 0.75 * 4)  # base_loss is really used
    assert cascaded_loss(final, ys, target, alpha=0.0)[0].item() == pytest.approx(16.0)
    assert cascaded_loss(final, ys, target, alpha=1.0)[0].item() == pytest.approx(5.0)
    assert default_alpha(4) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got 1.5"):
        cascaded_loss(final, ys, target, alpha=1.5)
    with pytest.raises(ValueError, match="intermediates is empty"):
        cascaded_loss(final, [], target, alpha=0.5)


def test_assembly_weights_receive_exact_gradient():
    model = _tiny()
    x, target = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    final, ys = model(x)
    alpha = 0.3
    total, _ = cascaded_loss(final, ys, target, alpha, base_loss=lambda p, t: F.mse_loss(p, t))
    total.backward()
    # d total / d w_s = (1 - alpha) * mean(2 (final - target) * Y_s): only the assembled term sees w_s.
    expected = torch.stack([(1 - alpha) * (2 * (final - target) * y).mean() for y in ys]).detach()
    torch.testing.assert_close(model.assembly_param.grad, expected)
    assert expected.abs().min() > 0

    soft = _tiny(assembly="softmax")
    final, ys = soft(x)
    cascaded_loss(final, ys, target, alpha)[0].backward()
    assert soft.assembly_param.grad is not None and soft.assembly_param.grad.abs().sum() > 0


def test_parameter_counts_and_depth():
    assert _n_params(MSCModule(64, (3, 5), 2)) == 278_784  # spec value for one MSC module
    assert _n_params(MSCModule(64, (3, 5), 1)) == 139_392
    model = build_registered("cmsc")
    n = _n_params(model)
    assert n == 1_153_285  # spec regression value (S=4, M=4, 64 ch, shared)
    assert abs(n - 1_220_000) / 1_220_000 < 0.10  # survey's 1,220k [paper]
    assert model.depth == 35
    assert _n_params(build_registered("cmsc", share_weights=False)) == 4_498_693
    assert _n_params(build_registered("cmsc", assembly="equal")) == 1_153_281
    small = build_registered("cmsc_small")
    assert _n_params(small) == 149_379 and small.depth == 11
    assert build_registered("cmsc", entry_conv=True).depth == 39
    assert small.config["zero_init_reconstruction"] is True and small.config["branch_kernels"] == (3, 5)


def test_zero_init_options():
    model = _tiny(zero_init_branch_end=True)
    g = torch.randn(1, 4, 6, 6)
    # Every module becomes a' = b' = (a + b)/2, so a subnetwork maps G to (G + G)/2 + G = 2 G.
    torch.testing.assert_close(model.subnet(0)(g), 2 * g)


NET = "model.init_args.net"


@pytest.mark.parametrize(
    ("variant", "overrides", "message"),
    [
        # A variant's overrides (model.init_args.net) are checked against CMSCNet's type hints by build_registered.
        ("cmsc", {"assembly": "mean"}, f"{NET}.assembly: 'mean' is not one of ['free', 'softmax', 'equal']"),
        ("cmsc", {"num_subnets": 0}, f"{NET}.num_subnets must be a positive integer, got 0"),
        ("cmsc_small", {"channels": 2.5}, f"{NET}.channels must be a positive integer, got 2.5"),
        ("cmsc", {"convs_per_branch": 3}, f"{NET}.convs_per_branch: 3 is not one of [1, 2]"),
        ("cmsc", {"share_weights": "no"}, f"{NET}.share_weights must be true or false, got 'no'"),
        # A direct call checks the same hints, named by the class.
        (None, {"num_modules": True}, "CMSCNet.num_modules must be a positive integer, got True"),
        (None, {"assembly": "fixed"}, "CMSCNet.assembly: 'fixed' is not one of ['free', 'softmax', 'equal']"),
    ],
)  # fmt: skip
def test_a_bad_typed_argument_names_the_key(variant, overrides, message):
    with pytest.raises(FieldError) as err:
        build_registered(variant, **overrides) if variant else CMSCNet(**overrides)
    assert str(err.value) == message


@pytest.mark.parametrize("kernels", [(3, 4), (3, -5), (3, 5, 7), (3, True), [3, 2.0], 3])
def test_branch_kernels_must_be_two_odd_sizes(kernels):
    # What no type says (odd sizes) is the constructor's one explicit check.
    with pytest.raises(ValueError) as err:
        build_registered("cmsc", branch_kernels=kernels)
    assert str(err.value) == f"CMSCNet.branch_kernels must be two odd positive integers such as (3, 5), got {kernels!r}"


def test_a_wrong_input_shape_says_what_to_pass():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\); got shape \(1, 3, 8, 8\)"):
        build_registered("cmsc_small")(torch.rand(1, 3, 8, 8))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core box, 2 spinning threads run this tiny fit 5-8x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cmsc_small_starts_at_bicubic_and_beats_it_after_short_fit(data_root, one_thread):
    """End to end on a real image: fit 32x32 patches of butterfly x2 with the cascaded loss, test on all."""
    scale = 2
    hr = _load_y(data_root / "Set5" / "butterfly.png")  # 256 x 256
    ilr = imresize(imresize(hr, scale=1 / scale), scale=scale)
    bicubic = psnr_y(ilr, hr, scale).item()
    assert bicubic == pytest.approx(27.43, abs=0.05)

    torch.manual_seed(0)
    model = build_registered("cmsc_small")
    with torch.no_grad():
        crop = ilr[..., :48, :48]
        assert torch.equal(model(crop).final, crop)  # zero-initialised reconstruction: exactly bicubic
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(FIT_STEPS):
        ys, xs = torch.randint(0, 256 - 32, (2, 8), generator=gen)
        hr_b = torch.cat([hr[..., y : y + 32, x : x + 32] for y, x in zip(ys.tolist(), xs.tolist())])
        ilr_b = torch.cat([ilr[..., y : y + 32, x : x + 32] for y, x in zip(ys.tolist(), xs.tolist())])
        final, inter = model(ilr_b)
        loss, _ = cascaded_loss(final, inter, hr_b, default_alpha(model.num_subnets))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        sr = model(ilr).final
    gain = psnr_y(sr, hr, scale).item() - bicubic
    assert gain > 0.5, f"cmsc_small gained only {gain:.2f} dB over bicubic after {FIT_STEPS} steps"
