"""Sweep files (``sweeps/<method>.yaml``): what an Optuna study searches and how every trial is built.

A sweep file names the experiment preset the trials build on, the study settings, the per-trial budget
and the search space. Every key below ``fixed`` and ``params`` is a real config path of the preset
(``lit-sr fit`` layout, list items by index), e.g.::

    method: cmsc                      # experiments/<method>/<preset>.yaml; the W&B tag of every trial
    preset: quick                     # default preset; --preset paper selects presets.paper below
    study:
      name: null                      # default <method>-<preset>
      n_trials: 8                     # the study total (see lit_sr.sweep.study), not per worker
      timeout: null                   # seconds per launch: no new trial starts after it
      metric: val/psnr_y              # the objective, maximised; also what the pruner watches
      direction: maximize
      sampler: {name: tpe, seed: 0, n_startup_trials: 4}    # or {name: random, seed: 0}
      pruner: {name: hyperband, min_resource: 1, reduction_factor: 3}   # or {name: median, ...} / {name: none}
      max_params: null                # prune trials whose network is larger (parameter count)
      constraints: []                 # e.g. [{product: [D, R], max: 40}]: pruned before training
      enqueue_preset: true            # trial 0 runs the preset's own values of the searched keys
      enqueue: []                     # further fixed trials, e.g. [{lr: 1.0e-3}] (names or paths)
    storage: {heartbeat_interval: 10, grace_period: 30, max_retry: 2}
    report: {top_k: 5}
    fixed:                            # set in every trial (the per-trial budget lives here)
      model.init_args.stages.0.epochs: 2
    params:                           # the search space: path -> distribution (name: short label)
      model.init_args.stages.0.optimizer.lr: {name: lr, type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.init_args.net.num_subnets: {name: S, type: int, low: 1, high: 4}
      model.init_args.net.kernel_pair: {type: categorical, choices: [[3, 3], [3, 5]]}
    presets:                          # per-preset overrides of any section above, merged key by key
      paper: {fixed: {model.init_args.stages.0.epochs: 20}}

Rules checked at load time, each error naming the sweep file and the key: a ``params`` key must exist
in the preset once ``fixed`` is applied; a ``fixed`` key may add a new leaf under an existing mapping
(e.g. ``model.init_args.net: {depth: 8}``) but its parent must exist. This module needs neither torch nor
Lightning, so workers that only schedule trials start fast.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path("runs") / "sweeps"
TRIAL_CALLBACK = "lit_sr.sweep.trial.OptunaTrialCallback"
LOGGER_CLASS = "lit_sr.loggers.SRWandbLogger"
#: keys every trial's config gets from the sweep itself; a sweep file may not set them.
RESERVED = ("run_dir", "trainer.logger", "trainer.callbacks", "trainer.default_root_dir")

_TOP_KEYS = {"method", "preset", "study", "storage", "report", "fixed", "params", "presets"}
_STUDY_KEYS = {
    "name",
    "n_trials",
    "timeout",
    "metric",
    "direction",
    "sampler",
    "pruner",
    "max_params",
    "enqueue_preset",
    "enqueue",
    "constraints",
}
_STORAGE_KEYS = {"url", "heartbeat_interval", "grace_period", "max_retry"}
_PARAM_KEYS = {"name", "type", "low", "high", "log", "step", "choices"}
_SAMPLERS = {"tpe": {"seed", "n_startup_trials", "multivariate", "constant_liar"}, "random": {"seed"}}
_PRUNERS = {
    "hyperband": {"min_resource", "max_resource", "reduction_factor"},
    "median": {"n_startup_trials", "n_warmup_steps", "interval_steps"},
    "none": set(),
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SweepError(ValueError):
    """A sweep file is wrong; the message names the file, the key and the fix."""


# ---- dotted config paths --------------------------------------------------------------------------------
def split_path(path: str) -> list[str | int]:
    """``model.init_args.stages.0.clip.theta`` -> ``['model', 'init_args', 'stages', 0, 'clip', 'theta']``."""
    if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
        raise SweepError(f"bad config path {path!r}: use dotted keys like model.init_args.stages.0.optimizer.lr")
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def _child(node: Any, part: str | int) -> tuple[bool, Any]:
    if isinstance(node, Mapping) and part in node:
        return True, node[part]
    if isinstance(node, Mapping) and isinstance(part, int) and str(part) in node:
        return True, node[str(part)]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    return False, None


def _describe(node: Any) -> str:
    if isinstance(node, Mapping):
        return f"keys there: {sorted(map(str, node))}"
    if isinstance(node, list):
        return f"a list of {len(node)} item(s), indices 0..{len(node) - 1}"
    return f"a value ({node!r}), not a mapping"


def get_path(cfg: Any, path: str) -> Any:
    """The value at ``path``; ``KeyError`` naming the first missing segment and what exists there."""
    node, done = cfg, []
    for part in split_path(path):
        found, child = _child(node, part)
        if not found:
            where = ".".join(map(str, done)) or "<top level>"
            raise KeyError(f"{path!r} does not exist: no {part!r} under {where} ({_describe(node)})")
        node = child
        done.append(part)
    return node


def set_path(cfg: Any, path: str, value: Any, create_leaf: bool = False) -> None:
    """Set ``path`` to ``value``; the key must exist, or only its last segment may be new (``create_leaf``)."""
    parts = split_path(path)
    parent = get_path(cfg, ".".join(map(str, parts[:-1]))) if len(parts) > 1 else cfg
    last = parts[-1]
    if isinstance(parent, list):
        if not isinstance(last, int) or not 0 <= last < len(parent):
            raise KeyError(f"{path!r} does not exist: index {last!r} outside {_describe(parent)}")
        parent[last] = value
    elif isinstance(parent, dict):
        if isinstance(last, int) and last not in parent and str(last) in parent:
            last = str(last)
        if last not in parent and not create_leaf:
            where = ".".join(map(str, parts[:-1])) or "<top level>"
            raise KeyError(f"{path!r} does not exist: no {last!r} under {where} ({_describe(parent)})")
        parent[last] = value
    else:
        raise KeyError(f"{path!r} does not exist: its parent holds {_describe(parent)}")


# ---- search space --------------------------------------------------------------------------------------
def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key: its path, its Optuna name and its distribution."""

    path: str
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def labels(self) -> list[Any]:
        """The categorical choices as Optuna stores them (lists/dicts become their JSON text)."""
        return [c if _primitive(c) else json.dumps(c) for c in self.choices]

    def decode(self, stored: Any) -> Any:
        """Optuna's stored value -> the config value (the inverse of ``labels``)."""
        if self.type == "categorical":
            for label, choice in zip(self.labels(), self.choices):
                if label == stored:
                    return copy.deepcopy(choice)
        return stored

    def encode(self, value: Any) -> Any:
        """A config value -> what Optuna stores (for enqueued trials)."""
        if self.type == "categorical" and not _primitive(value):
            return json.dumps(value)
        return value

    def suggest(self, trial: Any) -> Any:
        """Ask ``trial`` (an ``optuna.Trial``) for this parameter; returns the config value."""
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return self.decode(trial.suggest_categorical(self.name, self.labels()))


