"""The training core end to end, on real images: stages, resume, logged values, learning, benchmark.

The tests read what a run logged from ``MemoryLogger`` (``tests/memory_logger.py``); ``staged_run`` alone logs to
real W&B, read back offline: the training side's one W&B smoke test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
import yaml
from conftest import TWO_STAGES
from lightning.pytorch import Callback
from memory_logger import logger
from PIL import Image
from wandb_offline import read_finished

from lit_sr.checkpoint import load_method
from lit_sr.cli import SRCLI, checkpoint_roles, main
from lit_sr.data.datamodule import SRDataModule
from lit_sr.data.sources import resolve_images
from lit_sr.errors import ConfigError
from lit_sr.evaluate import run_benchmark
from lit_sr.methods.base import STAGE_KEY
from lit_sr.methods.bicubic import Bicubic
from lit_sr.paths import REPO

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

STEPS = 12  # batches per epoch in the stage tests


def fit(tmp_path, name: str, model: dict, data: dict, trainer: dict | None = None, extra: list[str] = ()):
    """Run ``lit-sr fit`` in-process on the VDSR quick config with overrides; returns the finished CLI.

    Validation runs every epoch unless ``trainer`` says otherwise (the preset's own interval suits its length).
    """
    trainer = {"check_val_every_n_epoch": 1, **(trainer or {})}
    override = {"model": {"init_args": model}, "data": data, "trainer": trainer}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(override))
    args = [
        "fit",
        "--config",
        str(REPO / "experiments/vdsr/quick.yaml"),
        "--config",
        str(path),
        "--run_dir",
        str(tmp_path / name),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    try:
        return SRCLI(args=args)
    finally:
        wandb.finish()


TINY = {
    "variant": "vdsr_small",
    "net": {"depth": 4, "width": 8},
    "stages": TWO_STAGES,
}
TINY_DATA = {
    "batches_per_epoch": STEPS,
    "batch_size": 4,
    "num_workers": 0,
    "scales": [2],
    "scale_mode": "per_batch",
    "val_sets": ["Sun80"],
    "test_sets": ["Set5"],
    "val_scales": [2],
    "val_max_images": 1,
}
PANELS = ["--trainer.callbacks+=lit_sr.callbacks.ImagePanels", "--trainer.callbacks.every_n_epochs=1"]


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory, data_root):
    """Two stages (Adam, then SGD with adjustable clipping), stopped after epoch 2 (inside stage 2), logged to real
    W&B (offline; the default logger) for the W&B smoke test below."""
    tmp = tmp_path_factory.mktemp("staged")
    cli = fit(
        tmp, "staged", TINY, TINY_DATA, {"max_epochs": 2, "log_every_n_steps": 1, "precision": "32-true"}, PANELS
    )
    return tmp, cli


def test_stages_switch_at_their_boundary_and_log_stage_lr_clip(staged_run):
    """Training's one W&B smoke test: the real offline run read back (tags, resolved config, image panels)."""
    tmp, cli = staged_run
    assert cli.model.stage_index == 1 and isinstance(cli.trainer.optimizers[0], torch.optim.SGD)
    run = read_finished(tmp / "staged")
    rows = [h for h in run.history if "stage" in h]
    steps = [int(h["trainer/global_step"]) for h in rows]
    stage = dict(zip(steps, (h["stage"] for h in rows)))
    lr = dict(zip(steps, (h["lr"] for h in rows)))
    assert {s: stage[s] for s in (0, STEPS - 1, STEPS, 2 * STEPS - 1)} == {
        0: 0,
        STEPS - 1: 0,
        STEPS: 1,
        2 * STEPS - 1: 1,
    }
    assert lr[0] == pytest.approx(1e-3) and lr[STEPS] == pytest.approx(0.05)
    clip = {int(h["trainer/global_step"]): h["clip_bound"] for h in run.history if "clip_bound" in h}
    assert min(clip) == STEPS  # no clipping in stage 1
    assert clip[STEPS] == pytest.approx(0.001 / 0.05)
    assert "warm" in run.config["config"] and run.tags == ["vdsr", "vdsr_small"]
    assert (tmp / "staged" / "config.yaml").is_file()
    assert any(k.startswith("images/Sun80/x2") for h in run.history for k in h)  # image panel (the callback)


@pytest.mark.parametrize("every", [0, 5])
def test_step_values_are_logged_on_lightnings_logging_steps_and_never_with_log_every_n_steps_0(tmp_path, every):
    """The losses, lr and stage go to the logger on the steps Lightning writes (``trainer.log_every_n_steps``);
    0 turns step logging off (it must not divide by it)."""
    one_stage = {**TINY, "stages": TWO_STAGES[:1]}
    cli = fit(tmp_path, "every", one_stage, TINY_DATA,
              {"max_epochs": 1, "log_every_n_steps": every, "logger": logger(tmp_path / "every")})
    assert cli.trainer.global_step == STEPS
    steps = [row["step"] for row in cli.trainer.logger.rows if "train/loss" in row]
    assert steps == ([] if every == 0 else [4, 9])  # Lightning's own steps: batches 5 and 10 of 12


def test_resume_from_a_stage_two_checkpoint_continues_stage_two(staged_run, tmp_path):
    tmp, first = staged_run
    ckpt = tmp / "staged" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved[STAGE_KEY] == 1 and saved["global_step"] == 2 * STEPS
    cli = fit(
        tmp_path,
        "resumed",
        TINY,
        TINY_DATA,
        {"log_every_n_steps": 1, "precision": "32-true", "logger": logger(tmp_path / "resumed")},
        ["--ckpt_path", str(ckpt), "--trainer.callbacks+=cluster_helpers.OptimizerStateAtStart"],
    )
    assert cli.trainer.global_step == 3 * STEPS  # resumed at step 24, ran the third and last epoch only
    assert cli.model.stage_index == 1
    assert isinstance(cli.trainer.optimizers[0], torch.optim.SGD)
    # The optimizer that resumed is the saved one: same groups, and every momentum buffer equal to the saved one.
    (restored,) = [c.state for c in cli.trainer.callbacks if type(c).__name__ == "OptimizerStateAtStart"]
    (expected,) = saved["optimizer_states"]
    assert restored["param_groups"] == expected["param_groups"]
    assert restored["state"].keys() == expected["state"].keys() and len(expected["state"]) > 0
    for index, state in expected["state"].items():
        assert torch.equal(restored["state"][index]["momentum_buffer"], state["momentum_buffer"]), index
    rows = {row["step"]: row for row in cli.trainer.logger.rows if "lr" in row}
    assert min(rows) == 2 * STEPS and rows[2 * STEPS]["stage"] == 1
    assert rows[2 * STEPS]["lr"] == pytest.approx(0.05 * 0.5)  # second epoch of stage 2: one halving


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, data_root):
    """A small VDSR trained for 200 steps at x2 on the built-in photos, validated on two Sun80 photos."""
    tmp = tmp_path_factory.mktemp("learn")
    model = {
        "variant": "vdsr_small",
        "ssim_variant": "matlab",  # not the default: `lit-sr benchmark CKPT` must keep it
        "stages": [
            {
                "name": "train",
                "epochs": 2,
                "optimizer": {"name": "adam", "lr": 1.0e-3},
                "lr_schedule": {"name": "cosine", "min_lr": 1.0e-4},
            }
        ],
    }
    data = {
        "batches_per_epoch": 100,
        "batch_size": 16,
        "num_workers": 1,
        "scales": [2],
        "scale_mode": "per_batch",
        "val_sets": ["Sun80"],
        "val_max_images": 2,
        "test_sets": ["Set5"],
        "val_scales": [2],
    }
    trainer = {"log_every_n_steps": 5, "check_val_every_n_epoch": 2, "logger": logger(tmp / "learn")}
    cli = fit(tmp, "learn", model, data, trainer)
    return tmp, cli


