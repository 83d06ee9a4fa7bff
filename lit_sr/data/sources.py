"""Where images come from: ``$LIT_SR_DATA`` folders, any folder path, and photos bundled with scikit-image.

A source is a set name under :func:`data_root` ("Set5", "Sun80"), a folder path, or one of these names:

- ``291``: T91 + BSD200 under the data root, the "291 images" VDSR, LapSRN, IRLapSRN and CMSC trained on;
- ``builtin`` (ten training photos shipped inside the scikit-image package, six RGB and four grayscale)
  and ``builtin_val`` (two RGB photos): no download or network, so a fresh clone trains and validates;
- ``auto``: ``291`` when the data root has it, else ``builtin`` (what the quick presets train on).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lit_sr.data.images import ImageError, list_images
from lit_sr.paths import BENCHMARKS, data_root

BUILTIN_SOURCES: dict[str, tuple[str, ...]] = {
    "builtin": (
        "astronaut.png",
        "hubble_deep_field.jpg",
        "ihc.png",
        "motorcycle_left.png",
        "retina.jpg",
        "rocket.jpg",
        "camera.png",
        "brick.png",
        "grass.png",
        "gravel.png",
    ),
    "builtin_val": ("chelsea.png", "coffee.png"),
}
#: Composite sources: a name standing for several folders under the data root.
COMPOSITE_SOURCES: dict[str, tuple[str, ...]] = {"291": ("T91", "BSD200")}


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")  # locate without importing (importing is slow)
    if spec is None or not spec.submodule_search_locations:
        raise ImageError("the built-in images need scikit-image; install it (pip install scikit-image)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def resolve_images(source: str) -> tuple[str, list[Path]]:
    """A source name or folder -> (dataset name = folder name, sorted image paths)."""
    source = str(source)
    if source == "auto":
        source = "291" if all((data_root() / f).is_dir() for f in COMPOSITE_SOURCES["291"]) else "builtin"
    if source in COMPOSITE_SOURCES:
        folders = [data_root() / f for f in COMPOSITE_SOURCES[source]]
        missing = [f for f in folders if not f.is_dir()]
        if missing:
            raise ImageError(
                f"training source {source!r} is {' + '.join(COMPOSITE_SOURCES[source])} under the data root "
                f"{data_root()}, but {', '.join(map(str, missing))} is missing: download T91 (Yang et al. 2010) "
                f"and the 200 BSDS500 train+val images as folders T91/ and BSD200/ there, or set LIT_SR_DATA"
            )
        return source, [p for f in folders for p in list_images(f)]
    if source in BUILTIN_SOURCES:
        folder = _skimage_data_dir()
        paths = [folder / name for name in BUILTIN_SOURCES[source]]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ImageError(
                f"built-in image {missing[0]} is missing from the installed scikit-image; reinstall it "
                f"(pip install --force-reinstall scikit-image)"
            )
        return source, paths
    root = data_root()
    # "./Set5", "/data/Set5", "~/x" are that folder only (root / "./Set5" would be the data root's Set5); a name
    # with a separator ("DIV2K/DIV2K_valid_HR") is looked up under the data root first
    path_like = source.startswith((".", "~")) or Path(source).is_absolute()
    candidates = [Path(source).expanduser()] if path_like else [root / source, Path(source)]
    for folder in candidates:
        if folder.is_dir():
            return folder.resolve().name, list_images(folder)
    if path_like:
        raise ImageError(f"image source {source}: no such folder; check the path")
    origin = "LIT_SR_DATA" if os.environ.get("LIT_SR_DATA") else "the default <repo>/../shared/data"
    raise ImageError(
        f"unknown image source {source!r}: not a built-in name ({', '.join(BUILTIN_SOURCES)}), "
        f"no folder {candidates[0]} (data root from {origin}) and no folder {candidates[-1].resolve()}; "
        f"set LIT_SR_DATA to the folder holding the sets, or give a folder path"
    )


def default_test_sets() -> list[str]:
    """The reported benchmarks present under the data root: Set5 and Set14 (none without data)."""
    return [name for name in BENCHMARKS if (data_root() / name).is_dir()]
