"""Paper-style benchmark tables: a method (``bicubic`` or a checkpoint) x datasets x scales.

The numbers come from ``trainer.validate`` through ``SRMethod``'s own validation code, so a benchmark of a
checkpoint equals what its training run logged. ``results.json`` has a stable shape that scripts and
dashboards read::

    {"meta": {"method", "checkpoint", "config", "git_commit", "protocol", "ssim_variant", "date", ...},
     "results": {"<dataset>": {"x<scale>": {"psnr_y": .., "ssim_y": .., "n_images": ..}}}}

``lit-sr train`` adds to ``meta``: ``variant``, ``net_params``, ``preset``, ``selection`` (the val metric and
value the checkpoint was chosen on, and the val sets), ``data`` (training sources and images, what was left
out as a near-copy of a val/test image), ``selection_on_test`` and the training time (``train_wall_s``,
``train_cpu_s``).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from lit_sr.checkpoint import load_method
from lit_sr.data.datamodule import SRDataModule
from lit_sr.methods.base import SRMethod
from lit_sr.methods.bicubic import Bicubic
from lit_sr.tables import markdown_table, psnr_ssim

PROTOCOL = (
    "Y (MATLAB rgb2ycbcr; grayscale used as Y), HR modcropped to the scale, LR = MATLAB bicubic in float64, "
    "SR rounded to 8 bits, `scale` pixels shaved, mean of per-image PSNR/SSIM"
)

Results = dict[str, dict[str, dict[str, float]]]


def resolve_method(method_or_ckpt: str, ssim_variant: str | None = None) -> tuple[SRMethod, str | None]:
    """``bicubic`` or a checkpoint path -> (method in eval mode, checkpoint path or None); ``ssim_variant``
    overrides the checkpoint's own (default: keep it, so a benchmark equals what its run logged)."""
    if method_or_ckpt == "bicubic":
        return Bicubic(ssim_variant=ssim_variant or "ssim_index"), None
    path = Path(method_or_ckpt)
    if not path.is_file():
        raise FileNotFoundError(
            f"{method_or_ckpt!r} is neither 'bicubic' nor a checkpoint file; pass a .ckpt written by lit-sr fit"
        )
    method = load_method(str(path))
    if ssim_variant is not None:
        method.hparams.ssim_variant = ssim_variant
    return method, str(path)


def run_benchmark(
    method: SRMethod,
    datasets: Sequence[str],
    scales: Sequence[int],
    accelerator: str = "auto",
    max_images: int | None = None,
) -> Results:
    """Validate ``method`` on every (dataset, scale) pair (the first ``max_images`` of each); returns results
    keyed by dataset and ``x<scale>``."""
    unsupported = [s for s in scales if s not in method.supported_scales]
    if unsupported:
        raise ValueError(
            f"{type(method).__name__} supports scales {method.supported_scales}, not {unsupported}; "
            "drop them from --scales"
        )
    dm = SRDataModule(
        train_sources=["builtin"],
        val_sets=list(datasets),
        test_sets=[],
        val_scales=list(scales),
        scales=list(scales),
        val_max_images=max_images,
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(method, datamodule=dm, verbose=False)
    return method.last_results


def versus_bicubic(
    method: SRMethod, name: str, datasets: Sequence[str], scales: Sequence[int], results: Results | None = None
) -> tuple[dict[str, Results], str]:
    """The rows ``bicubic`` and ``name`` (``results``, or ``method`` benchmarked now) and their Markdown table."""
    rows = {
        "bicubic": run_benchmark(Bicubic(ssim_variant=method.hparams.ssim_variant), datasets, scales),
        name: results if results is not None else run_benchmark(method, datasets, scales),
    }
    return rows, format_table(rows, scales)


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def format_table(rows: dict[str, Results], scales: Sequence[int]) -> str:
    """Markdown table: one row per (dataset, method), one column per scale, cells ``PSNR / SSIM``."""
    datasets = list(dict.fromkeys(d for results in rows.values() for d in results))
    cells = [[dataset, name, *(psnr_ssim(results.get(dataset, {}).get(f"x{s}")) for s in scales)]
             for dataset in datasets for name, results in rows.items()]
    return markdown_table(["dataset", "method", *(f"x{s}" for s in scales)], cells)


def write_results(
    out: str | Path,
    results: Results,
    method: str,
    checkpoint: str | None,
    ssim_variant: str,
    config: str | None = None,
    table: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out/results.json`` (stable shape, see the module doc) and ``out/results.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": {
            "method": method,
            "checkpoint": checkpoint,
            "config": config,
            "git_commit": git_commit(),
            "protocol": PROTOCOL,
            "ssim_variant": ssim_variant,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **(meta or {}),
        },
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    scales = sorted({int(k[1:]) for r in results.values() for k in r})
    md = table or format_table({method: results}, scales)
    (out / "results.md").write_text(f"# Benchmark: {method}\n\n{PROTOCOL}.\n\n{md}\n")
    return payload
