"""User mistakes print one line ``lit-sr: error: ...`` naming the culprit and the fix, exit 2, no traceback;
checkpoints load with ``weights_only=True`` and only ever build a registered lit_sr method."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
import yaml
from cli_config import QUICK, TINY, write_yaml
from jsonargparse.typing import NonNegativeInt
from PIL import Image

from lit_sr.callbacks import ImagePanels
from lit_sr.checkpoint import load_method, registered_method_classes
from lit_sr.cli import SRCLI, main
from lit_sr.cluster import StepCheckpoint
from lit_sr.errors import CheckpointError, ConfigError
from lit_sr.methods.cmsc import CMSC
from lit_sr.methods.vdsr import VDSR
from lit_sr.paths import REPO


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, data_root) -> Path:
    """A real VDSR checkpoint: two steps of a 3-layer network."""
    tmp = tmp_path_factory.mktemp("tiny")
    config = write_yaml(tmp / "tiny.yaml", TINY)
    try:
        SRCLI(args=["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(tmp / "run")])
    finally:
        wandb.finish()
    return tmp / "run" / "checkpoints" / "last.ckpt"


def error_line(capsys) -> str:
    """The single ``lit-sr: error:`` line of stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-sr")]
    assert len(lines) == 1 and lines[0].startswith("lit-sr: error: "), err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "lit_sr.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


