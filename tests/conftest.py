"""Shared fixtures: the benchmark images folder and isolated W&B / run directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`make test` runs -n 2), each worker and the processes its tests start take an equal share
# of the cores, so two workers do not oversubscribe them (torch and OpenMP read OMP_NUM_THREADS at import).
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


# The test files that take longest (seconds of the whole file on a fresh clone, 2 idle cores, a816fbf), run first:
# pytest-xdist hands out files in collection order (pyproject: --no-loadscope-reorder), so none starts last.
LONGEST_FIRST = ("test_sweep_scale_out.py", "test_sweep.py", "test_training.py", "test_cluster.py",  # 80 78 59 36
                 "test_export.py", "test_cli.py", "test_resume.py", "test_ddp.py", "test_upscale.py")  # 35 31 25 19 17


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def _data_root() -> Path:
    return Path(os.environ.get("LIT_SR_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``$LIT_SR_DATA`` (default ../shared/data) holding Set5, Set14, Sun80.

    Skips with a reason when missing, unless LIT_SR_REQUIRE_DATA=1 (CI), where it fails.
    """
    root = _data_root()
    if not (root / "Set5").is_dir():
        msg = f"benchmark images not found: {root}/Set5 (set LIT_SR_DATA to the folder holding Set5, Set14, Sun80)"
        if os.environ.get("LIT_SR_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


def _wandb_offline_in(d: Path, mp: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        mp.setenv(var, str(d))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def _isolated_wandb_session(tmp_path_factory):
    """The same for module-scoped fixtures (training runs, a sweep), which pytest sets up before ``_isolated_wandb``.

    Without it they ran W&B with the developer's settings and folders (online, given credentials), and could make
    the first W&B run of the process: after test_sweep.py's fixture (its report's run), a Lightning
    ``WandbLogger(offline=True)`` run in the same process asked for an API key (test_wandb_offline.py).
    """
    with pytest.MonkeyPatch.context() as mp:
        _wandb_offline_in(tmp_path_factory.mktemp("wandb-session"), mp)
        yield


@pytest.fixture(autouse=True)
def _isolated_wandb(tmp_path_factory, monkeypatch):
    """Every test runs W&B offline in a private temp dir: nothing reaches the network or the repo."""
    _wandb_offline_in(tmp_path_factory.mktemp("wandb"), monkeypatch)


# Stage "warm" (Adam, 1 epoch) then "main" (SGD + momentum, halving lr, adjustable clipping, 2 epochs).
TWO_STAGES = [
    {"name": "warm", "epochs": 1, "optimizer": {"name": "adam", "lr": 1.0e-3}},
    {
        "name": "main",
        "epochs": 2,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "lr_schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
        "clip": {"mode": "adjustable", "theta": 0.001},
    },
]
