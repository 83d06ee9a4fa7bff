"""Clusters: two torchrun "nodes" train as one DDP job; the SLURM scripts use only options and variables the
code reads, and train.sbatch requeues on SIGUSR1 and resumes; device keys and Trainer presets."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from cluster_helpers import subprocess_env
from sweep_helpers import child_pid
from wandb_offline import find_runs, read_finished

from lit_sr.checkpoint import load_method
from lit_sr.cli import main
from lit_sr.cluster import SignalCheckpoint, train_overrides, trainer_preset, trainer_preset_names
from lit_sr.data.datamodule import SRDataModule
from lit_sr.paths import REPO

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

QUICK = REPO / "experiments" / "vdsr" / "quick.yaml"
TESTS = Path(__file__).resolve().parent
SCRIPTS = {name: REPO / "scripts" / "slurm" / f"{name}.sbatch" for name in ("train", "sweep")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- two nodes ------------------------------------------------------------------------------------------------
def test_two_torchrun_nodes_train_as_one_job_and_validate_like_one_process(tmp_path, data_root):
    tiny = {
        "model": {"init_args": {"net": {"depth": 4, "width": 8},
                                "stages": [{"name": "s", "steps": 4, "optimizer": {"name": "adam", "lr": 1e-3}}]}},
        "data": {"train_sources": ["T91"], "val_holdout": 3, "test_sets": [], "val_scales": [2, 3],
                 "scales": [2], "batches_per_epoch": 4, "batch_size": 2, "num_workers": 0},
        "trainer": {"precision": "32-true", "enable_progress_bar": False, "accelerator": "cpu",
                    "check_val_every_n_epoch": 1},
    }  # fmt: skip
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    port, out = free_port(), tmp_path / "out"
    run_args = ["--devices", "1", "--nodes", "2", "--strategy", "ddp", "--config", str(QUICK), "--config",
                str(config), "--run_dir", str(tmp_path / "run")]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={r}",
             "--master-addr=127.0.0.1", f"--master-port={port}", str(TESTS / "cluster_helpers.py"), str(out),
             *run_args],
            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    for rank, (proc, log) in enumerate(zip(nodes, logs)):
        assert proc.returncode == 0, f"node {rank}:\n{log[-4000:]}"
    assert "MEMBER: 2/2" in logs[0] + logs[1]  # one process group of two ranks
    w0, w1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 4
    for key, value in w0.items():
        assert torch.equal(value, w1[key]) and torch.equal(value, saved["state_dict"][key]), key
    ddp = [json.loads((out / f"rank{r}.json").read_text())["holdout"] for r in (0, 1)]
    # The same validation (the same config's data: 3 held-out T91 images at x2, x3) in one process.
    data = {**yaml.safe_load(QUICK.read_text())["data"], **tiny["data"]}
    method = load_method(ckpt)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    trainer.validate(method, datamodule=SRDataModule(**data), verbose=False)
    single = method.last_results["holdout"]
    for scale in ("x2", "x3"):
        assert single[scale]["n_images"] == 3
        # Unpadded shards (2 + 1 images): each image scored once, and both ranks count all 3 (synced, not a shard).
        assert [ddp[r][scale]["n_images"] for r in (0, 1)] == [3, 3]
        for metric in ("psnr_y", "ssim_y"):
            for r in (0, 1):
                assert ddp[r][scale][metric] == pytest.approx(single[scale][metric], abs=1e-9), (r, scale, metric)


# ---- the SLURM scripts ----------------------------------------------------------------------------------------
def _logical_lines(text: str) -> list[str]:
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def _options_of_help(capsys, argv: list[str]) -> set[str]:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return set(re.findall(r"(?<![\w-])(--[a-z][\w.-]*)", capsys.readouterr().out))


def _lit_sr_calls(text: str) -> list[tuple[str, list[str]]]:
    calls = []
    for line in _logical_lines(text):
        if (m := re.search(r"-m lit_sr(\.cli)? ", line)) and not line.lstrip().startswith("#"):
            words = line[m.end() :].split()
            calls.append((words[0], [w.split("=")[0] for w in words if w.startswith("--")]))
    return calls


def _header(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("#") and not line.startswith("#SBATCH"))


def _lit_sr_source() -> str:
    return "\n".join(p.read_text() for p in (REPO / "lit_sr").rglob("*.py"))


# Set by sbatch for the script itself (man sbatch, OUTPUT ENVIRONMENT VARIABLES); no lit_sr code reads them.
SBATCH_FOR_THE_SCRIPT = {"SLURM_SUBMIT_DIR", "SLURM_ARRAY_TASK_MIN", "SLURM_RESTART_COUNT"}
SHELL = {"PWD", "HOME", "PATH"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_slurm_script_parses_and_uses_only_options_and_variables_the_code_reads(name, capsys, monkeypatch):
    script = SCRIPTS[name]
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    sbatch = dict(re.findall(r"^#SBATCH (--[\w-]+)(?:=(\S+))?", text, re.M))

    # Every option passed to lit-sr is one its parsers accept (a rename breaks this, not the job).
    calls = _lit_sr_calls(text)
    assert [c for c, _ in calls] == [name]
    accepted = _options_of_help(capsys, [name])
    if name == "train":  # options `lit-sr train` does not know go to `lit-sr fit`
        accepted |= _options_of_help(capsys, ["fit"])
    for option in calls[0][1]:
        assert option in accepted, f"{script.name} passes {option}, which `lit-sr {name}` does not accept"

    # Variables: SLURM ones are read by Lightning's SLURM environment / lit_sr (or set by sbatch for the
    # script), exported ones are read by lit_sr, the others are the script's own, documented in its header.
    from lightning.fabric.plugins.environments import slurm

    read = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    exported = set(re.findall(r"^\s*export ([A-Z_][A-Z0-9_]*)=", text, re.M))
    assigned = set(re.findall(r"^\s*(?:export )?([A-Z_][A-Z0-9_]*)=", text, re.M))
    code = _lit_sr_source() + inspect.getsource(slurm)
    for var in sorted((read | exported) - SHELL):
        if var.startswith("SLURM_"):
            assert var in SBATCH_FOR_THE_SCRIPT or f'"{var}"' in code, f"{script.name} reads {var}; no code uses it"
        elif var in exported:
            assert f'"{var}"' in _lit_sr_source(), f"{script.name} exports {var}, which lit_sr never reads"
        else:
            assert var in assigned or var in _header(text), f"{script.name}: {var} is neither set nor documented"
            if var not in ("METHOD", "PRESET", "RESUME"):
                assert var in _header(text), f"{script.name}: parameter {var} is not documented in the header"

    if name == "train":  # one task per GPU, and the requeue signal is one the training handles under SLURM
        assert sbatch["--ntasks-per-node"] == sbatch["--gpus-per-node"]
        assert "--requeue" in sbatch
        signame = re.fullmatch(r"(?:B:)?(SIG\w+)@\d+", sbatch["--signal"]).group(1)
        monkeypatch.setenv("SLURM_JOB_ID", "1")
        monkeypatch.delenv("LIT_SR_IGNORE_SLURM", raising=False)
        assert signal.Signals[signame] in SignalCheckpoint().signals()
    else:  # an array of single-task workers; the trials launch their own ranks
        assert "--array" in sbatch and sbatch["--ntasks"] == "1" and "LIT_SR_IGNORE_SLURM" in exported

    # The README's cluster section shows the script's own usage line.
    usage = next(line[1:].strip() for line in text.splitlines() if line.startswith("#   ") and "sbatch" in line)
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    assert usage in section, f"README 'Running on a cluster' lacks {usage!r}"


def test_train_sbatch_requeues_on_sigusr1_then_the_requeued_job_resumes(tmp_path, data_root):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in {"srun": 'exec "$@"', "scontrol": f'echo "$@" >> {tmp_path}/scontrol.log'}.items():
        (bin_dir / tool).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / tool).chmod(stat.S_IRWXU)
    tiny = {
        "model": {"init_args": {"net": {"depth": 3, "width": 8},
                                "stages": [{"name": "s", "steps": 60, "optimizer": {"name": "adam", "lr": 1e-3}}]}},
        "data": {"train_sources": ["builtin"], "val_holdout": 2, "val_max_images": 1, "test_sets": ["Set5"],
                 "val_scales": [2], "scales": [2], "batches_per_epoch": 30, "batch_size": 2, "num_workers": 0},
        "trainer": {"precision": "32-true", "enable_progress_bar": False, "accelerator": "cpu",
                    "check_val_every_n_epoch": 1,
                    "callbacks": [{"class_path": "lit_sr.cluster.StepCheckpoint", "init_args": {"every_n_steps": 2}}]},
    }  # fmt: skip
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lit-sr-train", "SLURM_NNODES": "1", "SLURM_NTASKS": "1",
             "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "127.0.0.1", "SLURM_SUBMIT_DIR": str(tmp_path)}  # fmt: skip
    # The job runs in tmp_path: the data root must not be the relative default.
    job_env = subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
                             LIT_SR_DATA=str(data_root), **slurm)
    job_env.pop("LIT_SR_IGNORE_SLURM", None)
    cmd = ["bash", str(SCRIPTS["train"]), "vdsr", "quick", "--config", str(config)]
    ckpt = tmp_path / "runs" / "vdsr" / "slurm-4242" / "checkpoints" / "last.ckpt"

    job = subprocess.Popen(cmd, cwd=tmp_path, env=job_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ckpt.is_file():  # training runs once the first step checkpoint exists
            assert time.monotonic() < deadline and job.poll() is None, job.communicate()[1][-3000:]
            time.sleep(0.2)
        task = child_pid(job.pid)  # SLURM signals the job steps (the srun tasks), not the batch shell
        assert task is not None
        os.kill(task, signal.SIGUSR1)
        out, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    stop = [line for line in err.splitlines() if line.startswith("lit-sr: stopped by SIGUSR1")]
    assert len(stop) == 1 and "SLURM job 4242 requeued" in stop[0], err[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    stopped_at = torch.load(ckpt, weights_only=True)["global_step"]
    assert 0 < stopped_at < 60 and f"(step {stopped_at}, " in stop[0]

    again = subprocess.run(cmd, cwd=tmp_path, env=job_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "lit-sr: resuming runs/vdsr/slurm-4242/checkpoints/last.ckpt" in again.stdout
    assert "Restoring states from the checkpoint path at runs/vdsr/slurm-4242/checkpoints/last.ckpt" in (
        again.stdout + again.stderr
    )
    assert torch.load(ckpt, weights_only=True)["global_step"] == 60
    run = tmp_path / "runs" / "vdsr" / "slurm-4242"
    assert (run / "benchmark" / "results.md").is_file()  # the test table
    # The requeued job goes on with the job's W&B run (its config.yaml says which), from the step it stopped at.
    first, requeued = (read_finished(f) for f in find_runs(run))
    assert requeued.run_id == first.run_id and requeued.name == first.name == "slurm-4242"
    before = [row["trainer/global_step"] for row in first.history if "trainer/global_step" in row]  # none if early
    assert max(before, default=0) <= stopped_at <= min(requeued.series("trainer/global_step"))
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["logger"]["init_args"]["version"] == (
        first.run_id
    )


# ---- device keys and Trainer presets ---------------------------------------------------------------------------
def test_device_keys_and_trainer_presets(tmp_path):
    from argparse import Namespace

    args = Namespace(devices="2", nodes=3, strategy="ddp", trainer_preset="ddp")
    assert train_overrides(args) == [
        "--config", str(REPO / "trainers/ddp.yaml"), "--trainer.devices", "2",
        "--trainer.num_nodes", "3", "--trainer.strategy", "ddp",
    ]  # fmt: skip
    trainer_args = set(inspect.signature(L.Trainer.__init__).parameters)
    assert {"ddp", "ddp_cpu", "gpu"} <= set(trainer_preset_names())
    for name in trainer_preset_names():
        preset = yaml.safe_load(trainer_preset(name).read_text())
        assert set(preset) == {"trainer"} and set(preset["trainer"]) <= trainer_args, name
    with pytest.raises(Exception, match=r"no trainers/nope.yaml; available: ddp, ddp_cpu, gpu"):
        trainer_preset("nope")
    # `make train` passes its keys through to `lit-sr train`.
    dry = subprocess.run(
        ["make", "-n", "train", "MODEL=vdsr", "DEVICES=2", "NODES=1", "STRATEGY=ddp",
         "TRAINER=ddp_cpu", "VENV=/nonexistent"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    line = " ".join(" ".join(dry.stdout.split("\\\n")).split())
    assert "lit-sr train vdsr --preset quick --devices 2 --nodes 1 --strategy ddp --trainer-preset ddp_cpu" in line
