"""Optuna sweeps (lit_sr.sweep): sweep files, trial slots, real parallel studies, dead workers, PostgreSQL.

The studies here run real ``lit-sr fit`` trials in child processes (a 3-layer VDSR, 8 steps, one Set5
image): the sweep machinery is under test, not the model. Each study test takes tens of seconds.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from wandb_offline import find_runs, read_run

from lit_sr.sweep.cli import main
from lit_sr.sweep.space import SweepError, get_path, load_sweep, set_path
from lit_sr.sweep.study import Worker, make_storage, prepare_study, slot_counts

REPO = Path(__file__).resolve().parents[1]
LR = "model.init_args.stages.0.optimizer.lr"
# The sweep machinery is under test, not the model: 3 layers of 8 channels, 2 epochs of 4 batches,
# validation on one Set5 image at x2 after every epoch.
TINY_FIXED = {
    "model.init_args.net": {"depth": 3, "width": 8},
    "model.init_args.image_log_every_n_epochs": 0,
    "model.init_args.stages.0.epochs": 2,
    "model.init_args.stages.0.optimizer": {"name": "sgd", "lr": 1.0e-3, "momentum": 0.9},
    "model.init_args.stages.0.lr_schedule": {"name": "constant"},
    "data.batches_per_epoch": 4,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "data.scales": [2],
    "data.scale_mode": "per_batch",
    "data.val_sets": ["Set5"],
    "data.val_scales": [2],
    "data.val_max_images": 1,
    "trainer.check_val_every_n_epoch": 1,
    "trainer.precision": "32-true",
    "trainer.log_every_n_steps": 1,
}


def write_sweep(folder: Path, name: str, study: dict | None = None, **sections) -> Path:
    """A sweep file on the VDSR quick preset with the tiny budget; ``study`` / sections override defaults."""
    doc = {
        "method": "vdsr",
        "preset": "quick",
        "study": {
            "name": name,
            "n_trials": 2,
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "none"},
            **(study or {}),
        },
        "storage": {"heartbeat_interval": 1, "grace_period": 3},
        "fixed": dict(TINY_FIXED),
        # SGD on the paper reduction: lr above about 1e-3 diverges on this network, 10 at once
        "params": {LR: {"name": "lr", "type": "float", "low": 1.0e-5, "high": 3.0e-4, "log": True}},
    }
    doc.update(sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def sweep_env(folder: Path, data_root: Path) -> Iterator[None]:
    """Offline W&B under ``folder`` and the benchmark images, for this process and its workers and trials."""
    home = folder / "wandb-home"
    home.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(home))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("LIT_SR_DATA", str(data_root))
        mp.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
        yield


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(url))


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root / 'optuna.db'}"


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


# ---- sweep files ---------------------------------------------------------------------------------------
def test_dotted_paths_index_lists_and_name_what_is_missing():
    cfg = {"model": {"init_args": {"stages": [{"clip": {"theta": 0.01}}]}}}
    assert get_path(cfg, "model.init_args.stages.0.clip.theta") == 0.01
    set_path(cfg, "model.init_args.stages.0.clip.theta", 0.5)
    assert cfg["model"]["init_args"]["stages"][0]["clip"]["theta"] == 0.5
    with pytest.raises(KeyError, match=r"no 'thetaa' under model.init_args.stages.0.clip \(keys there: \['theta'\]\)"):
        get_path(cfg, "model.init_args.stages.0.clip.thetaa")
    with pytest.raises(KeyError, match="index 3 outside a list of 1 item"):
        set_path(cfg, "model.init_args.stages.3", {})
    set_path(cfg, "model.init_args.net", {"depth": 4}, create_leaf=True)
    assert cfg["model"]["init_args"]["net"] == {"depth": 4}


def test_a_param_key_missing_from_the_preset_is_an_error_naming_it(tmp_path):
    bad = write_sweep(
        tmp_path,
        "bad",
        params={"model.init_args.stages.0.clip.theta": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
    )
    with pytest.raises(SweepError) as err:
        load_sweep(bad)
    msg = str(err.value)
    assert "params key 'model.init_args.stages.0.clip.theta'" in msg and "experiments/vdsr/quick.yaml" in msg
    assert "no 'clip' under model.init_args.stages.0" in msg and "under 'fixed' first" in msg
    # the same key exists once `fixed` gives stage 0 a clip rule
    fixed = {**TINY_FIXED, "model.init_args.stages.0.clip": {"mode": "adjustable", "theta": 0.01}}
    theta = {"name": "theta", "type": "float", "low": 1e-4, "high": 1.0, "log": True}
    ok = write_sweep(tmp_path, "ok", fixed=fixed, params={"model.init_args.stages.0.clip.theta": theta})
    sweep = load_sweep(ok)
    assert [p.path for p in sweep.params] == ["model.init_args.stages.0.clip.theta"]
    with pytest.raises(SweepError, match=r"fixed key 'data.nope.x' cannot be set .*no 'nope' under data"):
        load_sweep(write_sweep(tmp_path, "bad2", fixed={"data.nope.x": 1}))
    with pytest.raises(SweepError, match="may not set 'trainer.logger'"):
        load_sweep(write_sweep(tmp_path, "bad3", fixed={"trainer.logger": False}))
    with pytest.raises(SweepError, match=r"params.model.init_args.stages.0.optimizer.lr: log scale needs low > 0"):
        load_sweep(write_sweep(tmp_path, "bad4", params={LR: {"type": "float", "low": 0, "high": 1, "log": True}}))
    with pytest.raises(SweepError, match=r"preset 'huge' of method 'vdsr' not found .*presets: \['paper', 'quick'\]"):
        load_sweep(ok, preset="huge")


def test_trial_config_sets_every_path_the_logger_and_the_callback(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path,
            "cfg",
            params={
                LR: {"name": "lr", "type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "model.init_args.net.depth": {"name": "depth", "type": "int", "low": 2, "high": 5},
                "data.scales": {"name": "scales", "type": "categorical", "choices": [[2], [2, 3]]},
            },
        ),
        root=tmp_path / "runs",
    )
    assert sweep.study_name == "cfg" and sweep.storage_url == f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    assert [p.labels() for p in sweep.params if p.type == "categorical"] == [["[2]", "[2, 3]"]]
    cfg = sweep.trial_config({"lr": 0.003, "depth": 5, "scales": [2, 3]}, tmp_path / "t", 7, tmp_path / "t" / "s.json")
    assert cfg["model"]["init_args"]["stages"][0]["optimizer"] == {"name": "sgd", "lr": 0.003, "momentum": 0.9}
    assert cfg["model"]["init_args"]["net"] == {"depth": 5, "width": 8} and cfg["data"]["scales"] == [2, 3]
    assert cfg["run_dir"] == str(tmp_path / "t")
    assert cfg["trainer"]["logger"]["init_args"] == {
        "save_dir": str(tmp_path / "t"),
        "group": "cfg",
        "name": "trial-7",
        "tags": ["vdsr"],
    }
    assert cfg["trainer"]["callbacks"][-1]["init_args"]["spec"] == str(tmp_path / "t" / "s.json")
    assert sweep.base["model"]["init_args"]["net"] == {"depth": 3, "width": 8}  # the base is untouched
    assert sweep.preset_values() == {"lr": 1e-3, "depth": 3, "scales": "[2]"}


def test_slots_make_n_trials_the_study_total_and_resume_tops_up(tmp_path):
    path = write_sweep(tmp_path, "slots", study={"n_trials": 3, "enqueue": [{"lr": 5e-3}]})
    sweep = load_sweep(path, root=tmp_path)
    storage = make_storage(sweep.storage_url, sweep, create_tables=True)
    study = prepare_study(sweep, storage)
    prepare_study(sweep, storage)  # a second launch adds nothing
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING] * 3
    assert trials[0].system_attrs["fixed_params"] == {"lr": 5e-3}
    # Two workers' claims: every WAITING trial goes to exactly one of them, and nothing new is created.
    w1, w2 = (Worker(sweep, sweep.storage_url, i, 2) for i in range(2))
    claimed = [w1._claim(), w2._claim(), w1._claim(), w2._claim()]
    assert claimed[3] is None and len(set(claimed[:3])) == 3 and len(study.get_trials()) == 3
    for t in study.get_trials()[:2]:
        study.tell(t.number, 30.0)
    study.tell(2, state=TrialState.FAIL)  # a crash counts: a broken config cannot loop forever
    assert slot_counts(study.get_trials()) == {"finished": 3, "running": 0, "waiting": 0, "used": 3}
    prepare_study(load_sweep(path, root=tmp_path, n_trials=5), storage)
    assert slot_counts(study.get_trials()) == {"finished": 3, "running": 0, "waiting": 2, "used": 5}
    # a dead worker's failed trial hands its slot to its retry
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    retry = optuna.create_trial(
        state=TrialState.WAITING,
        params={"lr": 1e-3},
        distributions={"lr": dist},
        system_attrs={"failed_trial": 2, "retry_history": [2]},
    )
    study.add_trial(retry)
    assert slot_counts(study.get_trials()) == {"finished": 2, "running": 0, "waiting": 3, "used": 5}


CLAIMER = """
import sys, time
from lit_sr.sweep.space import load_sweep
from lit_sr.sweep.study import Worker
sweep = load_sweep(sys.argv[1], root=sys.argv[2])
worker = Worker(sweep, sweep.storage_url)
while time.time() < float(sys.argv[3]):
    time.sleep(0.001)
