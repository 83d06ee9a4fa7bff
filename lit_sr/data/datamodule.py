"""SRDataModule: image sources, scales, patch size, batching and workers, configured under ``data:``.

Training: ``TrainPatches`` ships uint8 HR crops (DataLoader ``batch_size=None``); on the training
device ``on_after_batch_transfer`` turns them into float patches plus the targets the method asks for
in its ``batch_needs`` attribute (e.g. ``("ilr",)`` for VDSR, ``("lr", "pyramid")`` for LapSRN;
default ``("lr", "ilr")``). Keys, shapes and crop geometry: see ``lit_sr/data/degrade.py``.

Validation / test: one DataLoader (batch_size 1) per (set, scale), in the order of ``val_keys`` /
``test_keys``; items are ``BenchmarkSet`` dicts (``name``, ``scale``, float64 ``hr``, ``hr_y``, ``lr``,
``lr_y`` with a batch dim of 1). Under DDP each rank gets an unpadded shard, so every image is scored
exactly once.

Every image is decoded in the main process during ``setup`` (or the first ``*_dataloader`` call), so a
bad file raises an ``ImageError`` naming it before any worker starts.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from lit_sr.data.datasets import BenchmarkSet, TrainPatches, min_benchmark_size
from lit_sr.data.degrade import MODES, check_patch, crop_size, degrade
from lit_sr.data.images import ImageCache
from lit_sr.data.resume import ResumableLoader
from lit_sr.data.sources import default_val_sets, resolve_images

DEFAULT_NEEDS = ("lr", "ilr")


def _worker_init(_: int) -> None:
    # Each worker resizes small crops; OpenCV's own thread pool would only oversubscribe the CPUs.
    import cv2

    cv2.setNumThreads(1)


def _check_scales(key: str, scales: Any) -> list[int]:
    if not isinstance(scales, (list, tuple)) or not scales:
        raise ValueError(
            f"data.{key} must be a non-empty list of integer scales like [2, 3, 4], got {scales!r}"
        )
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, int) or s < 2:
            raise ValueError(f"data.{key} holds {s!r}; SR scales must be integers >= 2, e.g. [2, 3, 4]")
    return sorted(set(scales))


def _positive_int(key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"data.{key} must be an integer >= {minimum}, got {value!r}")
    return value


class SRDataModule(pl.LightningDataModule):
    """Training patches and benchmark sets for every lit_sr method.

    Args:
        train_sources: training image sources: set names under LIT_SR_DATA, folder paths, or ``builtin``.
        val_sets: validation sets (None: Set5 when it exists under LIT_SR_DATA, else ``builtin_val``).
        test_sets: test sets (None: the validation sets).
        scales: training scales.
        val_scales: validation / test scales (None: ``scales``).
        scale_mode: ``per_batch`` one scale per batch, ``mixed`` one per sample, ``split`` the batch cut
            into equal contiguous parts, one per scale (ascending).
        patch_size: HR patch side (LR methods: divisible by every scale).
        batch_size: patches per training batch (all scales together in ``split`` mode).
        batches_per_epoch: training batches per epoch, summed over DDP ranks.
        num_workers: DataLoader worker processes for training patches.
        channels: ``y`` (MATLAB luminance, one channel) or ``rgb``.
        rescale: range of the random downscale factor of training images.
        rescale_step: grid step of that factor (0.5..1.0 by 0.1 by default).
        d4: random flips / 90-degree rotations.
        cache_dir: folder for the memory-mapped image cache (None: system temp dir).
        memmap_threshold_mb: decoded training images above this size go to a memory-mapped file.
        on_bad_image: ``error`` stops on an unreadable or too small image; ``warn`` skips it with a warning.
        val_max_images: use only the first N images of each validation / test set (quick runs).
    """

    def __init__(
        self,
        train_sources: list[str] = ["builtin"],  # noqa: B006 - LightningCLI shows and copies this default
        val_sets: list[str] | None = None,
        test_sets: list[str] | None = None,
        scales: list[int] = [2, 3, 4],  # noqa: B006
        val_scales: list[int] | None = None,
        scale_mode: Literal["per_batch", "mixed", "split"] = "mixed",
        patch_size: int = 41,
        batch_size: int = 16,
        batches_per_epoch: int = 500,
        num_workers: int = 2,
        channels: Literal["y", "rgb"] = "y",
        rescale: tuple[float, float] = (0.5, 1.0),
        rescale_step: float = 0.1,
        d4: bool = True,
        cache_dir: str | None = None,
        memmap_threshold_mb: int = 2048,
        on_bad_image: Literal["error", "warn"] = "error",
        val_max_images: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not isinstance(train_sources, (list, tuple)) or not train_sources:
            raise ValueError(
                f"data.train_sources must be a non-empty list like ['builtin'], got {train_sources!r}"
            )
        self.train_sources = [str(s) for s in train_sources]
        self.scales = _check_scales("scales", scales)
        self.val_scales = list(self.scales) if val_scales is None else _check_scales("val_scales", val_scales)
        if scale_mode not in MODES:
            raise ValueError(f"data.scale_mode must be one of {list(MODES)}, got {scale_mode!r}")
        if channels not in ("y", "rgb"):
            raise ValueError(f"data.channels must be 'y' or 'rgb', got {channels!r}")
        if on_bad_image not in ("error", "warn"):
            raise ValueError(f"data.on_bad_image must be 'error' or 'warn', got {on_bad_image!r}")
        self.scale_mode, self.channels, self.on_bad_image = scale_mode, channels, on_bad_image
        min_patch = 2 * max(self.scales)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < min_patch:
            raise ValueError(
                f"data.patch_size={patch_size!r} is too small: it must be an integer of at least twice the "
                f"largest scale ({min_patch} for x{max(self.scales)}); 41 is the usual ILR patch, "
                f"128 the usual pyramid one"
            )
        self.patch_size = patch_size
        self.batch_size = _positive_int("batch_size", batch_size)
        if scale_mode == "split" and batch_size < len(self.scales):
            raise ValueError(
                f"data.batch_size={batch_size} cannot be split over {len(self.scales)} scales {self.scales}; "
                f"use a batch size of at least {len(self.scales)}"
            )
        self.batches_per_epoch = _positive_int("batches_per_epoch", batches_per_epoch)
        self.num_workers = _positive_int("num_workers", num_workers, minimum=0)
        if (
            not isinstance(rescale, (list, tuple))
            or len(rescale) != 2
            or not all(isinstance(v, (int, float)) for v in rescale)
            or not 0 < rescale[0] <= rescale[1]
        ):
            raise ValueError(
                f"data.rescale must be two factors 0 < low <= high like [0.5, 1.0]; got {rescale!r}"
            )
        if not isinstance(rescale_step, (int, float)) or rescale_step <= 0:
            raise ValueError(f"data.rescale_step must be a positive number such as 0.1, got {rescale_step!r}")
        self.rescale = (float(rescale[0]), float(rescale[1]))
        self.rescale_step = float(rescale_step)
        self.d4 = bool(d4)
        self.cache_dir = cache_dir
        self.memmap_threshold_mb = _positive_int("memmap_threshold_mb", memmap_threshold_mb, minimum=0)
        if val_max_images is not None:
            _positive_int("val_max_images", val_max_images)
        self.val_max_images = val_max_images

        # Resolving sources only lists folders: cheap, and a wrong name fails here, not mid-training.
        self._sources: dict[str, tuple[str, list]] = {}
        for s in self.train_sources:
            self._resolve(s)
        self.val_sets = list(val_sets) if val_sets is not None else default_val_sets()
        self.test_sets = list(test_sets) if test_sets is not None else list(self.val_sets)
        self.val_keys: list[tuple[str, int]] = self._keys(self.val_sets, "val_sets")
        self.test_keys: list[tuple[str, int]] = self._keys(self.test_sets, "test_sets")

        self._train_cache: ImageCache | None = None
        self._eval_caches: dict[str, ImageCache] = {}
        self._eval_sets: dict[tuple[str, int], BenchmarkSet] = {}
        self._checked_needs: set[tuple[str, ...]] = set()

    # ---- sources and caches
    def _resolve(self, source: str) -> tuple[str, list]:
        if source not in self._sources:
            self._sources[source] = resolve_images(source)
        return self._sources[source]

    def _keys(self, sets: list[str], key: str) -> list[tuple[str, int]]:
        names = [self._resolve(str(s))[0] for s in sets]
        if len(set(names)) != len(names):
            raise ValueError(
                f"data.{key} {sets} holds two sets with the same folder name {names}; rename one"
            )
        return [(name, s) for name in names for s in self.val_scales]

    @property
    def crop_size(self) -> int:
        """Side of the uint8 HR crops shipped by the training DataLoader."""
        return crop_size(self.patch_size, self.scales)

    @property
    def _policy(self) -> Literal["raise", "skip"]:
        return "raise" if self.on_bad_image == "error" else "skip"

    def train_images(self) -> ImageCache:
        """The decoded training images (decoded on first use, in this process)."""
        if self._train_cache is None:
            paths = [p for s in self.train_sources for p in self._resolve(s)[1]]
            self._train_cache = ImageCache(
                paths,
                min_size=self.crop_size,
                on_error=self._policy,
                memmap_threshold_mb=self.memmap_threshold_mb,
                cache_dir=self.cache_dir,
                min_size_hint=f"training crop for data.patch_size={self.patch_size} at x{max(self.scales)}",
            )
        return self._train_cache

    def benchmark_set(self, source: str, scale: int) -> BenchmarkSet:
        """The BenchmarkSet of one set at one scale (decoded images shared across scales)."""
        name, paths = self._resolve(source)
        if (name, scale) not in self._eval_sets:
            if name not in self._eval_caches:
                self._eval_caches[name] = ImageCache(
                    paths[: self.val_max_images],
                    min_size=min_benchmark_size(max(self.val_scales)),
                    on_error=self._policy,
                    min_size_hint=f"evaluation at x{max(self.val_scales)}",
                )
            self._eval_sets[(name, scale)] = BenchmarkSet(self._eval_caches[name], scale, name)
        return self._eval_sets[(name, scale)]

    def setup(self, stage: str | None = None) -> None:
        """Decode the images of the stage up front (errors name the file), and check the method's needs."""
        if stage in (None, "fit"):
            self.train_images()
        by_stage = {"fit": self.val_sets, "validate": self.val_sets, "test": self.test_sets, "predict": []}
        sets = by_stage.get(stage or "", self.val_sets + self.test_sets)
        for s in sets:
            for scale in self.val_scales:
                self.benchmark_set(s, scale)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if stage in (None, "fit") and module is not None:
            self.lr_divisible_check(getattr(module, "batch_needs", None) or DEFAULT_NEEDS)

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return int(self.trainer.global_rank), int(self.trainer.world_size)

    # ---- loaders
    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank()
        dataset = TrainPatches(
            self.train_images(),
            scales=self.scales,
            patch_size=self.patch_size,
            batch_size=self.batch_size,
            batches_per_epoch=self.batches_per_epoch,
            mode=self.scale_mode,
            rescale=self.rescale,
            rescale_step=self.rescale_step,
            d4=self.d4,
            rank=rank,
            world_size=world_size,
        )
        return ResumableLoader(
            dataset,
            trainer=self.trainer,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
        )

    def _eval_loaders(self, sets: list[str]) -> list[DataLoader]:
        rank, world_size = self._rank()
        loaders = []
        for s in sets:
            for scale in self.val_scales:
                dataset = self.benchmark_set(s, scale)
                sampler = None
                if world_size > 1:  # unpadded shards: no image is scored twice
                    sampler = UnrepeatedDistributedSampler(
                        dataset, num_replicas=world_size, rank=rank, shuffle=False
                    )
                loaders.append(DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per ``val_keys`` entry (set, scale)."""
        return self._eval_loaders(self.val_sets)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per ``test_keys`` entry (set, scale)."""
        return self._eval_loaders(self.test_sets)

    # ---- on the device
    def lr_divisible_check(self, needs: tuple[str, ...] | list[str]) -> None:
        """Raise one clear error if a method needing ``needs`` cannot train with this patch size / mode."""
        key = tuple(needs)
        if key not in self._checked_needs:
            check_patch(self.patch_size, self.scales, key, self.scale_mode)
            self._checked_needs.add(key)

    def degrade_batch(
        self, batch: dict, needs: tuple[str, ...] | list[str] = DEFAULT_NEEDS
    ) -> dict | list[dict]:
        """A uint8 training batch -> float patches and ``needs`` targets (see ``degrade``)."""
        self.lr_divisible_check(needs)
        return degrade(
            batch["hr"], batch["scale"], batch["gray"], needs, self.patch_size, self.scale_mode, self.channels
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches of uint8 crops are degraded here, on the training device; others pass through."""
        trainer = self.trainer
        if (
            trainer is not None
            and trainer.training
            and isinstance(batch, dict)
            and isinstance(batch.get("hr"), torch.Tensor)
            and batch["hr"].dtype == torch.uint8
        ):
            needs = getattr(trainer.lightning_module, "batch_needs", None) or DEFAULT_NEEDS
            return self.degrade_batch(batch, tuple(needs))
        return batch
