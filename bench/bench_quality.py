"""Quality per CPU minute: each method's quick-preset test gain over bicubic against training CPU minutes.

Each method's quick preset (``experiments/<method>/quick.yaml``, its own data, batch, optimizer and schedule)
trains through ``lit-sr fit`` with validation off; a callback saves a checkpoint whenever the training's CPU
time (this process and its DataLoader workers) passes one of ``--marks`` CPU minutes, and stops at the last.
The schedule is the preset's, so an early mark is that preset's run cut short, not a shorter schedule.
Each checkpoint is then scored on the test benchmark (Set5 x4, every method trains or serves x4) through
``lit_sr.evaluate.run_benchmark``, the protocol of ``lit-sr benchmark``; the gain is over MATLAB bicubic.
Finished ``lit-sr train`` runs already on disk (``runs/<method>/*/benchmark/results.json`` of the quick
preset, with their ``train_cpu_s``) are added as the full-preset points. Writes a table and a PNG.

    python bench/bench_quality.py [--marks 1 2 3] [--methods vdsr cmsc] [--markdown FILE] [--png FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import wandb
import yaml
from common import Clock, available_methods, emit, table

from lit_sr.checkpoint import load_method
from lit_sr.cli import SRCLI
from lit_sr.evaluate import run_benchmark
from lit_sr.methods.bicubic import Bicubic
from lit_sr.presets import preset_path

TEST_SET, TEST_SCALE = "Set5", 4


class CPUMarks(L.Callback):
    """Save a checkpoint each time the training's CPU minutes pass a mark; stop after the last mark."""

    def __init__(self, marks: list[float], folder: Path, every: int = 5) -> None:
        self.marks, self.folder, self.every = sorted(marks), folder, every
        self.saved: list[dict] = []
        self.clock: Clock | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock = Clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx % self.every or len(self.saved) == len(self.marks):
            return
        cpu = self.clock.cpu
        if cpu >= 60 * self.marks[len(self.saved)]:
            path = self.folder / f"cpu{len(self.saved)}.ckpt"
            trainer.save_checkpoint(path)
            self.saved.append(
                {"path": path, "cpu_min": cpu / 60, "wall_min": self.clock.wall / 60, "steps": trainer.global_step}
            )
            if len(self.saved) == len(self.marks):
                trainer.should_stop = True


def train_with_marks(model: str, marks: list[float], tmp: Path) -> list[dict]:
    override = {
        "data": {"test_sets": []},
        "trainer": {"limit_val_batches": 0, "enable_checkpointing": False, "logger": False},
    }
    path = tmp / f"{model}.yaml"
    path.write_text(yaml.safe_dump(override))
    callback = CPUMarks(marks, tmp)
    try:
        cli = SRCLI(args=["--config", str(preset_path(model, "quick")), "--config", str(path),
                          "--run_dir", str(tmp / model)], run=False)
        cli.trainer.callbacks.append(callback)
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        wandb.finish()
    if len(callback.saved) < len(marks):  # the preset finished before the last mark: its end is the last point
        end = tmp / "end.ckpt"
        cli.trainer.save_checkpoint(end)
        callback.saved.append(
            {"path": end, "cpu_min": callback.clock.cpu / 60, "wall_min": callback.clock.wall / 60,
             "steps": cli.trainer.global_step}
        )
    return callback.saved


def finished_runs(model: str) -> list[dict]:
    """Full quick-preset runs of ``lit-sr train`` on disk that report Set5 x4 and their training CPU time."""
    points = []
    for path in sorted(Path("runs").glob(f"{model}/*/benchmark/results.json")):
        data = json.loads(path.read_text())
        meta, res = data.get("meta", {}), data.get("results", {}).get(TEST_SET, {}).get(f"x{TEST_SCALE}")
        if meta.get("preset") == "quick" and res and meta.get("train_cpu_s"):
            points.append({"run": str(path.parent.parent), "cpu_min": meta["train_cpu_s"] / 60,
                           "wall_min": meta.get("train_wall_s", float("nan")) / 60, "psnr": res["psnr_y"]})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--marks", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="CPU minutes")
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    bicubic = run_benchmark(Bicubic(), [TEST_SET], [TEST_SCALE])[TEST_SET][f"x{TEST_SCALE}"]["psnr_y"]
    rows, curves = [], {}
    for model in args.methods or available_methods():
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            points = train_with_marks(model, args.marks, Path(tmp))
            for p in points:
                method = load_method(p["path"])
                p["psnr"] = run_benchmark(method, [TEST_SET], [TEST_SCALE])[TEST_SET][f"x{TEST_SCALE}"]["psnr_y"]
                p["variant"] = method.hparams.variant
            print(f"{model}: {len(points)} points in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        curve = []
        for p in points:
            rows.append([model, p["variant"], f"{p['steps']}", f"{p['cpu_min']:.2f}", f"{p['wall_min']:.2f}",
                         f"{p['psnr']:.2f}", f"{p['psnr'] - bicubic:+.2f}", "this run (preset cut at the mark)"])
            curve.append((p["cpu_min"], p["psnr"] - bicubic))
        for p in finished_runs(model):
            rows.append([model, "", "full preset", f"{p['cpu_min']:.2f}", f"{p['wall_min']:.2f}",
                         f"{p['psnr']:.2f}", f"{p['psnr'] - bicubic:+.2f}", p["run"]])
            curve.append((p["cpu_min"], p["psnr"] - bicubic))
        curves[model] = sorted(curve)
    text = (
        f"Test gain over bicubic ({TEST_SET} x{TEST_SCALE}, bicubic {bicubic:.2f} dB) against training CPU minutes "
        "(process + DataLoader workers; wall minutes alongside), quick presets, validation off.\n\n"
    )
    text += table(["method", "network", "steps", "CPU min", "wall min", f"{TEST_SET} x{TEST_SCALE} PSNR",
                   "gain", "source"], rows)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for model, curve in curves.items():
            ax.plot([c for c, _ in curve], [g for _, g in curve], marker="o", label=model)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("training CPU minutes")
        ax.set_ylabel(f"{TEST_SET} x{TEST_SCALE} PSNR gain over bicubic (dB)")
        ax.set_title("Quality per CPU minute (quick presets)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        text += f"\n![quality per CPU minute]({Path(args.png).name})\n"
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