# ---- checkpoints ----------------------------------------------------------------------------------------------
def test_a_non_checkpoint_file_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    junk = tmp_path / "notes.ckpt"
    junk.write_text("these are my notes, not a checkpoint\n")
    assert main(["benchmark", str(junk), "--data", "Set5"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines()[-1].startswith(f"lit-sr: error: {junk} is not a checkpoint (not a torch file)")
    assert "Traceback" not in stderr and "pass a .ckpt file written by `lit-sr fit`" in stderr
    photo = tmp_path / "photo.png"  # an image passed where a checkpoint goes
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    assert main(["upscale", str(photo), str(photo), "--scale", "2", "-o", str(tmp_path / "o")]) == 2
    assert error_line(capsys).startswith(f"lit-sr: error: {photo} is not a checkpoint (not a torch file)")
    debug = cli("benchmark", str(junk), "--data", "Set5", "--debug")  # the real process: its exit code
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def test_a_truncated_checkpoint(tiny_ckpt, tmp_path, capsys):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(tiny_ckpt.read_bytes()[: tiny_ckpt.stat().st_size // 2])
    assert main(["benchmark", str(cut), "--data", "Set5", "--scales", "2"]) == 2
    assert f"{cut} is not a checkpoint or is corrupt" in error_line(capsys)


def cmsc_checkpoint(path: Path) -> Path:
    """A CMSC checkpoint as ``lit-sr fit`` writes it (state dict, hyperparameters with ``_class_path``)."""
    model = CMSC(variant="cmsc_small")
    hparams = {"_class_path": "lit_sr.methods.cmsc.CMSC", **dict(model.hparams)}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    return path


def test_a_checkpoint_of_another_method(tiny_ckpt, tmp_path, capsys):
    other = cmsc_checkpoint(tmp_path / "cmsc.ckpt")
    assert isinstance(load_method(other), CMSC)
    with pytest.raises(CheckpointError, match=r"is a checkpoint of CMSC, not of VDSR; pass a VDSR checkpoint"):
        load_method(other, expected=VDSR)
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    args = ["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(tmp_path / "r")]
    assert main([*args, "--ckpt_path", str(other)]) == 2
    line = error_line(capsys)
    assert f"--ckpt_path {other} is a checkpoint of CMSC (lit_sr.methods.cmsc.CMSC), but the config trains VDSR" in line
    assert line.endswith("pass a VDSR checkpoint, or the config of CMSC (experiments/cmsc/...)")
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing trained


class RunsCode:
    """Pickles to a shell command that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_would_run_code_runs_nothing(tiny_ckpt, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["callbacks"] = {"x": RunsCode(marker)}
    torch.save(ckpt, evil)
    with pytest.raises(CheckpointError, match="refers to code that a checkpoint may not run"):
        load_method(evil)
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    fit = ["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(tmp_path / "r")]
    for argv in (["benchmark", str(evil), "--data", "Set5"], [*fit, "--ckpt_path", str(evil)]):
        assert main(argv) == 2
        line = error_line(capsys)
        assert f"{evil} refers to code that a checkpoint may not run ({os.system.__module__}.system)" in line
    assert not marker.exists()


def test_a_class_path_that_is_not_a_registered_method_is_never_imported(tiny_ckpt, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "sneaky_module.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nfrom lit_sr.methods.vdsr import VDSR as Sneaky\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "sneaky_module.Sneaky"
    sneaky = tmp_path / "sneaky.ckpt"
    torch.save(ckpt, sneaky)
    assert "lit_sr.methods.vdsr.VDSR" in registered_method_classes()
    with pytest.raises(CheckpointError, match="'sneaky_module.Sneaky', which is not a registered lit_sr method"):
        load_method(sneaky)
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    fit = ["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(tmp_path / "r")]
    for argv in (["upscale", str(sneaky), str(REPO / "README.md"), "--scale", "2"], [*fit, "--ckpt_path", str(sneaky)]):
        assert main(argv) == 2
        assert "it was not imported" in error_line(capsys)
    assert not marker.exists() and "sneaky_module" not in sys.modules


# ---- scales, methods, config values -----------------------------------------------------------------------
def test_an_unsupported_scale(tiny_ckpt, tmp_path, capsys):
    assert main(["benchmark", str(tiny_ckpt), "--data", "Set5", "--scales", "5"]) == 2
    assert "VDSR supports scales [2, 3, 4], not [5]; drop them from --scales" in error_line(capsys)
    photo = REPO.parent / "shared" / "data" / "Set5"
    image = next(p for p in Path(os.environ.get("LIT_SR_DATA", photo.parent)).glob("Set5/*.png"))
    assert main(["upscale", str(tiny_ckpt), str(image), "--scale", "5", "-o", str(tmp_path)]) == 2
    assert "VDSR supports scales [2, 3, 4], not x5" in error_line(capsys)


def test_an_unknown_method_or_variant(tmp_path, capsys):
    assert main(["train", "vdsrr"]) == 2
    line = error_line(capsys)
    assert "no preset experiments/vdsrr/quick.yaml" in line and "vdsr: paper, quick" in line
    args = ["fit", "--config", str(QUICK), "--run_dir", str(tmp_path / "r"), "--model.init_args.variant", "vdsr_xl"]
    assert main(args) == 2
    assert "unknown model 'vdsr_xl'; registered variants: " in error_line(capsys)


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"name": "s", "epochs": 1, "optimizer": {"name": "sgd", "lr": -0.1}}],
         "model.init_args.stages.0.optimizer.lr must be a positive number, got -0.1"),
        ([{"name": "s", "epochs": 0}], "model.init_args.stages.0.epochs must be a positive integer, got 0"),
        ([{"name": "s", "epochs": 1}, {"name": "t", "epochs": 1, "optimiser": {"name": "adam"}}],
         "model.init_args.stages.1: unknown key(s) ['optimiser']"),
    ],
)  # fmt: skip
def test_a_bad_config_value_names_its_key_path(stages, message, tmp_path, capsys):
    config = write_yaml(tmp_path / "bad.yaml", {"model": {"init_args": {"stages": stages}}})
    assert main(["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(tmp_path / "r")]) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_bad_typed_data_argument_is_named_by_jsonargparse_in_one_line(command, tmp_path, capsys):
    """The DataModule's typed arguments (PositiveInt, ...) are checked by jsonargparse, which names the key."""
    config = ["--config", str(QUICK)] if command == "fit" else ["vdsr"]
    assert main([command, *config, "--run_dir", str(tmp_path / "r"), "--data.batch_size", "0"]) == 2
    assert error_line(capsys) == (
        'lit-sr: error: Parser key "data.batch_size": Not of type PositiveInt: 0 does not conform to restriction '
        "v>0 (lit-sr fit --help lists the keys)"
    )
    assert not (tmp_path / "r").exists()


def test_an_unquoted_numeric_source_name_says_to_quote_it(tmp_path, capsys):
    assert main(["fit", "--config", str(QUICK), "--run_dir", str(tmp_path / "r"), "--data.train_sources", "[291]"]) == 2
    assert error_line(capsys) == (
        "lit-sr: error: Parser key \"data.train_sources\": Expected a <class 'str'>. Got value: 291; quote a name "
        "that looks like a number, e.g. '[\"291\"]' (lit-sr fit --help lists the keys)"
    )


def test_benchmark_messages_name_its_own_options(tmp_path, capsys):
    """``lit-sr benchmark`` has --data, no data.* keys: its messages name what it takes."""
    out = ["--out", str(tmp_path / "b")]
    assert main(["benchmark", "bicubic", "--data", "Set5", "Set5", *out]) == 2
    assert error_line(capsys) == "lit-sr: error: --data Set5 Set5 names a set twice; give each once"
    other = tmp_path / "other" / "Set5"
    other.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(other / "a.png")
    assert main(["benchmark", "bicubic", "--data", "Set5", str(other), *out]) == 2
    assert error_line(capsys) == (f"lit-sr: error: --data Set5 {other} holds two sets named 'Set5' (a set is named "
                                  "after its folder): rename one folder")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tiny / "small.png")
    assert main(["benchmark", "bicubic", "--data", str(tiny), "--scales", "2", *out]) == 2
    assert error_line(capsys).endswith("smaller than the 17x17 needed (evaluation at x2); remove it from the set or "
                                       "evaluate at a smaller scale")


def test_benchmark_never_replaces_a_training_runs_own_test_table_unless_forced(tmp_path, capsys, data_root):
    run = tmp_path / "benchmark"
    run.mkdir()
    table = json.dumps({"meta": {"selection": {"metric": "val/psnr_y"}, "train_wall_s": 60.0}, "results": {}})
    (run / "results.json").write_text(table)  # what `lit-sr train` writes in <run>/benchmark
    args = ["benchmark", "bicubic", "--data", "Set5", "--scales", "2", "--out", str(run)]
    assert main(args) == 2
    assert error_line(capsys) == (f"lit-sr: error: --out {run} holds the test table its training run wrote ({run}/"
                                  "results.json: with its selection, data and timing); pass --force to replace it, or "
                                  "choose another --out")
    assert (run / "results.json").read_text() == table
    assert main([*args, "--force"]) == 0 and "Set5" in json.loads((run / "results.json").read_text())["results"]
    assert main(args) == 0  # a benchmark's own table is replaced by the next one (make benchmark)


def test_compare_of_a_folder_that_does_not_exist_says_so(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "c")]) == 2
    assert error_line(capsys) == f"lit-sr: error: run folder {tmp_path / 'nope'} does not exist; check the path " \
        "(runs/<method>/<time>)"


def test_an_unknown_key_is_one_line_naming_it(tmp_path, capsys):
    assert main(["fit", "--config", str(QUICK), "--run_dir", str(tmp_path / "r"), "--model.init_args.dept", "3"]) == 2
    assert error_line(capsys) == (
        "lit-sr: error: Parser key \"model\": Problem with given class_path 'lit_sr.methods.vdsr.VDSR': Option 'dept' "
        "is not accepted (lit-sr fit --help lists the keys)"
    )


NOT_NEGATIVE = "Not of type NonNegativeInt: -1 does not conform to restriction v>=0"


@pytest.mark.parametrize(
    ("method", "args", "keys", "reason"),
    [
        ("lapsrn", ["--model.init_args.eps", "0"], ("model", "eps"),
         "Not of type PositiveFloat: 0 does not conform to restriction v>0"),
        ("drn", ["--model.init_args.loss", "l2"], ("model", "loss"),
         "Expected a typing.Literal['gsl', 'l1']. Got value: l2"),
        ("vdsr", ["--trainer.callbacks+=lit_sr.cluster.StepCheckpoint", "--trainer.callbacks.every_n_steps=-1"],
         ("trainer.callbacks", "every_n_steps"), NOT_NEGATIVE),
        ("vdsr", ["--trainer.callbacks+=lit_sr.callbacks.ImagePanels", "--trainer.callbacks.every_n_epochs=-1"],
         ("trainer.callbacks", "every_n_epochs"), NOT_NEGATIVE),
    ],
    ids=["method-positive", "method-literal", "step-checkpoint", "image-panels"],
)  # fmt: skip
def test_a_bad_typed_method_or_callback_argument_is_named_by_jsonargparse(method, args, keys, reason, tmp_path, capsys):
    """Methods' and callbacks' typed arguments are checked by jsonargparse, which names the section and the key."""
    config = REPO / "experiments" / method / "quick.yaml"
    assert main(["fit", "--config", str(config), "--run_dir", str(tmp_path / "r"), *args]) == 2
    err = error_line(capsys)
    assert all(f'Parser key "{key}":' in err for key in keys) and reason in err


def test_a_bad_network_override_names_its_key_path(tmp_path, capsys):
    """``model.init_args.net`` is a plain mapping jsonargparse passes on: the registry checks it against the type
    hints of the network the variant builds, and names the key."""
    args = ["fit", "--config", str(QUICK), "--run_dir", str(tmp_path / "r"), "--model.init_args.net", "{depth: 3.5}"]
    assert main(args) == 2
    assert "model.init_args.net.depth must be an integer, got 3.5" in error_line(capsys)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: StepCheckpoint(every_n_steps=-1), "StepCheckpoint.every_n_steps must be an integer >= 0, got -1"),
        (lambda: StepCheckpoint(every_n_steps=2.0), "StepCheckpoint.every_n_steps must be an integer >= 0, got 2.0"),
        (lambda: ImagePanels(every_n_epochs=-1), "ImagePanels.every_n_epochs must be an integer >= 0, got -1"),
        (lambda: ImagePanels(every_n_epochs=True), "ImagePanels.every_n_epochs must be an integer >= 0, got True"),
    ],
    ids=["step-negative", "step-float", "panels-negative", "panels-bool"],
)  # fmt: skip
def test_a_bad_callback_argument_from_python_names_the_key(make, message):
    """A callback built from Python gets the checks jsonargparse makes of its typed arguments."""
    with pytest.raises(ConfigError) as err:
        make()
    assert str(err.value) == message


