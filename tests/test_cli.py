"""``lit-sr`` commands end to end: a multi-process ``train`` writes its results table, ``--ckpt_path last``
with an empty run folder, a run's own config.yaml reused, ``predict`` pointing to ``upscale``, a run resumed in
another folder keeping its best checkpoint (``RunCheckpoint(carry_best=True)``, a sweep's retried trial)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_config import QUICK, TINY, write_yaml
from wandb_offline import read_finished

from lit_sr.paths import REPO


def error_line(capsys) -> str:
    """The one ``lit-sr: error:`` line of stderr, which is its last line; no traceback of lit-sr's.

    A ``--- Logging error ---`` block is not lit-sr's: a handler an earlier in-process run attached to pytest's
    captured stderr of that test, closed since, fails to write (only in a test session).
    """
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("lit-sr: error: "), err[-3000:]
    assert sum(line.startswith("lit-sr: error:") for line in lines) == 1, err[-3000:]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    assert all(i > 0 and lines[i - 1] == "--- Logging error ---" for i in tracebacks), err[-3000:]
    return lines[-1]


def lit_sr(args: list[str], cwd: Path, data_root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``lit-sr ARGS`` in a fresh process (DDP re-executes the command line for its second rank)."""
    env = {**os.environ, "LIT_SR_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("MASTER_PORT", None)
    return subprocess.run(
        [sys.executable, "-m", "lit_sr.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# ---- item: multi-device train ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_on_two_ddp_processes_writes_the_test_table(tmp_path, data_root):
    tiny = {**TINY, "data": {**TINY["data"], "test_sets": ["Set5"], "val_max_images": 2}}  # one image a rank
    config = write_yaml(tmp_path / "tiny.yaml", tiny)
    proc = lit_sr(["train", "vdsr", "--trainer-preset", "ddp_cpu", "--config", str(config)], tmp_path, data_root)
    log = proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, log
    assert "MEMBER: 2/2" in proc.stderr, log  # really two ranks
    (run,) = (tmp_path / "runs" / "vdsr").iterdir()  # rank 1 started seconds later, in rank 0's default folder
    written = json.loads((run / "benchmark" / "results.json").read_text())
    assert written["meta"]["config"] == str(run / "config.yaml") and (run / "config.yaml").is_file()  # what ran
    results = written["results"]
    assert set(results) == {"Set5"} and set(results["Set5"]) == {"x2"}
    assert results["Set5"]["x2"]["n_images"] == 5  # every test image once, gathered over both ranks
    table = (run / "benchmark" / "results.md").read_text()
    bicubic = next(line for line in table.splitlines() if "| bicubic |" in line)
    assert float(bicubic.split("|")[3].split("/")[0]) == pytest.approx(33.66, abs=0.01), bicubic  # Set5 x2


# ---- item: --ckpt_path last with a run folder that has no checkpoint -----------------------------------------
def test_resuming_a_run_folder_without_a_checkpoint_is_an_error(tmp_path, capsys):
    from lit_sr.cli import main

    typo, tiny = tmp_path / "runs" / "vdsr" / "typo", write_yaml(tmp_path / "tiny.yaml", TINY)
    argv = ["fit", "--config", str(QUICK), "--config", str(tiny), "--ckpt_path", "last", "--run_dir", str(typo)]
    assert main(argv) == 2
    assert error_line(capsys) == (
        f"lit-sr: error: --ckpt_path last: no {typo}/checkpoints/last.ckpt to resume; pass --run_dir of a run "
        "that has it (runs/vdsr/<time>), omit --run_dir to resume the newest run of vdsr, or pass --ckpt_path "
        "with a checkpoint file"
    )
    assert not typo.exists()  # nothing trained, no folder made


# ---- item: a run's own config.yaml reused ---------------------------------------------------------------------
def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Each file's mtime and bytes; not symlinks (W&B links its process-wide service log into every run), nor W&B's
    own debug logs: its service appends to a finished run's ``logs/debug-internal.log`` a moment later."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.parent.name != "logs"]
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


@pytest.mark.slow
def test_a_runs_config_yaml_is_reused_and_the_new_run_writes_only_in_its_run_dir(tmp_path, data_root, monkeypatch,
                                                                                 capsys):
    import wandb

    from lit_sr.callbacks import AtomicCheckpointIO
    from lit_sr.cli import SRCLI, main

    monkeypatch.setenv("LIT_SR_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)  # default run folders: runs/vdsr/<time> here
    runs = tmp_path / "runs" / "vdsr"
    run1, run2 = runs / "r1", runs / "r2"
    tiny = write_yaml(tmp_path / "tiny.yaml", TINY)
    assert main(["fit", "--config", str(QUICK), "--config", str(tiny), "--run_dir", str(run1)]) == 0
    config1 = run1 / "config.yaml"
    assert "Unable to serialize" not in config1.read_text()
    read_finished(run1 / "wandb")  # wandb-core may still be writing the run file after wandb.finish() returned
    before = _files(run1)
    assert "checkpoints/last.ckpt" in before and any(k.startswith("wandb/offline-run-") for k in before)

    # The W&B run id a resumed run's config.yaml holds (see test_cluster's requeue) does not carry over either.
    stale = ["--trainer.logger.init_args.version", "stale123"]
    assert main(["fit", "--config", str(config1), *stale, "--run_dir", str(run2)]) == 0
    assert _files(run1) == before  # run 1 untouched: checkpoints, W&B run, config.yaml
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.yaml"} <= set(_files(run2))
    (run_file,) = (run2 / "wandb").glob("offline-run-*/run-*.wandb")
    assert run_file.stem != "run-stale123"  # a W&B run of its own
    saved = yaml.safe_load((run2 / "config.yaml").read_text())
    assert (saved["run_dir"], saved["ckpt_path"]) == (None, None)  # reused, it is a new run
    assert saved["trainer"]["logger"]["init_args"]["version"] is None
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(run2)
    assert saved["trainer"]["logger"]["init_args"]["name"] == "r2"
    assert [c["init_args"]["dirpath"] for c in saved["trainer"]["callbacks"] if "RunCheckpoint" in c["class_path"]] == [
        str(run2 / "checkpoints")
    ]
    assert [p["class_path"] for p in saved["trainer"]["plugins"]] == ["lit_sr.callbacks.AtomicCheckpointIO"]

    # A new run into a folder that holds one is refused: it would overwrite last.ckpt, the resume point.
    capsys.readouterr()
    assert main(["fit", "--config", str(QUICK), "--config", str(tiny), "--run_dir", str(run1)]) == 2
    assert error_line(capsys) == (
        f"lit-sr: error: --run_dir {run1} already holds a run ({run1}/checkpoints/last.ckpt); resume it with "
        "--ckpt_path last, or choose another --run_dir (or none: runs/<method>/<time>) for a new run"
    )
    assert _files(run1) == before
    # Without --run_dir it trains a new run in a new folder, not in r1 (whose config named r1 as its run_dir).
    assert main(["fit", "--config", str(config1)]) == 0
    (run3,) = set(runs.iterdir()) - {run1, run2}
    assert (run3 / "checkpoints" / "best.ckpt").is_file() and _files(run1) == before

    # The saved config tests its own checkpoint (once: no duplicated plugin or callbacks) and keeps the fit's
    # config.yaml: a test writes config-test.yaml.
    last1 = run1 / "checkpoints" / "last.ckpt"
    args = ["test", "--config", str(config1), "--ckpt_path", str(last1), "--data.test_sets", "[Set5]"]
    try:
        cli = SRCLI(args=[*args, "--run_dir", str(run1)])
    finally:
        wandb.finish()
    assert cli.model.last_results["Set5"]["x2"]["n_images"] == 5
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert config1.read_bytes() == before["config.yaml"][1]
    tested = yaml.safe_load((run1 / "config-test.yaml").read_text())
    assert tested["data"]["test_sets"] == ["Set5"] and tested["ckpt_path"] is None


def test_a_run_stopped_by_a_user_error_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    from lit_sr.cli import main

    monkeypatch.chdir(tmp_path)
    tiny = write_yaml(tmp_path / "tiny.yaml", TINY)
    assert main(["fit", "--config", str(QUICK), "--config", str(tiny), "--data.test_sets", "[NoSuchSet]"]) == 2
    assert "NoSuchSet" in error_line(capsys)
    assert list((tmp_path / "runs" / "vdsr").iterdir()) == []  # its runs/vdsr/<time> is gone


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    import datetime as dt

    from lit_sr import cli

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 9, 30, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.dt, "datetime", Frozen)
    made = []
    for _ in range(3):
        made.append(cli.default_run_dir("vdsr"))
        Path(made[-1]).mkdir(parents=True)
        os.environ.pop(cli.RUN_DIR_VAR)  # what SRCLI does after each run
    assert made == ["runs/vdsr/20261201-093000", "runs/vdsr/20261201-093000-2", "runs/vdsr/20261201-093000-3"]


def test_a_rank_of_a_torchrun_launch_without_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    from lit_sr.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun sets it in every rank; each would name its own folder
    assert main(["fit", "--config", str(QUICK), "--config", str(write_yaml(tmp_path / "tiny.yaml", TINY))]) == 2
    assert error_line(capsys) == (
        "lit-sr: error: this process is one rank of a multi-process launch (torchrun, srun): pass --run_dir, the "
        "same on every rank (each rank would name its own runs/<method>/<time>)"
    )
    assert not (tmp_path / "runs").exists()


def test_plugins_lit_sr_adds_are_config_entries_the_saved_config_can_hold(monkeypatch):
    from jsonargparse import Namespace

    from lit_sr.cluster import with_cluster_environment

    monkeypatch.setenv("LIT_SR_IGNORE_SLURM", "1")
    added = with_cluster_environment(None)
    assert added == [Namespace(class_path="lightning.fabric.plugins.environments.lightning.LightningEnvironment",
                               init_args=Namespace())]  # fmt: skip
    assert with_cluster_environment(added) == added  # a saved config's entry counts: not added twice


# ---- item: predict is not advertised; it points to upscale ------------------------------------------------------
def test_predict_is_not_a_command_and_points_to_upscale(tmp_path, capsys, monkeypatch):
    from lit_sr.cli import build_parser, main

    assert "predict" not in build_parser().format_help()
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--config", str(QUICK), "--run_dir", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert line.startswith("lit-sr: error: lit-sr predict: not a lit-sr command") and "`lit-sr upscale CKPT" in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()  # no run folder, no W&B run


# ---- item: train with no training budget ------------------------------------------------------------------------
def test_train_without_an_epoch_is_one_line_not_a_lightning_traceback(tmp_path, data_root, capsys, monkeypatch):
    from lit_sr.cli import main

    monkeypatch.setenv("LIT_SR_DATA", str(data_root))
    config = write_yaml(tmp_path / "tiny.yaml", {**TINY, "data": {**TINY["data"], "test_sets": ["Set5"]}})
    argv = ["train", "vdsr", "--config", str(config), "--trainer.max_epochs", "0", "--run_dir", str(tmp_path / "r")]
    assert main(argv) == 2
    assert error_line(capsys) == (
        "lit-sr: error: lit-sr train: no checkpoint was written because no training step ran (trainer.max_epochs 0, "
        "trainer.max_steps -1); give it a budget: trainer.max_epochs / trainer.max_steps above 0, or drop them to "
        "train the stages' epochs/steps"
    )
    assert not (tmp_path / "r" / "benchmark").exists()


def test_train_without_checkpointing_is_one_line(tmp_path, capsys):
    from lit_sr.cli import main

    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    argv = ["train", "vdsr", "--config", str(config), "--trainer.enable_checkpointing", "false"]
    assert main([*argv, "--run_dir", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert line.startswith("lit-sr: error: lit-sr train: no checkpoint was written because checkpointing is off")


# ---- item: a training continued in another folder keeps its best (a sweep's retried trial) ---------------------
@pytest.mark.slow
def test_a_run_resumed_in_another_folder_with_carry_best_keeps_its_best_until_it_validates_better(
    tmp_path, data_root, monkeypatch
):
    import wandb

    from lit_sr.cli import SRCLI

    monkeypatch.setenv("LIT_SR_DATA", str(data_root))
    by_step = {"class_path": "lit_sr.callbacks.RunCheckpoint",  # every validation is a new best
               "init_args": {"carry_best": True, "monitor": "step", "mode": "max"}}
    stage = {**TINY["model"]["init_args"]["stages"][0], "steps": 4}  # two epochs, each validated
    config = write_yaml(tmp_path / "tiny.yaml", {**TINY, "model": {"init_args": {**TINY["model"]["init_args"],
                        "stages": [stage]}}, "trainer": {**TINY["trainer"], "callbacks": [by_step]}})
    args = ["fit", "--config", str(QUICK), "--config", str(config), "--run_dir"]
    first, idle, second = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    last = ["--ckpt_path", str(first / "checkpoints" / "last.ckpt")]
    try:
        SRCLI(args=[*args, str(first), "--trainer.max_steps", "2"])  # one epoch: its best is step 2
        wandb.finish()
        b = SRCLI(args=[*args, str(idle), *last, "--trainer.max_steps", "2"])  # resumed with nothing left to do
        wandb.finish()
        c = SRCLI(args=[*args, str(second), *last])  # resumed, validates step 4
    finally:
        wandb.finish()
    kept, beaten = b.trainer.checkpoint_callback, c.trainer.checkpoint_callback
    assert kept.dirpath == str(idle / "checkpoints")
    # Lightning alone leaves best_model_score None when the folder changes: a retried trial with no validation
    # left had no value, and one that validated worse than before the kill reported the worse value.
    assert (float(kept.best_model_score), kept.best_model_path) == (2, str(first / "checkpoints" / "best.ckpt"))
    assert (float(beaten.best_model_score), beaten.best_model_path) == (4, str(second / "checkpoints" / "best.ckpt"))
    assert (first / "checkpoints" / "best.ckpt").is_file()  # the first folder's files are never removed


# ---- item: a resume whose config does not fit the checkpoint ---------------------------------------------------
@pytest.mark.slow
def test_a_resume_with_another_network_or_fewer_stages_is_one_line_and_keeps_the_runs_config(
    tmp_path, data_root, monkeypatch, capsys
):
    from lit_sr.cli import main

    monkeypatch.setenv("LIT_SR_DATA", str(data_root))
    stage = TINY["model"]["init_args"]["stages"][0]
    two = {**TINY, "model": {"init_args": {**TINY["model"]["init_args"],
                                           "stages": [stage, {**stage, "name": "t"}]}}}  # fmt: skip
    run = tmp_path / "run"
    assert main(["fit", "--config", str(QUICK), "--config", str(write_yaml(tmp_path / "two.yaml", two)),
                 "--run_dir", str(run)]) == 0  # ends in stage 1
    saved = (run / "config.yaml").read_bytes()
    wider = {**two, "model": {"init_args": {**two["model"]["init_args"], "net": {"depth": 3, "width": 16}}}}
    cases = [
        (TINY, "lit-sr: error: the checkpoint was saved in stage 1 of its schedule, but model.init_args.stages has 1; "
               "resume with the config the run was trained with (its run folder's config.yaml)"),
        (wider, "lit-sr: error: the checkpoint's weights do not fit the network this config builds (size mismatch "),
    ]  # fmt: skip
    capsys.readouterr()
    for config, message in cases:
        args = ["--config", str(write_yaml(tmp_path / "c.yaml", config)), "--ckpt_path", "last", "--run_dir", str(run)]
        assert main(["fit", "--config", str(QUICK), *args]) == 2
        assert error_line(capsys).startswith(message)
        assert (run / "config.yaml").read_bytes() == saved  # the run's config still describes its checkpoints


def test_lit_sr_sweep_starts_without_importing_lightning(tmp_path):
    """The sweep command's process stays light (about 5 s of imports less); its trials import Lightning in theirs."""
    import importlib.metadata

    code = "import sys; from lit_sr.__main__ import main; print(main(sys.argv[1:]), 'lightning' in sys.modules)"
    for argv in (["sweep", "nowhere.yaml"], ["--debug", "sweep", "nowhere.yaml"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "LIT_SR_DEBUG": "0"})
        if argv[0] == "--debug":  # the traceback, as `lit-sr --debug` gives for every command
            assert "SweepError: sweep file not found: nowhere.yaml" in out.stderr, out.stderr[-2000:]
        else:
            assert out.stdout.split() == ["2", "False"], out.stderr[-2000:]
            assert out.stderr.strip() == "lit-sr: error: sweep file not found: nowhere.yaml"
    assert importlib.metadata.entry_points(group="console_scripts")["lit-sr"].value == "lit_sr.__main__:main"
