"""Optuna studies: storage, the study's trial slots, local worker processes and the trial child processes.

Processes (``lit-sr sweep sweeps/cmsc.yaml --workers 2``)::

    parent   creates the storage schema and the study, tops up its trial slots, starts N workers,
             waits, then writes the report (lit_sr.sweep.report)
    worker   claims one WAITING trial at a time, samples its params, writes the trial's config and runs
             it as a child process; records the trial's heartbeat meanwhile; tells Optuna the outcome
    child    ``python -m lit_sr.cli fit --config <run_dir>/trial.yaml``: a normal ``lit-sr fit`` whose
             config adds the W&B logger (group = study, name = trial-<n>) and
             ``lit_sr.sweep.trial.OptunaTrialCallback`` (pruning, objective, result file)

``n_trials`` is the study total, exact with any number of workers on any number of machines: the study
holds ``n_trials`` slots, and a slot is a trial that is COMPLETE, PRUNED, FAIL, RUNNING or WAITING. A
launch tops the study up with empty WAITING trials (under a lock: a file lock for SQLite, an advisory
lock for PostgreSQL) and a worker only ever runs a WAITING trial it claimed atomically
(WAITING -> RUNNING in the storage), so no worker creates extra trials and no trial runs twice. The one
exception: a FAIL left by a dead worker (failed by heartbeat) does not count, because Optuna's
``RetryHeartbeatStaleTrialCallback`` re-enqueued its params as a new WAITING trial that takes its slot.
A diverging trial is PRUNED and a crashing one FAIL, both with the reason in the user attribute
``reason``; they count (a broken config cannot loop forever). Running the same command again resumes:
the top-up adds slots only up to ``n_trials``.

Dead workers: a worker owns its trial's process group (``start_new_session``); on SIGTERM/SIGINT/SIGHUP
and at exit it kills that group, fails the trial with the reason and re-enqueues its params; a SIGKILLed
worker's child dies through PR_SET_PDEATHSIG (Linux), and its RUNNING trial is failed by heartbeat
(``storage.grace_period`` seconds after the last beat) and retried as a new trial with the same params.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from lit_sr.sweep.space import Sweep, SweepError

STORAGE_ENV = "LIT_SR_SWEEP_STORAGE"  # the storage URL reaches workers and trials here, never on a command line
PARENT_ENV = "LIT_SR_SWEEP_PARENT"
RESULT_FILE = "result.json"
SPEC_FILE = "trial_spec.json"
CONFIG_FILE = "trial.yaml"
LOG_FILE = "trial.log"
KILL_GRACE_S = 10.0
INTERRUPTED = 130  # run_sweep's code when stopped by SIGINT/SIGTERM (running trials re-enqueued)
#: what the trial's result file gives its Optuna user attributes
RESULT_ATTRS = ("wandb_run", "wandb_dir", "checkpoint", "n_params", "best_epoch", "final_value")


def _quiet(fn, *args, **kwargs):
    """Call ``fn`` without Optuna's ExperimentalWarning (heartbeat and retry are marked experimental)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return fn(*args, **kwargs)


# ---- storage, sampler, pruner --------------------------------------------------------------------------
def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URL (None for other backends)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        raise SweepError(f"storage {url!r}: workers need a database file, e.g. sqlite:///runs/sweeps/optuna.db")
    return Path(path)


def make_storage(url: str, sweep: Sweep | None = None, create_tables: bool = False) -> RDBStorage:
    """An RDBStorage for ``url``; with ``sweep``, heartbeat on and dead workers' trials retried.

    Only the parent creates the tables (``create_tables``): two processes creating the schema of an
    empty database at once race, and one dies.
    """
    kwargs: dict[str, Any] = {}
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # parallel writers wait instead of failing
    elif url.startswith("postgresql"):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if sweep is not None:
        kwargs.update(
            heartbeat_interval=sweep.heartbeat_interval,
            grace_period=sweep.grace_period,
            heartbeat_stale_trial_callback=_quiet(RetryHeartbeatStaleTrialCallback, max_retry=sweep.max_retry),
        )
    try:
        return _quiet(RDBStorage, url, skip_table_creation=not create_tables, **kwargs)
    except Exception as err:  # noqa: BLE001 - driver errors vary; the message must name the URL
        raise SweepError(
            f"cannot open the Optuna storage {_redact(url)}: {type(err).__name__}: {err}. "
            "Use sqlite:///path/optuna.db or postgresql+psycopg2://user@host:port/db"
        ) from err


