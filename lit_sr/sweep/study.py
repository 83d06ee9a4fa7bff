"""Optuna studies on Optuna's own worker model (the README "Sweeps" explains the use).

``lit-sr sweep FILE --workers N`` creates the study (workers creating an empty database's schema at once race),
then is its worker, or runs itself N times with ``--workers 1``. A worker is ``study.optimize(objective)``
until the study is ``full``: a study may overshoot ``n_trials`` by ``workers - 1``. Each trial is a
child ``lit-sr fit --config trial-<n>/trial.yaml`` (Lightning's DDP launcher needs a process of its own) that
reports to the trial and prunes it (``lit_sr.sweep.trial``); its ``result.json`` gives the value or the reason.
A dead worker's trial is failed by ``RDBStorage``'s heartbeat and retried with the same params
(``RetryHeartbeatStaleTrialCallback``), from the dead trial's ``checkpoints/last.ckpt`` when there is one, keeping
its best score and checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import check_distribution_compatibility
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from lit_sr.sweep.config import STORAGE_ENV, Sweep, SweepError

WORKER_ENV = "LIT_SR_SWEEP_WORKER_PID"
RESULT_ATTRS = ("checkpoint", "wandb_run", "n_params", "reason")  # result.json -> user attributes
ALIVE = "alive"  # touched by the trial at every batch (lit_sr.sweep.trial); its mtime tells a hung trial
NOT_COUNTED = "not_counted"  # a trial stopped by a user error: it does not use up n_trials


class TrialFailed(RuntimeError):
    """A trial's child ended without a result (config error, crash): the trial is FAIL, the worker goes on."""


class TrialStalled(RuntimeError):
    """A trial made no progress for ``study.stall_timeout`` seconds: it is killed and ends FAIL."""


def make_storage(url: str, sweep: Sweep | None = None, create_tables: bool = False) -> RDBStorage:
    """An RDBStorage for ``url``; with ``sweep``, heartbeats on and dead workers' trials retried."""
    sqlite = url.startswith("sqlite")
    # SQLite: parallel writers wait instead of failing; a server: connections it dropped are replaced
    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}}
    if sweep is not None:  # experimental since Optuna 2.8, stable in use: no warning per worker
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        study = sweep.study
        kwargs.update(heartbeat_interval=study.heartbeat_interval, grace_period=study.grace_period,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=study.max_retry))
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        storage = RDBStorage(url, skip_table_creation=not create_tables, **kwargs)
    except Exception as err:  # noqa: BLE001 - driver errors vary; the message must name the URL
        cause = err.__cause__ or err  # Optuna wraps a refused connection in StorageInternalError
        raise SweepError(f"cannot open the Optuna storage {url.split('@')[-1]}: {type(cause).__name__}: "
                         f"{(str(cause).strip().splitlines() or ['(no message)'])[0]}") from err
    if sqlite:
        _serialize_sqlite(storage)
    return storage