got = []
while (trial_id := worker._claim()) is not None:
    got.append(trial_id)
print(" ".join(map(str, got)))
"""


def test_concurrent_claims_give_every_waiting_trial_to_exactly_one_worker(tmp_path):
    path = write_sweep(tmp_path, "race", study={"n_trials": 40})
    sweep = load_sweep(path, root=tmp_path)
    prepare_study(sweep, make_storage(sweep.storage_url, sweep, create_tables=True))
    start = time.time() + 4  # all four claim at once, after their imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(path), str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    claimed = [[int(t) for t in p.communicate(timeout=120)[0].split()] for p in procs]
    flat = [t for c in claimed for t in c]
    assert len(flat) == 40 and len(set(flat)) == 40, [len(c) for c in claimed]


def test_pdeathsig_kills_a_child_when_its_parent_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    (tmp_path / "child.py").write_text(
        "import os, signal, sys, time\n"
        "from lit_sr.sweep.study import die_with_parent\n"
        "die_with_parent(signal.SIGKILL, int(sys.argv[1]))\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "parent.py").write_text(
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(tmp_path / 'child.py')!r}, str(os.getpid())])\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")])
    try:
        pid = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 30, "the child to start"))
        assert running(pid)
        parent.kill()  # SIGKILL: no handler runs in the parent
        parent.wait()
        wait_for(lambda: not running(pid), 10, f"pid {pid} to die with its parent")
    finally:
        parent.kill()


def test_cli_errors_are_one_message(tmp_path, capsys):
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    assert main(["report", "nostudy", "--root", str(tmp_path)]) == 2
    assert "no study storage at" in capsys.readouterr().err


def test_every_method_with_experiments_has_a_sweep_file_that_loads():
    methods = sorted(p.name for p in (REPO / "experiments").iterdir() if p.is_dir())
    assert "vdsr" in methods
    for method in methods:
        path = REPO / "sweeps" / f"{method}.yaml"
        assert path.is_file(), f"experiments/{method}/ has no sweeps/{method}.yaml"
        for preset in sorted(p.stem for p in (REPO / "experiments" / method).glob("*.yaml")):
            sweep = load_sweep(path, preset=preset)
            assert sweep.method == method and sweep.params and sweep.n_trials >= 1
            assert sweep.study_name == f"{method}-{preset}"


# ---- real studies --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parallel_study(tmp_path_factory, data_root):
    """Two workers, n_trials 4: trial 0 lr 1e-4 (fine), trial 1 lr 10 (100,000x too high), then two sampled."""
    tmp = tmp_path_factory.mktemp("parallel")
    path = write_sweep(tmp, "par", study={"n_trials": 4, "enqueue": [{"lr": 1e-4}, {"lr": 10.0}]})
    root = tmp / "runs"
    with sweep_env(tmp, data_root):
        code = main([str(path), "--root", str(root), "--workers", "2"])
    return code, root, load(sqlite_url(root), "par")


def test_two_workers_share_the_study_with_distinct_trials_and_exactly_n_trials(parallel_study):
    code, root, study = parallel_study
    assert code == 0
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # both workers ran trials
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    assert {Path(t.user_attrs["run_dir"]).name for t in trials} == {"trial-0", "trial-1", "trial-2", "trial-3"}
    starts = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(starts, starts[1:])), "no two trials overlapped in time"


def test_a_diverging_trial_is_pruned_with_its_reason_and_a_good_one_completes(parallel_study):
    _, _, study = parallel_study
    good, bad = study.trials[0], study.trials[1]
    assert good.params == {"lr": 1e-4} and bad.params == {"lr": 10.0}
    assert good.state == TrialState.COMPLETE and math.isfinite(good.value)
    assert bad.state == TrialState.PRUNED
    assert bad.user_attrs["reason"].startswith("diverged: non-finite training loss")


def test_each_trial_is_one_wandb_run_holding_its_params_and_config(parallel_study):
    _, _, study = parallel_study
    for t in study.trials:
        run = read_run(t.user_attrs["wandb_run"])
        assert (run.name, run.group, run.tags) == (f"trial-{t.number}", "par", ["vdsr"])
        assert run.config["optuna"]["params"] == t.params and run.config["optuna"]["trial"] == t.number
        assert run.config["optuna"]["paths"] == {"lr": LR}
        assert f"lr: {t.params['lr']}" in run.config["config"]  # the resolved config holds the value
        assert run.config["variant"] == "vdsr_small" and run.config["net"] == {"depth": 3, "width": 8}
        assert len(find_runs(t.user_attrs["run_dir"])) == 1  # one run per trial, never shared
        assert run.summary["optuna/state"] == t.state.name.lower()
        assert run.summary["optuna/reason"] == t.user_attrs.get("reason")
        if t.state == TrialState.COMPLETE:
            logged = run.series("val/psnr_y")
            assert len(logged) == 2 and t.value == pytest.approx(max(logged), abs=1e-9)
            assert t.intermediate_values == pytest.approx({0: logged[0], 1: logged[1]})
            assert Path(t.user_attrs["checkpoint"]).is_file()


def test_the_report_has_best_trial_top_k_plots_and_a_wandb_summary_run(parallel_study):
    _, root, study = parallel_study
    report = root / "par" / "report"
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    top = (report / "top_k.md").read_text()
    assert f"| 1 | {best.number} | {best.value:.4f} |" in top
    for name in ("optimization_history", "parallel_coordinate", "intermediate_values"):
        assert (report / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "plotly" in (report / f"{name}.html").read_text()
    runs = find_runs(report / "wandb")
    assert len(runs) == 1
    summary = read_run(runs[0])
    assert (summary.name, summary.group) == ("par-summary", "par") and "vdsr" in summary.tags
    assert summary.summary["best/value"] == pytest.approx(best.value)
    assert summary.summary["best/trial"] == best.number


def test_a_killed_workers_trial_is_failed_by_heartbeat_retried_and_resume_adds_trials(tmp_path, data_root):
    fixed = {**TINY_FIXED, "data.batches_per_epoch": 30}  # a few seconds of training to kill the worker in
    path = write_sweep(tmp_path, "kill", study={"n_trials": 1}, fixed=fixed)
    root = tmp_path / "runs"
    url = sqlite_url(root)
    with sweep_env(tmp_path, data_root):
        parent = subprocess.Popen(
            [sys.executable, "-m", "lit_sr.cli", "sweep", str(path), "--root", str(root), "--no-report"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def training():
                if not (root / "optuna.db").is_file():
                    return None
                with contextlib.suppress(Exception):  # the parent may still be creating the study
                    trials = load(url, "kill").get_trials(states=(TrialState.RUNNING,))
                    if (
                        trials
                        and "trial_pid" in trials[0].user_attrs
                        and glob.glob(f"{trials[0].user_attrs['run_dir']}/wandb/*/files")
                    ):
                        return trials[0]  # the child is inside fit: its W&B run exists
                return None

            trial = wait_for(training, 120, "trial 0 to start training")
            worker, child = trial.user_attrs["worker_pid"], trial.user_attrs["trial_pid"]
            assert running(child) and worker != parent.pid
            os.kill(worker, signal.SIGKILL)
            assert parent.wait(timeout=60) == 1  # the parent reports the dead worker
        finally:
            parent.kill()
        wait_for(lambda: not running(child) and not group_members(child), 15, "the trial's processes to end")
        assert load(url, "kill").trials[0].state == TrialState.RUNNING  # nobody told Optuna

        # Resume with a larger study: the stale trial is failed by heartbeat and retried with its params,
        # and one new trial is added; two workers share the work.
        assert main([str(path), "--root", str(root), "--n-trials", "2", "--workers", "2", "--no-wandb"]) == 0
    trials = load(url, "kill").get_trials()
    assert len(trials) == 3 and trials[0].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params
    assert all(t.state == TrialState.COMPLETE for t in trials[1:])
    assert slot_counts(trials) == {"finished": 2, "running": 0, "waiting": 0, "used": 2}
    assert (root / "kill" / "report" / "top_k.md").is_file()


# ---- PostgreSQL ----------------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    return Path(found[-1]).parent if found[-1] else None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port (ENVIRONMENT.md), stopped afterwards."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        msg = "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install -y postgresql"
        if os.environ.get("LIT_SR_REQUIRE_POSTGRES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    folder = Path(tempfile.mkdtemp(prefix="lit_sr_pg_"))  # not under pytest's 0700 tmp: postgres must enter it
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(str(pg_bin / "initdb"), "-D", f"{folder}/data", "-U", "optuna", "--auth=trust", "-E", "UTF8", "--no-locale")
        run(
            str(pg_bin / "pg_ctl"),
            "-D",
            f"{folder}/data",
            "-l",
            f"{folder}/log",
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off",
            "start",
        )
        run(str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "optuna", "optuna")
        yield f"postgresql+psycopg2://optuna@127.0.0.1:{port}/optuna"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            run(str(pg_bin / "pg_ctl"), "-D", f"{folder}/data", "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_storage_with_two_workers(tmp_path, data_root, postgres_url):
    path = write_sweep(tmp_path, "pg", study={"n_trials": 2})
    with sweep_env(tmp_path, data_root):
        code = main(
            [str(path), "--root", str(tmp_path / "runs"), "--storage", postgres_url, "--workers", "2", "--no-report"]
        )
    assert code == 0
    assert not (tmp_path / "runs" / "optuna.db").exists()  # nothing went to the default SQLite file
    trials = load(postgres_url, "pg").get_trials()
    assert [t.number for t in trials] == [0, 1] and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2
    assert all(read_run(t.user_attrs["wandb_run"]).config["optuna"]["params"] == t.params for t in trials)