def _redact(url: str) -> str:
    """The URL without its password (for messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def make_sampler(spec: dict[str, Any], trial_number: int) -> optuna.samplers.BaseSampler:
    """The study's sampler for one trial, seeded with ``seed + trial_number``.

    A sampler per trial keeps a seeded study reproducible however trials fall on workers, and keeps two
    workers with the same seed from drawing the same startup params.
    """
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + trial_number
    if spec["name"] == "random":
        return optuna.samplers.RandomSampler(**kwargs)
    kwargs.setdefault("constant_liar", True)  # parallel workers avoid the params of running trials
    return optuna.samplers.TPESampler(**kwargs)


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(**kwargs)
    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(**kwargs)
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def study_lock(storage: RDBStorage, study_name: str) -> Iterator[None]:
    """Serialise study creation and top-up across launches: flock for SQLite, advisory lock for PostgreSQL."""
    db = sqlite_path(storage.url)
    if db is not None:
        with open(f"{db}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    elif storage.url.startswith("postgresql"):
        from sqlalchemy import text

        key = zlib.crc32(f"lit_sr.sweep:{study_name}".encode())
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        yield


# ---- trial slots --------------------------------------------------------------------------------------
def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that a later trial retries (their slot passed to the retry)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def slot_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """finished (COMPLETE + PRUNED + counted FAIL), running, waiting, and used = their sum."""
    retried = retried_numbers(trials)
    finished = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and t.number not in retried)
        for t in trials
    )
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return {"finished": finished, "running": running, "waiting": waiting, "used": finished + running + waiting}


def load_study(sweep: Sweep, storage: RDBStorage, trial_number: int = 0) -> optuna.Study:
    return optuna.load_study(
        study_name=sweep.study_name,
        storage=storage,
        sampler=make_sampler(sweep.sampler, trial_number),
        pruner=make_pruner(sweep.pruner),
    )


def prepare_study(sweep: Sweep, storage: RDBStorage) -> optuna.Study:
    """Create or load the study and top its WAITING slots up to ``n_trials`` (under the study lock)."""
    with study_lock(storage, sweep.study_name):
        study = optuna.create_study(
            study_name=sweep.study_name,
            storage=storage,
            direction=sweep.direction,
            load_if_exists=True,
            sampler=make_sampler(sweep.sampler, 0),
            pruner=make_pruner(sweep.pruner),
        )
        if study.direction.name.lower() != sweep.direction:
            raise SweepError(
                f"study {sweep.study_name!r} in {_redact(sweep.storage_url)} is {study.direction.name.lower()}, "
                f"but {sweep.path} asks {sweep.direction}; use another study name (--study-name)"
            )
        study.set_user_attr("sweep", sweep.settings())
        _quiet(fail_stale_trials, study)
        if not study.get_trials(deepcopy=False):
            for values in sweep.enqueue[: sweep.n_trials]:
                study.enqueue_trial(values, skip_if_exists=False)
        counts = slot_counts(study.get_trials(deepcopy=False))
        for _ in range(max(0, sweep.n_trials - counts["used"])):
            study.enqueue_trial({}, skip_if_exists=False)
    return study


# ---- processes ----------------------------------------------------------------------------------------
def die_with_parent(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (PR_SET_PDEATHSIG).

    ``expected_parent``: if the parent is already gone (we were reparented) act now.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by ``pid`` (a trial child started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class _Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a thread (first beat at once)."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage, trial_id, interval), daemon=True)
        self._thread.start()

    def _run(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        while True:
            with contextlib.suppress(Exception):  # a busy database must not kill the beat
                storage.record_heartbeat(trial_id)
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    """Runs WAITING trials of one study, one child process at a time, until none is left."""

    def __init__(self, sweep: Sweep, storage_url: str, index: int = 0, workers: int = 1) -> None:
        self.sweep, self.index, self.workers = sweep, index, workers
        self.storage_url = storage_url
        self.storage = make_storage(storage_url, sweep)
        self.study = load_study(sweep, self.storage)
        self.stopping: str | None = None
        self.child: subprocess.Popen | None = None
        self.started = time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[worker {self.index}] {msg}", flush=True)

    # -- signals -------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = signal.Signals(signum).name
        if self.child is not None and self.child.poll() is None:
            kill_group(self.child.pid, signal.SIGTERM)

    def _kill_child(self) -> None:
        if self.child is not None:
            kill_group(self.child.pid, signal.SIGKILL)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        atexit.register(self._kill_child)
        ran = 0
        poll = min(5.0, float(self.sweep.heartbeat_interval))
        while not self.stopping:
            if self.sweep.timeout is not None and time.monotonic() - self.started > self.sweep.timeout:
                self.log(f"timeout of {self.sweep.timeout:.0f} s reached: no new trial")
                break
            _quiet(fail_stale_trials, self.study)
            trials = self.study.get_trials(deepcopy=False)
            counts = slot_counts(trials)
            if counts["finished"] + counts["running"] >= self.sweep.n_trials:
                trial_id = None  # more WAITING trials than slots (an older, larger n_trials): leave them
            else:
                trial_id = self._claim()
            if trial_id is None:
                if counts["running"] and counts["finished"] < self.sweep.n_trials:
                    time.sleep(poll)  # other workers' trials: one may be a dead worker's, to retry
                    continue
                break
            self._run_trial(trial_id)
            ran += 1
        self.log(f"done: ran {ran} trial(s)" + (f", stopped by {self.stopping}" if self.stopping else ""))
        return 0

    def _claim(self) -> int | None:
        """Atomically move one WAITING trial to RUNNING; None when there is none left.

        One conditional UPDATE (``... WHERE state = 'WAITING'``, then its row count): Optuna's own
        ``set_trial_state_values`` reads then writes, which on SQLite (no ``SELECT ... FOR UPDATE``) lets
        two workers claim the same trial.
        """
        import datetime as dt

        from optuna.storages._rdb.models import TrialModel  # Optuna's table; stable within optuna < 6
        from sqlalchemy import update

        study_id = self.storage.get_study_id_from_name(self.sweep.study_name)
        for t in self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            claim = (
                update(TrialModel)
                .where(TrialModel.trial_id == t._trial_id, TrialModel.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=dt.datetime.now())
            )
            with self.storage.engine.begin() as conn:
                if conn.execute(claim).rowcount == 1:
                    return t._trial_id
        return None

    def _run_trial(self, trial_id: int) -> None:
        number = self.storage.get_trial_number_from_id(trial_id)
        self.study.sampler = make_sampler(self.sweep.sampler, number)
        trial = optuna.Trial(self.study, trial_id)
        beat = _Heartbeat(self.storage, trial_id, self.sweep.heartbeat_interval)
        t0 = time.monotonic()
        try:
            state, value, reason = self._train(trial, number)
        except Exception as err:  # noqa: BLE001 - a worker-side error fails this trial, not the study
            state, value, reason = TrialState.FAIL, None, f"worker error: {type(err).__name__}: {err}"
        finally:
            beat.stop()
            self.child = None
        interrupted = self.stopping is not None and state != TrialState.COMPLETE
        if interrupted:
            state, reason = TrialState.FAIL, f"interrupted: worker got {self.stopping} ({reason})"
        try:
            if reason:
                trial.set_user_attr("reason", reason)
            if state == TrialState.COMPLETE:
                self.study.tell(trial, value)
            else:
                self.study.tell(trial, state=state)
        except UpdateFinishedTrialError:
            self.log(f"trial {number} was finished by another process (heartbeat missed?); result dropped")
            return
        if interrupted:  # hand the slot to a retry with the same params, as for a dead worker
            retry = _quiet(RetryHeartbeatStaleTrialCallback, max_retry=self.sweep.max_retry)
            _quiet(retry, self.study, self.storage.get_trial(trial_id))
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        what = f"{self.sweep.metric}={value:.4f}" if value is not None else (reason or "")
        self.log(f"trial {number} {state.name} in {time.monotonic() - t0:.0f} s: {what} [{shown}]")

    def _train(self, trial: optuna.Trial, number: int) -> tuple[TrialState, float | None, str | None]:
        """Sample, write the trial's files, run the child, read its result."""
        import yaml

        for key in RESULT_ATTRS + ("reason",):  # a retry inherits its failed original's attributes
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        values = {p.name: p.suggest(trial) for p in self.sweep.params}
        broken = self.sweep.violations(self.sweep.trial_config(values, Path("."), number, Path(".")))
        if broken:  # outside the feasible region: pruned before training, the sampler learns to avoid it
            return TrialState.PRUNED, None, "; ".join(broken)
        run_dir = _fresh_dir(self.sweep.study_dir / f"trial-{number}").resolve()
        spec_file, cfg_file = run_dir / SPEC_FILE, run_dir / CONFIG_FILE
        result_file, log_file = run_dir / RESULT_FILE, run_dir / LOG_FILE
        spec = {
            "study": self.sweep.study_name,
            "trial_id": trial._trial_id,
            "number": number,
            "metric": self.sweep.metric,
            "direction": self.sweep.direction,
            "pruner": self.sweep.pruner,
            "max_params": self.sweep.max_params,
            "method": self.sweep.method,
            "params": values,
            "paths": {p.name: p.path for p in self.sweep.params},
            "result": str(result_file),
            "parent_pid": os.getpid(),
        }
        spec_file.write_text(json.dumps(spec, indent=2, default=str))
        cfg = self.sweep.trial_config(values, run_dir, number, spec_file)
        cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = dict(os.environ, **{STORAGE_ENV: self.storage_url, "PYTHONUNBUFFERED": "1"})
        if self.workers > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        cmd = [sys.executable, "-m", "lit_sr.cli", "fit", "--config", str(cfg_file)]
        with open(log_file, "wb") as log:
            self.child = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        try:
            return self._follow(trial, run_dir, log_file, result_file)
        except BaseException:
            kill_group(self.child.pid)  # never leave a trial training behind a worker-side error
            raise

    def _follow(
        self, trial: optuna.Trial, run_dir: Path, log_file: Path, result_file: Path
    ) -> tuple[TrialState, float | None, str | None]:
        """Record where the running trial lives, wait for it, read its result."""
        for key, value in {
            "run_dir": str(run_dir),
            "config": str(run_dir / CONFIG_FILE),
            "log": str(log_file),
            "host": socket.gethostname(),
            "worker_pid": os.getpid(),
            "trial_pid": self.child.pid,
        }.items():
            trial.set_user_attr(key, value)
        rc = self._wait(self.child)
        kill_group(self.child.pid)  # anything the trial left behind (data loader workers, ...)
        result = _read_json(result_file)
        if result is None:
            return TrialState.FAIL, None, f"trial process exited with code {rc} before reporting: {_tail(log_file)}"
        for key in RESULT_ATTRS:
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(result["state"], TrialState.FAIL)
        return state, result.get("value"), result.get("reason")

    def _wait(self, proc: subprocess.Popen) -> int:
        kill_at = None
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping and kill_at is None:
                kill_group(proc.pid, signal.SIGTERM)
                kill_at = time.monotonic() + KILL_GRACE_S
            if kill_at is not None and time.monotonic() > kill_at:
                kill_group(proc.pid, signal.SIGKILL)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fresh_dir(path: Path) -> Path:
    """``path`` created empty; an existing one (a study deleted and restarted) is moved aside, never deleted."""
    if path.exists():
        path.rename(path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"))
    path.mkdir(parents=True)
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}: " + " | ".join(text[-lines:])