def _serialize_sqlite(storage: RDBStorage) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (SQLAlchemy's documented pysqlite recipe).

    Upstream behaviour: Optuna claims a WAITING trial with a read-then-write
    (``RDBStorage.set_trial_state_values``: ``SELECT ... FOR UPDATE``, then ``state = RUNNING``). SQLite
    ignores ``FOR UPDATE`` and pysqlite runs the SELECT outside a transaction, so two workers can both
    read WAITING and both claim the trial: with optuna 5.0.0, 4 processes popping 40 enqueued trials made
    50-58 claims (tests/test_sweep.py checks this). Taking the write lock at BEGIN makes the claim atomic.
    """
    from sqlalchemy import event

    event.listen(storage.engine, "connect", lambda dbapi, _record: setattr(dbapi, "isolation_level", None))
    event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    storage.engine.dispose()  # connections opened before the listeners existed


def describe(trials: list[optuna.trial.FrozenTrial]) -> str:
    """``3 trials (2 COMPLETE, 1 PRUNED)``, or ``no trials``."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(Counter(t.state.name for t in trials).items()))
    return f"{len(trials)} trials ({counts})" if trials else "no trials"


def create_study(sweep: Sweep) -> optuna.Study:
    """Create (or load) the study and, on an empty one, enqueue the preset's own values as trial 0."""
    storage = make_storage(sweep.storage_url, sweep, create_tables=True)
    study = optuna.create_study(study_name=sweep.study_name, storage=storage, direction=sweep.study.direction,
                                load_if_exists=True)
    old = study.user_attrs.get("sweep") or {}
    was = {"direction": study.direction.name.lower(), "metric": old.get("study", {}).get("metric"),
           "method": old.get("method")}
    for key, value in {"direction": sweep.study.direction, "metric": sweep.study.metric,
                       "method": sweep.spec.method}.items():
        if was[key] not in (None, value):
            raise SweepError(f"study {sweep.study_name!r} exists with {key} {was[key]}; {sweep.path} asks {value}: "
                             "use another --study-name")
    fixed, was_fixed = sweep.settings()["fixed"], old.get("fixed", {})
    scored = any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))
    if scored and "fixed" in old and (changed := sorted(k for k in {*was_fixed, *fixed}
                                                        if was_fixed.get(k) != fixed.get(k))):  # fmt: skip
        raise SweepError(f"study {sweep.study_name!r} ran its trials with other fixed values of {changed} than "
                         f"{sweep.path} gives (budget, validation images): their values would not compare; use "
                         "another --study-name")
    if old and (stage := old.get("study", {}).get("score_from_stage")) != sweep.study.score_from_stage:
        raise SweepError(f"study {sweep.study_name!r} scored its trials with study.score_from_stage {stage}; "
                         f"{sweep.path} asks {sweep.study.score_from_stage}, whose values would not compare: use "
                         "another --study-name")
    searched = {name: dist for t in study.get_trials(deepcopy=False) for name, dist in t.distributions.items()}
    for name, dist in sweep.distributions().items():
        try:
            check_distribution_compatibility(searched.get(name, dist), dist)  # kind, log, categorical choices
        except ValueError as err:
            raise SweepError(f"study {sweep.study_name!r} searched {name} as {searched[name]}; {sweep.path} asks "
                             f"{dist} ({err}): use another --study-name") from err
    study.set_user_attr("sweep", sweep.settings())
    if sweep.study.enqueue_preset and not study.get_trials(deepcopy=False):
        values = sweep.preset_values()
        if missing := sorted(set(sweep.spec.params) - set(values)):  # e.g. CMSC's alpha: null (= 1/(S+1))
            print(f"study.enqueue_preset: the preset's {', '.join(missing)} is no value of its distribution; trial 0 "
                  "samples it", flush=True)
        study.enqueue_trial(values, skip_if_exists=True)  # machines starting together on an empty study
    return study


def _suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _resume_checkpoint(sweep: Sweep, study: optuna.Study, number: int) -> Path | None:
    """A retry of a dead worker's trial resumes from the newest ``last.ckpt`` of the trials it retries."""
    for dead in reversed(RetryHeartbeatStaleTrialCallback.retry_history(_frozen(study, number))):
        if (ckpt := sweep.study_dir / f"trial-{dead}" / "checkpoints" / "last.ckpt").is_file():
            return ckpt
    return None


def _wait(child: subprocess.Popen, alive: Path, limit: int | None) -> int:
    """The trial's exit code; ``TrialStalled`` once ``alive`` (touched by the trial at every batch) has not
    changed for ``limit`` seconds, from the trial's start. Only its mtimes are compared (a shared disk's clock
    may differ from this one)."""
    seen, since = None, time.monotonic()
    while True:
        try:
            return child.wait(timeout=None if limit is None else max(1.0, min(10.0, limit / 4)))
        except subprocess.TimeoutExpired:
            mtime = alive.stat().st_mtime_ns if alive.exists() else None
            if mtime != seen:
                seen, since = mtime, time.monotonic()
            elif time.monotonic() - since > limit:
                raise TrialStalled(f"no training or validation batch for {limit} s (study.stall_timeout): killed as "
                                   "hung, with every process it started; trial.log ends where it stopped") from None


