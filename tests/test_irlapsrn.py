"""IRLapSRN network (IRBs on the shared LapSRN pyramid) and the local-rank loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_sr.data.color import to_y
from lit_sr.data.images import read_image
from lit_sr.data.sources import resolve_images
from lit_sr.losses import hard_rank_transform, local_rank_loss, rank_agreement, soft_rank_transform
from lit_sr.methods.irlapsrn import InceptionResidualBlock, IRLapSRN, IRLapSRNNet
from lit_sr.methods.lapsrn import LapSRNNet, PerLevelPyramid, PyramidLevel
from lit_sr.registry import build_registered, registered_models
from lit_sr.stages import StageConfigError, apply_trainable, lr_at, merge_stages, parse_stages
from lit_sr.typed import FieldError


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def real_y(side: int = 96, top: int = 180, left: int = 200) -> torch.Tensor:
    """(1, 1, side, side) Y crop of a bundled photo (astronaut) as the protocol sees it: 8-bit levels / 255."""
    _, paths = resolve_images("builtin")
    img = torch.from_numpy(read_image(paths[0])[top : top + side, left : left + side].copy()).permute(2, 0, 1)
    y = to_y(img[None].float() / 255)
    return (y * 255).round() / 255


# ---- network ---------------------------------------------------------------------------------------------


def test_irb_parameter_count_and_identity_skip():
    block = InceptionResidualBlock(64, 32)
    assert n_params(block) == 40_192
    with torch.no_grad():
        block.project.weight.zero_()
        block.project.bias.zero_()
    x = torch.randn(2, 64, 5, 6)
    torch.testing.assert_close(block(x), x)  # the branches' output is added to the unchanged input


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("irlapsrn_x2", {}, 396_625),
        ("irlapsrn_x4", {}, 792_610),
        ("irlapsrn_x8", {}, 1_188_595),
        ("irlapsrn_x2", {"upconv_kernel": 4}, 425_297),
        ("irlapsrn_x4", {"upconv_kernel": 4}, 849_954),
        ("irlapsrn_x8", {"upconv_kernel": 4}, 1_274_611),
        ("irlapsrn_x4", {"irb_per_level": 3}, 640 + 2 * (40_192 * 3 + 74_449)),
    ],
)
def test_parameter_counts_match_spec(name, overrides, expected):
    assert n_params(build_registered(name, **overrides)) == expected


def test_variants_are_registered_and_share_the_lapsrn_pyramid():
    assert {"irlapsrn_x2", "irlapsrn_x4", "irlapsrn_x8", "irlapsrn_small"} <= set(registered_models())
    small = build_registered("irlapsrn_small")
    assert isinstance(small, IRLapSRNNet) and isinstance(small, PerLevelPyramid)
    assert not isinstance(small, LapSRNNet)  # LapSRN's method must not train it by accident
    assert (small.scale, small.num_levels, small.irb_per_level) == (4, 2, 2)
    assert all(isinstance(level, PyramidLevel) for level in small.levels)
    blocks = [m for m in small.levels[0].features if isinstance(m, InceptionResidualBlock)]
    assert len(blocks) == 2
    with pytest.raises(ValueError, match="does not accept"):
        build_registered("irlapsrn_x4", scale=8)


@pytest.mark.parametrize(("name", "sizes"), [("irlapsrn_x2", [2]), ("irlapsrn_x4", [2, 4]), ("irlapsrn_x8", [2, 4, 8])])
def test_level_output_shapes(name, sizes):
    model = build_registered(name, channels=8, branch_width=4, irb_per_level=1)
    with torch.no_grad():
        outs = model(torch.rand(2, 1, 7, 9))
    assert [tuple(o.shape) for o in outs] == [(2, 1, 7 * s, 9 * s) for s in sizes]
    assert model.supported_scales == tuple(sizes)
    with torch.no_grad():
        partial = model(torch.rand(1, 1, 5, 5), scale=2)
    assert len(partial) == 1 and partial[0].shape[-2:] == (10, 10)


def test_level_prefixes_name_each_levels_parameters():
    model = build_registered("irlapsrn_x8", channels=8, branch_width=4, irb_per_level=1)
    assert model.level_prefixes(1) == ["input_conv", "levels.0"]
    assert model.level_prefixes(3) == ["levels.2"]
    names = [n for n, _ in model.named_parameters()]
    owned = [n for n in names if any(n.startswith(p + ".") for lv in (1, 2, 3) for p in model.level_prefixes(lv))]
    assert owned == names  # every parameter belongs to exactly one level
    with pytest.raises(ValueError, match=r"levels 1\.\.3, got 4"):
        model.level_prefixes(4)


def test_initialisation_he_biases_zero_bilinear_image_branch():
    torch.manual_seed(0)
    model = build_registered("irlapsrn_x4")
    project = model.levels[0].features[0].project  # 1x1, fan-in 96
    assert project.weight.std().item() == pytest.approx((2 / 96) ** 0.5, rel=0.03)
    conv3 = model.levels[1].features[0].branch_c[2]  # 3x3 32 -> 32, fan-in 288
    assert conv3.weight.std().item() == pytest.approx((2 / 288) ** 0.5, rel=0.05)
    assert model.input_conv.weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.2)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(model.levels[1].img_up.weight[0, 0], torch.outer(taps, taps))
    lapsrn_input = build_registered("irlapsrn_x4", input_init="lapsrn").input_conv.weight.std().item()
    assert 0.6e-3 < lapsrn_input < 1.4e-3


def test_residual_scale_multiplies_the_branch_output():
    torch.manual_seed(0)
    full = InceptionResidualBlock(8, 4)
    scaled = InceptionResidualBlock(8, 4, residual_scale=0.1)
    scaled.load_state_dict(full.state_dict())
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x) - x, 0.1 * (full(x) - x))


def test_bad_arguments_have_clear_messages():
    with pytest.raises(ValueError, match="IRLapSRN: scale must be a power of two >= 2.*got 3.*x4"):
        IRLapSRNNet(scale=3)
    with pytest.raises(ValueError, match="IRLapSRNNet.irb_per_level must be a positive integer, got 0"):
        IRLapSRNNet(irb_per_level=0)
    with pytest.raises(ValueError, match=r"IRLapSRNNet.input_init: 'xavier' is not one of \['he', 'lapsrn'\]"):
        IRLapSRNNet(input_init="xavier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"IRLapSRN takes the LR Y channel as \(N, 1, h, w\), got shape \(1, 3, 8"):
        build_registered("irlapsrn_small")(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"IRLapSRN x4 outputs scales \(2, 4\), got 8"):
        build_registered("irlapsrn_small")(torch.rand(1, 1, 8, 8), 8)


# ---- local rank space --------------------------------------------------------------------------------------


def test_soft_rank_tends_to_the_hard_rank_on_a_real_image():
    # 8-bit levels differ by >= 1/255 or are tied; at tau = 1e-4 a step of 1/255 gives sigmoid(39.2) = 1 - 1e-17,
    # so the soft transform equals the hard one (ties counted half, the sigmoid's value at 0) to float precision.
    y = real_y()
    for window in (3, 5):
        hard = hard_rank_transform(y, window, ties=0.5)
        soft = soft_rank_transform(y, window, tau=1e-4)
        assert (soft - hard).abs().max().item() < 1e-5
        # with a large tau the transforms differ visibly: the limit is not trivially met
        assert (soft_rank_transform(y, window, tau=0.05) - hard).abs().max().item() > 0.1
    # The strict Zabih-Woodfill rank is the count of darker neighbours; it differs from the tie-half one only at
    # ties, and this image has some.
    strict = hard_rank_transform(y, 3)
    ties = hard_rank_transform(y, 3, ties=1.0) - strict
    assert ties.sum() > 0
    torch.testing.assert_close(hard_rank_transform(y, 3, ties=0.5), strict + 0.5 * ties)


def test_hard_rank_counts_darker_neighbours_by_hand():
    x = torch.tensor([[[[0.1, 0.5, 0.2], [0.9, 0.4, 0.4], [0.0, 0.3, 0.7]]]])
    rank = hard_rank_transform(x, 3)
    # centre 0.4: darker neighbours 0.1, 0.2, 0.0, 0.3 (the other 0.4 is a tie) -> 4 / 8
    assert rank[0, 0, 1, 1].item() == pytest.approx(4 / 8)
    # corner 0.1 with replicate padding: neighbourhood 0.1 x3 (ties), 0.5 x2, 0.9 x2, 0.4 -> no darker pixel
    assert rank[0, 0, 0, 0].item() == 0.0
    # 0.9 at (1, 0): its left neighbour is its own replicated copy (a tie), the other 7 are darker
    assert rank[0, 0, 1, 0].item() == pytest.approx(7 / 8)


def test_rank_loss_is_zero_for_identical_images_and_positive_otherwise():
    y = real_y()
    assert local_rank_loss(y, y.clone()).item() == 0.0
    noisy = y + 0.03 * torch.randn_like(y)
    assert local_rank_loss(noisy, y).item() > 1e-3


def test_rank_loss_is_invariant_to_a_constant_brightness_offset():
    torch.manual_seed(0)
    y = real_y()
    pred = (y + 0.02 * torch.randn_like(y)).clamp(0, 1)
    base = local_rank_loss(pred, y, window=3, tau=0.02)
    for offset in (0.1, -0.25):
        assert local_rank_loss(pred + offset, y, window=3, tau=0.02).item() == pytest.approx(base.item(), rel=1e-4)
        assert local_rank_loss(pred, y + offset, window=5, tau=0.02).item() == pytest.approx(
            local_rank_loss(pred, y, window=5, tau=0.02).item(), rel=1e-4
        )
    # ...while a contrast change (not a rank-preserving offset at this tau) changes it
    assert abs(local_rank_loss(pred * 0.5, y).item() - base.item()) > 1e-3


def test_rank_loss_gradient_is_finite_and_nonzero_on_a_textured_patch():
    torch.manual_seed(0)
    y = real_y(48, top=250, left=250)
    assert y.std() > 0.05  # textured
    pred = (y + 0.02 * torch.randn_like(y)).requires_grad_(True)
    local_rank_loss(pred, y, window=3, tau=0.02).backward()
    grad = pred.grad
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0 and (grad != 0).float().mean() > 0.5


def test_rank_agreement_metric():
    y = real_y()
    assert rank_agreement(y, y).item() == 1.0
    assert rank_agreement(y + 0.3, y).item() == 1.0  # same local order
    flipped = rank_agreement(1 - y, y).item()  # reversed order: agrees only where the ranks are symmetric
    assert flipped < 0.5
    torch.manual_seed(0)
    noisy = rank_agreement(y + 0.02 * torch.randn_like(y), y).item()
    assert flipped < noisy < 1.0


def test_rank_arguments_are_checked():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="rank window must be an odd integer >= 3.*got 4"):
        soft_rank_transform(x, window=4)
    with pytest.raises(ValueError, match="rank tau must be > 0.*got 0"):
        soft_rank_transform(x, tau=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) images, got shape \(8, 8\)"):
        hard_rank_transform(torch.rand(8, 8))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stage1_mode": "greed"}, "model.init_args.stage1_mode: 'greed' is not one of ['greedy', 'joint']"),
        ({"rank_tau": 0}, "model.init_args.rank_tau must be a positive number, got 0"),
        ({"eps": -1e-3}, "model.init_args.eps must be a positive number, got -0.001"),
        ({"reduction": "sum"}, "model.init_args.reduction: 'sum' is not one of ['paper', 'mean']"),
        ({"net": {"input_init": "xavier"}}, "model.init_args.net.input_init: 'xavier' is not one of ['he', 'lapsrn']"),
        ({"net": {"irb_per_level": 1.5}}, "model.init_args.net.irb_per_level must be a positive integer, got 1.5"),
    ],
)  # fmt: skip
def test_a_bad_typed_method_option_names_the_key(options, message):
    """IRLapSRN's typed options are checked by SRMethod from Python as by jsonargparse (the net's by the registry)."""
    with pytest.raises(FieldError) as err:
        IRLapSRN(variant="irlapsrn_small", **options)
    assert str(err.value) == message


def test_rank_window_must_be_odd():
    """What no type says (odd, >= 3) is IRLapSRN's one explicit check."""
    with pytest.raises(ValueError) as err:
        IRLapSRN(variant="irlapsrn_small", rank_window=4)
    assert str(err.value) == "model.init_args.rank_window must be an odd integer >= 3 (3 or 5), got 4"


