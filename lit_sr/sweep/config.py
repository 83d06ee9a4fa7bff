"""Sweep files (``sweeps/<method>.yaml``, format in the README "Sweeps"): the search space and the trial configs.

A sweep file is layered on a preset (``experiments/<method>/<preset>.yaml``); ``presets.<name>`` overlays it.
It is parsed into the dataclasses below by jsonargparse (which names a bad key or type); the distributions
are Optuna's own (they reject bad bounds); samplers and pruners are any class, built from
``class_path``/``init_args``. Every ``params`` path must exist in the preset once ``fixed`` is applied;
a ``fixed`` path may add new keys (``model.init_args.net.depth`` in a preset without ``net``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from jsonargparse import ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveInt
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from lit_sr.errors import ConfigError
from lit_sr.paths import BENCHMARKS
from lit_sr.presets import preset_names, sweep_path
from lit_sr.presets import preset_path as find_preset
from lit_sr.typed import check_typed, type_hints

DEFAULT_ROOT = Path("runs") / "sweeps"
STORAGE_ENV = "LIT_SR_SWEEP_STORAGE"  # the storage URL when --storage is not given (it may hold a password)
#: set by the sweep for every trial; a sweep file may not set them (trainer.callbacks it may: the sweep appends its own)
RESERVED = ("run_dir", "trainer.logger", "trainer.default_root_dir")


class SweepError(ConfigError):
    """A sweep file or command is wrong; the message names the file, the key and the fix."""


@dataclass
class Param:
    """One knob: an Optuna distribution and the config paths it sets (all of them, to the same value)."""

    type: Literal["float", "int", "categorical"]
    paths: list[str]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def distribution(self) -> BaseDistribution:
        """Optuna's distribution of this knob (its own checks raise ``ValueError`` on bad bounds)."""
        if self.type == "categorical":
            return CategoricalDistribution([encode(c) for c in self.choices or []])
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs low and high")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError(f"type int needs whole numbers for low, high and step, got {self.low}, {self.high}, "
                             f"{self.step}")
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def __post_init__(self) -> None:
        self.distribution()  # a bad bound fails the parse, which names params.<knob>

    def value(self, sampled: Any) -> Any:
        """The config value of a sampled value: a list or mapping choice (CMSC's branch_kernels [3, 5]) as written."""
        same = (c for c in self.choices or [] if type(encode(c)) is type(sampled) and encode(c) == sampled)
        return next(same, sampled)  # by type too: 1 is not True, 0 not False


def encode(choice: Any) -> Any:
    """A categorical choice as Optuna holds it: a list or mapping as its JSON text ("[3, 5]"), a scalar as it is."""
    return json.dumps(choice) if isinstance(choice, (list, dict)) else choice


@dataclass
class Constraint:
    """Trials whose product of knobs exceeds ``max`` are pruned before training (e.g. MS-LapSRN's D * R <= 40)."""

    product: list[str]
    max: float


@dataclass
class Study:
    n_trials: PositiveInt = 10  # the study's total over all workers (may overshoot by at most workers - 1)
    metric: str = "val/psnr_y"  # objective and pruning metric: a validation metric, never a test set
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"class_path": "optuna.samplers.TPESampler"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"class_path": "optuna.pruners.MedianPruner"})
    name: str | None = None  # default <method>-<preset>
    enqueue_preset: bool = False  # trial 0 runs the preset's own values of the knobs
    max_params: PositiveInt | None = None  # trials with a larger network are pruned before training
    constraints: list[Constraint] = field(default_factory=list)
    heartbeat_interval: PositiveInt = 10  # seconds; a trial silent for grace_period is failed and retried
    grace_period: PositiveInt = 30
    max_retry: NonNegativeInt = 2
    stall_timeout: PositiveInt | None = 1800  # seconds without a batch (from its start): the trial is killed, FAIL
    score_from_stage: str | None = None  # a trial's value: its best metric in this stage or a later one
    top_k: PositiveInt = 5

    def __post_init__(self) -> None:  # plain ints: jsonargparse's PositiveInt is an int subclass YAML cannot write
        vars(self).update(check_typed(vars(self), type_hints(Study), "study."))


