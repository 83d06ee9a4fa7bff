"""A method is one file plus experiments/<m>/ and sweeps/<m>.yaml: this test adds one without touching lit_sr."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

from lit_sr.checkpoint import load_method
from lit_sr.cli import SRCLI, main
from lit_sr.data.resize import imresize
from lit_sr.losses import mse
from lit_sr.methods import method_class, registered_methods
from lit_sr.methods.base import SRMethod
from lit_sr.registry import register_model
from lit_sr.sweep import load_sweep

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out


class TinyNet(nn.Module):
    """Bicubic plus a learned 3x3 residual: enough to learn, small enough for a test."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1))
        nn.init.zeros_(self.body[2].weight)
        nn.init.zeros_(self.body[2].bias)

    def forward(self, ilr: Tensor) -> Tensor:
        return ilr + self.body(ilr)


@register_model  # The test's network: bicubic plus a learned 3x3 residual, 8 channels
def tiny_test_net(**kw: Any) -> TinyNet: return TinyNet(**{"width": 8, **kw})


class TinySR(SRMethod):
    """The whole method: class attributes, the forward, the loss."""

    name = "tiny_test_method"
    batch_needs = ("ilr",)
    loss_terms = ("mse",)
    network_type = TinyNet

    def __init__(self, variant: str = "tiny_test_net", **kwargs: Any) -> None:
        super().__init__(variant=variant, **kwargs)

    def sr_forward(self, lr: Tensor, scale: int) -> Tensor:
        return self.net(imresize(lr, scale))

    def compute_loss(self, groups: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        ilr, hr = torch.cat([g["ilr"] for g in groups]), torch.cat([g["hr"] for g in groups])
        loss = mse(self.net(ilr), hr)
        return self.loss_weight("mse") * loss, {"mse": loss}

    def reference_loss(self, groups: list[dict]) -> dict[str, Tensor]:
        return {"bicubic": self.bicubic_loss(groups, mse)}


PRESET = {
    "seed_everything": 0,
    "model": {
        "class_path": f"{__name__}.TinySR",
        "init_args": {"stages": [{"name": "train", "steps": 40, "optimizer": {"name": "adam", "lr": 3e-3},
                                  "loss_weights": {"mse": 1.0}}]},
    },
    "data": {"train_sources": ["builtin"], "val_sets": ["Sun80"], "val_max_images": 1, "test_sets": ["Set5"],
             "scales": [2, 4], "batch_size": 8, "batches_per_epoch": 20, "num_workers": 0},
    "trainer": {"precision": "32-true", "enable_progress_bar": False},
}


def test_a_method_defined_here_trains_tests_reloads_and_compares_through_lit_sr(tmp_path, monkeypatch, data_root):
    assert method_class("tiny_test_method") is TinySR and "tiny_test_method" in registered_methods()
    (tmp_path / "experiments" / "tiny_test_method").mkdir(parents=True)
    (tmp_path / "experiments" / "tiny_test_method" / "quick.yaml").write_text(yaml.safe_dump(PRESET))
    monkeypatch.chdir(tmp_path)  # presets are looked up in the current folder first
    assert main(["train", "tiny_test_method", "--run_dir", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "benchmark" / "results.json").read_text())
    assert results["meta"]["method"] == "tiny_test_method" and results["meta"]["selection"]["val_sets"] == ["Sun80"]
    assert set(results["results"]["Set5"]) == {"x2", "x4"} and results["results"]["Set5"]["x2"]["n_images"] == 5
    method = load_method(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(method, TinySR) and method.stage.loss_weights == {"mse": 1.0}
    assert main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "compare")]) == 0  # the run in the table
    row = json.loads((tmp_path / "compare" / "compare.json").read_text())["runs"][0]
    assert row["method"] == "tiny_test_method" and row["test"] == results["results"]
    psnr = results["results"]["Set5"]["x2"]["psnr_y"]
    assert "| tiny_test_method | " in (md := (tmp_path / "compare" / "compare.md").read_text()) and f"{psnr:.2f}" in md
    assert (tmp_path / "compare" / "compare.png").read_bytes()[:4] == b"\x89PNG"


SWEEP = {
    "method": "tiny_test_method",
    "study": {"n_trials": 2},
    "fixed": {"model.init_args.net": {"width": 8}},  # the preset leaves the network's arguments at their defaults
    "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                      "paths": ["model.init_args.stages.0.optimizer.lr"]},
               "width": {"type": "int", "low": 2, "high": 16, "paths": ["model.init_args.net.width"]}},
}


def test_its_sweep_file_layers_on_its_preset_and_a_trial_config_builds_the_method(tmp_path, monkeypatch, data_root):
    for relative, doc in (("experiments/tiny_test_method/quick.yaml", PRESET), ("sweeps/tiny_test_method.yaml", SWEEP)):
        (tmp_path / relative).parent.mkdir(parents=True)
        (tmp_path / relative).write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path)  # sweeps/ and experiments/ are looked up in the current folder first
    sweep = load_sweep("tiny_test_method")  # the method's name finds sweeps/<m>.yaml; every knob path is checked
    assert sweep.preset_path.resolve() == (tmp_path / "experiments/tiny_test_method/quick.yaml").resolve()
    lr_monitor = {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump(sweep.trial_config({"lr": 5e-3, "width": 4}, tmp_path / "trial", 0, lr_monitor)))
    cli = SRCLI(args=["--config", str(config)], run=False)  # what the trial's `lit-sr fit` builds
    assert isinstance(cli.model, TinySR) and cli.model.net.body[0].out_channels == 4
    assert cli.model.stages[0].optimizer.lr == 5e-3


def test_stage_keys_a_method_does_not_read_are_rejected_with_their_path():
    with pytest.raises(ValueError, match=r"stages.0.loss_weights: TinySR reads no loss term \['rank'\]"):
        TinySR(stages=[{"name": "a", "steps": 1, "loss_weights": {"rank": 0.1}}])
    with pytest.raises(ValueError, match=r"stages.0.targets='downsampled_hr': TinySR takes no targets"):
        TinySR(stages=[{"name": "a", "steps": 1, "targets": "downsampled_hr"}])


def test_a_variant_of_another_network_family_is_rejected():
    with pytest.raises(ValueError, match=r"variant='vdsr_small' builds a VDSRNet, but TinySR trains TinyNet variants "
                       r"\(tiny_test_net\); pick one of those, or set model.class_path to lit_sr.methods.vdsr.VDSR"):
        TinySR(variant="vdsr_small")