def test_fit_validates_on_val_only_and_the_chosen_checkpoint_beats_bicubic_on_test(learned_run, data_root):
    tmp, cli = learned_run
    run = cli.trainer.logger
    assert not any(k.startswith("test/") or "/Set5/" in k for row in run.rows for k in row)  # fit never tests
    bicubic = run_benchmark(Bicubic(), ["Set5"], [2])["Set5"]["x2"]["psnr_y"]
    assert bicubic == pytest.approx(33.66, abs=0.01)
    best = load_method(cli.trainer.checkpoint_callback.best_model_path)  # chosen on val/psnr_y (Sun80)
    trained = run_benchmark(best, ["Set5"], [2])["Set5"]["x2"]["psnr_y"]
    # 200 Adam steps of a 10-layer net gain about 1.5 dB here; half of that is a clear, non-accidental gain.
    assert trained > bicubic + 0.75, f"trained {trained:.3f} dB vs bicubic {bicubic:.3f} dB"
    loss, bic = run.series("train/loss_mse"), run.series("train/loss_bicubic")
    assert np.mean(loss[-5:]) < np.mean(bic[-5:])  # the training loss fell below the bicubic MSE


def test_benchmarking_a_set_that_holds_a_training_image_warns_and_records_it(learned_run, tmp_path):
    """Its run compared its training images (the 291) with Sun80 and Set5 only: a set of other images is compared
    by the benchmark, which finds two rotated copies and a 0.8x downscaled copy of training images, and a copy of a
    validation image the checkpoint was chosen on, and names them. The image files are the checkpoint's own record,
    not its data names resolved again (``auto`` may mean other images on another data root)."""
    tmp, _ = learned_run
    ckpt = str(tmp / "learn" / "checkpoints" / "last.ckpt")
    train = [p.resolve() for p in resolve_images("291")[1]]  # the checkpoint records resolved files
    rotated, small = train[3], train[100]
    Image.open(rotated).rotate(90, expand=True).save(tmp_path / "a.png")
    Image.open(rotated).rotate(180).save(tmp_path / "a2.png")  # a second copy of the same training image
    img = Image.open(small)
    img.resize((round(img.width * 0.8), round(img.height * 0.8)), Image.BICUBIC).save(tmp_path / "b.png")
    sun80 = [p.resolve() for p in resolve_images("Sun80")[1]]
    Image.open(sun80[5]).save(tmp_path / "c.png")  # no copy in training, and not one of the 2 validation images
    Image.open(sun80[0]).save(tmp_path / "d.png")  # a validation image: the checkpoint was chosen on it
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["datamodule_hyper_parameters"]["train_sources"] = ["builtin"]  # what `auto` means on a root without 291
    renamed = tmp_path / "renamed.ckpt"
    torch.save(state, renamed)
    for checkpoint in (ckpt, str(renamed)):
        with pytest.warns(UserWarning) as caught:
            roles = checkpoint_roles(checkpoint, [str(tmp_path)])
        said = [str(w.message) for w in caught]
        assert any(re.match(rf"{tmp_path / 'a.png'} is a copy of {rotated} \(correlation 1.000\), a training image "
                            "of ", m) for m in said), said
        assert any(m.startswith(f"{tmp_path / 'd.png'} is a copy of {sun80[0]} (correlation 1.000), a validation "
                                "image (Sun80)") for m in said), said
        assert roles["checked_for_overlap"] == [tmp_path.name] and roles["unchecked_for_overlap"] == []
        found = {Path(e).name: (t, c) for t, e, c in roles["training_copies"]}
        assert set(found) == {"a.png", "a2.png", "b.png"} and found["a.png"] == found["a2.png"] == (str(rotated), 1.0)
        assert found["b.png"][0] == str(small) and found["b.png"][1] >= 0.95  # its thumbnails: 0.9999 and more
        assert roles["selection_copies"] == [[str(sun80[0]), str(tmp_path / "d.png"), 1.0]]
        assert roles["selection_on_test"]
    held = SRDataModule(train_sources=["291"], val_holdout=10)  # a run that chose on 10 of the 291
    image = held.eval_paths("holdout")[4].resolve()
    state["SRDataModule"] = held.state_dict()
    torch.save(state, renamed)
    other = tmp_path / "other"
    other.mkdir()
    Image.open(image).save(other / "e.png")
    with pytest.warns(UserWarning, match=rf"e.png is a copy of {image} \(correlation 1.000\), a validation image "
                                         r"\(holdout\) .* was chosen on: its rows are not test numbers"):
        roles = checkpoint_roles(str(renamed), [str(other)])
    assert roles["training_copies"] == [] and roles["selection_on_test"]  # chosen on it, never trained on it
    bad = tmp_path / "moved.ckpt"  # trained on folders this machine does not have
    state["SRDataModule"]["images"]["train"] = [str(tmp_path / "no-such-folder" / "x.png")]
    torch.save(state, bad)
    with pytest.warns(UserWarning, match=r"its training images cannot be compared with \['" + tmp_path.name):
        roles = checkpoint_roles(str(bad), [str(tmp_path)])
    assert (roles["checked_for_overlap"], roles["unchecked_for_overlap"]) == ([], [tmp_path.name])
    state["SRDataModule"]["images"]["val"] = {"Sun80": ["/elsewhere/Sun80/a.png"]}  # its data root moved since
    torch.save(state, bad)
    with pytest.warns(UserWarning, match=r"was chosen on images of \['Sun80'\]"):
        roles = checkpoint_roles(str(bad), ["Sun80"])  # its own validation set, by name
    assert roles["selection_on_test"] and roles["unchecked_for_overlap"] == []


