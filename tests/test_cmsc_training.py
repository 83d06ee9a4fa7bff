"""CMSC LightningModule: the cascaded loss on hand-built batches, config errors, presets, a short real fit."""

from __future__ import annotations

import pytest
import torch
import yaml
from memory_logger import logger

import lit_sr
from lit_sr.checkpoint import load_method
from lit_sr.cli import SRCLI
from lit_sr.data.resize import imresize
from lit_sr.methods.cmsc import CMSC, CMSCNet, cascaded_loss, default_alpha
from lit_sr.paths import REPO
from lit_sr.sweep import load_sweep

pytestmark = pytest.mark.slow  # trains models: `make test-fast` leaves these out

TINY_NET = {"num_subnets": 2, "num_modules": 1, "channels": 4}
SPEC_OPTIONS = {"num_subnets", "num_modules", "channels", "share_weights", "branch_kernels", "assembly",
                "convs_per_branch", "entry_conv", "zero_init_branch_end", "zero_init_reconstruction"}


def paper_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """VDSR's reduction written out: 1/2 the squared error summed over each sample, mean over the batch."""
    return torch.stack([0.5 * ((p - t) ** 2).sum() for p, t in zip(pred, target)]).mean()


def _method(**kw) -> CMSC:
    torch.manual_seed(0)
    return CMSC(**{"variant": "cmsc_small", "net": dict(TINY_NET), **kw})


def test_create_model_cmsc():
    net = lit_sr.create_model("cmsc")
    assert isinstance(net, CMSCNet) and {"cmsc", "cmsc_small"} <= set(lit_sr.list_models())
    assert sum(p.numel() for p in net.parameters()) == 1_153_285
    final, intermediates = net(torch.rand(1, 1, 12, 10))
    assert final.shape == (1, 1, 12, 10) and len(intermediates) == 4


def test_loss_on_hand_built_batch_is_the_cascaded_paper_mse():
    """Predictions known by construction: zero reconstruction -> every Y_s = ILR, final = (w1 + w2) ILR."""
    method = _method(net={**TINY_NET, "zero_init_reconstruction": True})
    assert method.alpha == pytest.approx(1 / 3)  # default 1/(S+1), S = 2
    with torch.no_grad():
        method.net.assembly_param.copy_(torch.tensor([0.5, 1.0]))
    ilr = torch.full((2, 1, 6, 5), 0.2)
    hr = torch.zeros(2, 1, 6, 5)
    hr[1] = 0.1
    batch = {"ilr": ilr, "hr": hr, "scale": torch.tensor([2, 4])}
    total, parts = method.compute_loss([batch])
    # Per sample 1/2 * 30 px * err^2; sample 0: Y_s err 0.2, final err 0.3; sample 1: 0.1 and 0.2.
    sub = (0.5 * 30 * 0.04 + 0.5 * 30 * 0.01) / 2
    final = (0.5 * 30 * 0.09 + 0.5 * 30 * 0.04) / 2
    assert parts["sub1"].item() == pytest.approx(sub) and parts["sub2"].item() == pytest.approx(sub)
    assert parts["intermediate"].item() == pytest.approx(sub)
    assert parts["final"].item() == pytest.approx(final)
    # the ILR's own loss, for reference (logged, never trained on)
    assert method.reference_loss([batch])["bicubic"].item() == pytest.approx(sub)
    assert total.item() == pytest.approx(sub / 3 + final * 2 / 3)
    assert set(parts) == {"intermediate", "final", "sub1", "sub2"}


def test_loss_equals_cascaded_loss_with_paper_mse_on_a_trained_like_network():
    method = _method(alpha=0.7)
    with torch.no_grad():
        method.net.assembly_param.copy_(torch.tensor([0.3, 0.9]))
    gen = torch.Generator().manual_seed(1)
    ilr, hr = torch.rand(3, 1, 9, 9, generator=gen), torch.rand(3, 1, 9, 9, generator=gen)
    total, parts = method.compute_loss([{"ilr": ilr, "hr": hr, "scale": torch.tensor([2, 3, 4])}])
    final, intermediates = method.net(ilr)
    expected, expected_parts = cascaded_loss(final, intermediates, hr, 0.7, base_loss=paper_mse)
    torch.testing.assert_close(total, expected)
    for key, value in expected_parts.items():
        torch.testing.assert_close(parts[key], value)
    assert total.requires_grad
    # Groups of one scale each (``split`` mode) give the same loss as one mixed group.
    split = [{"ilr": ilr[:1], "hr": hr[:1], "scale": torch.tensor([2])},
             {"ilr": ilr[1:], "hr": hr[1:], "scale": torch.tensor([3, 4])}]
    torch.testing.assert_close(method.compute_loss(split)[0], total)
    # ``mean`` reduction: the per-pixel MSE, 1/40.5 of the paper reduction (1/2 of 81 px) on 9x9 patches.
    mean_method = _method(alpha=0.7, reduction="mean")
    mean_method.net.load_state_dict(method.net.state_dict())
    mean_total, _ = mean_method.compute_loss([{"ilr": ilr, "hr": hr, "scale": torch.tensor([2, 3, 4])}])
    expected_mean, _ = cascaded_loss(final, intermediates, hr, 0.7, base_loss=torch.nn.functional.mse_loss)
    torch.testing.assert_close(mean_total, expected_mean)
    torch.testing.assert_close(mean_total * 40.5, total)


