"""SSIM time on the benchmark images: ``lit_sr.metrics.ssim_y`` against the same SSIM by float64 ``conv2d``.

Every validation and every ``lit-sr benchmark`` cell computes SSIM in float64 on the CPU. This times, side by
side in one run, the three ways of applying its 11x11 Gaussian window to the bicubic x4 output of Set5 and
Set14: the 2-D window by ``conv2d``, the separable window by two ``conv2d`` passes, and ``ssim_y`` (two passes
of shifted-slice sums). It prints each one's seconds, the ratio to ``ssim_y`` and the largest difference in
SSIM from the 2-D window. Not a test.

    python bench/bench_eval.py [--repeats 3] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import emit, machine, table

from lit_sr.data.datasets import BenchmarkSet
from lit_sr.data.resize import imresize
from lit_sr.metrics import _gaussian_1d, _prepare, ssim_of_moments, ssim_y

SCALE = 4


def _conv_window(separable: bool):
    """The Gaussian window applied by float64 ``conv2d``: 2-D, or one column then one row pass."""
    g = _gaussian_1d(torch.device("cpu"))
    if separable:
        return lambda m: F.conv2d(F.conv2d(m, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))
    return lambda m: F.conv2d(m, (g[:, None] * g[None, :])[None, None])


def pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(bicubic x4 SR, HR) Y of every Set5 and Set14 image, as ``lit-sr benchmark bicubic`` makes them."""
    items = [item for name in ("Set5", "Set14") for item in BenchmarkSet.from_source(name, SCALE)]
    return [(imresize(it["lr_y"], SCALE)[None], it["hr_y"][None]) for it in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images; the fastest counts")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    images = pairs()
    ways = {
        "2-D window, conv2d": lambda sr, hr: ssim_of_moments(_conv_window(False), *_prepare(sr, hr, SCALE)),
        "separable, two conv2d": lambda sr, hr: ssim_of_moments(_conv_window(True), *_prepare(sr, hr, SCALE)),
        "ssim_y (shifted sums)": lambda sr, hr: ssim_y(sr, hr, SCALE),
    }
    seconds, values = {}, {}
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits every way alike
        for name, fn in ways.items():
            start = time.perf_counter()
            values[name] = torch.cat([fn(sr, hr) for sr, hr in images])
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)
    ours, ref = seconds["ssim_y (shifted sums)"], values["2-D window, conv2d"]
    rows = [[name, f"{s:.3f}", f"{s / ours:.1f}x", f"{(values[name] - ref).abs().max().item():.1e}"]
            for name, s in seconds.items()]
    header = ["window", "seconds", "vs ssim_y", "largest SSIM difference from 2-D"]
    emit(f"SSIM of {len(images)} images (Set5 + Set14, bicubic x{SCALE}), float64, fastest of {args.repeats} "
         f"passes; {machine()}\n\n" + table(header, rows), args.markdown)


if __name__ == "__main__":
    main()
