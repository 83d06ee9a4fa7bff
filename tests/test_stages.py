"""The stage engine's pure parts: parsing errors, lr schedules, param groups, clipping."""

import re

import pytest
import torch
from torch import nn

from lit_sr.stages import (
    ClipSpec,
    OptimizerSpec,
    ScheduleSpec,
    StageConfigError,
    StagePlan,
    apply_trainable,
    build_optimizer,
    clip_gradients,
    lr_at,
    parse_stages,
    set_lr,
)


def _stage(**overrides):
    raw = {"name": "s", "epochs": 10, "optimizer": {"name": "sgd", "lr": 0.1}}
    raw.update(overrides)
    return raw


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(1, 2, 3)
        self.second = nn.Conv2d(2, 1, 3)


def test_parse_errors_name_the_key():
    with pytest.raises(StageConfigError, match=r"stages\.0\.optimizer\.name.*'sgdd'"):
        parse_stages([_stage(optimizer={"name": "sgdd", "lr": 0.1})])
    with pytest.raises(StageConfigError, match=r"stages\.1\.clip: unknown key\(s\) \['thetaa'\]"):
        parse_stages([_stage(), _stage(name="b", clip={"mode": "adjustable", "thetaa": 1})])
    with pytest.raises(StageConfigError, match=r"stages\.0: give exactly one of 'epochs' or 'steps'"):
        parse_stages([{"name": "x", "epochs": 1, "steps": 3}])
    with pytest.raises(StageConfigError, match=r"stages\.0\.clip\.theta must be a positive number"):
        parse_stages([_stage(clip={"mode": "adjustable", "theta": -1})])
    with pytest.raises(StageConfigError, match="stage names must be unique"):
        parse_stages([_stage(), _stage()])
    with pytest.raises(StageConfigError, match="stages is empty"):
        parse_stages([])
    # what jsonargparse makes of --model.init_args.stages.0.epochs 2: a key '0' inside stage 0
    with pytest.raises(StageConfigError, match=r"stages\.0: unknown key\(s\) \['0'\].*stages\.<i>\.<key> option is "
                       r"read as a key named <i>.*give the whole stages list in a second --config file"):
        parse_stages([_stage(**{"0": {"epochs": 2}})])


@pytest.mark.parametrize(("optimizer", "ignored"), [({"name": "adam", "momentum": 0.9}, "['momentum']"),
                                                    ({"name": "adamw", "nesterov": True}, "['nesterov']"),
                                                    ({"name": "sgd", "betas": [0.9, 0.99], "eps": 1e-6},
                                                     "['betas', 'eps']")])
def test_an_optimizer_key_the_optimizer_does_not_read_is_an_error(optimizer, ignored):
    with pytest.raises(StageConfigError, match=rf"stages\.0\.optimizer: {optimizer['name']} does not read "
                       rf"{re.escape(ignored)}; remove them"):
        parse_stages([_stage(optimizer={**optimizer, "lr": 1e-3})])


def test_the_stage_specs_check_their_typed_fields_when_built_directly():
    with pytest.raises(ValueError, match=r"^lr must be a positive number, got -1$"):
        OptimizerSpec(lr=-1)
    with pytest.raises(ValueError, match=r"^unit: 'epochs' is not one of \['epoch', 'step'\]$"):
        ScheduleSpec(unit="epochs")
    with pytest.raises(ValueError, match=r"^stages.0.lr_schedule.min_lr must be a number >= 0, got -0.1$"):
        parse_stages([_stage(lr_schedule={"min_lr": -0.1})])


def test_lr_schedules_with_floor():
    (step,) = parse_stages([_stage(lr_schedule={"name": "step", "step_size": 20, "gamma": 0.1})])
    assert [lr_at(step, e * 10, 10) for e in (0, 19, 20, 40, 79)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.0001]
    )
    (halving,) = parse_stages([_stage(lr_schedule={"name": "halving", "step_size": 50, "min_lr": 0.02})])
    assert [lr_at(halving, e, 1) for e in (0, 50, 100, 150)] == pytest.approx([0.1, 0.05, 0.025, 0.02])
    (multi,) = parse_stages([_stage(lr_schedule={"name": "multistep", "milestones": [2, 5], "gamma": 0.5})])
    assert [lr_at(multi, e, 1) for e in (0, 2, 4, 5)] == pytest.approx([0.1, 0.05, 0.05, 0.025])
    (cos,) = parse_stages([_stage(epochs=1, lr_schedule={"name": "cosine", "min_lr": 0.0})])
    assert [lr_at(cos, s, 100) for s in (0, 50, 100)] == pytest.approx([0.1, 0.05, 0.0], abs=1e-12)
    (steps,) = parse_stages(
        [
            {
                "name": "s",
                "steps": 30,
                "optimizer": {"lr": 1.0},
                "lr_schedule": {"name": "step", "unit": "step", "step_size": 10, "gamma": 0.5},
            }
        ]
    )
    assert [lr_at(steps, s, 1000) for s in (0, 9, 10, 29)] == pytest.approx([1.0, 1.0, 0.5, 0.25])


