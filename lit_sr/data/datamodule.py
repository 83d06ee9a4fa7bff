"""SRDataModule: training images, validation images and test benchmarks, configured under ``data:``.

Three roles, never mixed:

- ``train_sources`` train (``auto`` = the 291 images when ``$LIT_SR_DATA`` has T91 and BSD200, else the
  photos bundled with scikit-image).
- ``val_sets`` choose: best checkpoint, early stopping, the Optuna objective and pruning. Default: a
  deterministic hold-out of ``val_holdout`` training images (the first N by a stable hash of the file name,
  removed from training), or ``builtin_val`` when training on the built-in photos.
- ``test_sets`` are the reported benchmarks (default: Set5 and Set14 when the data root has them). ``fit``
  never evaluates them; ``lit-sr train`` tests the chosen checkpoint on them afterwards.

Before training, the decoded pixels are compared across roles (:mod:`lit_sr.data.overlap`): an exact copy
of a val or test image among the training images is an error naming both files; a near-duplicate
(e.g. Set5's ``woman``, which is BSD200's ``302003`` downscaled) is left out of training with a warning
(``near_duplicates: exclude``) or is an error (``error``). Validating on a test set, or on copies of its
images, needs ``allow_selection_on_test: true`` and is then recorded (``selection_on_test``).

Training: ``TrainPatches`` ships uint8 HR crops (DataLoader ``batch_size=None``); the method turns them
into float patches and targets on its device (``SRMethod.on_after_batch_transfer``, ``degrade.py``).
Training images smaller than the crop are enlarged by MATLAB bicubic (as the official LapSRN code does),
so every image of a set trains. Validation / test: one DataLoader (batch_size 1) per (set, scale); items
are ``BenchmarkSet`` dicts carrying their ``set`` and ``scale``. Under DDP each rank gets an unpadded
shard, so every image is scored exactly once.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lit_sr.data.datasets import BenchmarkSet, TrainPatches, min_benchmark_size
from lit_sr.data.degrade import crop_size, min_train_side
from lit_sr.data.images import ImageCache, ImageError
from lit_sr.data.overlap import d4_hashes, near_duplicates, pixel_hash
from lit_sr.data.resume import ResumableLoader
from lit_sr.data.sources import default_test_sets, resolve_images
from lit_sr.typed import check_arguments

HOLDOUT = "holdout"


def _worker_init(_: int) -> None:
    # Each worker resizes small crops; OpenCV's own thread pool would only oversubscribe the CPUs.
    import cv2

    cv2.setNumThreads(1)


def _check_scales(key: str, scales: Any) -> list[int]:
    if not isinstance(scales, (list, tuple)) or not scales:
        raise ValueError(f"data.{key} must be a non-empty list of integer scales like [2, 3, 4], got {scales!r}")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, int) or s < 2:
            raise ValueError(f"data.{key} holds {s!r}; SR scales must be integers >= 2, e.g. [2, 3, 4]")
    return sorted(set(scales))


def holdout_split(paths: list[Path], count: int) -> tuple[list[Path], list[Path]]:
    """(train, held out): the ``count`` paths first by SHA-1 of their file name, a split stable across machines."""
    ranked = sorted(paths, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
    held = set(ranked[:count])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


class SRDataModule(pl.LightningDataModule):
    """Training patches, validation images and test benchmarks for every lit_sr method (module doc).

    Args:
        train_sources: set names under LIT_SR_DATA, folder paths, ``291``, ``builtin`` or ``auto``.
        val_sets: validation sets (None: a hold-out of ``val_holdout`` training images; ``builtin_val`` for
            the built-in photos).
        val_holdout: how many training images the default validation set holds out.
        test_sets: reported benchmarks (None: Set5 and Set14 when present).
        allow_selection_on_test: let a test set (or copies of its images) serve as validation; recorded.
        near_duplicates: ``exclude`` drops training images that are near-copies of val/test images (with a
            warning), ``error`` stops.
        scales: training scales.
        val_scales: validation / test scales (None: ``scales``).
        scale_mode: ``per_batch`` one scale per batch, ``mixed`` one per sample, ``split`` the batch cut into
            equal contiguous parts, one per scale (ascending).
        patch_size: HR patch side (LR methods: divisible by every scale).
        batch_size: patches per training batch (all scales together in ``split`` mode).
        batches_per_epoch: training batches per epoch, summed over DDP ranks.
        image_sampling: how each patch's image is drawn: ``uniform`` (one image as likely as another, the
            LapSRN code) or ``area`` (in proportion to its pixels, as many patches from an image as the
            non-overlapping sub-images VDSR and CMSC extract from it).
        num_workers: DataLoader worker processes for training patches.
        rescale: range of the random downscale factor of training images (None: no downscale).
        rescale_step: grid step of that factor.
        d4: random flips / 90-degree rotations.
        cache_dir: folder for the memory-mapped image cache (None: system temp dir).
        memmap_threshold_mb: decoded training images above this size go to a memory-mapped file.
        on_bad_image: ``error`` stops on an unreadable image; ``warn`` skips it with a warning.
        val_max_images: use only the first N images of each validation set (quick runs; test sets stay whole).
    """

    def __init__(
        self,
        train_sources: list[str] = ["auto"],  # noqa: B006 - LightningCLI shows and copies this default
        val_sets: list[str] | None = None,
        val_holdout: PositiveInt = 10,
        test_sets: list[str] | None = None,
        allow_selection_on_test: bool = False,
        near_duplicates: Literal["exclude", "error"] = "exclude",
        scales: list[int] = [2, 3, 4],  # noqa: B006
        val_scales: list[int] | None = None,
        scale_mode: Literal["per_batch", "mixed", "split"] = "mixed",
        patch_size: PositiveInt = 41,
        batch_size: PositiveInt = 16,
        batches_per_epoch: PositiveInt = 500,
        image_sampling: Literal["uniform", "area"] = "uniform",
        num_workers: NonNegativeInt = 2,
        rescale: tuple[float, float] | None = None,
        rescale_step: PositiveFloat = 0.1,
        d4: bool = True,
        cache_dir: str | None = None,
        memmap_threshold_mb: NonNegativeInt = 2048,
        on_bad_image: Literal["error", "warn"] = "error",
        val_max_images: PositiveInt | None = None,
    ) -> None:
        super().__init__()
        # Our frame, passed: Lightning's own lookup keeps inspect.currentframe() in a local, a reference cycle that
        # holds the caller's frame (and whatever its locals hold, e.g. DataLoader workers) until the cyclic GC runs.
        self.save_hyperparameters(frame=inspect.currentframe())
        # jsonargparse checks the typed arguments of a config; check_arguments also those of a call from Python, and
        # hands back plain ints and floats for the attributes below (see lit_sr.typed).
        args = check_arguments(SRDataModule.__init__, locals(), "data.")
        if not isinstance(train_sources, (list, tuple)) or not train_sources:
            raise ValueError(f"data.train_sources must be a non-empty list like ['291'], got {train_sources!r}")
        self.scales = _check_scales("scales", scales)
        self.val_scales = list(self.scales) if val_scales is None else _check_scales("val_scales", val_scales)
        self.scale_mode, self.on_bad_image, self.near_duplicates = scale_mode, on_bad_image, near_duplicates
        self.patch_size, self.batch_size = args["patch_size"], args["batch_size"]
        if patch_size < 2 * max(self.scales):
            raise ValueError(f"data.patch_size must be an integer >= {2 * max(self.scales)} (twice the largest scale "
                             f"of data.scales), got {patch_size}")
        if scale_mode == "split" and batch_size < len(self.scales):
            raise ValueError(f"data.batch_size must be an integer >= {len(self.scales)} (one patch per scale of "
                             f"data.scales in scale_mode split), got {batch_size}")
        self.batches_per_epoch, self.num_workers = args["batches_per_epoch"], args["num_workers"]
        self.image_sampling = image_sampling
        self.memmap_threshold_mb, self.val_max_images = args["memmap_threshold_mb"], args["val_max_images"]
        if rescale is not None and not (len(rescale) == 2 and 0 < rescale[0] <= rescale[1] <= 1):
            raise ValueError(f"data.rescale must be null or two factors 0 < low <= high <= 1, got {rescale!r}")
        self.rescale = None if rescale is None else (float(rescale[0]), float(rescale[1]))
        if self.rescale is not None:
            steps = (self.rescale[1] - self.rescale[0]) / args["rescale_step"]
            if abs(steps - round(steps)) > 1e-6:
                raise ValueError(f"data.rescale_step={args['rescale_step']} does not divide data.rescale "
                                 f"{list(self.rescale)} into whole steps, so the grid of factors would miss "
                                 f"{self.rescale[1]}; choose a step such as 0.1")
        self.rescale_step, self.d4, self.cache_dir = args["rescale_step"], d4, cache_dir
        self.allow_selection_on_test = allow_selection_on_test

        # Resolving sources only lists folders: cheap, and a wrong name fails here, not mid-training.
        train: list[Path] = []
        self.train_names: list[str] = []
        for source in train_sources:
            name, paths = resolve_images(str(source))
            self.train_names.append(name)
            train += [p for p in paths if p not in train]
        self._eval_paths: dict[str, list[Path]] = {}
        if val_sets is None and set(self.train_names) == {"builtin"}:
            val_sets = ["builtin_val"]
        if val_sets is None:
            train, held = holdout_split(train, val_holdout)
            if not train:
                raise ValueError(f"data.val_holdout={val_holdout} leaves no training images; lower it")
            self._eval_paths[HOLDOUT] = held
            self.val_sets = [HOLDOUT]
        else:
            self.val_sets = self._add_eval_sets(val_sets, "val_sets")
        self.test_sets = self._add_eval_sets(default_test_sets() if test_sets is None else test_sets, "test_sets")
        self._train_paths = train
        self.selection_on_test = bool(set(self.val_sets) & set(self.test_sets))
        if self.selection_on_test:
            self._selection_on_test(f"data.val_sets {self.val_sets} include test set(s) {self.test_sets}")

        self.excluded: list[dict[str, str]] = []  # training images left out as near-copies of val/test images
        self._checked = False
        self._train_cache: ImageCache | None = None
        self._eval_caches: dict[str, ImageCache] = {}
        self._eval_sets: dict[tuple[str, int], BenchmarkSet] = {}

    def _add_eval_sets(self, sets: list[str], key: str) -> list[str]:
        names = []
        for source in sets:
            name, paths = resolve_images(str(source))
            if name in names:
                raise ValueError(f"data.{key} {list(sets)} holds two sets named {name!r}; rename one folder")
            if name in self._eval_paths and self._eval_paths[name] != paths:
                raise ValueError(f"data.{key}: two different folders are both named {name!r}; rename one")
            self._eval_paths[name] = paths
            names.append(name)
        return names

    def _selection_on_test(self, what: str) -> None:
        if not self.allow_selection_on_test:
            raise ValueError(
                f"{what}: choosing checkpoints or hyperparameters on a reported benchmark inflates it; validate "
                "on held-out training images (leave data.val_sets unset) or set data.allow_selection_on_test: true"
            )
        self.selection_on_test = True
        rank_zero_warn(f"{what}: model selection uses a test set (data.allow_selection_on_test); it is recorded")

    # ---- images
    @property
    def train_paths(self) -> list[Path]:
        """The training image files after the hold-out split (``train_images`` may still drop near-copies)."""
        return list(self._train_paths)

    def eval_paths(self, name: str) -> list[Path]:
        """The image files of validation or test set ``name`` (``holdout``: the held-out training images)."""
        return list(self._eval_paths[name])

    @property
    def crop_size(self) -> int:
        """Side of the uint8 HR crops shipped by the training DataLoader."""
        return crop_size(self.patch_size, self.scales)

    @property
    def min_train_side(self) -> int:
        """Training images with a shorter side are enlarged (MATLAB bicubic) to it."""
        return min_train_side(self.patch_size, self.scales)

    @property
    def _policy(self) -> Literal["raise", "skip"]:
        return "raise" if self.on_bad_image == "error" else "skip"

    def train_images(self) -> ImageCache:
        """The decoded training images, checked against val and test images (on first use, in this process)."""
        if self._train_cache is None:
            cache = self._train_image_cache(self._train_paths)
            if cache.enlarged:
                rank_zero_info(
                    f"{len(cache.enlarged)} of {len(cache)} training images are smaller than the "
                    f"{self.min_train_side}-pixel side a patch needs and were enlarged by MATLAB bicubic (e.g. "
                    f"{cache.enlarged[0].name})"
                )
            self._train_cache = self._check_overlap(cache)
        return self._train_cache

    def _eval_images(self, name: str) -> ImageCache:
        if name not in self._eval_caches:
            limit = self.val_max_images if name in self.val_sets else None  # test sets are always whole
            self._eval_caches[name] = ImageCache(
                self._eval_paths[name][:limit],
                min_size=min_benchmark_size(max(self.val_scales)),
                on_error=self._policy,
                min_size_hint=f"evaluation at x{max(self.val_scales)}",
            )
        return self._eval_caches[name]

    def _check_overlap(self, train: ImageCache) -> ImageCache:
        """Exact copies across roles are errors; near-copies of val/test images leave training (or stop)."""
        roles = [(n, "val") for n in self.val_sets] + [(n, "test") for n in self.test_sets if n not in self.val_sets]
        evals = [(n, role, i, self._eval_images(n)) for n, role in roles for i in range(len(self._eval_images(n)))]
        images = [cache[i] for _, _, i, cache in evals]
        where = [(cache.paths[i], role, n) for n, role, i, cache in evals]
        hashes = d4_hashes(images)
        drop: set[int] = set()
        for t in range(len(train)):
            k = hashes.get(pixel_hash(train[t]))
            if k is None:
                continue
            path, role, name = where[k]
            if name == HOLDOUT:  # two copies of one picture among the training images: keep both out of training
                rank_zero_warn(f"training image {train.paths[t]} is the same picture as {path}, held out for "
                               "validation: left out of training")
                self.excluded.append({"train": str(train.paths[t]), role: str(path), "correlation": "1.0000"})
                drop.add(t)
                continue
            raise ImageError(
                f"training image {train.paths[t]} is the same picture (or a flip/rotation of it) as {role} image "
                f"{path} ({name}); remove it from the training folders or from data.{role}_sets"
            )
        val_idx = [k for k, (_, role, _) in enumerate(where) if role == "val"]
        test_idx = [k for k, (_, role, _) in enumerate(where) if role == "test"]
        for a, b, _ in near_duplicates([images[k] for k in val_idx], [images[k] for k in test_idx]):
            val_path, test_path = where[val_idx[a]][0], where[test_idx[b]][0]
            self._selection_on_test(f"validation image {val_path} is a copy of test image {test_path}")
        for t, k, corr in near_duplicates([train[t] for t in range(len(train))], images):
            if t in drop:  # left out already (another match)
                continue
            path, role, name = where[k]
            message = f"training image {train.paths[t]} is a near-copy of {role} image {path} (correlation {corr:.3f})"
            if self.near_duplicates == "error":
                raise ImageError(f"{message}; remove it, or set data.near_duplicates: exclude")
            rank_zero_warn(f"{message}: left out of training (data.near_duplicates: exclude)")
            self.excluded.append({"train": str(train.paths[t]), role: str(path), "correlation": f"{corr:.4f}"})
            drop.add(t)
        return train.without(drop) if drop else train

    def _train_image_cache(self, paths: list[Path]) -> ImageCache:
        return ImageCache(paths, min_size=self.min_train_side, on_error=self._policy, enlarge_small=True,
                          memmap_threshold_mb=self.memmap_threshold_mb, cache_dir=self.cache_dir)

    def benchmark_set(self, name: str, scale: int) -> BenchmarkSet:
        """The BenchmarkSet of one val/test set at one scale (decoded images shared across scales)."""
        if (name, scale) not in self._eval_sets:
            self._eval_sets[(name, scale)] = BenchmarkSet(self._eval_images(name), scale, name)
        return self._eval_sets[(name, scale)]

    def summary(self) -> dict[str, Any]:
        """What this run trains, validates and tests on: for the log, results.json and the W&B config."""
        train = self.train_images()
        return {
            "train_sources": self.train_names,
            "train_images": len(train),
            "train_enlarged": len(train.enlarged),
            "val_sets": {
                n: [p.name for p in self._eval_images(n).paths] if n == HOLDOUT else len(self._eval_images(n))
                for n in self.val_sets
            },
            "test_sets": self.test_sets,
            "excluded_from_training": self.excluded,
            "selection_on_test": self.selection_on_test,
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the image files this run trained, validated (chose) and tested on, which
        ``lit-sr benchmark CKPT`` compares with what it evaluates (a name resolved later, such as ``auto`` or a
        folder path, may mean other images; a hold-out is training images the run chose on, not trained on)."""
        train = self._train_cache.paths if self._train_cache is not None else self._train_paths
        files = lambda paths: [str(Path(p).resolve()) for p in paths]  # noqa: E731
        return {"images": {"train": files(train),
                           "val": {n: files(self.eval_paths(n)[: self.val_max_images]) for n in self.val_sets},
                           "test": {n: files(self.eval_paths(n)) for n in self.test_sets}}}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: a resumed run rebuilds its images from its config."""

    def setup(self, stage: str | None = None) -> None:
        """Decode the images of the stage up front, so errors name the file before any worker starts."""
        world_size = self._rank()[1]
        for name in dict.fromkeys([*self.val_sets, *self.test_sets]):  # before training, not at its first validation
            cap = self.val_max_images if name in self.val_sets else None
            self._check_shards(name, len(self.eval_paths(name)[:cap]), world_size)
        if stage in (None, "fit"):
            self.train_images()
        sets = {"fit": self.val_sets, "validate": self.val_sets, "test": self.test_sets}.get(stage or "", [])
        for name in sets:
            for scale in self.val_scales:
                self.benchmark_set(name, scale)

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
            image_sampling=self.image_sampling,
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

    def _check_shards(self, name: str, count: int, world_size: int) -> None:
        """Every process scores at least one image: one without would skip the loop and hang the others."""
        if 0 < count < world_size:
            raise ValueError(
                f"data: {name} has {count} image(s) for {world_size} processes: each process scores at least one; "
                "give more images ("
                + ("data.val_max_images, data.val_holdout" if name in self.val_sets else "a larger test set")
                + ") or run on fewer devices"
            )

    def _eval_loaders(self, sets: list[str]) -> list[DataLoader]:
        rank, world_size = self._rank()
        loaders = []
        for name in sets:
            for scale in self.val_scales:
                dataset = self.benchmark_set(name, scale)
                sampler = None
                self._check_shards(name, len(dataset), world_size)
                if world_size > 1:  # unpadded shards: no image is scored twice
                    sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
                loaders.append(DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per (validation set, scale)."""
        return self._eval_loaders(self.val_sets)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per (test set, scale)."""
        if not self.test_sets:
            raise ValueError("no test sets: set data.test_sets, e.g. [Set5, Set14] (folders under LIT_SR_DATA)")
        return self._eval_loaders(self.test_sets)
