"""``lit-sr upscale``: super-resolve image files and folders with a trained method.

RGB in, RGB out. A Y-only network (``channels == "y"``, the default) super-resolves the MATLAB Y channel and
takes Cb/Cr from MATLAB bicubic (:func:`lit_sr.inference.y_to_rgb_sr`); an RGB network (``channels ==
"rgb"``) sees all three channels. Grayscale stays grayscale. An alpha channel is resized with MATLAB bicubic
and kept; 16-bit PNG/TIFF input is read and written with 16 bits (8-bit input gives 8-bit output).
Large images run tiled (``tile`` LR pixels, ``overlap`` on each side; 0 disables tiling) so the network's
memory depends on the tile, not on the image; the colour step (Cb/Cr, alpha, rounding) runs in bands, so the
image costs its network output (a float per pixel and channel) and its samples (1 or 2 bytes each);
``self_ensemble`` averages the 8 flips/rotations (8x the time). Outputs are written atomically and never
over an input.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lit_sr.data.images import IMAGE_EXTENSIONS, ImageError, decoding, grey_palette_as_grey, read_16bit
from lit_sr.data.resize import imresize
from lit_sr.errors import ConfigError, UserError
from lit_sr.inference import min_tile, self_ensemble, tiled_forward
from lit_sr.methods.base import SRMethod
from lit_sr.paths import writable_folder

_BAD_INPUT_FIX = "re-export or re-download it, or remove it from the inputs"


class OutputExistsError(UserError, FileExistsError):
    """An output file exists and ``force`` was not given; the message names it."""


@dataclass
class Picture:
    """An image: ``pixels`` HxWxC (C = 1 or 3), ``alpha`` HxW or None, ``bits`` 8/16. Decoded, they are float64
    in [0, 1]; upscaled, they are the integer samples of ``bits`` (uint8 or uint16)."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    bits: int


#: output pixels per band of :func:`upscale_picture`'s colour step; it bounds the band's float arrays
BAND_PIXELS = 2**19
#: LR rows of context on each side of a band: MATLAB bicubic upscaling reads 2 LR pixels on each side
BAND_MARGIN = 4


def samples(values: np.ndarray, bits: int) -> np.ndarray:
    """Values in [0, 1] as the integer samples of ``bits`` (clipped and rounded, as saving does); samples as given."""
    if values.dtype.kind in "ui":
        return values
    levels = np.clip(values, 0.0, 1.0)  # the one float copy
    levels *= 2**bits - 1
    return np.round(levels, out=levels).astype(np.uint16 if bits == 16 else np.uint8)


# ---- reading and writing, keeping alpha and 16 bits ------------------------------------------------------
def _picture(arr: np.ndarray, bits: int) -> Picture:
    """An HxW, HxWxC (C = 1-4, a last channel of 2 or 4 is alpha) integer array with ``bits`` bits as a Picture."""
    arr = (arr[..., None] if arr.ndim == 2 else arr).astype(np.float64) / (2**bits - 1)
    alpha = np.ascontiguousarray(arr[..., -1]) if arr.shape[2] in (2, 4) else None
    return Picture(np.ascontiguousarray(arr[..., :-1] if alpha is not None else arr), alpha, bits)


