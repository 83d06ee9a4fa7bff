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

from lit_sr.data.color import to_y
from lit_sr.data.images import list_images, read_image
from lit_sr.data.resize import imresize
from lit_sr.metrics import _gaussian_1d, _prepare, ssim_y
from lit_sr.paths import data_root

SCALE = 4


def _ssim_by_conv(sr_y: torch.Tensor, hr_y: torch.Tensor, separable: bool) -> torch.Tensor:
    """SSIM (variant ssim_index) with the window applied by float64 ``conv2d``."""
    sr, hr = _prepare(sr_y, hr_y, SCALE)
    g = _gaussian_1d(sr.device)
    moments = torch.cat([sr, hr, sr * sr, hr * hr, sr * hr])
    if separable:
        filtered = F.conv2d(F.conv2d(moments, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))
    else:
        filtered = F.conv2d(moments, (g[:, None] * g[None, :])[None, None])
    mu_x, mu_y, xx, yy, xy = filtered.split(sr.shape[0])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    sxx, syy, sxy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1)


def pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(bicubic x4 SR, HR) Y pairs of every Set5 and Set14 image, modcropped to the scale."""
    out = []
    for name in ("Set5", "Set14"):
        for path in list_images(data_root() / name):
            img = torch.from_numpy(read_image(path).copy()).permute(2, 0, 1)[None].double() / 255
            h, w = (s - s % SCALE for s in img.shape[-2:])
            hr_y = to_y(img[..., :h, :w])
            out.append((imresize(imresize(hr_y, 1 / SCALE), SCALE), hr_y))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images; the fastest counts")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    images = pairs()
    ways = {
        "2-D window, conv2d": lambda sr, hr: _ssim_by_conv(sr, hr, separable=False),
        "separable, two conv2d": lambda sr, hr: _ssim_by_conv(sr, hr, separable=True),
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