def _parse_param(path: str, raw: Any, where: str) -> ParamSpec:
    if not isinstance(raw, Mapping):
        raise SweepError(
            f"{where}: params.{path} must be a mapping like {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}, "
            f"got {raw!r}"
        )
    unknown = sorted(set(raw) - _PARAM_KEYS)
    if unknown:
        raise SweepError(f"{where}: params.{path}: unknown key(s) {unknown}; allowed: {sorted(_PARAM_KEYS)}")
    kind = raw.get("type")
    name = str(raw.get("name") or path)
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: params.{path}.choices must be a non-empty list for type categorical")
        extra = sorted(set(raw) & {"low", "high", "log", "step"})
        if extra:
            raise SweepError(f"{where}: params.{path}: {extra} do not apply to type categorical (use choices)")
        return ParamSpec(path, name, kind, choices=tuple(choices))
    if kind not in ("int", "float"):
        raise SweepError(f"{where}: params.{path}.type must be int, float or categorical, got {kind!r}")
    low, high, log, step = raw.get("low"), raw.get("high"), bool(raw.get("log", False)), raw.get("step")
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SweepError(f"{where}: params.{path}.{key} must be a number, got {value!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SweepError(f"{where}: params.{path}: low/high of an int parameter must be integers, got {low}, {high}")
    if not low < high:
        raise SweepError(f"{where}: params.{path}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SweepError(f"{where}: params.{path}: log scale needs low > 0, got {low}")
    if "choices" in raw:
        raise SweepError(f"{where}: params.{path}: choices apply only to type categorical")
    if step is not None and log:
        raise SweepError(f"{where}: params.{path}: step and log cannot be combined")
    return ParamSpec(path, name, kind, float(low), float(high), log, None if step is None else float(step))


# ---- the sweep -----------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """A parsed sweep file with its preset resolved; ``trial_config`` builds one trial's config."""

    path: Path
    method: str
    preset: str
    preset_path: Path
    study_name: str
    n_trials: int
    timeout: float | None
    metric: str
    direction: str
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    max_params: int | None
    enqueue: list[dict[str, Any]]
    constraints: list[dict[str, Any]]
    storage_url: str
    heartbeat_interval: int
    grace_period: int
    max_retry: int | None
    root: Path
    top_k: int
    fixed: dict[str, Any]
    params: list[ParamSpec]
    base: dict[str, Any] = field(repr=False)

    @property
    def study_dir(self) -> Path:
        """Where the study's trials and report live: ``<root>/<study name>``."""
        return self.root / self.study_name

    def settings(self) -> dict[str, Any]:
        """What the study stores as its user attribute ``sweep`` (for reports and the dashboard)."""
        return {
            "sweep_file": str(self.path),
            "method": self.method,
            "preset": self.preset,
            "preset_file": str(self.preset_path),
            "n_trials": self.n_trials,
            "metric": self.metric,
            "direction": self.direction,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "root": str(self.root),
            "params": {p.name: p.path for p in self.params},
            "top_k": self.top_k,
        }

    def preset_values(self) -> dict[str, Any]:
        """The preset's value (``fixed`` applied) of every searched key that its distribution can hold.

        By param name, as Optuna stores it; a value the distribution cannot express (e.g. ``alpha: null``
        meaning "the default rule") is left out, so the sampler picks that param.
        """
        out = {}
        for p in self.params:
            value = p.encode(get_path(self.base, p.path))
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (p.type == "categorical" and value in p.labels()) or (p.type != "categorical" and numeric):
                out[p.name] = value
        return out

    def decode(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna params (by name) -> config values (by name)."""
        specs = {p.name: p for p in self.params}
        return {k: specs[k].decode(v) if k in specs else v for k, v in stored.items()}

    def trial_config(self, values: Mapping[str, Any], run_dir: Path, number: int, spec_file: Path) -> dict[str, Any]:
        """The preset with ``fixed``, the trial's ``values`` (by param name), its run dir, W&B logger and callback."""
        cfg = copy.deepcopy(self.base)
        for p in self.params:
            if p.name in values:
                set_path(cfg, p.path, copy.deepcopy(values[p.name]))
        cfg["run_dir"] = str(run_dir)
        trainer = cfg.setdefault("trainer", {})
        trainer["logger"] = {
            "class_path": LOGGER_CLASS,
            "init_args": {
                "save_dir": str(run_dir),
                "group": self.study_name,
                "name": f"trial-{number}",
                "tags": [self.method],
            },
        }
        callbacks = list(trainer.get("callbacks") or [])
        callbacks.append({"class_path": TRIAL_CALLBACK, "init_args": {"spec": str(spec_file)}})
        trainer["callbacks"] = callbacks
        return cfg

    def violations(self, cfg: Mapping[str, Any]) -> list[str]:
        """The ``study.constraints`` a trial's config breaks (each a readable reason); empty when it is valid."""
        names = {p.name: p.path for p in self.params}
        out = []
        for c in self.constraints:
            values = [get_path(cfg, names.get(k, k)) for k in c["product"]]
            product = math.prod(float(v) for v in values)
            if product > c["max"]:
                shown = " * ".join(f"{k}({v})" for k, v in zip(c["product"], values))
                out.append(f"constraint {shown} = {product:g} > {c['max']:g}")
        return out

    def max_resource(self) -> int:
        """Validation epochs a full trial runs: what Hyperband's ``max_resource`` is by default."""
        cfg = self.base
        stages = get_path(cfg, "model.init_args.stages") if _has(cfg, "model.init_args.stages") else []
        bpe = _get_or(cfg, "data.batches_per_epoch", 500)
        epochs = 0
        for stage in stages or []:
            if isinstance(stage, Mapping) and stage.get("epochs") is not None:
                epochs += int(stage["epochs"])
            elif isinstance(stage, Mapping) and stage.get("steps") is not None:
                epochs += -(-int(stage["steps"]) // int(bpe))
        max_epochs = _get_or(cfg, "trainer.max_epochs", None)
        if isinstance(max_epochs, int) and max_epochs > 0:
            epochs = min(epochs, max_epochs) if epochs else max_epochs
        return max(epochs, 1)


def _has(cfg: Any, path: str) -> bool:
    try:
        get_path(cfg, path)
        return True
    except KeyError:
        return False


def _get_or(cfg: Any, path: str, default: Any) -> Any:
    return get_path(cfg, path) if _has(cfg, path) else default


def _merge(base: dict, override: Mapping) -> dict:
    """A ``presets.<name>`` section over the shared file: each section (study, fixed, params, ...) is merged
    key by key, and each key's value (a pruner, a param's distribution, a fixed value) is replaced whole."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _section(raw: Mapping, key: str, allowed: set[str] | None, where: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise SweepError(f"{where}: {key} must be a mapping, got {value!r}")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise SweepError(f"{where}: {key}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def _kind_spec(raw: Any, kinds: dict[str, set[str]], key: str, default: str, where: str) -> dict[str, Any]:
    spec = dict(raw or {"name": default})
    name = spec.pop("name", default)
    if name not in kinds:
        raise SweepError(f"{where}: study.{key}.name must be one of {sorted(kinds)}, got {name!r}")
    unknown = sorted(set(spec) - kinds[name])
    if unknown:
        raise SweepError(f"{where}: study.{key}: unknown key(s) {unknown} for {name}; allowed: {sorted(kinds[name])}")
    return {"name": name, **spec}


def find_preset(method: str, preset: str, sweep_path: Path) -> Path:
    """``experiments/<method>/<preset>.yaml`` (cwd, then the repository), or ``preset`` itself if it is a file."""
    direct = Path(preset)
    if direct.suffix in (".yaml", ".yml"):
        for candidate in (direct, sweep_path.parent / direct):
            if candidate.is_file():
                return candidate
    for root in (Path.cwd(), REPO):
        path = root / "experiments" / method / f"{preset}.yaml"
        if path.is_file():
            return path
    available = sorted(p.stem for p in (REPO / "experiments" / method).glob("*.yaml"))
    raise SweepError(
        f"{sweep_path}: preset {preset!r} of method {method!r} not found (experiments/{method}/{preset}.yaml); "
        f"available presets: {available or 'none - is the method folder experiments/' + method + '/ there?'}"
    )


def _int_or_none(value: Any, key: str, where: str, minimum: int) -> int | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not float(value).is_integer()
        or value < minimum
    ):
        raise SweepError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def load_sweep(
    path: str | Path,
    preset: str | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    study_name: str | None = None,
    root: str | Path | None = None,
    timeout: float | None = None,
) -> Sweep:
    """Parse and check a sweep file; the keyword arguments override the file (command-line options)."""
    path = Path(path)
    if not path.is_file():
        available = sorted(p.name for p in (REPO / "sweeps").glob("*.yaml"))
        raise SweepError(f"sweep file not found: {path} (available in sweeps/: {available})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid YAML: {err}") from err
    where = str(path)
    if not isinstance(raw, Mapping):
        raise SweepError(f"{where} must be a mapping with at least 'method' and 'params'")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    method = raw.get("method")
    if not isinstance(method, str) or not method:
        raise SweepError(f"{where}: 'method' must name the experiments/<method>/ folder, e.g. method: cmsc")
    preset = str(preset or raw.get("preset") or "quick")
    presets = _section(raw, "presets", None, where)
    if preset in presets:
        override = presets[preset] or {}
        bad = sorted(set(override) - (_TOP_KEYS - {"method", "preset", "presets"}))
        if not isinstance(override, Mapping) or bad:
            raise SweepError(f"{where}: presets.{preset} may override study/storage/report/fixed/params, not {bad}")
        raw = _merge(dict(raw), override)
    preset_path = find_preset(method, preset, path)

    study = _section(raw, "study", _STUDY_KEYS, where)
    store = _section(raw, "storage", _STORAGE_KEYS, where)
    report = _section(raw, "report", {"top_k"}, where)
    fixed = _section(raw, "fixed", None, where)
    params_raw = _section(raw, "params", None, where)
    if not params_raw:
        raise SweepError(f"{where}: params is empty: give at least one config path to search")

    name = study_name or study.get("name") or f"{method}-{Path(preset).stem}"
    if not _NAME.match(str(name)):
        raise SweepError(f"{where}: study name {name!r} may only hold letters, digits, '_', '.', '-'")
    total = n_trials if n_trials is not None else study.get("n_trials", 10)
    total = _int_or_none(total, "study.n_trials (--n-trials)", where, 1)
    timeout = timeout if timeout is not None else study.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise SweepError(f"{where}: study.timeout must be a positive number of seconds or null, got {timeout!r}")
    direction = study.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise SweepError(f"{where}: study.direction must be maximize or minimize, got {direction!r}")
    sampler = _kind_spec(study.get("sampler"), _SAMPLERS, "sampler", "tpe", where)
    pruner = _kind_spec(study.get("pruner"), _PRUNERS, "pruner", "hyperband", where)

    try:
        base = yaml.safe_load(preset_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{preset_path} is not valid YAML: {err}") from err
    base.setdefault("trainer", {}).setdefault("enable_progress_bar", False)  # trial logs are files
    for key, value in fixed.items():
        _check_reserved(key, "fixed", where)
        try:
            set_path(base, key, copy.deepcopy(value), create_leaf=True)
        except (KeyError, SweepError) as err:
            raise SweepError(f"{where}: fixed key {key!r} cannot be set in {preset_path}: {_msg(err)}") from err
    params = []
    for key, spec in params_raw.items():
        _check_reserved(key, "params", where)
        try:
            get_path(base, key)
        except (KeyError, SweepError) as err:
            raise SweepError(
                f"{where}: params key {key!r} is not in the experiment {preset_path} (after 'fixed'): {_msg(err)}. "
                f"Fix the path, or give the key a value under 'fixed' first"
            ) from err
        params.append(_parse_param(key, spec, where))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise SweepError(f"{where}: param names must be unique, got {names}")

    root = Path(root) if root is not None else DEFAULT_ROOT
    url = storage or store.get("url") or f"sqlite:///{root / 'optuna.db'}"
    sweep = Sweep(
        path=path,
        method=method,
        preset=preset,
        preset_path=preset_path,
        study_name=str(name),
        n_trials=total,
        timeout=None if timeout is None else float(timeout),
        metric=str(study.get("metric", "val/psnr_y")),
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        max_params=_int_or_none(study.get("max_params"), "study.max_params", where, 1),
        enqueue=[],
        constraints=[],
        storage_url=str(url),
        heartbeat_interval=_int_or_none(store.get("heartbeat_interval", 10), "storage.heartbeat_interval", where, 1),
        grace_period=_int_or_none(store.get("grace_period", 30), "storage.grace_period", where, 1),
        max_retry=_int_or_none(store.get("max_retry", 2), "storage.max_retry", where, 0),
        root=root,
        top_k=_int_or_none(report.get("top_k", 5), "report.top_k", where, 1),
        fixed=fixed,
        params=params,
        base=base,
    )
    if sweep.grace_period <= sweep.heartbeat_interval:
        raise SweepError(
            f"{where}: storage.grace_period ({sweep.grace_period}) must exceed storage.heartbeat_interval "
            f"({sweep.heartbeat_interval}), or live trials get failed"
        )
    if sweep.pruner["name"] == "hyperband":
        sweep.pruner.setdefault("max_resource", sweep.max_resource())
    sweep.enqueue = _enqueue_list(sweep, study, where)
    sweep.constraints = _constraints(sweep, study.get("constraints"), where)
    return sweep


def _constraints(sweep: Sweep, raw: Any, where: str) -> list[dict[str, Any]]:
    """``[{product: [param name or config path, ...], max: number}]``, every key checked."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SweepError(f"{where}: study.constraints must be a list like [{{product: [D, R], max: 40}}]")
    names = {p.name for p in sweep.params}
    out = []
    for i, c in enumerate(raw):
        ok = isinstance(c, Mapping) and set(c) == {"product", "max"} and isinstance(c["product"], list)
        if not ok or not c["product"] or isinstance(c["max"], bool) or not isinstance(c["max"], (int, float)):
            raise SweepError(f"{where}: study.constraints.{i} must be {{product: [names or paths], max: number}}")
        for key in c["product"]:
            if key not in names:
                try:
                    get_path(sweep.base, key)
                except (KeyError, SweepError) as err:
                    raise SweepError(
                        f"{where}: study.constraints.{i}: {key!r} is neither a searched param ({sorted(names)}) "
                        f"nor a config path of {sweep.preset_path}: {_msg(err)}"
                    ) from err
        out.append({"product": [str(k) for k in c["product"]], "max": float(c["max"])})
    return out


def _enqueue_list(sweep: Sweep, study: Mapping, where: str) -> list[dict[str, Any]]:
    by_path = {p.path: p for p in sweep.params}
    by_name = {p.name: p for p in sweep.params}
    out = [sweep.preset_values()] if study.get("enqueue_preset", False) else []
    items = study.get("enqueue") or []
    if not isinstance(items, list):
        raise SweepError(f"{where}: study.enqueue must be a list of {{param: value}} mappings")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise SweepError(f"{where}: study.enqueue.{i} must be a mapping of param name or path to value")
        values = {}
        for key, value in item.items():
            spec = by_name.get(key) or by_path.get(key)
            if spec is None:
                raise SweepError(
                    f"{where}: study.enqueue.{i}: {key!r} is not a searched param; known: {sorted(by_name)}"
                )
            values[spec.name] = spec.encode(value)
        out.append(values)
    return out


def _check_reserved(key: str, section: str, where: str) -> None:
    for reserved in RESERVED:
        if key == reserved or key.startswith(reserved + "."):
            raise SweepError(f"{where}: {section} may not set {key!r}: the sweep sets {reserved} for every trial")


def _msg(err: Exception) -> str:
    return err.args[0] if isinstance(err, KeyError) and err.args else str(err)