def _read_tiff(path: Path) -> tuple[Picture, int] | None:
    """A grey (either photometric), RGB, palette or CMYK TIFF, alpha kept, read by tifffile as stored, and its
    orientation tag; None for anything else (Pillow reads it).

    Pillow truncates 16-bit colour and cannot open 16-bit grey + alpha; for orientations other than 1 its libtiff
    decoder applies 2-4 while reading and scrambles 5-8. OpenCV 5.0 turns TIFFs by their orientation in some
    reads, not in others. The caller turns the result upright.
    """
    import tifffile

    kind = tifffile.PHOTOMETRIC
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            photometric, colormap = page.photometric, page.colormap
            arr = page.asarray()
            if arr.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                arr = np.moveaxis(arr, 0, -1)
            tag = page.tags.get("Orientation")
            orientation = int(tag.value) if tag is not None else 1
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads (a codec it lacks, a broken file): Pillow decides
        return None
    if arr.dtype not in (np.uint8, np.uint16):
        return None
    if photometric == kind.PALETTE and colormap is not None and arr.ndim == 2:
        arr = np.moveaxis(np.round(colormap[:, arr] / 257), 0, -1).astype(np.uint8)  # 16-bit entries of 8-bit colours
        arr = grey_palette_as_grey(arr)
    elif photometric == kind.SEPARATED and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 4:
        arr = np.asarray(Image.fromarray(arr, "CMYK").convert("RGB"))  # Pillow's conversion, as for a CMYK JPEG
    elif photometric == kind.MINISWHITE:  # 0 is white: as viewers show it
        grey = arr if arr.ndim == 2 else arr[..., :1]
        grey[...] = np.iinfo(arr.dtype).max - grey
    elif photometric not in (kind.RGB, kind.MINISBLACK):
        return None
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] <= 4)):
        return None
    return _picture(arr, 16 if arr.dtype == np.uint16 else 8), orientation


def _from_pillow(im: Image.Image, path: Path) -> Picture:
    """A loaded Pillow image as a Picture: 16-bit grey keeps 16 bits, other modes become L, LA, RGB or RGBA."""
    mode = im.mode
    if mode == "F":
        raise ImageError(f"image {path} holds floating-point pixels (mode F); save it as an 8- or 16-bit PNG")
    if mode.startswith("I"):  # I;16 / I;16B / I (32-bit): 16-bit grey
        return _picture(np.clip(np.asarray(im), 0, 65535).astype(np.uint16), 16)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, ...
    return _picture(grey_palette_as_grey(np.asarray(im)) if mode == "P" else np.asarray(im), 8)


#: EXIF orientation -> the transform of an (H, W, ...) array that shows it upright (as ``ImageOps.exif_transpose``)
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when there is no EXIF)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except (TypeError, ValueError, SyntaxError, OSError):  # a broken EXIF block: show the pixels as stored
        return 1


def _orient(picture: Picture, orientation: int) -> Picture:
    """``picture`` turned upright for an EXIF ``orientation``."""
    turn = _UPRIGHT.get(orientation)
    if turn is None:
        return picture
    alpha = None if picture.alpha is None else np.ascontiguousarray(turn(picture.alpha))
    return Picture(np.ascontiguousarray(turn(picture.pixels)), alpha, picture.bits)