@dataclass
class SweepFile:
    method: str
    preset: str = "quick"
    study: Study = field(default_factory=Study)
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse(kind: Any, value: Any, where: str) -> Any:
    """``value`` parsed and instantiated as ``kind`` by jsonargparse (a dataclass, or a base class for
    ``{class_path, init_args}``); its error names the bad key, prefixed with ``where``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=kind)
    try:
        cfg = parser.parse_object({"obj": value})
        return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg).obj
    except Exception as err:  # noqa: BLE001 - jsonargparse/Optuna errors vary; name the key
        msg = str(err).replace('"obj.', '"').replace("Group 'obj' does not accept option", "unknown key")
        raise SweepError(f"{where}: {msg}".replace('Parser key "obj":', "").replace("\n  ", "\n")) from err


# ---- dotted config paths (list items by index) ------------------------------------------------------------
def get_path(cfg: Any, path: str) -> Any:
    """The value at ``path``; ``KeyError`` naming the first missing segment."""
    node, parts = cfg, path.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            there = sorted(map(str, node)) if isinstance(node, dict) else f"{type(node).__name__} {node!r}"[:80]
            raise KeyError(f"no {part!r} under {'.'.join(parts[:i]) or 'the top level'} (there: {there})")
    return node


def set_path(cfg: dict, path: str, value: Any, create: bool = False) -> None:
    """Set ``path``: an existing one, or a new last key under an existing mapping (``create``: under mappings
    made as needed, e.g. ``model.init_args.net.depth`` in a preset without ``net``)."""
    head, _, last = path.rpartition(".")
    if create and head:
        node = cfg
        for part in head.split("."):
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part] if isinstance(node, dict) else get_path(node, part)
    parent = get_path(cfg, head) if head else cfg
    if isinstance(parent, list):
        get_path(parent, last)
        parent[int(last)] = value
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KeyError(f"{head} holds {parent!r}, not a mapping")


# ---- the resolved sweep ---------------------------------------------------------------------------------
@dataclass
class Sweep:
    """A sweep file with its preset overlay applied and its preset config loaded (``base`` = preset + fixed)."""

    path: Path
    spec: SweepFile
    preset: str
    preset_path: Path
    base: dict[str, Any]
    study_name: str
    storage_url: str
    root: Path

    @property
    def study(self) -> Study:
        return self.spec.study

    @property
    def study_dir(self) -> Path:
        return self.root / self.study_name

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: p.distribution() for name, p in self.spec.params.items()}

    def sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The study's sampler, ``seed_offset`` added to its seed (if it has one)."""
        spec = copy.deepcopy(self.study.sampler)
        args = spec.setdefault("init_args", {})
        if isinstance(args.get("seed"), int):
            args["seed"] = int(args["seed"]) + seed_offset
        return parse(optuna.samplers.BaseSampler, spec, f"{self.path}: study.sampler")

    def pruner(self) -> optuna.pruners.BasePruner:
        return parse(optuna.pruners.BasePruner, self.study.pruner, f"{self.path}: study.pruner")

    def preset_values(self) -> dict[str, Any]:
        """The preset's own value of every knob (its first path) that the knob's distribution can hold."""
        out = {}
        for name, dist in self.distributions().items():
            value = get_path(self.base, self.spec.params[name].paths[0])
            if isinstance(dist, CategoricalDistribution):
                value = encode(value)
                ok = value in dist.choices
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high
            if ok:
                out[name] = value
        return out

    def violations(self, values: dict[str, Any]) -> list[str]:
        """The ``study.constraints`` that ``values`` (by knob name) break, as readable reasons."""
        products = [(c, math.prod(float(values[n]) for n in c.product)) for c in self.study.constraints]
        return [f"constraint {' * '.join(f'{n}({values[n]})' for n in c.product)} = {product:g} > {c.max:g}"
                for c, product in products if product > c.max]

    def trial_config(self, values: dict[str, Any], run_dir: Path, number: int, callback: dict[str, Any]) -> dict:
        """The preset with ``fixed`` and the trial's knob values, its run dir, W&B logger, a checkpoint chosen on
        ``study.metric`` (the trial's value is that checkpoint's score) and the Optuna callback."""
        cfg = copy.deepcopy(self.base)
        for name, value in values.items():
            for path in self.spec.params[name].paths:
                set_path(cfg, path, copy.deepcopy(self.spec.params[name].value(value)))
        cfg["run_dir"] = str(run_dir)
        trainer = cfg.setdefault("trainer", {})
        trainer["enable_progress_bar"] = False  # trial logs are files
        trainer["logger"] = {
            "class_path": "lit_sr.loggers.SRWandbLogger",
            "init_args": {"save_dir": str(run_dir), "group": self.study_name, "name": f"trial-{number}",
                          "tags": [self.spec.method]},
        }
        checkpoint = {"class_path": "lit_sr.callbacks.RunCheckpoint", "init_args": {
            "dirpath": str(run_dir / "checkpoints"), "monitor": self.study.metric,
            "mode": "max" if self.study.direction == "maximize" else "min", "carry_best": True,  # over retries
            "from_stage": self.study.score_from_stage}}
        trainer["callbacks"] = [*(trainer.get("callbacks") or []), checkpoint, callback]
        return cfg

    def settings(self) -> dict[str, Any]:
        """What the study stores as its user attribute ``sweep`` (for the report and the dashboard)."""
        return {"sweep_file": str(self.path), "method": self.spec.method, "preset": self.preset,
                "root": str(self.root), "study": asdict(self.study), "fixed": json.loads(json.dumps(self.spec.fixed)),
                "params": {n: p.paths for n, p in self.spec.params.items()}}


