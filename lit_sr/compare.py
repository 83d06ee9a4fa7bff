"""``lit-sr compare``: one table of trained runs from their ``benchmark/results.json`` and ``config.yaml``.

Columns: method, variant, parameters, training time, training data, the val score each checkpoint was
selected on, then test PSNR / SSIM per set and scale. Written to ``OUT/compare.md``, ``OUT/compare.json``
and ``OUT/compare.png`` (test PSNR against parameters, one panel per test set and scale); with W&B online
(credentials present, ``WANDB_MODE`` not offline) the table and the plot are logged to a ``compare`` run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_sr.tables import markdown_table, psnr_ssim


def find_runs(root: str | Path = "runs") -> list[Path]:
    """Every ``<root>/<method>/<time>`` folder holding ``benchmark/results.json`` with selection metadata."""
    return sorted(p.parent.parent for p in Path(root).glob("*/*/benchmark/results.json"))


def _row(run: Path) -> dict[str, Any]:
    path = run / "benchmark" / "results.json"
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; check the path (runs/<method>/<time>)")
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no benchmark/results.json; train it with `lit-sr train` first")
    payload = json.loads(path.read_text())
    meta = payload["meta"]
    data = meta.get("data", {})
    selection = meta.get("selection") or {}
    return {
        "run": str(run),
        "method": meta.get("method"),
        "variant": meta.get("variant"),
        "params": meta.get("net_params"),
        "train_min": None if meta.get("train_wall_s") is None else round(meta["train_wall_s"] / 60, 1),
        "train_cpu_min": None if meta.get("train_cpu_s") is None else round(meta["train_cpu_s"] / 60, 1),
        "train_data": "+".join(data.get("train_sources", [])) + f" ({data.get('train_images', '?')} images)",
        "val": selection.get("value"),
        "val_sets": selection.get("val_sets"),
        "selection_on_test": meta.get("selection_on_test", False),
        "test": payload["results"],
    }


def _cells(r: dict[str, Any], cells: list[tuple[str, str]]) -> list[str]:
    """A run's row: what it is, how it was trained and chosen, then its test PSNR / SSIM per (set, scale)."""
    val = "-" if r["val"] is None else f"{r['val']:.2f} ({', '.join(r['val_sets'] or [])})"
    val += " on test!" if r["selection_on_test"] else ""
    params = f"{r['params']:,}" if r["params"] else "-"
    tests = [psnr_ssim(r["test"].get(d, {}).get(k)) for d, k in cells]
    return [r["method"], r["variant"], params, f"{r['train_min']} ({r['train_cpu_min']})", r["train_data"], val, *tests]


def compare(runs: Sequence[str | Path] = (), out: str | Path = "runs/compare") -> str:
    """Write the comparison of ``runs`` (default: every run under ``runs/``) and return its markdown."""
    folders = [Path(r) for r in runs] or find_runs()
    if not folders:
        raise FileNotFoundError("no trained runs with runs/<method>/<time>/benchmark/results.json; run make train")
    rows = [_row(r) for r in folders]
    cells = sorted(
        {(d, k) for r in rows for d, by in r["test"].items() for k in by}, key=lambda c: (c[0], int(c[1][1:]))
    )
    head = ["method", "variant", "params", "train min (CPU min)", "training data", "val PSNR (selected on)"]
    table = markdown_table([*head, *(f"{d} {k}" for d, k in cells)], [_cells(r, cells) for r in rows])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(
        "# lit_sr runs\n\nTest PSNR / SSIM (Y, paper protocol); each checkpoint was chosen on its val score, never "
        f"on the test sets.\n\n{table}\n"
    )
    (out / "compare.json").write_text(json.dumps({"runs": rows}, indent=2))
    _plot(rows, cells, out / "compare.png")
    _log_wandb(rows, table, out / "compare.png")
    return table


def _plot(rows: list[dict], cells: list[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(cells)), figsize=(4 * max(1, len(cells)), 3.5), squeeze=False)
    for ax, (d, k) in zip(axes[0], cells):
        for r in rows:
            c = r["test"].get(d, {}).get(k)
            if c and r["params"]:
                ax.scatter(r["params"], c["psnr_y"])
                ax.annotate(r["variant"] or r["method"], (r["params"], c["psnr_y"]), fontsize=7)
        ax.set(xscale="log", xlabel="parameters", ylabel="test PSNR-Y (dB)", title=f"{d} {k}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_wandb(rows: list[dict], table: str, plot: Path) -> None:
    from lit_sr.loggers import init_run, wandb_offline

    if wandb_offline():
        return
    import wandb

    run = init_run("compare", "compare", plot.parent)
    columns = ["method", "variant", "params", "val_psnr_y", "test"]
    data = [[r["method"], r["variant"], r["params"], r["val"], json.dumps(r["test"])] for r in rows]
    run.log({"compare": wandb.Table(columns=columns, data=data), "compare_plot": wandb.Image(str(plot))})
    run.finish()