def test_callbacks_hold_plain_ints():
    """jsonargparse passes NonNegativeInt (an int subclass); the callbacks keep plain ints."""
    assert type(StepCheckpoint(every_n_steps=NonNegativeInt(3)).every_n_steps) is int
    assert type(ImagePanels(every_n_epochs=NonNegativeInt(0)).every_n_epochs) is int


def test_a_bad_node_count_is_named_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "vdsr", "--nodes", "0"])
    assert exit_.value.code == 2
    assert "argument --nodes: must be a positive integer, got '0'" in capsys.readouterr().err


def test_a_trainer_argument_lightning_refuses(tmp_path, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    argv = ["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(tmp_path / "run"),
            "--trainer.devices", "0"]
    assert main(argv) == 2
    line = error_line(capsys)  # Lightning's MisconfigurationException, one line
    assert "`Trainer(devices='0')` value is not a valid input" in line and "check the trainer keys" in line


# ---- data, storage, sweeps, output ------------------------------------------------------------------------
def test_a_missing_or_empty_data_folder(tmp_path, capsys):
    assert main(["benchmark", "bicubic", "--data", str(tmp_path / "nowhere")]) == 2
    assert f"image source {tmp_path / 'nowhere'}: no such folder" in error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["benchmark", "bicubic", "--data", str(tmp_path / "empty")]) == 2
    assert f"image folder {tmp_path / 'empty'} holds no images" in error_line(capsys)
    args = ["fit", "--config", str(QUICK), "--run_dir", str(tmp_path / "r"), "--data.train_sources", "[nowhere_set]"]
    assert main(args) == 2
    assert "unknown image source 'nowhere_set'" in error_line(capsys)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("report", [False, True])
