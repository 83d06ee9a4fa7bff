"""Stages: a method's training schedule as data.

A stage is one phase of training read from YAML (``model.init_args.stages`` in a LightningCLI config)::

    - name: train
      epochs: 80                       # or steps: 20000
      optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}
      lr_schedule: {name: step, step_size: 20, gamma: 0.1, min_lr: 0.0}   # unit: epoch (default) or step
      clip: {mode: adjustable, theta: 0.01}   # none | norm (value) | value (value) | adjustable (theta)
      param_groups: [{match: '\\.bias$', lr_mult: 0.1}]   # regex on parameter names, first match wins
      trainable: [levels.0]            # module-name prefixes; omitted = everything trains
      frozen_eval: true                # modules whose parameters are all frozen run in eval mode (default)
      loss_weights: {image: 1.0}       # read by the method's loss
      targets: null                    # free-form tag read by the method (e.g. downsampled_hr)

This module is pure: parsing with clear errors, optimizer construction, the lr at a step, gradient clipping.
The stage dataclasses are typed (``Literal``, ``PositiveFloat``, ...); their ``__post_init__`` checks every field
against its hint (``lit_sr.typed``), and :func:`parse_stage` names the path of a bad key.
``lit_sr.methods.base.SRMethod`` hooks it into Lightning (switching, logging, resuming).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from lit_sr.typed import FieldError, check_typed, type_hints

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class StageConfigError(ValueError):
    """A stage key or value is wrong; the message names its config path."""


def _check(spec: object) -> None:
    """``__post_init__`` of every spec: each field against its type hint (``lit_sr.typed``)."""
    check_typed({f.name: getattr(spec, f.name) for f in fields(spec)}, type_hints(type(spec)))


@dataclass(frozen=True)
class OptimizerSpec:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.1
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    nesterov: bool = False

    __post_init__ = _check


@dataclass(frozen=True)
class ScheduleSpec:
    name: Literal["constant", "step", "halving", "multistep", "cosine"] = "constant"
    step_size: PositiveInt = 1
    unit: Literal["epoch", "step"] = "epoch"
    milestones: tuple[int, ...] = ()
    gamma: PositiveFloat = 0.1
    min_lr: NonNegativeFloat = 0.0

    __post_init__ = _check


@dataclass(frozen=True)
class ClipSpec:
    mode: Literal["none", "norm", "value", "adjustable"] = "none"  # adjustable uses theta; norm and value, value
    theta: PositiveFloat = 0.01
    value: PositiveFloat = 1.0

    __post_init__ = _check


@dataclass(frozen=True)
class ParamGroupSpec:
    match: str
    lr_mult: NonNegativeFloat = 1.0
    weight_decay_mult: NonNegativeFloat = 1.0

    def __post_init__(self) -> None:
        _check(self)
        try:
            re.compile(self.match)
        except re.error as err:
            raise FieldError(f"match: bad regex {self.match!r}: {err}") from err


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: PositiveInt | None = None
    steps: PositiveInt | None = None
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    lr_schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    clip: ClipSpec = field(default_factory=ClipSpec)
    param_groups: tuple[ParamGroupSpec, ...] = ()
    trainable: tuple[str, ...] | None = None
    frozen_eval: bool = True
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    targets: str | None = None

    def __post_init__(self) -> None:
        _check(self)
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"give exactly one of 'epochs' or 'steps' (stage {self.name!r})")

    def length_steps(self, steps_per_epoch: int) -> int:
        return self.steps if self.steps is not None else self.epochs * steps_per_epoch


def _build(cls, raw, path: str):
    """``cls(**raw)``; an unknown key or a value its type hint rejects is an error naming its path."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise StageConfigError(f"{path} must be a mapping of {[f.name for f in fields(cls)]}, got {raw!r}")
    known = {f.name for f in fields(cls)}
    if unknown := sorted(set(raw) - known):
        hint = ("; a --model.init_args.stages.<i>.<key> option is read as a key named <i> (jsonargparse sets no "
                "list item from the command line): give the whole stages list in a second --config file"
                ) if any(str(k).isdigit() for k in unknown) else ""
        raise StageConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(known)}{hint}")
    try:
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in raw.items()})
    except FieldError as err:
        raise StageConfigError(f"{path}.{err}") from err
    except (TypeError, ValueError) as err:
        raise StageConfigError(f"{path}: {err}") from err


