"""Y-PSNR and edge-region PSNR of DRN checkpoints (the README's loss: l1 vs loss: gsl ablation).

    python bench/drn_edge_psnr.py bicubic runs/drn/ablate-gsl/checkpoints/best.ckpt runs/drn/ablate-l1/... [--sets Set5]

Each image goes through the one evaluation path (``SRMethod.sr_y``: Y of the 8-bit output), then
``lit_sr.metrics.psnr_y`` (whole image) and ``lit_sr.methods.drn.edge_psnr_y`` (the hard-mask edge region of HR,
q = 0.8), both with the protocol's shave; the table is the mean over images. Report only: nothing is chosen here.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lit_sr.data.datasets import BenchmarkSet
from lit_sr.evaluate import resolve_method
from lit_sr.methods.drn import edge_psnr_y
from lit_sr.metrics import psnr_y


def evaluate(ckpt: str, sets: list[str], scale: int, quantile: float) -> tuple[str, dict[str, tuple[float, float]]]:
    """(the method's final loss, or "-" for bicubic; {set: (mean Y-PSNR, mean edge PSNR)})."""
    method = resolve_method(ckpt)[0].eval()
    out = {}
    for name in sets:
        data = BenchmarkSet.from_source(name, scale)
        full, edge = [], []
        for i in range(len(data)):
            item = data[i]
            batch = {k: item[k][None] for k in ("lr", "lr_y", "hr_y")}
            with torch.no_grad():
                sr = method.sr_y(batch, scale)
            hr = batch["hr_y"].to(sr)
            full.append(psnr_y(sr, hr, scale).item())
            edge.append(edge_psnr_y(sr, hr, scale, quantile).item())
        out[name] = (float(np.mean(full)), float(np.mean(edge)))
    return str(getattr(method, "loss", "-")), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--sets", nargs="+", default=["Set5", "Set14"])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--quantile", type=float, default=0.8)
    args = parser.parse_args()
    print(f"| checkpoint | loss | {' | '.join(f'{s} Y-PSNR | {s} edge PSNR' for s in args.sets)} |")
    print("|---|---|" + "---|---|" * len(args.sets))
    for ckpt in args.checkpoints:
        loss, res = evaluate(ckpt, args.sets, args.scale, args.quantile)
        cells = " | ".join(f"{res[s][0]:.2f} | {res[s][1]:.2f}" for s in args.sets)
        print(f"| {ckpt} | {loss} | {cells} |")


if __name__ == "__main__":
    main()