def _mappings(doc: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Each of ``keys`` that ``doc`` has holds a mapping (``where`` prefixes the key in the message)."""
    for key in keys:
        if not isinstance(doc.get(key) or {}, dict):
            raise SweepError(f"{where}{key} must be a mapping, got {doc[key]!r}")


def _merge(raw: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``presets.<name>`` over the file: each section merged key by key, each key's value replaced whole."""
    out = dict(raw)
    for key, value in overlay.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_sweep(
    path: str | Path,
    preset: str | None = None,
    n_trials: int | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    root: str | Path | None = None,
) -> Sweep:
    """Parse and check a sweep file; the keyword arguments are command-line overrides."""
    path = Path(path)
    if not path.is_file() and path.suffix in (".yaml", ".yml"):
        raise SweepError(f"sweep file not found: {path}")
    path = path if path.is_file() else sweep_path(str(path))  # a method name: sweeps/<method>.yaml
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with method, study, fixed, params")
    _mappings(raw, ("study", "fixed", "params", "presets"), f"{path}: ")
    _mappings(raw.get("presets") or {}, tuple(raw.get("presets") or {}), f"{path}: presets.")
    preset = preset or raw.get("preset") or "quick"
    overlay = (raw.get("presets") or {}).get(preset) or {}
    _mappings(overlay, ("study", "fixed", "params"), f"{path}: presets.{preset}.")
    where = f"{path} (with presets.{preset})" if overlay else str(path)
    raw = _merge({**raw, "preset": preset}, overlay)
    if n_trials is not None:
        raw["study"] = {**(raw.get("study") or {}), "n_trials": n_trials}
    if unknown := sorted(set(raw) - set(SweepFile.__dataclass_fields__)):
        raise SweepError(f"{where}: unknown key(s) {unknown}; a sweep file has {list(SweepFile.__dataclass_fields__)}")
    spec = parse(SweepFile, copy.deepcopy({**raw, "params": {}}), where)  # jsonargparse edits what it parses
    spec.fixed = raw.get("fixed") or {}  # as written: jsonargparse instantiates class_path values
    knobs = raw.get("params") or {}
    spec.params = {n: parse(Param, copy.deepcopy(knob), f"{where}: params.{n}") for n, knob in knobs.items()}
    for name, param in spec.params.items():
        if param.choices is not None:  # as written: jsonargparse reads the string "16" in a list[Any] as 16
            param.choices = list(knobs[name]["choices"])
    if not spec.params:
        raise SweepError(f"{path}: params is empty: give at least one knob to search")
    try:
        preset_path = find_preset(spec.method, preset)  # an unknown method: the message lists them
    except ConfigError as err:
        raise SweepError(f"{path}: {err}") from err
    if unknown := sorted(set(raw.get("presets") or {}) - set(preset_names(spec.method))):
        raise SweepError(f"{path}: presets.{unknown[0]} overlays no preset of {spec.method} (presets: "
                         f"{preset_names(spec.method)}); name it after experiments/{spec.method}/<preset>.yaml")
    if not re.fullmatch(r"val/(psnr_y|[^/]+/x\d+/(psnr_y|ssim_y))", spec.study.metric):
        raise SweepError(f"{where}: study.metric {spec.study.metric!r} is not a validation metric a run logs: use "
                         "val/psnr_y or val/<set>/x<scale>/psnr_y (or ssim_y) of a set in data.val_sets")
    base = yaml.safe_load(preset_path.read_text()) or {}
    for key, value in spec.fixed.items():
        if key.startswith(RESERVED):
            raise SweepError(f"{path}: fixed may not set {key!r}: the sweep sets {', '.join(RESERVED)} itself")
        try:
            set_path(base, key, copy.deepcopy(value), create=True)
        except KeyError as err:
            raise SweepError(f"{path}: fixed key {key!r} cannot be set in {preset_path}: {err.args[0]}") from err
    data = base.get("data") or {}
    named = {Path(str(v)).name: str(v) for v in data.get("val_sets") or []}  # a folder path is named by its folder
    tested = {*BENCHMARKS, *(Path(str(t)).name for t in data.get("test_sets") or [])}
    chosen_on = {named[n] for n in named.keys() & tested}
    if data.get("allow_selection_on_test") or chosen_on:
        what = sorted(chosen_on) or "data.allow_selection_on_test"
        raise SweepError(f"{path}: a sweep chooses on validation only, and {what} would choose on a benchmark; leave "
                         "data.val_sets unset (a hold-out of the training images)")
    held = (base.get("trainer") or {}).get("callbacks") or []
    if any(str(c.get("class_path") if isinstance(c, dict) else c).endswith(("ModelCheckpoint", "RunCheckpoint"))
           for c in held):
        raise SweepError(f"{path}: trainer.callbacks may not hold a ModelCheckpoint: the sweep chooses each trial's "
                         "checkpoint on study.metric (the trial's value is that checkpoint's score)")
    for name, param in spec.params.items():
        for p in param.paths:
            try:
                get_path(base, p)
            except KeyError as err:
                raise SweepError(
                    f"{path}: params.{name}.paths: {p!r} does not exist in {preset_path} (after 'fixed'): "
                    f"{err.args[0]}. Fix the path, or give it a value under 'fixed'"
                ) from err
    for c in spec.study.constraints:
        if unknown := [n for n in c.product if n not in spec.params]:
            raise SweepError(f"{path}: study.constraints names {unknown}, not knobs in params {sorted(spec.params)}")
        numbers = lambda knob: all(isinstance(v, (int, float)) for v in knob.choices or [])  # noqa: E731
        if words := [n for n in c.product if not numbers(spec.params[n])]:
            raise SweepError(f"{path}: study.constraints multiplies {words}, whose choices are not all numbers")
    if spec.study.grace_period <= spec.study.heartbeat_interval:
        raise SweepError(f"{path}: study.grace_period must exceed study.heartbeat_interval, or live trials get failed")
    root = Path(root) if root is not None else DEFAULT_ROOT
    sweep = Sweep(path, spec, preset, preset_path, base, study_name or spec.study.name or f"{spec.method}-{preset}",
                  storage or os.environ.get(STORAGE_ENV) or f"sqlite:///{root / 'optuna.db'}", root)
    sweep.sampler(), sweep.pruner()  # fail now, naming the file, rather than inside a worker
    return sweep