def test_logged_values_read_back_and_equal_the_benchmark_of_the_checkpoint(learned_run):
    tmp, cli = learned_run
    run = cli.trainer.logger
    logged_psnr = run.series("val/Sun80/x2/psnr_y")[-1]
    logged_ssim = run.series("val/Sun80/x2/ssim_y")[-1]
    assert run.series("val/psnr_y")[-1] == pytest.approx(logged_psnr, abs=1e-9)
    assert len(run.series("train/loss")) >= 30 and 0.99e-3 < run.series("lr")[0] <= 1e-3  # cosine from 1e-3
    assert run.config["variant"] == "vdsr_small" and run.config["batches_per_epoch"] == 100
    ckpt = tmp / "learn" / "checkpoints" / "last.ckpt"
    bench = run_benchmark(load_method(str(ckpt)), ["Sun80"], [2], max_images=2)["Sun80"]["x2"]
    assert bench["psnr_y"] == pytest.approx(logged_psnr, abs=1e-6)
    assert bench["ssim_y"] == pytest.approx(logged_ssim, abs=1e-6)
    assert bench["n_images"] == 2
    # `lit-sr benchmark CKPT` on the two validation images: the checkpoint's own SSIM variant (MATLAB here)
    two = tmp / "two"
    two.mkdir()
    for path in resolve_images("Sun80")[1][:2]:
        (two / path.name).symlink_to(path)
    with pytest.warns(UserWarning, match=r"was chosen on images of \['two'\] \(its validation sets: \['Sun80'\]\)"):
        assert main(["benchmark", str(ckpt), "--data", str(two), "--scales", "2", "--out", str(tmp / "bench")]) == 0
    written = json.loads((tmp / "bench" / "results.json").read_text())
    assert written["meta"]["ssim_variant"] == "matlab"
    assert written["results"]["two"]["x2"]["ssim_y"] == pytest.approx(logged_ssim, abs=1e-6)
    small = tmp / "small"  # without --scales: the scales VDSR supports (on one small image, to be quick)
    small.mkdir()
    Image.open(resolve_images("Set5")[1][0]).crop((0, 0, 60, 60)).save(small / "crop.png")
    assert main(["benchmark", str(ckpt), "--data", str(small), "--out", str(tmp / "bench_small")]) == 0
    assert set(json.loads((tmp / "bench_small" / "results.json").read_text())["results"]["small"]) == {
        "x2", "x3", "x4"}
    meta = written["meta"]  # traced to the run's own config, with the data roles of the checkpoint's run
    assert meta["config"] == str(tmp / "learn" / "config.yaml") and (tmp / "learn" / "config.yaml").is_file()
    # the folder holds the two Sun80 images it was chosen on (as links): recorded as a selection on them
    assert (meta["train_sources"], meta["val_sets"], meta["selection_on_test"]) == (["auto"], ["Sun80"], True)
    # its run compared its training images with those two and with Set5: the benchmark compares no image again
    assert (meta["checked_for_overlap"], meta["training_copies"], meta["unchecked_for_overlap"]) == ([], [], [])
    assert checkpoint_roles(str(ckpt), ["Set5"])["checked_for_overlap"] == []
    with pytest.warns(UserWarning, match=r"was chosen on images of \['Sun80'\] \(its validation sets: \['Sun80'\]\)"):
        assert checkpoint_roles(str(ckpt), ["Set5", "Sun80"])["selection_on_test"] is True