def test_an_unreachable_optuna_storage(tmp_path, capsys, report):
    url = f"postgresql+psycopg2://optuna@127.0.0.1:{_closed_port()}/optuna"
    argv = ["sweep", *(["report"] if report else []), str(REPO / "sweeps" / "vdsr.yaml"), "--storage", url,
            "--root", str(tmp_path), *([] if report else ["--no-report"])]
    assert main(argv) == 2
    line = error_line(capsys)
    # The URL is named without its user part (it may carry a password); the report opens the storage without
    # creating tables, where Optuna wraps the refused connection in a StorageInternalError.
    assert f"cannot open the Optuna storage {url.split('@')[-1]}" in line and "Connection refused" in line


def test_an_sqlite_storage_in_a_folder_that_cannot_be_made(tmp_path, capsys):
    url = "sqlite:////proc/no-such-folder/optuna.db"
    argv = ["sweep", str(REPO / "sweeps" / "vdsr.yaml"), "--storage", url, "--root", str(tmp_path), "--no-report"]
    assert main(argv) == 2
    assert error_line(capsys).startswith(f"lit-sr: error: cannot open the Optuna storage {url}: FileNotFoundError")


def test_a_sweep_file_naming_a_config_path_that_does_not_exist(tmp_path, capsys):
    sweep = tmp_path / "typo.yaml"
    sweep.write_text(
        "method: vdsr\npreset: quick\nstudy: {n_trials: 1}\nparams:\n"
        "  lr: {type: float, low: 0.01, high: 0.2, paths: [model.init_args.stages.0.optimizer.learning_rate]}\n"
    )
    assert main(["sweep", str(sweep), "--root", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert "'model.init_args.stages.0.optimizer.learning_rate' does not exist" in line and "typo.yaml" in line


def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create (root ignores permission bits: use sysfs, which refuses mkdir)."""
    if os.geteuid() == 0:
        return Path("/sys/lit-sr-test-output")
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    return parent / "out"


def test_an_output_folder_that_is_not_writable(tmp_path, capsys, data_root, monkeypatch):
    out = unwritable(tmp_path)
    monkeypatch.setattr("lit_sr.evaluate.run_benchmark", lambda *a, **k: pytest.fail("evaluated before the check"))
    assert main(["benchmark", "bicubic", "--data", "Set5", "--scales", "2", "--out", str(out)]) == 2
    assert f"--out {out}: cannot write there" in error_line(capsys)
    assert main(["fit", "--config", str(QUICK), "--run_dir", str(out)]) == 2
    assert f"--run_dir {out}: cannot write there" in error_line(capsys)


def test_an_onnx_path_under_a_file_names_the_onnx_flag(tiny_ckpt, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main(["export", str(tiny_ckpt), "--onnx", str(afile / "x.onnx")]) == 2
    line = error_line(capsys)
    assert line.startswith(f"lit-sr: error: --onnx {afile}: cannot write there (") and line.endswith(
        "choose a file in a folder you can write")


def test_a_non_finite_loss_stops_with_step_stage_and_lr(tmp_path, capsys, data_root):
    blowup = yaml.safe_load(yaml.safe_dump(TINY))
    blowup["model"]["init_args"]["stages"] = [
        {"name": "hot", "steps": 40, "optimizer": {"name": "sgd", "lr": 1.0e12, "momentum": 0.9}}
    ]
    blowup["data"]["batches_per_epoch"] = 40
    config = write_yaml(tmp_path / "hot.yaml", blowup)
    assert main(["fit", "--config", str(QUICK), "--config", str(config), "--run_dir", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert "non-finite training loss" in line and "(stage hot, lr 1e+12); lower the lr" in line
    assert " at step " in line
