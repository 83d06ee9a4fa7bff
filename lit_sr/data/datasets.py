"""Training patches (uint8 HR crops; LR is made later on the device) and benchmark sets (LR made once).

``TrainPatches`` yields whole batches (use ``DataLoader(batch_size=None)``):
``{"hr": uint8 (B, 3, Hc, Hc), "scale": int64 (B,), "gray": bool (B,)}``; see ``degrade.py`` for the
crop geometry and what the batch becomes on the device; the batch also carries ``patch_size``. Per sample:
a random image (uniformly, or in proportion to its area: ``image_sampling``), optionally a random downscale
(``rescale``: factors on a grid such as 0.5..1.0 step 0.1, raised when the image would get smaller than the
patch; off by default), one of the 8 D4 flips/rotations, then a patch anywhere in the image at a multiple of
the sample's scale, in a crop whose margin is mirrored where it reaches past the image. Only the window that
becomes the crop is cut, resized and flipped, so the cost per sample does not grow with the image size. The
downscale is albumentations' resize (``A.Resize``'s) with OpenCV's area filter, which is antialiased (OpenCV
cubic is not, and aliases the HR targets); the LR is still made by MATLAB bicubic in ``degrade``. D4 is not an
albumentations transform here: it is a zero-copy numpy view chosen together with the crop window
(:func:`d4_window`), which is what lets the tests redo every crop on the whole image exactly.
Grayscale images are shipped replicated to 3 channels with ``gray`` = True, so ``degrade`` uses them as
their own Y (full range) instead of converting them as RGB.

``BenchmarkSet`` is the evaluation protocol of the papers' bicubic tables: modcropped uint8 HR,
Y in float64, LR = MATLAB bicubic 1/s kept in float64 (never rounded), computed once per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from albumentations.augmentations.geometric import functional as geometric
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from lit_sr.data.color import to_y
from lit_sr.data.degrade import MODES, crop_size, min_train_side, patch_offset
from lit_sr.data.images import ImageCache, ImageError, modcrop
from lit_sr.data.resize import imresize
from lit_sr.data.sources import resolve_images


def d4_view(img: np.ndarray, k: int) -> np.ndarray:
    """Element ``k`` (0..7) of the D4 group on an HxWxC array: rotation by 90*(k % 4), transposed if k >= 4.

    Returns a view (no copy).
    """
    out = np.rot90(img, k % 4, axes=(0, 1))
    return out.transpose(1, 0, 2) if k >= 4 else out


def d4_transposes(k: int) -> bool:
    """Whether ``d4_view(img, k)`` swaps height and width."""
    return (k % 2 == 1) != (k >= 4)


def d4_window(k: int, h: int, w: int, y: int, x: int, size: int, width: int | None = None) -> tuple[int, int]:
    """Top-left (row, col) in an h x w image of the window ``d4_view(img, k)[y:y+size, x:x+width]``
    (``width`` defaults to ``size``).

    So ``d4_view(img[r:r+a, c:c+b], k)`` equals that window, where (a, b) is (size, width), swapped when
    ``d4_transposes(k)``; only the window is ever copied.
    """

    def source(i: int, j: int) -> tuple[int, int]:  # view pixel (i, j) -> image pixel
        if k >= 4:
            i, j = j, i
        return [(i, j), (j, w - 1 - i), (h - 1 - i, w - 1 - j), (h - 1 - j, i)][k % 4]

    (r0, c0), (r1, c1) = source(y, x), source(y + size - 1, x + (size if width is None else width) - 1)
    return min(r0, r1), min(c0, c1)


def split_sizes(batch_size: int, parts: int) -> list[int]:
    """Sizes of the contiguous per-scale parts of a split batch: ceil(B/n) each, rest last (64/3: 22/22/20).

    Falls back to near-equal parts when that would leave the last part empty (5/4 -> 2 1 1 1).
    """
    if batch_size < parts:
        raise ValueError(f"data.batch_size={batch_size} is smaller than the {parts} scales of a split batch")
    size = math.ceil(batch_size / parts)
    sizes = [size] * (parts - 1) + [batch_size - size * (parts - 1)]
    if sizes[-1] < 1:
        sizes = [len(a) for a in np.array_split(np.arange(batch_size), parts)]
    return sizes


@dataclass(frozen=True)
class CropInfo:
    """How one training crop was made: rescale factor, D4 element, origin (y, x) in the rescaled, D4 image
    (negative, or reaching past the image, where the crop holds the image mirrored)."""

    factor: float
    d4: int
    origin: tuple[int, int]


class TrainPatches(IterableDataset):
    """An endless-looking stream of ready training batches of uint8 HR crops; see the module doc.

    ``batches_per_epoch`` is the epoch length summed over DDP ranks (each rank gets
    ceil(batches_per_epoch / world_size), so all ranks run the same number of steps), split across the
    DataLoader workers of a rank (worker w makes batches w, w + W, ...). Batch ``i`` of epoch ``e`` on rank
    ``r`` draws from its own generator seeded by (seed, r, e, i): the stream does not depend on the number of
    workers and can restart at any batch (``set_position``; ``lit_sr.data.resume.ResumableLoader`` saves and
    restores it with the checkpoint). ``seed`` defaults to a draw from the main torch generator, so it
    follows ``seed_everything``.
    """

    def __init__(
        self,
        images: ImageCache,
        scales: list[int],
        patch_size: int,
        batch_size: int,
        batches_per_epoch: int,
        image_sampling: Literal["uniform", "area"] = "uniform",
        mode: Literal["per_batch", "mixed", "split"] = "mixed",
        rescale: tuple[float, float] | None = None,
        rescale_step: float = 0.1,
        d4: bool = True,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown scale mode {mode!r}; use one of {list(MODES)} (data.scale_mode)")
        self.images = images
        self.scales = sorted({int(s) for s in scales})
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch)
        self.mode = mode
        self.d4 = bool(d4)
        self.rank, self.world_size = int(rank), int(world_size)
        self.crop_size = crop_size(self.patch_size, self.scales)
        self.min_side = min_train_side(self.patch_size, self.scales)
        lo, hi = rescale if rescale is not None else (1.0, 1.0)
        count = int(math.floor((hi - lo) / rescale_step + 1e-6)) + 1
        self.factors = np.round(lo + rescale_step * np.arange(count), 6)
        self._sizes = split_sizes(self.batch_size, len(self.scales)) if mode == "split" else None
        # (seed, epoch, first batch) in shared memory: DataLoader workers, persistent ones too, see new positions.
        self.position = torch.zeros(3, dtype=torch.int64).share_memory_()
        self.position[0] = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        if image_sampling not in ("uniform", "area"):
            raise ValueError(f"unknown image sampling {image_sampling!r}; use uniform or area (data.image_sampling)")
        areas = np.array([np.prod(images.shape(i)[:2]) for i in range(len(images))], dtype=np.float64)
        self.image_p = areas / areas.sum() if image_sampling == "area" else None  # None: uniform
        self._image_cdf = None if self.image_p is None else np.cumsum(self.image_p)
        for i in range(len(images)):
            if min(images.shape(i)[:2]) < self.min_side:
                raise ImageError(
                    f"image {images.paths[i]} is smaller than the {self.min_side}-pixel side a "
                    f"{self.patch_size}-pixel patch needs after modcrop; build the ImageCache with "
                    f"min_size={self.min_side}"
                )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(self.batches_per_epoch / self.world_size)

    # ---- one sample
    def _draw_factor(self, min_side: int, rng: np.random.Generator) -> float:
        factor = float(self.factors[rng.integers(len(self.factors))])
        if int(min_side * factor + 1e-9) >= self.min_side:
            return factor
        fits = [f for f in self.factors if int(min_side * f + 1e-9) >= self.min_side]
        return float(min(fits)) if fits else 1.0

    def sample_crop(
        self, img: np.ndarray, scale: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, CropInfo]:
        """Rescale, D4 and crop one uint8 HxWxC image; the crop is (Hc, Hc, C) uint8.

        The patch lies anywhere in the rescaled, D4, modcropped image, at a multiple of ``scale``. Where the crop's
        margin reaches past that image it holds the image mirrored (``np.pad`` symmetric, the boundary rule of
        MATLAB's imresize), so the patch's LR equals the same window of imresize on the whole image. Only the
        source window that becomes the crop is resized (albumentations, area filter), so the cost does not grow with
        the image size. With factor 1 the crop is exactly a window of ``np.pad(d4_view(img, k), symmetric)``; with
        a downscale the source window is rounded to whole pixels, so the crop matches the whole rescaled image's
        window only to within about a pixel (a sub-pixel jitter of phase and factor). Its LR/HR pair is exact either
        way: the LR is made from the crop.
        """
        k = int(rng.integers(8)) if self.d4 else 0
        h0, w0 = img.shape[:2]
        h, w = (w0, h0) if d4_transposes(k) else (h0, w0)  # size of d4_view(img, k)
        factor = self._draw_factor(min(h, w), rng)
        hc, off = self.crop_size, patch_offset(self.crop_size, self.patch_size, scale)
        hv, wv = (h, w) if factor == 1.0 else (int(h * factor + 1e-9), int(w * factor + 1e-9))
        hm, wm = hv - hv % scale, wv - wv % scale  # modcrop of the rescaled image
        y0 = scale * int(rng.integers((hm - self.patch_size) // scale + 1)) - off  # crop origin: may be < 0
        x0 = scale * int(rng.integers((wm - self.patch_size) // scale + 1)) - off
        top, left = max(0, -y0), max(0, -x0)
        bottom, right = max(0, y0 + hc - hm), max(0, x0 + hc - wm)
        inside = (y0 + top, x0 + left, hc - top - bottom, hc - left - right)  # the crop's part in the image
        part = self._cut(img, k, factor, (h, w), inside)
        if top or bottom or left or right:
            part = np.pad(part, ((top, bottom), (left, right), (0, 0)), mode="symmetric")
        return part, CropInfo(factor, k, (y0, x0))

    def _cut(self, img: np.ndarray, k: int, factor: float, view: tuple[int, int], window: tuple) -> np.ndarray:
        """``window`` (y, x, height, width) of the D4 view of ``img`` rescaled by ``factor``, cut from ``img``."""
        (h, w), (y, x, hh, ww) = view, window
        swap = d4_transposes(k)
        if factor == 1.0:
            r, c = d4_window(k, *img.shape[:2], y, x, hh, ww)
            return d4_view(img[r : r + (ww if swap else hh), c : c + (hh if swap else ww)], k)
        sh, sw = min(round(hh / factor), h), min(round(ww / factor), w)  # the source window, inside the image
        sy, sx = min(round(y / factor), h - sh), min(round(x / factor), w - sw)
        r, c = d4_window(k, *img.shape[:2], sy, sx, sh, sw)
        source = img[r : r + (sw if swap else sh), c : c + (sh if swap else sw)]
        size = (ww, hh) if swap else (hh, ww)
        return d4_view(geometric.resize(source, size, cv2.INTER_AREA), k)  # A.Resize's function, no object per sample

    # ---- one batch
    def batch_scales(self, rng: np.random.Generator) -> np.ndarray:
        """The scale of each sample of one batch, by mode."""
        scales = np.asarray(self.scales, dtype=np.int64)
        if self.mode == "per_batch":
            return np.full(self.batch_size, scales[rng.integers(len(scales))], dtype=np.int64)
        if self.mode == "mixed":
            return scales[rng.integers(len(scales), size=self.batch_size)]
        return np.repeat(scales, self._sizes)

    def make_batch(self, rng: np.random.Generator) -> dict:
        """One batch ``{"hr": uint8 (B, 3, Hc, Hc), "scale": int64 (B,), "gray": bool (B,), "patch_size": P}``.

        The three tensors are views of one buffer: a worker then hands the batch to the main process
        through one shared-memory segment instead of three (about twice the batches per second).
        """
        scales = self.batch_scales(rng)
        b, hc = len(scales), self.crop_size
        buf = torch.empty(9 * b + b * 3 * hc * hc, dtype=torch.uint8)
        scale_t, gray_t = buf[: 8 * b].view(torch.int64), buf[8 * b : 9 * b].view(torch.bool)
        hr_t = buf[9 * b :].view(b, 3, hc, hc)
        scale_t.copy_(torch.from_numpy(scales))
        hr, gray = hr_t.numpy(), gray_t.numpy()
        for i, s in enumerate(scales):
            if self._image_cdf is None:
                image = int(rng.integers(len(self.images)))
            else:  # rng.choice(p=...) would rebuild this cumulative sum for every sample
                image = min(int(np.searchsorted(self._image_cdf, rng.random(), side="right")), len(self.images) - 1)
            crop, _ = self.sample_crop(self.images[image], int(s), rng)
            hr[i] = crop.transpose(2, 0, 1)  # a grey crop (1 channel) is replicated to 3
            gray[i] = crop.shape[2] == 1
        return {"hr": hr_t, "scale": scale_t, "gray": gray_t, "patch_size": self.patch_size}

    def set_position(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields batches ``start``, ``start + 1``, ... of epoch ``epoch``."""
        self.position[1], self.position[2] = int(epoch), int(start)

    def batch_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of batch ``index`` of ``epoch`` on this rank."""
        return np.random.default_rng(np.random.SeedSequence([int(self.position[0]), self.rank, epoch, index]))

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        _, epoch, start = self.position.tolist()
        for index in range(start + worker, len(self), workers):
            yield self.make_batch(self.batch_rng(epoch, index))


class BenchmarkSet(Dataset):
    """Whole images of one set at one scale, exactly the protocol of the papers' bicubic tables.

    Item: ``set`` (the set's name), ``name`` (file stem), ``scale``, ``hr`` float64 (C, H, W) modcropped
    (C = 1 grey, 3 RGB), ``hr_y`` float64 (1, H, W) = to_y(hr), ``lr_y`` float64 (1, h, w) = imresize(hr_y, 1/s),
    ``lr`` float64 (C, h, w) = imresize(hr, 1/s). The LR is computed once and kept in float64
    (not rounded); HR is re-made from the uint8 cache (cheap, and it keeps memory at 1/s^2 of HR).
    """

    def __init__(self, images: ImageCache, scale: int, name: str) -> None:
        self.images, self.scale, self.name = images, int(scale), name
        need = min_benchmark_size(self.scale)
        for i in range(len(images)):
            if min(images.shape(i)[:2]) < need:
                raise ImageError(
                    f"image {images.paths[i]} is too small for x{self.scale} evaluation "
                    f"(needs {need}x{need} pixels); remove it from the set or evaluate at a smaller scale"
                )
        self._lr: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_source(
        cls,
        source: str,
        scale: int,
        max_images: int | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> BenchmarkSet:
        """A set name ("Set5"), a folder, or ``builtin_val`` at one scale."""
        name, paths = resolve_images(source)
        cache = ImageCache(paths[:max_images], min_size=min_benchmark_size(scale), on_error=on_error)
        return cls(cache, scale, name)

    def __len__(self) -> int:
        return len(self.images)

    def _hr(self, i: int) -> torch.Tensor:
        arr = modcrop(self.images[i], self.scale)
        return torch.from_numpy(np.array(arr.transpose(2, 0, 1), dtype=np.float64)) / 255.0

    def __getitem__(self, i: int) -> dict:
        hr = self._hr(i)
        hr_y = to_y(hr)
        if i not in self._lr:
            lr = imresize(hr, 1.0 / self.scale)
            lr_y = lr if hr.shape[0] == 1 else imresize(hr_y, 1.0 / self.scale)
            self._lr[i] = (lr, lr_y)
        lr, lr_y = self._lr[i]
        name = Path(self.images.paths[i]).stem
        return {"set": self.name, "name": name, "scale": self.scale, "hr": hr, "hr_y": hr_y, "lr_y": lr_y, "lr": lr}


def min_benchmark_size(scale: int) -> int:
    """Smallest image side evaluable at ``scale``: after modcrop and an s-pixel shave an 11x11 SSIM fits."""
    return 3 * scale + 11
