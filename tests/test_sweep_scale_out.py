"""Sweeps beyond one process: a killed worker's trial retried from its checkpoint, PostgreSQL, DDP trials."""

from __future__ import annotations

import contextlib
import json
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

import pytest
import torch
from cluster_helpers import subprocess_env
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sweep_helpers import TINY_FIXED, alive, child_pid, load, sqlite_url, sweep_env, wait_for, write_sweep
from wandb_offline import find_runs, read_finished

from lit_sr.sweep import load_sweep
from lit_sr.sweep.cli import main
from lit_sr.sweep.study import create_study


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_from_its_checkpoint_pruned_and_a_rerun_resumes_up_to_n_trials(
    tmp_path, data_root, capsys
):
    # 3 epochs of 100 batches, a step checkpoint every 20: the worker is killed while its trial trains, and the
    # retry resumes mid-epoch. Every trial is pruned at its second validation.
    pruner = {"class_path": "optuna.pruners.ThresholdPruner", "init_args": {"lower": 1000.0, "n_warmup_steps": 1}}
    every_20 = {"class_path": "lit_sr.cluster.StepCheckpoint", "init_args": {"every_n_steps": 20}}
    fixed = {**TINY_FIXED, "data.batches_per_epoch": 100, "model.init_args.stages.0.epochs": 3,
             "trainer.callbacks": [every_20]}
    path = write_sweep(tmp_path, "kill", study={"n_trials": 1, "pruner": pruner}, fixed=fixed)
    root = tmp_path / "runs"
    url = sqlite_url(root)
    args = [str(path), "--root", str(root), "--no-report"]
    with sweep_env(data_root):
        parent = subprocess.Popen([sys.executable, "-m", "lit_sr", "sweep", *args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ckpt = root / "kill" / "trial-0" / "checkpoints" / "last.ckpt"
            trial = wait_for(lambda: ckpt.is_file() and load(url, "kill").trials[0], 120, "trial 0's first checkpoint")
            child = trial.user_attrs["trial_pid"]
            assert alive(child), "the trial ended before the worker was killed: give it more batches"
            assert trial.user_attrs["worker_pid"] == parent.pid  # with one worker, the command is the worker
            os.kill(parent.pid, signal.SIGKILL)
            killed = time.monotonic()
            assert parent.wait(timeout=60) == -signal.SIGKILL
        finally:
            parent.kill()
        wait_for(lambda: not alive(child), 15, "the trial's process to die with its worker")
        saved_step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
        assert load(url, "kill").trials[0].state == TrialState.RUNNING  # nobody told Optuna
        time.sleep(max(0.0, 4 - (time.monotonic() - killed)))  # past the 3 s grace period of its heartbeat
        # The same command again: the stale trial is failed and retried with its params, from its checkpoint.
        capsys.readouterr()
        assert main(args) == 0
        # a pruned trial's line gives its reason, not the last value it reported
        assert "trial 1 PRUNED: pruned: " in capsys.readouterr().out
        dead, retry = load(url, "kill").get_trials()
        # A larger n_trials adds exactly the missing trials (the dead trial and its retry count once); once
        # there, the command runs nothing.
        assert main([*args, "--n-trials", "2"]) == 0 and main([*args, "--n-trials", "2"]) == 0
    assert dead.state == TrialState.FAIL
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0 and retry.params == dead.params
    assert retry.user_attrs["resumed_from"] == str(ckpt.resolve())
    steps = read_finished(retry.user_attrs["wandb_run"]).series("trainer/global_step")
    assert saved_step > 0 and steps[0] == saved_step  # resumed at the dead trial's last step checkpoint
    trials = load(url, "kill").get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    new = trials[2]
    for t in (retry, new):  # pruned at the first validation past the warm-up, the last epoch never ran
        assert t.state == TrialState.PRUNED and t.user_attrs["reason"].startswith("pruned: ")
        assert max(t.intermediate_values) == 1
    logged = read_finished(new.user_attrs["wandb_run"]).series("val/psnr_y")
    assert new.intermediate_values == pytest.approx({0: logged[0], 1: logged[1]})


@pytest.mark.slow
def test_a_hung_trial_is_killed_with_every_process_it_started_after_study_stall_timeout(tmp_path, data_root, capsys):
    hung = tmp_path / "hung.json"
    hang = {"class_path": "cluster_helpers.HangAtStep", "init_args": {"step": 2, "out": str(hung)}}
    fixed = {**TINY_FIXED, "data.num_workers": 1, "trainer.callbacks": [hang]}  # a DataLoader worker process
    path = write_sweep(tmp_path, "hang", study={"n_trials": 1, "stall_timeout": 15}, fixed=fixed)
    root = tmp_path / "runs"
    with sweep_env(data_root), pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])  # the trial imports cluster_helpers
        assert main([str(path), "--root", str(root), "--no-report"]) == 0  # the study is full: the sweep ends
    (trial,) = load(sqlite_url(root), "hang").get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"].startswith("no training or validation batch for 15 s (study.stall_timeout)")
    assert f"trial 0 FAIL: {trial.user_attrs['reason']}" in capsys.readouterr().out
    processes = json.loads(hung.read_text())  # while it hung: the trial (leading its session) and its loader worker
    assert trial.user_attrs["trial_pid"] in processes and len(processes) >= 2
    wait_for(lambda: not any(alive(p) for p in processes), 2, "every process of the trial to be gone")