def parse_stage(raw: Mapping, path: str = "stages.0") -> Stage:
    """One stage from its YAML mapping; every mistake names its path, e.g. ``stages.1.clip.mode``."""
    if isinstance(raw, Stage):
        return raw
    if not isinstance(raw, Mapping):
        raise StageConfigError(f"{path} must be a mapping with at least 'name' and 'epochs' or 'steps'")
    raw = {key: value for key, value in raw.items() if value is not None}  # null: the default
    optimizer = raw.get("optimizer")
    if isinstance(optimizer, Mapping):
        name = optimizer.get("name", OptimizerSpec.name)
        if ignored := sorted(set(optimizer) & ({"betas", "eps"} if name == "sgd" else {"momentum", "nesterov"})):
            raise StageConfigError(f"{path}.optimizer: {name} does not read {ignored}; remove them (sgd reads "
                                   "momentum and nesterov, adam and adamw read betas and eps)")
    for key, cls in {"optimizer": OptimizerSpec, "lr_schedule": ScheduleSpec, "clip": ClipSpec}.items():
        if key in raw:
            raw[key] = _build(cls, raw[key], f"{path}.{key}")
    if raw.get("param_groups"):
        raw["param_groups"] = [_build(ParamGroupSpec, g, f"{path}.param_groups.{i}")
                               for i, g in enumerate(raw["param_groups"])]
    if "name" not in raw:
        raise StageConfigError(f"{path}.name is missing: every stage needs a name")
    return _build(Stage, raw, path)


def parse_stages(raw: Iterable[Mapping] | None, path: str = "stages") -> list[Stage]:
    """The ordered list of stages; an empty or missing list is an error naming ``path``."""
    if raw is None or isinstance(raw, (str, bytes)) or not list(raw):
        raise StageConfigError(f"{path} is empty: a method needs at least one training stage")
    stages = [parse_stage(s, f"{path}.{i}") for i, s in enumerate(raw)]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise StageConfigError(f"{path}: stage names must be unique, got {names}")
    return stages


def merge_stages(stages: list[Stage], names: Sequence[str], name: str, **changes) -> list[Stage]:
    """Replace the consecutive stages ``names`` by one stage ``name`` as long as all of them together.

    The merged stage keeps the first one's settings (optimizer, clip, ...) with ``changes`` applied (e.g.
    ``trainable=None``); lengths add up (all must count epochs, or all steps), and a step or multistep lr
    schedule stretches with them (``step_size`` and ``milestones`` times the number merged), so the lr falls
    over the whole as it falls over each part. Used to run several phases as one, e.g. IRLapSRN's joint
    pretraining of every pyramid level instead of one stage per level.
    """
    index = [i for i, s in enumerate(stages) if s.name in names]
    if sorted(s.name for s in stages if s.name in names) != sorted(names) or not index:
        raise StageConfigError(f"cannot merge stages {list(names)}: the stages are {[s.name for s in stages]}")
    if index != list(range(index[0], index[0] + len(index))):
        raise StageConfigError(f"cannot merge stages {list(names)}: they are not consecutive")
    parts = [stages[i] for i in index]
    if all(s.epochs is not None for s in parts):
        length = {"epochs": sum(s.epochs for s in parts), "steps": None}
    elif all(s.steps is not None for s in parts):
        length = {"steps": sum(s.steps for s in parts), "epochs": None}
    else:
        raise StageConfigError(f"cannot merge stages {list(names)}: some count epochs and some steps")
    schedule = parts[0].lr_schedule
    schedule = replace(schedule, step_size=schedule.step_size * len(parts),
                       milestones=tuple(m * len(parts) for m in schedule.milestones))
    merged = replace(parts[0], name=name, lr_schedule=schedule, **length, **changes)
    return [*stages[: index[0]], merged, *stages[index[-1] + 1 :]]