def _kill(child: subprocess.Popen) -> None:
    """SIGKILL a trial and what it started (DDP ranks, DataLoader workers): the process group it leads."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(child.pid, signal.SIGKILL)
        else:
            child.kill()
    except ProcessLookupError:
        pass
    child.wait()


def _queue_again(trial: optuna.Trial, reason: str) -> None:
    """Queue a retry of ``trial`` with its params (it resumes from the trial's ``last.ckpt``); ``trial`` ends FAIL."""
    trial.set_user_attr("reason", reason)
    RetryHeartbeatStaleTrialCallback()(trial.study, _frozen(trial.study, trial.number))


def objective(sweep: Sweep):
    """The objective: one child ``lit-sr fit`` per trial; returns its best ``study.metric``."""

    def run(trial: optuna.Trial) -> float:
        for key in (*RESULT_ATTRS, "resumed_from", NOT_COUNTED):  # a retry starts with its original's attributes
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        values = {name: _suggest(trial, name, dist) for name, dist in sweep.distributions().items()}
        if broken := sweep.violations(values):  # outside the feasible region: never trained
            trial.set_user_attr("reason", "; ".join(broken))
            raise optuna.TrialPruned("; ".join(broken))
        run_dir = (sweep.study_dir / f"trial-{trial.number}").resolve()
        if run_dir.exists():  # a deleted study restarted under the same name: keep the old files aside
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        run_dir.mkdir(parents=True)
        result = run_dir / "result.json"
        callback = {"class_path": "lit_sr.sweep.trial.OptunaTrialCallback", "init_args": {
            "study": sweep.study_name, "trial": trial.number, "metric": sweep.study.metric,
            "pruner": sweep.study.pruner, "result": str(result), "max_params": sweep.study.max_params}}
        config = run_dir / "trial.yaml"
        config.write_text(yaml.safe_dump(sweep.trial_config(values, run_dir, trial.number, callback), sort_keys=False))
        cmd = [sys.executable, "-m", "lit_sr.cli", "fit", "--config", str(config)]
        if (ckpt := _resume_checkpoint(sweep, trial.study, trial.number)) is not None:
            cmd += ["--ckpt_path", str(ckpt)]
            trial.set_user_attr("resumed_from", str(ckpt))
        for key, value in {"run_dir": str(run_dir), "host": socket.gethostname(), "worker_pid": os.getpid()}.items():
            trial.set_user_attr(key, value)
        env = {**os.environ, STORAGE_ENV: sweep.storage_url, WORKER_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        with open(run_dir / "trial.log", "wb") as log:  # its own session: _kill reaches DDP ranks, loader workers
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        try:
            trial.set_user_attr("trial_pid", child.pid)
            code = _wait(child, run_dir / ALIVE, sweep.study.stall_timeout)
        except BaseException as stop:  # a hung trial, Ctrl-C: never leave a trial training behind
            _kill(child)
            if isinstance(stop, TrialStalled):
                trial.set_user_attr("reason", str(stop))
                raise TrialFailed(str(stop)) from None
            if isinstance(stop, KeyboardInterrupt):  # queued again: the next run resumes it from its last.ckpt
                _queue_again(trial, "interrupted (Ctrl-C); retried as a new trial by the next run")
            raise
        out = json.loads(result.read_text()) if result.is_file() else {"state": "fail", "reason": None}
        for key in RESULT_ATTRS:
            if out.get(key) is not None:
                trial.set_user_attr(key, out[key])
        if out["state"] == "complete":
            return out["value"]
        if out["state"] == "pruned":
            raise optuna.TrialPruned(out["reason"])
        if out["state"] == "interrupted":  # the trial alone got SIGTERM (its worker did not): this worker retries it
            _queue_again(trial, out["reason"])
            raise TrialFailed(out["reason"])
        lines = (run_dir / "trial.log").read_text(errors="replace").strip().splitlines()[-5:]
        reason = out["reason"] or f"trial process exited with code {code}: " + " | ".join(lines)
        trial.set_user_attr("reason", reason)
        if code == 2 and not result.is_file():  # `lit-sr: error: ...`, a config error: the next trials would too
            error = lines[-1].removeprefix("lit-sr: error: ") if lines else reason
            trial.set_user_attr(NOT_COUNTED, True)
            if "fixed_params" in _frozen(trial.study, trial.number).system_attrs:  # e.g. the preset's own values
                trial.study.enqueue_trial(trial.params)  # in range by construction: the fixed run tries them again
            raise SweepError(f"trial {trial.number} of study {sweep.study_name} stopped the sweep: {error}; fix "
                             f"{sweep.path} and run it again (with another --study-name if the fix changes "
                             "study.metric, direction or a knob's choices)")
        raise TrialFailed(reason)

    return run


def full(study: optuna.Study, n_trials: int) -> bool:
    """``n_trials`` trials started, failed ones too, and none is queued. A trial retried as another (its worker
    died, or Ctrl-C) counts once, in its retry; one stopped by a user error does not count.

    Optuna's ``MaxTrialsCallback`` stops at the count whether or not trials wait: with ``states=None`` a queued
    trial (``enqueue_preset``, a dead worker's retry) counts before it runs, and without WAITING the retries of
    several dead workers run one per restart. Here queued trials always run.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    counted = [t for t in trials if t.number not in retried and not t.user_attrs.get(NOT_COUNTED)]
    return len(counted) >= n_trials and all(t.state != TrialState.WAITING for t in trials)


def run_worker(sweep: Sweep, index: int = 0) -> int:
    """One worker of a created study: trials until it holds ``n_trials`` (retries of dead workers' trials first)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a worker prints one line per trial (a failure's reason)
    study = optuna.load_study(study_name=sweep.study_name, storage=make_storage(sweep.storage_url, sweep),
                              pruner=sweep.pruner())
    fail_stale_trials(study)  # a dead worker's trial becomes a WAITING retry now, before the count below
    trials = study.get_trials(deepcopy=False)
    # Seed + 1000 x worker index + trials so far: local workers, and machines joining later, draw different params.
    study.sampler = sweep.sampler(1000 * index + len(trials))
    if full(study, sweep.study.n_trials):
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        wait = (f"; trial(s) {running} are RUNNING: if their worker died, run this again {sweep.study.grace_period} s "
                "after it did to retry them") if running else ""
        print(f"study {sweep.study_name} holds its n_trials={sweep.study.n_trials}: nothing to run{wait}", flush=True)
        return 0

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = trial.state == TrialState.COMPLETE  # a PRUNED trial has a value too: its last report
        value = f"{sweep.study.metric} {trial.value:.4f}" if done else trial.user_attrs.get("reason")
        print(f"trial {trial.number} {trial.state.name}: {value}", flush=True)
        fail_stale_trials(study)  # a dead worker's trial is retried before this worker counts it as running
        if full(study, sweep.study.n_trials):
            study.stop()

    study.optimize(objective(sweep), catch=(TrialFailed,), callbacks=[after])
    return 0


def run_sweep(sweep: Sweep, workers: int = 1, index: int = 0) -> int:
    """Create the study and be its worker, or start this command ``workers`` times with ``--workers 1``;
    0 when all ended well."""
    study = create_study(sweep)
    print(f"study {sweep.study_name}: {describe(study.get_trials(deepcopy=False))} of n_trials="
          f"{sweep.study.n_trials}; trial files under {sweep.study_dir}/", flush=True)
    # `lit-sr sweep` itself, by its own module: importing lit_sr.cli (Lightning) would add seconds per worker.
    cmd = [sys.executable, "-m", "lit_sr.sweep.cli", str(sweep.path), "--preset", sweep.preset, "--study-name",
           sweep.study_name, "--root", str(sweep.root), "--n-trials", str(sweep.study.n_trials), "--no-report",
           "--spawned"]
    env = {**os.environ, STORAGE_ENV: sweep.storage_url}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))  # the cores, shared
    fail_stale_trials(study)  # first: a dead worker's trial, now a WAITING retry, leaves the study not full
    full_now = full(study, sweep.study.n_trials)  # one worker says so, rather than N
    indices = [index * workers + i for i in range(workers)] if workers > 1 and not full_now else []
    procs = [subprocess.Popen([*cmd, "--worker-index", str(i)], env=env) for i in indices]
    try:
        codes = [p.wait() for p in procs] if procs else [run_worker(sweep, index)]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: their running trials end FAIL
        codes = [p.wait() for p in procs]
        print(f"interrupted: run the same command again to resume the study {sweep.study_name}", flush=True)
        return 130
    for i, code in enumerate(codes):
        if code not in (0, 2):  # 2: the worker printed the user error that stopped it
            print(f"worker {i} ended with code {code}: its running trial is failed and retried "
                  f"{sweep.study.grace_period} s after its last heartbeat by the next worker (run the command again)")
    return 2 if 2 in codes else int(any(codes))  # 2: a user error stopped a worker