@pytest.mark.slow
def test_a_killed_workers_ddp_trial_dies_with_every_rank(tmp_path, data_root):
    hung = tmp_path / "hung.json"
    hang = {"class_path": "cluster_helpers.HangAtStep", "init_args": {"step": 1, "out": str(hung)}}
    fixed = {**TINY_FIXED, "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.accelerator": "cpu",
             "data.val_max_images": 2, "trainer.callbacks": [hang]}  # an image for each rank
    path = write_sweep(tmp_path, "ddp_kill", study={"n_trials": 1}, fixed=fixed)
    with sweep_env(data_root):
        worker = subprocess.Popen([sys.executable, "-m", "lit_sr", "sweep", str(path), "--root", str(tmp_path / "runs"),
                                   "--no-report"], env=subprocess_env(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            processes = wait_for(lambda: json.loads(hung.read_text()), 120, "the DDP trial to train")
            assert len(processes) >= 2  # rank 0 and rank 1, which rank 0 started
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=60)
        finally:
            worker.kill()
    # rank 0 dies with its worker, rank 1 with rank 0: none is left holding its device and memory
    try:
        wait_for(lambda: not any(alive(p) for p in processes), 10, "every rank to die with the worker")
    finally:
        for pid in filter(alive, processes):  # a failed check leaves no rank asleep behind
            os.kill(pid, signal.SIGKILL)


# ---- PostgreSQL ----------------------------------------------------------------------------------------
@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port (ENVIRONMENT.md), stopped afterwards."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or [Path(p) for p in [shutil.which("initdb")] if p]
    if not found:
        msg = "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install -y postgresql"
        if os.environ.get("LIT_SR_REQUIRE_POSTGRES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    pg_bin = found[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="lit_sr_pg_"))  # not under pytest's 0700 tmp: postgres must enter it
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)

    data = f"{folder}/data"
    try:
        run(str(pg_bin / "initdb"), "-D", data, "-U", "optuna", "--auth=trust", "-E", "UTF8", "--no-locale")
        run(str(pg_bin / "pg_ctl"), "-D", data, "-l", f"{folder}/log", "-w", "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")
        run(str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "optuna", "optuna")
        yield f"postgresql+psycopg2://optuna@127.0.0.1:{port}/optuna"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            run(str(pg_bin / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_ctrl_c_queues_the_running_trial_again_for_the_next_run(tmp_path, data_root):
    fixed = {**TINY_FIXED, "data.batches_per_epoch": 1000, "model.init_args.stages.0.epochs": 3}  # stopped long before
    path = write_sweep(tmp_path, "stop", study={"n_trials": 1}, fixed=fixed)
    root = tmp_path / "runs"
    url = sqlite_url(root)
    with sweep_env(data_root):
        # SIGINT as a terminal's foreground command has it: a shell starts background jobs (`make test &`, a CI
        # runner's) with SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
        worker = subprocess.Popen([sys.executable, "-m", "lit_sr.sweep.cli", str(path), "--root", str(root),
                                   "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        log = root / "stop" / "trial-0" / "trial.log"
        try:  # the trial's process once it has printed
            trial = wait_for(lambda: log.is_file() and log.stat().st_size and child_pid(worker.pid)
                             or worker.poll() is not None, 120, "trial 0's process to print")
            assert worker.poll() is None, worker.communicate()[0][-3000:]
            os.kill(worker.pid, signal.SIGINT)
            out = worker.communicate(timeout=60)[0]
        finally:
            worker.kill()
    assert worker.returncode == 130 and "interrupted: run the same command again to resume" in out, out[-3000:]
    wait_for(lambda: not alive(trial), 15, "the trial's process to end with its worker")
    stopped, queued = load(url, "stop").get_trials()
    assert stopped.user_attrs["trial_pid"] == trial
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["reason"].startswith("interrupted (Ctrl-C)")
    assert queued.state == TrialState.WAITING and queued.params == stopped.params  # the next run takes it first,
    assert RetryHeartbeatStaleTrialCallback.retry_history(queued) == [0]  # from trial 0's last.ckpt if it has one


@pytest.mark.slow
def test_a_trial_stopped_by_sigterm_is_retried_by_its_worker_from_its_checkpoint(tmp_path, data_root):
    every_10 = {"class_path": "lit_sr.cluster.StepCheckpoint", "init_args": {"every_n_steps": 10}}
    fixed = {**TINY_FIXED, "data.batches_per_epoch": 40, "trainer.callbacks": [every_10]}
    path = write_sweep(tmp_path, "term", study={"n_trials": 1}, fixed=fixed)
    root = tmp_path / "runs"
    ckpt = root / "term" / "trial-0" / "checkpoints" / "last.ckpt"
    with sweep_env(data_root):
        cmd = [sys.executable, "-m", "lit_sr.sweep.cli", str(path), "--root", str(root), "--no-report"]
        worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            trial = wait_for(lambda: ckpt.is_file() and child_pid(worker.pid), 120, "trial 0's first checkpoint")
            os.kill(trial, signal.SIGTERM)  # the trial alone (a user's kill, a node agent): its worker goes on
            out = worker.communicate(timeout=300)[0]
        finally:
            worker.kill()
    assert worker.returncode == 0, out[-3000:]
    stopped, retry = load(sqlite_url(root), "term").get_trials()
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["reason"].startswith("stopped by a signal after ")
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [0]
    assert retry.user_attrs["resumed_from"] == str(ckpt.resolve())


@pytest.mark.slow
def test_postgresql_storage_with_two_workers_and_its_pruner(tmp_path, data_root, postgres_url, capfd):
    pruner = {"class_path": "optuna.pruners.ThresholdPruner", "init_args": {"lower": 1000.0}}  # no PSNR passes
    path = write_sweep(tmp_path, "pg", study={"n_trials": 2, "pruner": pruner})
    with sweep_env(data_root):
        code = main([str(path), "--root", str(tmp_path / "runs"), "--storage", postgres_url, "--workers", "2",
                     "--no-report"])
    assert code == 0
    out = capfd.readouterr().out
    assert out.count("study pg: ") == 1 and out.count("trial files under") == 1, out  # once, not once per worker
    assert sorted(line.split(":")[0] for line in out.splitlines() if line.startswith("trial ")) == ["trial 0 PRUNED",
                                                                                                   "trial 1 PRUNED"]
    assert not (tmp_path / "runs" / "optuna.db").exists()  # nothing went to the default SQLite file
    with sweep_env(data_root):  # the study is full: the line says so once, not once per worker
        assert main([str(path), "--root", str(tmp_path / "runs"), "--storage", postgres_url, "--workers", "2",
                     "--no-report"]) == 0
    assert capfd.readouterr().out.count("holds its n_trials=2: nothing to run") == 1
    trials = load(postgres_url, "pg").get_trials()
    assert [t.number for t in trials] == [0, 1] and all(t.state == TrialState.PRUNED for t in trials)
    assert all(list(t.intermediate_values) == [0] for t in trials)  # reported to PostgreSQL, pruned there
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2
    assert all(read_finished(t.user_attrs["wandb_run"]).config["optuna"]["params"] == t.params for t in trials)


@pytest.mark.slow
def test_a_trial_runs_as_a_two_process_ddp_job_and_reports_rank_zeros_values(tmp_path, data_root):
    """``fixed: {trainer.devices: 2, trainer.strategy: ddp}``: each trial is a 2-rank gloo job; one value, one run."""
    fixed = {**TINY_FIXED, "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.accelerator": "cpu",
             "data.val_max_images": 3}  # 3 images over 2 ranks: uneven shards, each image scored once
    pruner = {"class_path": "optuna.pruners.MedianPruner", "init_args": {"n_startup_trials": 5}}
    path = write_sweep(tmp_path, "ddp", study={"n_trials": 1, "pruner": pruner}, fixed=fixed)
    root = tmp_path / "runs"
    with sweep_env(data_root):
        study = create_study(load_sweep(path, root=root))
        study.enqueue_trial({"lr": 1e-4})
        assert main([str(path), "--root", str(root), "--workers", "1", "--no-report"]) == 0
    (trial,) = load(sqlite_url(root), "ddp").trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("reason")
    assert "MEMBER: 2/2" in (Path(trial.user_attrs["run_dir"]) / "trial.log").read_text()  # really two ranks
    run = read_finished(trial.user_attrs["wandb_run"])
    logged = run.series("val/psnr_y")
    assert len(logged) == 2 and trial.value == pytest.approx(max(logged), abs=1e-9)
    assert trial.intermediate_values == pytest.approx({0: logged[0], 1: logged[1]})  # reported once per epoch
    assert len(find_runs(trial.user_attrs["run_dir"])) == 1  # rank 0 alone logs