def read_picture(path: str | Path) -> Picture:
    """Read an image file for upscaling: colour, alpha and bit depth kept, turned upright by its EXIF orientation
    (a phone's JPEG) or TIFF orientation tag. Bad files raise :class:`ImageError`."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise ImageError(f"image file {path} {what}; check the path")
    with decoding(path, _BAD_INPUT_FIX):
        stored = _read_tiff(path) if path.suffix.lower() in (".tif", ".tiff") else None
        if stored is not None:
            picture, orientation = stored
        else:
            if path.suffix.lower() == ".png":  # Pillow decodes a PNG that lost its last chunks; verify reads their CRCs
                with Image.open(path) as im:
                    im.verify()
            with Image.open(path) as im:
                deep = im.mode.startswith("I") or any(";16" in str(t.args) for t in im.tile or [])  # before any load
                orientation = _exif_orientation(im)  # before load, which drops a TIFF's tags (a PNG's loads here)
                stored = read_16bit(path) if deep and path.suffix.lower() == ".png" else None  # Pillow: 8-bit colour
                if stored is None:
                    im.load()
                picture = _picture(stored, 16) if stored is not None else _from_pillow(im, path)
    picture = _orient(picture, orientation)
    height, width = picture.pixels.shape[:2]
    if min(height, width) < 2:
        raise ImageError(f"image {path} is {width}x{height} pixels; upscaling needs at least 2x2")
    return picture


def write_picture(path: str | Path, picture: Picture) -> None:
    """Write a PNG with the picture's bit depth (16-bit grey + alpha as 16-bit RGBA), atomically: an interrupted
    write leaves no truncated file and keeps the file it would have replaced."""
    path = Path(path)
    arr = samples(picture.pixels, picture.bits)
    if picture.alpha is not None:
        arr = np.concatenate([arr, samples(picture.alpha, picture.bits)[..., None]], axis=2)
    if picture.bits == 16:  # Pillow writes 16 bits for grey only
        import cv2

        if arr.shape[2] == 2:
            arr = arr[..., [0, 0, 0, 1]]
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] == 3:
            arr = arr[..., ::-1]
        else:
            arr = arr[..., [2, 1, 0, 3]]
        ok, png = cv2.imencode(".png", np.ascontiguousarray(arr))
        if not ok:
            raise OSError(f"could not encode {path} as a 16-bit PNG")
        data = png.tobytes()
    else:
        buffer = io.BytesIO()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buffer, format="PNG")
        data = buffer.getvalue()
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- the network pass --------------------------------------------------------------------------------------
class TilingWarning(UserWarning):
    """Tiling cannot reproduce the untiled output (or needs larger tiles than asked); the message says what runs."""


def check_tiling(tile: int, overlap: int | None) -> None:
    """``--tile`` / ``--tile-overlap`` as given: a :class:`ConfigError` naming the flags when they cannot work."""
    if tile < 0:
        raise ConfigError(f"--tile {tile}: the tile size must be >= 0 LR pixels (0 = the whole image at once)")
    if overlap is not None and overlap < 0:
        raise ConfigError(f"--tile-overlap {overlap}: the overlap must be >= 0 LR pixels (or left out: measured)")
    if tile and overlap is not None and tile < min_tile(overlap):
        raise ConfigError(
            f"--tile-overlap {overlap} leaves a core under 32 px in --tile {tile} tiles (needs --tile >= 2 x "
            f"--tile-overlap + 32; smaller cores repeat most of the work, many times slower); pass --tile "
            f"{min_tile(overlap)} or more, a smaller --tile-overlap, or --tile 0 (whole image at once)"
        )


def tiling_for(method: SRMethod, scale: int, tile: int, overlap: int | None) -> tuple[int, int] | None:
    """(tile, overlap) for an image larger than ``tile``, or None: run it whole (tiling would change it).

    An explicit ``overlap`` is used as given. Otherwise the overlap is the network's receptive-field radius, which
    makes tiles exact; a tile too small for it grows to ``min_tile(radius)`` (as the methods' own tiling does). A
    network whose output depends on the whole image (global pooling, or a radius the probe could not bound) has
    no exact overlap, so its images run whole. Both cases warn (once per message).
    """
    name = type(method).__name__
    if overlap is not None:
        if method.pools_globally:
            warnings.warn(
                f"{name}'s output depends on the whole image (global pooling): with --tile {tile} "
                f"--tile-overlap {overlap} the result is approximate at the tile seams; --tile 0 is exact",
                TilingWarning,
                stacklevel=2,
            )
        return tile, overlap
    radius = method.receptive_radius(scale)
    if radius is None:
        warnings.warn(
            f"{name}'s output depends on the whole image (global pooling, or a reach past 768 px), so tiles cannot "
            f"reproduce it: images larger than --tile {tile} run whole, as with --tile 0 (memory grows with the "
            "image); pass --tile-overlap N to tile them anyway (approximate at the seams)",
            TilingWarning,
            stacklevel=2,
        )
        return None
    if tile < (grown := min_tile(radius)):
        keep = (tile - 32) // 2  # the largest overlap that leaves a 32-px core, as check_tiling asks
        alternative = f"--tile-overlap {keep} keeps --tile {tile} (approximate at the seams), " if keep >= 0 else ""
        warnings.warn(
            f"--tile {tile} is too small for {name}'s receptive radius at x{scale} ({radius} LR px of overlap per "
            f"side): using --tile {grown} (exact); {alternative}--tile 0 runs the whole image",
            TilingWarning,
            stacklevel=2,
        )
        return grown, radius
    return tile, radius


def super_resolve_tiled(
    method: SRMethod,
    x: Tensor,
    scale: int,
    tile: int = 256,
    overlap: int | None = None,
    ensemble: bool = False,
) -> Tensor:
    """What the network sees (N, C, h, w) -> (N, C, h*s, w*s) fp32, unclipped, tiled and/or self-ensembled.

    Every tile goes through the method's own ``super_resolve`` (the single inference entry point) with its
    built-in tiling off; ``tile`` = 0 runs the whole image in one pass, as does an image no larger than ``tile``
    (nothing is measured then); ``overlap`` None = the network's measured receptive-field radius
    (``receptive_radius``), the context that makes tiling exact (:func:`tiling_for`: a network whose output
    depends on the whole image runs untiled unless ``overlap`` is given).
    """
    scale = method.check_scale(scale)
    check_tiling(tile, overlap)
    base = type(method).super_resolve.__get__(method)  # the class's entry point, not a patched instance one

    def one_pass(t: Tensor) -> Tensor:
        if tile and max(t.shape[-2:]) > tile:
            plan = tiling_for(method, scale, tile, overlap)
            if plan is not None and max(t.shape[-2:]) > plan[0]:
                return tiled_forward(lambda part: base(part, scale), t, plan[0], plan[1], scale)
        return base(t, scale)

    with torch.no_grad(), mock.patch.dict(method.hparams, tile_size=0):  # the caller's tiling, not the method's
        return self_ensemble(one_pass, x) if ensemble else one_pass(x)


def upscale_picture(method: SRMethod, picture: Picture, scale: int, *, tile: int = 256, overlap: int | None = None,
                    ensemble: bool = False) -> Picture:  # fmt: skip
    """Super-resolve a decoded picture by ``scale``, bit depth kept; the result holds integer samples.

    The network runs once over the image (:func:`super_resolve_tiled`'s tile / ensemble options). Its output
    becomes the picture (``method.to_rgb``: a Y network's Cb/Cr by MATLAB bicubic), and alpha is resized by MATLAB
    bicubic, in bands of about :data:`BAND_PIXELS` output pixels. Memory is then the network's output (one float
    plane per channel it has), the result's samples and one band, not several float64 copies of the image.
    """
    lr = torch.from_numpy(picture.pixels).permute(2, 0, 1)[None]  # float64 (1, C, h, w)
    sr = super_resolve_tiled(method, method.network_input(lr), scale, tile=tile, overlap=overlap, ensemble=ensemble)
    h, w, channels = picture.pixels.shape
    pixels = np.empty((h * scale, w * scale, channels), np.uint16 if picture.bits == 16 else np.uint8)
    alpha = None if picture.alpha is None else np.empty(pixels.shape[:2], pixels.dtype)
    rows = max(16, BAND_PIXELS // (w * scale * scale))  # 16: margins add at most half of the work
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        m0, m1 = max(0, r0 - BAND_MARGIN), min(h, r1 + BAND_MARGIN)  # the band with its context
        inner, band = slice((r0 - m0) * scale, (r1 - m0) * scale), slice(r0 * scale, r1 * scale)
        with torch.no_grad():
            rgb = method.to_rgb(sr[..., m0 * scale : m1 * scale, :], lr[..., m0:m1, :], scale)
        pixels[band] = samples(rgb[0, :, inner].permute(1, 2, 0).double().cpu().numpy(), picture.bits)
        if alpha is not None:
            alpha[band] = samples(imresize(torch.from_numpy(picture.alpha[m0:m1]), scale)[inner].numpy(), picture.bits)
    return Picture(pixels, alpha, picture.bits)


# ---- the device ---------------------------------------------------------------------------------------------
def available_devices() -> list[str]:
    """The devices this machine can run on: cpu, then cuda (cuda:0, cuda:1, ... when there are several), mps."""
    found = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        found += ["cuda"] if count == 1 else [f"cuda:{i}" for i in range(count)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device) -> torch.device:
    """``--device`` as a torch device this machine has; otherwise a :class:`ConfigError` listing what it has."""
    have = ", ".join(available_devices())
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device} is not a device name; this machine has: {have}") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    usable = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if usable and dev.index is not None and hasattr(backend, "device_count"):
        usable = dev.index < backend.device_count()
    if not usable:
        why = " (torch.cuda.is_available() is False)" if dev.type == "cuda" and not torch.cuda.is_available() else ""
        raise ConfigError(f"--device {device} is not available on this machine{why}; it has: {have}")
    return dev


# ---- files and folders -------------------------------------------------------------------------------------
def collect_inputs(inputs: Sequence[str | Path], out: str | Path, scale: int) -> list[tuple[Path, Path]]:
    """(source, target) pairs: files as given, folders walked recursively (their subfolders mirrored under
    ``out``, which is never walked); targets are ``<stem>_x<scale>.png``. Two inputs with the same target, or a
    target that is an input, are an error, also where the names differ only in case."""
    out = Path(out)
    skip = out.resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = []
            for root, dirs, files in os.walk(item):  # not into -o: a rerun would upscale its own outputs
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                        found.append(Path(root) / name)
            if not found:
                raise ImageError(f"folder {item} holds no images ({' '.join(IMAGE_EXTENSIONS)}); check the path")
            for src in found:
                rel = src.relative_to(item).parent
                pairs.append((src, out / rel / f"{src.stem}_x{scale}.png"))
        elif item.is_file():
            pairs.append((item, out / f"{item.stem}_x{scale}.png"))
        else:
            raise ImageError(f"input {item} does not exist; give image files or folders of images")
    def key(path: Path) -> str:  # on macOS's and Windows' file systems A_x2.png and a_x2.png are one file
        return str(path.resolve()).casefold()

    sources = {key(src): src for src, _ in pairs}
    seen: dict[str, Path] = {}
    for src, target in pairs:
        if (clash := sources.get(key(target))) is not None:
            raise ImageError(f"{target} is an input ({clash}): writing it would overwrite that image; choose an -o "
                             "folder apart from the inputs")
        if (first := seen.setdefault(key(target), src)) is not src:
            raise ImageError(f"{first} and {src} would both be written to {target} (names that differ only in case "
                             "are one file on macOS and Windows); rename one or upscale them separately")
    return pairs


def upscale_files(
    method: SRMethod,
    inputs: Sequence[str | Path],
    out: str | Path,
    scale: int,
    tile: int = 256,
    overlap: int | None = None,
    ensemble: bool = False,
    force: bool = False,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
) -> list[Path]:
    """Upscale every input image into ``out``; returns the written paths.

    ``device`` (None: where ``method`` is) is checked (:func:`check_device`) and the method moved there. Existing
    outputs and unreadable inputs are refused before any work starts (``force`` overwrites outputs).
    """
    from rich.progress import track

    method.check_scale(scale)
    check_tiling(tile, overlap)
    if device is not None:
        method.to(check_device(device))
    pairs = collect_inputs(inputs, out, scale)
    existing = [target for _, target in pairs if target.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(
            f"output {existing[0]} already exists{more}; pass --force to overwrite or choose another -o folder"
        )
    writable_folder(out, "-o")
    for src, _ in pairs:  # decoded once in full first: a broken or too small file stops it before any output
        read_picture(src)
    method.eval()
    written = []
    for src, target in track(pairs, description=f"upscaling x{scale}", disable=not progress):
        sr = upscale_picture(method, read_picture(src), scale, tile=tile, overlap=overlap, ensemble=ensemble)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_picture(target, sr)
        written.append(target)
    return written