def test_a_schedule_ending_mid_epoch_validates_its_last_step(tmp_path, data_root):
    model = {**TINY, "stages": [{"name": "short", "steps": 7, "optimizer": {"name": "adam", "lr": 1e-3}}]}
    cli = fit(tmp_path, "mid", model, {**TINY_DATA, "batches_per_epoch": 5}, {"logger": False})
    assert cli.trainer.global_step == 7
    best = torch.load(cli.trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
    assert best["global_step"] == 7  # validated on the step that ended the schedule (epoch 1 of 5 batches: step 5)


def test_with_gradient_accumulation_an_epoch_of_5_batches_is_3_steps(tmp_path, data_root):
    # Lightning steps the optimizer after batches 2, 4 and on the epoch's last batch 5
    model = {**TINY, "stages": [{"name": "a", "epochs": 1, "optimizer": {"name": "adam", "lr": 1e-3}},
                                {"name": "b", "epochs": 1, "optimizer": {"name": "sgd", "lr": 1e-3}}]}  # fmt: skip
    data = {**TINY_DATA, "batches_per_epoch": 5}
    cli = fit(tmp_path, "acc", model, data, {"logger": False, "accumulate_grad_batches": 2})
    assert (cli.trainer.global_step, cli.trainer.current_epoch, cli.model.stage_index) == (6, 2, 1)
    assert isinstance(cli.trainer.optimizers[0], torch.optim.SGD)


def test_image_panels_follow_validations_not_epochs():
    from types import SimpleNamespace

    from lit_sr.callbacks import ImagePanels

    logged = []
    trainer = SimpleNamespace(sanity_checking=False, global_step=0, is_global_zero=True,
                              logger=SimpleNamespace(log_image=lambda **kw: logged.append(kw["key"])))  # fmt: skip
    batch = {"lr": torch.rand(1, 1, 8, 8), "hr": torch.rand(1, 1, 16, 16), "scale": torch.tensor([2]), "set": ["s"]}
    panels = ImagePanels(every_n_epochs=2)
    for epoch in (9, 19, 29):  # trainer.check_val_every_n_epoch 10: validations at epochs 9, 19, 29
        trainer.current_epoch = epoch
        panels.on_validation_batch_end(trainer, None, torch.rand(1, 1, 16, 16), batch, 0)
        panels.on_validation_epoch_end(trainer, None)
    assert logged == ["images/s/x2", "images/s/x2"]  # validations 0 and 2
    assert panels.state_dict() == {"validations": 3}


class LogsByEpoch(Callback):
    """Logs ``val/fake`` = ``values[epoch]`` at every validation: a metric whose best is known."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            pl_module.log("val/fake", float(self.values[trainer.current_epoch]))


def test_a_checkpoint_from_a_stage_ignores_the_validations_of_the_stages_before_it(tmp_path, data_root):
    def callbacks(from_stage: str) -> dict:
        checkpoint = {"class_path": "lit_sr.callbacks.RunCheckpoint", "init_args": {
            "monitor": "val/fake", "from_stage": from_stage, "dirpath": str(tmp_path / from_stage)}}  # fmt: skip
        values = {"class_path": "test_training.LogsByEpoch", "init_args": {"values": [100.0, 1.0, 2.0]}}
        return {"logger": False, "callbacks": [values, checkpoint]}

    data = {**TINY_DATA, "batches_per_epoch": 2, "test_sets": []}
    cli = fit(tmp_path, "late", TINY, data, callbacks("main"))  # warm: epoch 0 (100), main: epochs 1, 2 (1, 2)
    chosen = cli.trainer.checkpoint_callback
    assert chosen.best_model_score.item() == 2.0  # not epoch 0's 100
    saved = torch.load(chosen.best_model_path, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and saved[STAGE_KEY] == 1
    with pytest.raises(ConfigError, match=r"RunCheckpoint.from_stage 'cool' is no stage of this run's "
                       r"model.init_args.stages \['warm', 'main'\]: name one of them"):
        fit(tmp_path, "bad", TINY, data, callbacks("cool"))
