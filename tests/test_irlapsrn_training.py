"""IRLapSRN training: per-stage level targets, greedy pretraining through the stage engine, finetune, resume."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
import wandb
import yaml
from lightning.pytorch import Callback

from lit_sr.cli import SRCLI
from lit_sr.data.degrade import crop_size, degrade
from lit_sr.data.images import read_image
from lit_sr.data.resize import imresize
from lit_sr.data.sources import resolve_images
from lit_sr.losses import charbonnier, local_rank_loss
from lit_sr.methods.irlapsrn import IRLapSRN
from lit_sr.paths import REPO

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

TINY_NET = {"channels": 8, "branch_width": 4, "irb_per_level": 1}


def stages(level_steps: int = 2, finetune_steps: int = 2, theta: float = 0.01, **finetune) -> list[dict]:
    """pretrain_level_1, pretrain_level_2 (SGD, adjustable clipping), finetune (Adam), lengths in steps."""
    sgd = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    pre = {"optimizer": sgd, "clip": {"mode": "adjustable", "theta": theta}, "loss_weights": {"rank": 0.1}}
    return [
        {"name": "pretrain_level_1", "steps": level_steps, "trainable": ["input_conv", "levels.0"],
         "targets": "level_1", **pre},
        {"name": "pretrain_level_2", "steps": level_steps, "trainable": ["levels.1"], "targets": "level_2", **pre},
        {"name": "finetune", "steps": finetune_steps, "targets": "hr", "optimizer": {"name": "adam", "lr": 1e-3},
         "loss_weights": {"rank": 0.1, "intermediate": 0.0, **finetune}},
    ]


def tiny(**kw) -> IRLapSRN:
    torch.manual_seed(0)
    kw.setdefault("stages", stages())
    return IRLapSRN(variant="irlapsrn_small", net=TINY_NET, **kw)


def at_stage(index: int, **finetune) -> IRLapSRN:
    """The tiny method at stage ``index`` of ``stages()``: the only stage it has (same seed, same weights)."""
    return tiny(stages=[stages(**finetune)[index]])


def real_batch(n: int = 4, patch: int = 32) -> list[dict]:
    _, paths = resolve_images("builtin")
    img = read_image(paths[0])
    side = crop_size(patch, [4])
    hr = torch.from_numpy(np.stack([img[40 * i : 40 * i + side, 30 * i : 30 * i + side] for i in range(n)]))
    hr = hr.permute(0, 3, 1, 2).contiguous()
    out = degrade(hr, torch.full((n,), 4), torch.zeros(n, dtype=torch.bool), IRLapSRN.batch_needs, patch)
    return out if isinstance(out, list) else [out]


def by_hand(pred: torch.Tensor, target: torch.Tensor, rank: float = 0.1) -> torch.Tensor:
    return charbonnier(pred, target, 1e-3, "mean") + rank * local_rank_loss(pred, target, 3, 0.02, 1e-3, "mean")


def test_each_stage_supervises_its_levels_against_their_downsampled_targets():
    groups = real_batch()
    (group,) = groups
    assert [tuple(t.shape[-2:]) for t in group["pyramid"]] == [(16, 16), (32, 32)]
    # pretrain_level_1: level 1 only (the network runs level 1 only), against HR downsampled x2.
    method = at_stage(0)
    total, parts = method.compute_loss(groups)
    level1 = method.net(group["lr"], 2)[-1]
    torch.testing.assert_close(total, by_hand(level1, group["pyramid"][0]))
    assert set(parts) == {"image", "rank"}
    # pretrain_level_2 and finetune (w_int = 0): the finest level only, against HR.
    finest = method.net(group["lr"], 4)[-1]
    for index in (1, 2):
        total, _ = at_stage(index).compute_loss(groups)
        torch.testing.assert_close(total, by_hand(finest, group["hr"]))
    # finetune with w_int = 0.5: the intermediate level joins with that weight.
    method = at_stage(2, intermediate=0.5)
    total, parts = method.compute_loss(groups)
    outs = method.net(group["lr"], 4)
    torch.testing.assert_close(total, by_hand(outs[1], group["hr"]) + 0.5 * by_hand(outs[0], group["pyramid"][0]))
    # The bicubic reference: the same loss for MATLAB bicubic of the LR against HR.
    torch.testing.assert_close(method.reference_loss(groups)["bicubic"], by_hand(imresize(group["lr"], 4), group["hr"]))


def test_joint_mode_merges_the_pretraining_stages_into_one_over_all_levels():
    method = tiny(stage1_mode="joint", stages=stages(level_steps=3))
    assert [s.name for s in method.stages] == ["pretrain_joint", "finetune"]
    joint = method.stages[0]
    assert (joint.steps, joint.trainable, joint.targets) == (6, None, "all_levels")
    assert joint.clip.mode == "adjustable" and joint.optimizer.name == "sgd"
    assert method.stage is joint  # a new method starts at its first stage
    groups = real_batch()
    total, _ = method.compute_loss(groups)
    outs = method.net(groups[0]["lr"], 4)
    torch.testing.assert_close(total, by_hand(outs[0], groups[0]["pyramid"][0]) + by_hand(outs[1], groups[0]["hr"]))


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match=r"stages\.1\.targets='level_3': irlapsrn_small has levels 1\.\.2"):
        tiny(stages=[stages()[0], {**stages()[1], "targets": "level_3"}])
    with pytest.raises(ValueError, match=r"model.init_args.stage1_mode: 'greed' is not one of \['greedy', 'joint'\]"):
        tiny(stage1_mode="greed")
    with pytest.raises(ValueError, match="rank_window must be an odd integer >= 3.*got 4"):
        tiny(rank_window=4)
    with pytest.raises(TypeError, match="coarse_level_weight"):  # LapSRN's; IRLapSRN has loss_weights.intermediate
        tiny(coarse_level_weight=0.5)
    with pytest.raises(ValueError, match="'lapsrn_x4' builds a LapSRNNet, but IRLapSRN trains IRLapSRNNet"):
        IRLapSRN(variant="lapsrn_x4")


# ---- a real fit through the CLI: the stage engine drives the greedy pretraining ------------------------------


class Recorder(Callback):
    """Per training step: the stage, which parameters changed, the frozen modules' modes, the clipped gradients.

    The CLI builds it from the config (``trainer.callbacks``); its rows land in ``Recorder.runs[key]``.
    """

    runs: ClassVar[dict[str, Recorder]] = {}

    def __init__(self, key: str) -> None:
        self.rows: list[dict] = []
        self.start: dict[str, torch.Tensor] | None = None
        Recorder.runs[key] = self

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}
        if self.start is None:
            self.start = self._before

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        net = pl_module.net
        changed = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), self._before[n])}
        opt = trainer.optimizers[0]
        bounds = [
            (g["lr"], max(float(p.grad.abs().max()) for p in g["params"] if p.grad is not None))
            for g in opt.param_groups
        ]
        self.rows.append({
            "step": trainer.global_step, "stage": pl_module.stage.name, "changed": changed,
            "eval": {n for n, m in net.named_modules() if n and not m.training}, "optimizer": opt,
            "n_opt_params": sum(len(g["params"]) for g in opt.param_groups), "grad_bounds": bounds,
        })


def fit(tmp_path, name: str, override: dict, key: str, extra: tuple[str, ...] = ()) -> tuple[SRCLI, Recorder]:
    """``lit-sr fit`` of the quick preset with ``override`` and a ``Recorder`` callback stored under ``key``."""
    recorder = {"class_path": f"{Recorder.__module__}.Recorder", "init_args": {"key": key}}
    override = {**override, "trainer": {**override.get("trainer", {}), "callbacks": [recorder]}}
    path = tmp_path / f"{key}.yaml"
    path.write_text(yaml.safe_dump(override))
    args = ["fit", "--config", str(REPO / "experiments/irlapsrn/quick.yaml"), "--config", str(path),
            "--run_dir", str(tmp_path / name), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]
    try:
        cli = SRCLI(args=args)
    finally:
        wandb.finish()
    return cli, Recorder.runs[key]


def override(stage_list: list[dict], batches: int = 2, **trainer) -> dict:
    return {
        "model": {"init_args": {"net": TINY_NET, "stages": stage_list}},
        "data": {"batch_size": 2, "patch_size": 32, "batches_per_epoch": batches, "num_workers": 0,
                 "val_max_images": 1, "train_sources": ["builtin"]},
        "trainer": {"log_every_n_steps": 1, "check_val_every_n_epoch": 1, "precision": "32-true",
                    "num_sanity_val_steps": 0, **trainer},
    }


def level_params(net, level: int) -> set[str]:
    prefixes = net.level_prefixes(level)
    return {n for n, _ in net.named_parameters() if any(n.startswith(p + ".") for p in prefixes)}


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory, data_root):
    tmp = tmp_path_factory.mktemp("greedy")
    return fit(tmp, "greedy", override(stages(level_steps=2, finetune_steps=2, theta=1e-6)), "greedy")


def test_pretraining_level_l_changes_exactly_level_l_and_keeps_the_others_in_eval(greedy_run):
    cli, rec = greedy_run
    assert {"train/loss_image", "train/loss_rank", "train/loss_bicubic"} <= set(cli.trainer.callback_metrics)
    net = cli.model.net
    assert [r["stage"] for r in rec.rows] == ["pretrain_level_1"] * 2 + ["pretrain_level_2"] * 2 + ["finetune"] * 2
    level1, level2 = level_params(net, 1), level_params(net, 2)
    for row in rec.rows[:2]:
        assert row["changed"] == level1  # tensor by tensor: every level-1 tensor moved, nothing else
        assert "levels.1" in row["eval"] and "levels.0" not in row["eval"] and "input_conv" not in row["eval"]
    for row in rec.rows[2:4]:
        assert row["changed"] == level2
        assert {"input_conv", "levels.0"} <= row["eval"] and "levels.1" not in row["eval"]
    # finetune: everything trains (train mode everywhere) with a new optimizer over every parameter
    for row in rec.rows[4:]:
        assert row["changed"] == level1 | level2 and not row["eval"]
    opts = [r["optimizer"] for r in rec.rows]
    assert opts[0] is opts[1] and opts[1] is not opts[2] and opts[3] is not opts[4]
    assert isinstance(opts[0], torch.optim.SGD) and isinstance(opts[4], torch.optim.Adam)
    assert rec.rows[4]["n_opt_params"] == len(list(net.parameters()))
    assert rec.rows[2]["n_opt_params"] == len(level2)


def test_adjustable_clipping_bounds_every_gradient_element_by_theta_over_lr_in_stage_1(greedy_run):
    _, rec = greedy_run
    for row in rec.rows[:4]:
        for lr, biggest in row["grad_bounds"]:
            bound = 1e-6 / lr
            assert biggest <= bound * (1 + 1e-6)
            assert biggest == pytest.approx(bound, rel=1e-6)  # theta this small makes the clip fire


def test_resume_from_the_middle_of_stage_1_continues_at_the_right_level_and_step(tmp_path, data_root):
    # Stage lengths in epochs of 2 batches: level 1 for 2 epochs, level 2 for 2, finetune 1. Stop after 3 epochs,
    # in the middle of pretrain_level_2 (step 6), then resume with --ckpt_path last.
    epoch_stages = stages()
    for stage, epochs in zip(epoch_stages, (2, 2, 1)):
        stage.pop("steps")
        stage["epochs"] = epochs
    cli, first = fit(tmp_path, "run", override(epoch_stages, max_epochs=3), "first")
    assert cli.trainer.global_step == 6 and first.rows[-1]["stage"] == "pretrain_level_2"
    ended = {n: p.detach().clone() for n, p in cli.model.net.named_parameters()}
    resumed, second = fit(tmp_path, "run", override(epoch_stages), "second", extra=("--ckpt_path", "last"))
    # global_step counts optimizer steps done: the first resumed step is step 7, the 3rd of pretrain_level_2
    assert [(r["step"], r["stage"]) for r in second.rows] == [
        (7, "pretrain_level_2"), (8, "pretrain_level_2"), (9, "finetune"), (10, "finetune")
    ]
    for name, value in second.start.items():  # it starts from the weights the first run ended with
        torch.testing.assert_close(value, ended[name], rtol=0, atol=0)
    net = resumed.model.net
    assert second.rows[0]["changed"] == level_params(net, 2)
    assert isinstance(second.rows[0]["optimizer"], torch.optim.SGD) and second.rows[0]["n_opt_params"] == len(
        level_params(net, 2)
    )
    # the stage schedule continues too: lr 0.1 x0.1 after the level's first epoch would show here (constant: 0.1)
    assert second.rows[0]["grad_bounds"][0][0] == pytest.approx(0.1)
    assert resumed.trainer.global_step == 10


def test_greedy_pretraining_trains_on_two_ddp_processes(tmp_path, data_root):
    import subprocess
    import sys

    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(override(stages(level_steps=2, finetune_steps=2))))
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    cmd = [sys.executable, "-m", "lit_sr.cli", "fit", "--config", str(REPO / "experiments/irlapsrn/quick.yaml"),
           "--config", str(config), "--run_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
           "--trainer.logger", "false", "--data.val_max_images", "2", *ddp]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # frozen levels: DDP must expect parameters without gradients
    assert "MEMBER: 2/2" in done.stderr
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6 and saved["lit_sr_stage_index"] == 2
