"""The tiny VDSR run the command-line tests build on: the quick preset with a 3-layer net and two steps."""

from __future__ import annotations

from pathlib import Path

import yaml

from lit_sr.paths import REPO

QUICK = REPO / "experiments" / "vdsr" / "quick.yaml"
TINY = {
    "model": {
        "init_args": {
            "net": {"depth": 3, "width": 8},
            "stages": [{"name": "s", "steps": 2, "optimizer": {"name": "adam", "lr": 1.0e-3}}],
        }
    },
    "data": {
        "train_sources": ["builtin"], "val_holdout": 2, "test_sets": [], "val_scales": [2], "scales": [2],
        "batches_per_epoch": 2, "batch_size": 2, "num_workers": 0, "val_max_images": 1,
    },
    "trainer": {"precision": "32-true", "enable_progress_bar": False, "check_val_every_n_epoch": 1},
}  # fmt: skip


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