def run_worker(sweep: Sweep, index: int = 0, workers: int = 1) -> int:
    """Entry of a worker process (the storage URL comes from the environment, see ``STORAGE_ENV``)."""
    parent = os.environ.get(PARENT_ENV)
    die_with_parent(signal.SIGTERM, int(parent) if parent else None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = os.environ.get(STORAGE_ENV, sweep.storage_url)
    return Worker(sweep, url, index, workers).run()


def run_sweep(sweep: Sweep, workers: int = 1, worker_args: list[str] | None = None) -> int:
    """Prepare the study, run ``workers`` local worker processes on it and wait for them.

    ``worker_args``: the command-line options that rebuild the same ``Sweep`` in a worker
    (``lit-sr sweep _worker <sweep file> ...``). Returns 0 when every worker ended normally, 1 when one
    died, ``INTERRUPTED`` when stopped by a signal.
    """
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(sweep.storage_url, sweep, create_tables=True)
    study = prepare_study(sweep, storage)
    counts = slot_counts(study.get_trials(deepcopy=False))
    print(
        f"study {sweep.study_name} ({_redact(sweep.storage_url)}): {counts['finished']} finished, "
        f"{counts['running']} running, {counts['waiting']} waiting of n_trials={sweep.n_trials}; "
        f"trials under {sweep.study_dir}",
        flush=True,
    )
    if not counts["waiting"] and not counts["running"]:
        return 0
    env = dict(os.environ, **{STORAGE_ENV: sweep.storage_url, PARENT_ENV: str(os.getpid())})
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lit_sr.sweep.cli",
                "_worker",
                *(worker_args or [str(sweep.path)]),
                "--worker-index",
                str(i),
                "--workers",
                str(workers),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    stop: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stop.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if len(stop) == 1 else signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for i, code in enumerate(codes):
        if code != 0:
            print(
                f"worker {i} ended with code {code}: its running trial is failed by heartbeat and retried "
                f"{sweep.grace_period} s after its last beat (run the same command again to resume)",
                flush=True,
            )
    if stop:
        return INTERRUPTED
    return 0 if all(c == 0 for c in codes) else 1