class StagePlan:
    """Where each stage starts, in optimizer steps, for a given epoch length."""

    def __init__(self, stages: list[Stage], steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.stages = stages
        self.steps_per_epoch = steps_per_epoch
        self.starts: list[int] = []
        total = 0
        for stage in stages:
            self.starts.append(total)
            total += stage.length_steps(steps_per_epoch)
        self.total_steps = total

    def locate(self, global_step: int) -> tuple[int, int] | None:
        """(stage index, step inside that stage) at ``global_step``; None once every stage is done."""
        if global_step >= self.total_steps:
            return None
        index = max(i for i, start in enumerate(self.starts) if start <= global_step)
        return index, global_step - self.starts[index]

    def lr(self, global_step: int) -> float:
        located = self.locate(min(global_step, self.total_steps - 1))
        index, step = located
        return lr_at(self.stages[index], step, self.steps_per_epoch)


def lr_at(stage: Stage, step_in_stage: int, steps_per_epoch: int) -> float:
    """Base learning rate (before group multipliers) ``step_in_stage`` optimizer steps into ``stage``."""
    base, s = stage.optimizer.lr, stage.lr_schedule
    t = step_in_stage if s.unit == "step" else step_in_stage // steps_per_epoch
    if s.name == "constant":
        lr = base
    elif s.name in ("step", "halving"):
        gamma = 0.5 if s.name == "halving" else s.gamma
        lr = base * gamma ** (t // s.step_size)
    elif s.name == "multistep":
        lr = base * s.gamma ** sum(1 for m in s.milestones if t >= m)
    else:  # cosine, continuous in steps
        total = stage.length_steps(steps_per_epoch)
        frac = min(step_in_stage / max(total, 1), 1.0)
        lr = s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
    return max(lr, s.min_lr)


def apply_trainable(net: nn.Module, stage: Stage) -> None:
    """Freeze every parameter outside the stage's ``trainable`` prefixes (all train when it is unset).

    With ``frozen_eval`` (the default) every module whose parameters are all frozen is put in eval mode (its
    BN / dropout behave as at inference, as a frozen part must); everything else is in train mode. Lightning
    keeps these per-module modes across validation.
    """
    names = [n for n, _ in net.named_parameters()]
    if stage.trainable is not None:
        for prefix in stage.trainable:
            if not any(n == prefix or n.startswith(prefix + ".") for n in names):
                raise StageConfigError(
                    f"stage {stage.name!r}: trainable prefix {prefix!r} matches no parameter of the network; "
                    f"top-level modules are {sorted({n.split('.')[0] for n in names})}"
                )
    for name, p in net.named_parameters():
        p.requires_grad_(
            stage.trainable is None
            or any(name == pre or name.startswith(pre + ".") for pre in stage.trainable)
        )
    net.train()
    if stage.frozen_eval:
        for module in net.modules():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


def build_optimizer(net: nn.Module, stage: Stage) -> torch.optim.Optimizer:
    """The stage's optimizer over the trainable parameters, one group per ``param_groups`` rule plus the rest.

    Each group records ``lr_mult`` so :func:`set_lr` can apply the stage's schedule to every group.
    """
    opt = stage.optimizer
    buckets: list[list[nn.Parameter]] = [[] for _ in range(len(stage.param_groups) + 1)]
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        index = next(
            (i for i, g in enumerate(stage.param_groups) if re.search(g.match, name)), len(stage.param_groups)
        )
        buckets[index].append(p)
    specs = [*stage.param_groups, ParamGroupSpec(match="", lr_mult=1.0, weight_decay_mult=1.0)]
    groups = [
        {
            "params": params,
            "lr": opt.lr * spec.lr_mult,
            "lr_mult": spec.lr_mult,
            "weight_decay": opt.weight_decay * spec.weight_decay_mult,
            "group_name": spec.match or "default",
        }
        for spec, params in zip(specs, buckets)
        if params
    ]
    if not groups:
        raise StageConfigError(f"stage {stage.name!r} has no trainable parameters")
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    return OPTIMIZERS[opt.name](groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` times its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


@torch.no_grad()
def clip_gradients(optimizer: torch.optim.Optimizer, clip: ClipSpec) -> float | None:
    """Clip the loss gradients before the optimizer step; returns the bound used (for logging).

    ``adjustable`` is VDSR's rule: every gradient element to [-theta/lr, theta/lr] with the group's current lr,
    so one step moves a weight by at most theta whatever the lr. ``norm`` clips the global L2 norm to ``value``;
    ``value`` clamps elements to [-value, value].
    """
    if clip.mode == "none":
        return None
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if clip.mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, clip.value)
        return clip.value
    if clip.mode == "value":
        torch.nn.utils.clip_grad_value_(params, clip.value)
        return clip.value
    bounds = []
    for group in optimizer.param_groups:
        if group["lr"] == 0:  # lr_mult 0: the step does not move these weights, whatever their gradient
            continue
        bound = clip.theta / group["lr"]
        bounds.append(bound)
        for p in group["params"]:
            if p.grad is not None:
                p.grad.clamp_(-bound, bound)
    return min(bounds, default=None)
