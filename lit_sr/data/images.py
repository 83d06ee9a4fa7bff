"""Reading and validating image files, modcrop, and a decode-once uint8 image cache.

Every image enters lit_sr through :func:`read_image`: uint8 HxWxC with C = 1 (grayscale, its own Y)
or C = 3 (RGB). Anything a user can get wrong (missing path, corrupt / truncated / non-image file,
image too small) raises :class:`ImageError` naming the file and the fix, in the main process, before
any DataLoader worker starts.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_BAD_FILE_FIX = "re-export or re-download it, or remove it from the folder"


class ImageError(ValueError):
    """A user-caused problem with an image file or folder; the message names it and says what to do."""


def _to_uint8_16bit(values: np.ndarray) -> np.ndarray:
    """16-bit grey levels -> 8 bit as round(v / 257) (65535 -> 255)."""
    return np.clip(np.round(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def read_16bit(path: Path) -> np.ndarray | None:
    """A 16-bit image as stored, uint16 HxW or HxWx3/4 in RGB(A) order, by OpenCV (Pillow truncates 16-bit
    colour to 8 bits); None when it is not 16-bit or OpenCV cannot decode it."""
    import cv2

    arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)  # not imread: any path encoding
    if arr is None or arr.dtype != np.uint16:
        return None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=2)  # BGR(A) -> RGB(A)
    return arr


def _read_16bit_color(path: Path) -> np.ndarray | None:
    """16-bit RGB(A) as 8-bit RGB (None if OpenCV cannot read it)."""
    arr = read_16bit(path)
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    if arr.shape[2] == 4:
        warnings.warn(f"{path}: alpha channel dropped (lit_sr uses RGB only)", stacklevel=3)
    return _to_uint8_16bit(arr[..., :3])


@contextlib.contextmanager
def decoding(path: Path, fix: str = _BAD_FILE_FIX) -> Iterator[None]:
    """Turn whatever the decoder raises for ``path`` into one ImageError naming the file and ``fix``."""
    try:
        yield
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(
            f"cannot read image {path}: {err}. The file is corrupt, truncated or not an image; {fix}"
        ) from err


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 HxWxC, C = 1 for grayscale and 3 for colour.

    PNG, JPEG, BMP and TIFF (anything Pillow reads). Palette images become RGB; an alpha channel is
    dropped with a warning; 16-bit images are scaled to 8 bits as round(v / 257).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise ImageError(f"image file {path} {what}; check the path")
    with decoding(path):
        with Image.open(path) as im:
            is_16bit_color = im.mode in ("RGB", "RGBA") and any(";16" in str(t.args) for t in im.tile)
            im.load()
            mode = im.mode
            if is_16bit_color:
                arr16 = _read_16bit_color(path)
                if arr16 is not None:
                    return arr16
            if mode in ("RGBA", "LA", "PA"):
                warnings.warn(f"{path}: alpha channel dropped (lit_sr uses RGB or grey only)", stacklevel=2)
                im = im.convert("L" if mode == "LA" else "RGB")
            elif mode == "1":
                im = im.convert("L")
            elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                return _to_uint8_16bit(np.asarray(im))[..., None]
            elif mode != "L" and mode != "RGB":
                if mode == "F":
                    raise ImageError(
                        f"image {path} holds floating-point pixels (mode F), which lit_sr cannot map "
                        f"to 8 bits unambiguously; save it as an 8- or 16-bit PNG"
                    )
                im = im.convert("RGB")  # palette, CMYK, YCbCr, ...
            arr = np.asarray(im, dtype=np.uint8)
            if mode == "P":
                arr = grey_palette_as_grey(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"image {path} is empty ({arr.shape[1]}x{arr.shape[0]} pixels); {_BAD_FILE_FIX}")
    return np.ascontiguousarray(arr)


def grey_palette_as_grey(rgb: np.ndarray) -> np.ndarray:
    """A palette picture converted to HxWx3, as HxWx1 when every pixel is grey: then it is its own Y, as a grey
    file is (as RGB its Y would be compressed to 16-235, about 1.3 dB more PSNR)."""
    return rgb[..., :1] if rgb.ndim == 3 and rgb.shape[2] == 3 and (rgb == rgb[..., :1]).all() else rgb


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (png jpg jpeg bmp tif tiff, any case), sorted by name.

    Hidden files (names starting with ".") are ignored, e.g. macOS "._x.png" resource forks.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ImageError(f"image folder {folder} {what}; give a folder that holds the images")
    paths = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not paths:
        raise ImageError(
            f"image folder {folder} holds no images ({' '.join(IMAGE_EXTENSIONS)}); "
            f"put the images directly in it (subfolders are not searched) or point to another folder"
        )
    return paths


def modcrop(arr, scale: int):
    """Crop H and W down to multiples of ``scale``, keeping the top-left corner.

    numpy arrays are HxW or HxWxC; torch tensors are (..., H, W). Returns a view.
    """
    if isinstance(arr, torch.Tensor):
        h, w = arr.shape[-2:]
        return arr[..., : h - h % scale, : w - w % scale]
    h, w = arr.shape[:2]
    return arr[: h - h % scale, : w - w % scale]


class ImageCache:
    """Decode every image of a list once into uint8 HxWxC arrays (C = 1 or 3).

    In memory by default. When the decoded total exceeds ``memmap_threshold_mb`` the images go into
    one memory-mapped file under ``cache_dir`` (default: the system temp dir), with a JSON index of
    offsets and shapes, so DataLoader workers share the pages instead of each holding a copy. The file
    name is a hash of the paths, sizes and modification times; an existing complete cache is reused.

    Bad or too small images (``min(H, W) < min_size``): ``on_error="raise"`` raises :class:`ImageError`,
    ``"skip"`` warns naming the file and drops it (an error if none are left). ``paths`` lists the kept
    images, ``skipped`` the dropped ones with the reason. With ``enlarge_small`` an image smaller than
    ``min_size`` is instead enlarged by MATLAB bicubic until its short side is ``min_size`` (the official
    LapSRN training code does the same), and listed in ``enlarged``.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        min_size: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        memmap_threshold_mb: float = 2048,
        cache_dir: str | Path | None = None,
        min_size_hint: str = "",
        enlarge_small: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"ImageCache on_error must be 'raise' or 'skip', got {on_error!r}")
        all_paths = [Path(p) for p in paths]
        if not all_paths:
            raise ImageError("no image files given to the image cache; check the data source")
        self.min_size = int(min_size)
        self.on_error = on_error
        self.min_size_hint = min_size_hint
        self.enlarge_small = enlarge_small
        self.enlarged: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        self.memmap_path: Path | None = None
        self._mm: np.ndarray | None = None
        self._arrays: list[np.ndarray] = []
        self._index: list[tuple[int, tuple[int, ...]]] = []  # (byte offset, shape) per kept image

        if _estimated_bytes(all_paths) > memmap_threshold_mb * 2**20:
            self._build_memmap(all_paths, Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()))
        else:
            kept = []
            for p in all_paths:
                arr = self._load(p)
                if arr is not None:
                    kept.append(p)
                    self._arrays.append(arr)
            self.paths = kept
        if not self.paths:
            raise ImageError(
                f"none of the {len(all_paths)} images (first: {all_paths[0]}) is usable; "
                f"see the warnings above for each file"
            )

    # ---- decoding and the bad-image policy
    def _bad(self, path: Path, message: str) -> None:
        if self.on_error == "raise":
            raise ImageError(message)
        warnings.warn(f"skipping {path}: {message}", stacklevel=3)
        self.skipped.append((path, message))

    def _check_size(self, path: Path, shape: tuple[int, ...]) -> bool:
        h, w = shape[:2]
        if min(h, w) < self.min_size:
            hint = f" ({self.min_size_hint})" if self.min_size_hint else ""
            fix = ("remove it from the set or evaluate at a smaller scale" if self.min_size_hint else
                   "use larger images, a smaller patch size, or skip such images (data.on_bad_image: warn)")
            self._bad(path, f"image {path} is {w}x{h} pixels, smaller than the {self.min_size}x{self.min_size} "
                            f"needed{hint}; {fix}")
            return False
        return True

    def _read(self, path: Path) -> np.ndarray:
        arr = read_image(path)
        if self.enlarge_small and min(arr.shape[:2]) < self.min_size:
            arr = enlarge(arr, self.min_size)
            self.enlarged.append(path)
        return arr

    def _load(self, path: Path) -> np.ndarray | None:
        try:
            arr = self._read(path)
        except ImageError as err:
            self._bad(path, str(err))
            return None
        return arr if self._check_size(path, arr.shape) else None

    def _build_memmap(self, paths: list[Path], cache_dir: Path) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha1(f"enlarge={self.enlarge_small and self.min_size}".encode())
        for p in paths:
            st = p.stat() if p.exists() else None
            key.update(f"{p.resolve()}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        stem = cache_dir / f"lit_sr_images_{key.hexdigest()[:16]}"
        data_file, index_file = stem.with_suffix(".u8"), stem.with_suffix(".json")
        entries = None
        if index_file.is_file() and data_file.is_file():
            try:
                entries = json.loads(index_file.read_text())["images"]
            except (OSError, ValueError, KeyError):
                entries = None
        if entries is None:
            entries = []
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=stem.name, suffix=".tmp")
            offset = 0
            with os.fdopen(fd, "wb") as f:
                for p in paths:
                    try:
                        arr = self._read(p)
                    except ImageError as err:
                        entries.append({"path": str(p), "error": str(err)})
                        continue
                    f.write(arr.tobytes())
                    entries.append({"path": str(p), "offset": offset, "shape": list(arr.shape),
                                    "enlarged": bool(self.enlarged and self.enlarged[-1] == p)})
                    offset += arr.nbytes
            os.replace(tmp, data_file)  # atomic: DDP ranks may race, their files are identical
            tmp_index = index_file.with_suffix(f".{os.getpid()}.tmp")
            tmp_index.write_text(json.dumps({"images": entries}))
            os.replace(tmp_index, index_file)  # written last: marks the cache complete
        kept, self.enlarged = [], []  # the index says which were enlarged, also when it was written before
        for e in entries:
            p = Path(e["path"])
            if "error" in e:
                self._bad(p, e["error"])
            elif self._check_size(p, tuple(e["shape"])):
                kept.append(p)
                self._index.append((int(e["offset"]), tuple(e["shape"])))
                if e.get("enlarged"):
                    self.enlarged.append(p)
        self.paths = kept
        self.memmap_path = data_file
        self._open_memmap()

    def _open_memmap(self) -> None:
        assert self.memmap_path is not None
        if self.memmap_path.stat().st_size == 0:
            self._mm = np.zeros(0, np.uint8)
        else:
            self._mm = np.memmap(self.memmap_path, dtype=np.uint8, mode="r")

    # ---- access
    @property
    def uses_memmap(self) -> bool:
        """True when the images live in the memory-mapped file ``memmap_path``."""
        return self.memmap_path is not None

    @property
    def nbytes(self) -> int:
        """Total decoded size of the kept images."""
        if self.uses_memmap:
            return sum(int(np.prod(s)) for _, s in self._index)
        return sum(a.nbytes for a in self._arrays)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        """The i-th kept image, uint8 HxWxC (read-only view when memory-mapped)."""
        if not self.uses_memmap:
            return self._arrays[i]
        offset, shape = self._index[i]
        return self._mm[offset : offset + int(np.prod(shape))].reshape(shape)

    def without(self, drop: set[int]) -> ImageCache:
        """This cache less the images at the indices in ``drop``; the kept images are shared, not decoded again."""
        out = copy.copy(self)
        keep = [i for i in range(len(self)) if i not in drop]
        out.paths = [self.paths[i] for i in keep]
        out._arrays = [a for i, a in enumerate(self._arrays) if i not in drop]  # in memory (else empty)
        out._index = [e for i, e in enumerate(self._index) if i not in drop]  # memory-mapped (else empty)
        kept = set(out.paths)
        out.enlarged = [p for p in self.enlarged if p in kept]
        return out

    def shape(self, i: int) -> tuple[int, ...]:
        """(H, W, C) of the i-th kept image."""
        return self._index[i][1] if self.uses_memmap else self._arrays[i].shape

    def __getstate__(self) -> dict:
        # Spawned workers re-open the memory map instead of receiving a pickled copy of every image.
        state = self.__dict__.copy()
        if self.uses_memmap:
            state["_mm"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.uses_memmap:
            self._open_memmap()


def enlarge(img: np.ndarray, min_size: int) -> np.ndarray:
    """uint8 HxWxC image enlarged by MATLAB bicubic so that its short side is ``min_size`` (rounded to uint8)."""
    from lit_sr.data.resize import imresize

    h, w = img.shape[:2]
    factor = min_size / min(h, w)
    size = (max(min_size, math.ceil(h * factor - 1e-9)), max(min_size, math.ceil(w * factor - 1e-9)))
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).double()
    out = imresize(x, size=size).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())


def _estimated_bytes(paths: Sequence[Path]) -> int:
    """Decoded size from the headers only (no pixel decoding); unreadable files count 0."""
    total = 0
    for p in paths:
        try:
            with Image.open(p) as im:
                channels = 1 if im.mode in _GREY_MODES else 3
                total += im.width * im.height * channels
        except Exception:  # read errors are reported when the file is decoded
            continue
    return total