# ---- stage engine: frozen parts in eval mode (used by the greedy pretraining) ------------------------------


def test_frozen_modules_run_in_eval_mode_and_return_to_train_when_unfrozen():
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout()), nn.ReLU())
    freeze_first, everything = parse_stages(
        [{"name": "a", "epochs": 1, "trainable": ["1"]}, {"name": "b", "epochs": 1}]
    )
    apply_trainable(net, freeze_first)
    assert not net[0].training and not net[0].weight.requires_grad
    assert net[1].training and net[1][1].training  # trainable module, and its parameter-free child
    assert net[2].training  # parameter-free modules outside frozen ones keep the train mode
    apply_trainable(net, everything)
    assert all(m.training for m in net.modules()) and all(p.requires_grad for p in net.parameters())
    (keep,) = parse_stages([{"name": "a", "epochs": 1, "trainable": ["1"], "frozen_eval": False}])
    apply_trainable(net, keep)
    assert net[0].training and not net[0].weight.requires_grad
    with pytest.raises(StageConfigError, match=r"stages\.0\.frozen_eval must be true or false, got 'yes'"):
        parse_stages([{"name": "a", "epochs": 1, "frozen_eval": "yes"}])


def test_merge_stages_adds_lengths_keeps_the_first_settings_and_checks_its_input():
    a, b, c = parse_stages([
        {"name": "a", "epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1}, "trainable": ["x"]},
        {"name": "b", "epochs": 3, "optimizer": {"name": "sgd", "lr": 0.5}},
        {"name": "c", "steps": 7},
    ])
    (merged, last) = merge_stages([a, b, c], ["a", "b"], "ab", trainable=None)
    assert (merged.name, merged.epochs, merged.steps, merged.trainable) == ("ab", 5, None, None)
    assert merged.optimizer.lr == 0.1 and last is c
    # IRLapSRN x4 joint: two levels of 30 epochs, lr 0.1 x0.1 every 10 -> 60 epochs x0.1 every 20 (each greedy
    # level's lr range, 0.1 down to 1e-3; unstretched it fell to 1e-6)
    level = {"epochs": 30, "optimizer": {"name": "sgd", "lr": 0.1}, "lr_schedule": {"name": "step", "step_size": 10}}
    (joint,) = merge_stages(parse_stages([{"name": "l1", **level}, {"name": "l2", **level}]), ["l1", "l2"], "j")
    assert [lr_at(joint, epoch, 1) for epoch in (0, 19, 20, 40, 59)] == pytest.approx([0.1, 0.1, 1e-2, 1e-3, 1e-3])
    multi = {**level, "lr_schedule": {"name": "multistep", "milestones": [5, 25]}}
    (joint,) = merge_stages(parse_stages([{"name": "l1", **multi}, {"name": "l2", **multi}]), ["l1", "l2"], "j")
    assert joint.lr_schedule.milestones == (10, 50)
    with pytest.raises(StageConfigError, match="some count epochs and some steps"):
        merge_stages([a, b, c], ["b", "c"], "bc")
    with pytest.raises(StageConfigError, match="not consecutive"):
        merge_stages([a, b, c], ["a", "c"], "ac")
    with pytest.raises(StageConfigError, match=r"cannot merge stages \['a', 'z'\]"):
        merge_stages([a, b, c], ["a", "z"], "az")


def test_x3_runs_the_x4_pyramid_then_matlab_bicubic_and_says_so(caplog):
    from lit_sr.data.resize import imresize
    from lit_sr.methods.irlapsrn import IRLapSRN

    method = IRLapSRN(variant="irlapsrn_small", net={"channels": 8, "branch_width": 4}).eval()
    assert method.supported_scales == [2, 3, 4] and method.trainable_scales == [4]
    lr = torch.rand(1, 1, 10, 12)
    with caplog.at_level("INFO", logger="lit_sr.methods.lapsrn"), torch.no_grad():
        sr = method.super_resolve(lr, 3)
        method.super_resolve(lr, 3)
    torch.testing.assert_close(sr, imresize(method.net(lr, 4)[-1], size=(30, 36)))
    notes = [r.getMessage() for r in caplog.records if "x3" in r.getMessage()]
    assert notes == ["IRLapSRN x3: the x4 pyramid's output, MATLAB-bicubic-resized to the x3 size"]  # once


def _stages(**options) -> dict[str, tuple[str, float]]:
    adjustable = {"mode": "adjustable", "theta": 0.02}
    stages = [
        {"name": "pretrain_level_1", "epochs": 1, "targets": "level_1", "clip": adjustable,
         "optimizer": {"name": "sgd", "lr": 0.1}},
        {"name": "finetune", "epochs": 1, "targets": "hr"},
        {"name": "no_rank", "epochs": 1, "targets": "hr", "loss_weights": {"rank": 0.0}},
    ]
    method = IRLapSRN(variant="irlapsrn_x2", net={"irb_per_level": 1}, stages=stages, **options)
    return {s.name: (s.clip.mode, s.clip.value if s.clip.mode == "value" else s.clip.theta) for s in method.stages}


def test_a_small_tau_keeps_clipping_on_in_the_stages_that_train_the_rank_loss():
    # spec gotcha: small tau gives very large gradients near ties, so clipping stays on in stage 2 if tau < 0.01
    assert _stages(rank_tau=0.006)["finetune"] == ("value", 0.02 / 0.1)  # stage 1's bound at its lr: theta / lr
    assert _stages(rank_tau=0.006)["no_rank"][0] == "none"  # no rank loss, no reason
    assert _stages(rank_tau=0.01)["finetune"][0] == "none"  # the spec's bound: as written from 0.01 on
    assert _stages(rank_tau=0.006, small_tau_clip=False)["finetune"][0] == "none"
