"""Training-patch throughput: SRDataModule + on-device ``degrade`` versus a naive per-sample pipeline.

Run by ``make bench-data`` (``ARGS="--seconds 10 --workers 2"``). Both pipelines read Sun80 from
LIT_SR_DATA with the same number of DataLoader workers, in this one run:

* lit_sr: images decoded once into a uint8 cache; workers ship uint8 HR crops (rescale, D4, aligned
  crop); the main process (the "training device" here) makes Y / LR / ILR / pyramid in batch with the
  MATLAB-exact ``imresize``.
* naive: every sample opens and decodes the JPEG with PIL, cuts a random crop, applies a random D4
  transform, makes LR / ILR (or the pyramid) with PIL bicubic, converts to tensors; the DataLoader collates.
* naive + cache: the same, but every image is decoded once into memory first (each worker holds the
  decoded images), so the difference to naive is the decode alone and the difference to lit_sr the rest.

Two workloads: 41x41 ILR + HR at x2..x4 (mixed, VDSR-style) and 128x128 HR with its x4 pyramid + LR
(LapSRN-style). Prints patches per second of each and the ratios (target >= 5x against naive). Not a test.
``--markdown FILE`` also writes the table as markdown (``make bench`` uses it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from lit_sr.data.datamodule import SRDataModule  # importing lit_sr sets NO_ALBUMENTATIONS_UPDATE
from lit_sr.data.degrade import degrade
from lit_sr.data.images import list_images
from lit_sr.paths import data_root

PYRAMID = ("lr", "pyramid")


class NaivePatches(Dataset):
    """Per sample: open + decode the file, random crop, PIL bicubic LR / ILR or pyramid, to tensors."""

    def __init__(
        self, paths: list[Path], patch: int, scales: list[int], pyramid: bool, length: int, cache: bool = False
    ) -> None:
        self.paths, self.patch, self.scales, self.pyramid, self.length = paths, patch, scales, pyramid, length
        self.rng = np.random.default_rng(0)
        # The cached variant decodes every image once, up front (RGB, as the naive one converts it).
        self.images = [Image.open(p).convert("RGB") for p in paths] if cache else None

    def image(self, index: int) -> Image.Image:
        if self.images is not None:
            return self.images[index]
        return Image.open(self.paths[index]).convert("RGB")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, _: int) -> dict:
        info = get_worker_info()
        if info is not None and not hasattr(self, "_seeded"):
            self.rng, self._seeded = np.random.default_rng(info.seed % 2**32), True
        p, rng = self.patch, self.rng
        s = int(self.scales[rng.integers(len(self.scales))])
        img = self.image(int(rng.integers(len(self.paths))))
        x, y = int(rng.integers(img.width - p + 1)), int(rng.integers(img.height - p + 1))
        hr = img.crop((x, y, x + p, y + p)).convert("YCbCr").getchannel(0)
        d4 = int(rng.integers(8))  # identity or one of PIL's 7 flips / rotations / transposes
        if d4:
            hr = hr.transpose(Image.Transpose(d4 - 1))

        def tensor(im: Image.Image) -> torch.Tensor:
            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]

        out = {"hr": tensor(hr), "scale": s}
        if self.pyramid:
            out["pyramid"] = [tensor(hr.resize((p // 2**k, p // 2**k), Image.BICUBIC)) for k in (1,)]
            out["lr"] = tensor(hr.resize((p // s, p // s), Image.BICUBIC))
        else:
            lr = hr.resize((round(p / s), round(p / s)), Image.BICUBIC)
            out["ilr"] = tensor(lr.resize((p, p), Image.BICUBIC))
        return out


def rate(batches, per_batch, seconds: float) -> float:
    """Patches per second over ``seconds``, after the first batch (worker start-up excluded)."""
    it = iter(batches)
    per_batch(next(it))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += per_batch(next(it))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="measuring time per pipeline, workload")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both pipelines")
    parser.add_argument("--data", default=None, help="training image folder (default: LIT_SR_DATA/Sun80)")
    parser.add_argument("--markdown", default=None, help="also write the results table to this markdown file")
    args = parser.parse_args()
    folder = Path(args.data) if args.data else data_root() / "Sun80"
    if not folder.is_dir():
        sys.exit(f"{folder} not found: set LIT_SR_DATA to the folder holding Sun80, or pass --data FOLDER")
    paths = list_images(folder)
    torch.manual_seed(0)
    # The main process stands in for the training device. Its batched resizes are small matmuls: with the
    # CPU cores busy with workers, intra-op threads only wait on each other (10-100x slower), so use one.
    torch.set_num_threads(1)
    print(f"{len(paths)} images from {folder}; {args.workers} workers; {args.seconds:g} s per measurement")

    workloads = [
        ("41x41 ILR+HR, x2-x4 mixed", dict(scales=[2, 3, 4], scale_mode="mixed", patch_size=41), ("ilr",)),
        ("128x128 HR + x4 pyramid + LR", dict(scales=[4], scale_mode="per_batch", patch_size=128), PYRAMID),
    ]
    rows = []
    for title, config, needs in workloads:
        batch = 16
        dm = SRDataModule(
            train_sources=[str(folder)],
            val_sets=[],
            test_sets=[],
            batch_size=batch,
            batches_per_epoch=100_000,
            num_workers=args.workers,
            **config,
        )
        def degrade_count(b: dict, n: tuple[str, ...] = needs) -> int:  # what SRMethod.on_after_batch_transfer does
            groups = degrade(b["hr"], b["scale"], b["gray"], n, b["patch_size"], "y")
            return sum(len(g["hr"]) for g in groups)

        ours = rate(dm.train_dataloader(), degrade_count, args.seconds)
        naive_set = NaivePatches(paths, config["patch_size"], config["scales"], "pyramid" in needs, 10**7)
        naive_loader = DataLoader(
            naive_set, batch_size=batch, num_workers=args.workers, persistent_workers=args.workers > 0
        )
        naive = rate(naive_loader, lambda b: len(b["hr"]), args.seconds)
        del naive_loader
        cached_set = NaivePatches(
            paths, config["patch_size"], config["scales"], "pyramid" in needs, 10**7, cache=True
        )
        cached_loader = DataLoader(
            cached_set, batch_size=batch, num_workers=args.workers, persistent_workers=args.workers > 0
        )
        cached = rate(cached_loader, lambda b: len(b["hr"]), args.seconds)
        del cached_loader
        rows.append((title, ours, naive, cached))
        print(
            f"{title:30s} lit_sr {ours:6.0f} patches/s  naive {naive:5.0f} ({ours / naive:5.1f}x)  "
            f"naive+cache {cached:5.0f} ({ours / cached:4.1f}x) patches/s"
        )
    if args.markdown:
        lines = [
            f"{len(paths)} Sun80 images, {args.workers} DataLoader workers, batch 16, {args.seconds:g} s per "
            "measurement, all in one run.",
            "",
            "| workload | lit_sr patches/s | naive | lit_sr / naive | naive + decoded cache | lit_sr / cached |",
            "|---|---|---|---|---|---|",
        ]
        for title, ours, naive, cached in rows:
            lines.append(
                f"| {title} | {ours:.0f} | {naive:.0f} | {ours / naive:.1f}x | {cached:.0f} | {ours / cached:.1f}x |"
            )
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
