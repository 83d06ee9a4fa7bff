"""Inference time and peak memory of ``lit-sr upscale`` at x4, tiled and untiled, per method.

Each method's quick-preset network (random weights: the time does not depend on them) upscales a Sun80
photo resized to the LR size, RGB in and out through :func:`lit_sr.upscale.upscale_picture` (Y network +
bicubic Cb/Cr), once untiled and once in tiles of ``--tile`` LR pixels. Sizes are the output sizes
(``--sizes 512 1024 2048``: LR 128, 256, 512). Peak memory is the resident-memory high-water mark above
the start of each call. Not a test.

    python bench/bench_infer.py [--sizes 512 1024 2048] [--tile 128] [--markdown FILE]
"""

from __future__ import annotations

import argparse

import torch
from common import Clock, available_methods, build_method, emit, peak_memory, table

from lit_sr.data.images import list_images, read_image
from lit_sr.data.resize import imresize
from lit_sr.inference import tile_spans
from lit_sr.paths import data_root
from lit_sr.upscale import Picture, upscale_picture

SCALE = 4


def lr_picture(size: int) -> Picture:
    """A Sun80 photo (or noise when Sun80 is missing) bicubic-resized to ``size`` x ``size``."""
    folder = data_root() / "Sun80"
    if folder.is_dir():
        img = torch.from_numpy(read_image(list_images(folder)[0]).copy()).permute(2, 0, 1).double() / 255
    else:
        img = torch.rand(3, 2 * size, 2 * size, dtype=torch.float64)
    small = imresize(img, size=(size, size)).clamp(0, 1)
    return Picture(small.permute(1, 2, 0).numpy(), None, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="output sizes (square)")
    parser.add_argument("--tile", type=int, default=128, help="tile size in LR pixels for the tiled runs")
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for model in args.methods or available_methods():
        method = build_method(model).eval()
        variant = method.hparams.variant
        upscale_picture(method, lr_picture(32), SCALE, tile=0)  # warm-up (allocator, weight caches)
        for size in args.sizes:
            picture = lr_picture(size // SCALE)
            cells = []
            for tile in (0, args.tile):
                with peak_memory() as mem:
                    clock = Clock()
                    out = upscale_picture(method, picture, SCALE, tile=tile, overlap=args.overlap)
                    wall, cpu = clock.wall, clock.cpu
                assert out.pixels.shape[:2] == (size, size)
                cells += [f"{wall:.2f} s ({cpu:.1f} cpu)", f"{mem['mib']:.0f}"]
                print(f"{model:10s} {size:5d}^2 tile {tile:4d}: {wall:6.2f} s wall {cpu:6.1f} s cpu, "
                      f"peak {mem['mib']:6.0f} MiB", flush=True)
            lr = size // SCALE
            work = sum((t1 - t0) * (u1 - u0) for t0, t1, *_ in tile_spans(lr, args.tile, args.overlap)
                       for u0, u1, *_ in tile_spans(lr, args.tile, args.overlap)) / lr**2
            rows.append([model, variant, f"{size}²", *cells, f"{work:.2f}x"])
    text = (
        f"x{SCALE}, output sizes as listed (LR = size / {SCALE}), RGB through `upscale_picture` (network on Y, "
        f"bicubic Cb/Cr), fp32, random weights of each quick-preset network. Tiled: {args.tile} LR px tiles, "
        f"{args.overlap} px overlap. Peak = resident-memory high-water mark above the start of the call.\n\n"
    )
    text += table(
        ["method", "network", "output", "untiled time", "untiled peak MiB", "tiled time", "tiled peak MiB",
         "tiled pixels / image pixels"],
        rows,
    )
    emit(text, args.markdown)


if __name__ == "__main__":
    main()