def test_sr_forward_is_the_assembled_output_on_the_matlab_bicubic_input():
    method = _method().eval()
    lr = torch.rand(1, 1, 7, 9)
    with torch.no_grad():
        sr = method.super_resolve(lr, 3)
        expected = method.net(imresize(lr, 3)).final
    assert sr.shape == (1, 1, 21, 27)
    torch.testing.assert_close(sr, expected)
    with pytest.raises(ValueError, match=r"supports scales \[2, 3, 4\], not x8"):
        method.super_resolve(lr, 8)


def test_hparams_hold_the_resolved_alpha_and_every_network_option():
    method = _method()
    assert method.hparams["alpha"] == pytest.approx(1 / 3)
    assert set(method.hparams["net"]) == SPEC_OPTIONS
    assert method.hparams["net"]["channels"] == 4 and method.hparams["net"]["branch_kernels"] == (3, 5)
    assert method.hparams_initial["net"] == method.hparams["net"]  # what the loggers receive


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"model.init_args.alpha must be a number in \[0, 1\].*got 1.5"):
        _method(alpha=1.5)
    with pytest.raises(ValueError, match=r"model.init_args.reduction: 'sum' is not one of \['paper', 'mean'\]"):
        _method(reduction="sum")
    stage = {"name": "train", "epochs": 1, "loss_weights": {"final": 1.0}}
    with pytest.raises(ValueError, match=r"stages.0.loss_weights: CMSC reads no loss term \['final'\]"):
        _method(stages=[stage])


def test_paper_preset_builds_the_papers_network_and_the_sweep_knobs_reach_it():
    sweep = load_sweep(REPO / "sweeps" / "cmsc.yaml", preset="paper")  # every knob's path exists in paper.yaml
    method = CMSC(**sweep.base["model"]["init_args"])
    params = sum(p.numel() for p in method.net.parameters())
    assert method.net.depth == 35 and abs(params - 1_220_000) < 0.1 * 1_220_000  # the survey's CMSC: 35, 1,220k
    assert method.alpha == pytest.approx(default_alpha(method.net.num_subnets))  # the spec's cascade weight


# ---- a short real fit through the CLI ----------------------------------------------------------------------
STEPS = 30


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_root):
    """The quick preset shrunk to a tiny network: 30 steps of mixed x2/x3/x4, validated on one held-out image."""
    tmp = tmp_path_factory.mktemp("cmsc_fit")
    override = {
        "model": {"init_args": {"net": {**TINY_NET, "channels": 8}, "stages": [
            {"name": "train", "epochs": 1, "optimizer": {"name": "adam", "lr": 1.0e-3}}]}},
        "data": {"batches_per_epoch": STEPS, "batch_size": 4, "num_workers": 0, "val_max_images": 1},
        "trainer": {"logger": logger(tmp / "run"), "log_every_n_steps": 5, "precision": "32-true",
                    "enable_progress_bar": False, "check_val_every_n_epoch": 1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(override))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box: one thread is faster
    try:
        cli = SRCLI(args=["fit", "--config", str(REPO / "experiments/cmsc/quick.yaml"), "--config", str(path),
                          "--model.init_args.alpha", "0.4", "--run_dir", str(tmp / "run")])
    finally:
        torch.set_num_threads(before)
    return tmp / "run", cli


def test_fit_logs_loss_parts_and_assembly_weights(fitted):
    run_dir, cli = fitted
    assert cli.trainer.global_step == STEPS
    run = cli.trainer.logger
    n_rows = STEPS // 5
    for part in ("", "_intermediate", "_final", "_sub1", "_sub2", "_bicubic"):
        assert len(run.series(f"train/loss{part}")) == n_rows, part
    w1, w2 = run.series("assembly/w1"), run.series("assembly/w2")
    assert len(w1) == len(w2) == n_rows
    assert w1[0] != 0.5 and w1[-1] != w1[0]  # learned: moved away from 1/S and kept moving
    # The last row holds the weights of step 29's forward; the model has since taken that step (Adam, lr 1e-3).
    final_w = cli.model.net.assembly_weights().detach()
    torch.testing.assert_close(torch.tensor([w1[-1], w2[-1]]), final_w, atol=1.1e-3, rtol=0)
    assert sorted(k for k in cli.model.last_results["holdout"]) == ["x2", "x3", "x4"]
    assert run.series("val/holdout/x4/psnr_y")[-1] == pytest.approx(
        cli.model.last_results["holdout"]["x4"]["psnr_y"]
    )


def test_fit_logs_the_config_it_used(fitted):
    run_dir, cli = fitted
    run = cli.trainer.logger
    assert run.config["alpha"] == pytest.approx(0.4)  # the CLI override reached the loss
    assert set(run.config["net"]) == SPEC_OPTIONS
    assert run.config["net"]["channels"] == 8 and run.config["net"]["zero_init_reconstruction"] is True
    assert run.config["net_params"] == sum(p.numel() for p in cli.model.net.parameters())
    assert run.config["scale_mode"] == "mixed" and run.config["scales"] == [2, 3, 4]
    assert "lit_sr.methods.cmsc.CMSC" in run.config["config"]


def test_checkpoint_reloads_the_network_it_trained(fitted):
    run_dir, cli = fitted
    method = load_method(str(run_dir / "checkpoints" / "last.ckpt"))
    assert isinstance(method, CMSC) and method.alpha == pytest.approx(0.4)
    assert method.net.config == cli.model.net.config
    torch.testing.assert_close(method.net.assembly_param, cli.model.net.assembly_param.detach())