def test_plan_locates_stages_across_epochs_and_steps():
    stages = parse_stages([_stage(name="a", epochs=2), {"name": "b", "steps": 5}, _stage(name="c", epochs=1)])
    plan = StagePlan(stages, steps_per_epoch=10)
    assert plan.total_steps == 35
    assert plan.locate(0) == (0, 0) and plan.locate(19) == (0, 19)
    assert plan.locate(20) == (1, 0) and plan.locate(24) == (1, 4)
    assert plan.locate(25) == (2, 0) and plan.locate(35) is None


def test_param_groups_lr_multipliers_and_weight_decay():
    (stage,) = parse_stages(
        [
            _stage(
                optimizer={"name": "sgd", "lr": 0.2, "weight_decay": 1e-4},
                param_groups=[{"match": r"\.bias$", "lr_mult": 0.1, "weight_decay_mult": 0.0}],
            )
        ]
    )
    net = TwoLayer()
    opt = build_optimizer(net, stage)
    bias_group, default = opt.param_groups
    assert {id(p) for p in bias_group["params"]} == {id(net.first.bias), id(net.second.bias)}
    assert bias_group["lr"] == pytest.approx(0.02) and bias_group["weight_decay"] == 0.0
    assert default["lr"] == pytest.approx(0.2) and default["weight_decay"] == pytest.approx(1e-4)
    set_lr(opt, 0.01)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.01])


def test_trainable_prefixes_freeze_the_rest():
    (stage,) = parse_stages([_stage(trainable=["second"])])
    net = TwoLayer()
    apply_trainable(net, stage)
    assert not net.first.weight.requires_grad and net.second.weight.requires_grad
    opt = build_optimizer(net, stage)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2
    (bad,) = parse_stages([_stage(trainable=["third"])])
    with pytest.raises(StageConfigError, match="'third' matches no parameter"):
        apply_trainable(net, bad)


def test_adjustable_clipping_bounds_each_element_by_theta_over_group_lr():
    (stage,) = parse_stages(
        [
            _stage(
                optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0},
                param_groups=[{"match": r"\.bias$", "lr_mult": 0.1}],
                clip={"mode": "adjustable", "theta": 0.01},
            )
        ]
    )
    net = TwoLayer()
    opt = build_optimizer(net, stage)
    grad = torch.linspace(-1.0, 1.0, net.first.weight.numel()).reshape(net.first.weight.shape)
    net.first.weight.grad = grad.clone()
    net.first.bias.grad = torch.tensor([5.0, -0.05])
    bound = clip_gradients(opt, stage.clip)
    # weights: lr 0.1 -> bound 0.1; biases: lr 0.01 -> bound 1.0
    assert net.first.weight.grad.abs().max() == pytest.approx(0.1)
    torch.testing.assert_close(net.first.weight.grad, grad.clamp(-0.1, 0.1))
    torch.testing.assert_close(net.first.bias.grad, torch.tensor([1.0, -0.05]))
    assert bound == pytest.approx(0.1)
    # one SGD step then moves no weight by more than theta, whatever the lr
    before = net.first.weight.detach().clone()
    net.first.weight.grad = torch.full_like(grad, 1e6)
    clip_gradients(opt, stage.clip)
    opt.step()
    assert (net.first.weight.detach() - before).abs().max() == pytest.approx(0.01, rel=1e-5)
    set_lr(opt, 0.001)  # lr drops x100 -> gradient bound rises x100
    net.first.weight.grad = torch.full_like(grad, 1e6)
    assert clip_gradients(opt, stage.clip) == pytest.approx(10.0)


def test_adjustable_clipping_leaves_a_group_with_lr_0_alone():
    (stage,) = parse_stages([_stage(param_groups=[{"match": r"\.bias$", "lr_mult": 0.0}],
                                    clip={"mode": "adjustable", "theta": 0.01})])
    net = TwoLayer()
    opt = build_optimizer(net, stage)
    net.first.weight.grad = torch.full_like(net.first.weight, 5.0)
    net.first.bias.grad = torch.full_like(net.first.bias, 5.0)
    assert clip_gradients(opt, stage.clip) == pytest.approx(0.1)  # theta / lr of the weights; the biases: no bound
    assert net.first.weight.grad.max() == pytest.approx(0.1) and net.first.bias.grad.max() == 5.0


def test_norm_and_value_clipping():
    net = TwoLayer()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for p in net.parameters():
        p.grad = torch.full_like(p, 3.0)
    clip_gradients(opt, ClipSpec(mode="value", value=0.5))
    assert all(p.grad.max() == 0.5 for p in net.parameters())
    clip_gradients(opt, ClipSpec(mode="norm", value=1.0))
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))
    assert total == pytest.approx(1.0, rel=1e-4)
