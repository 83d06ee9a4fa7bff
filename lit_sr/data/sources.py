"""Where images come from: ``$LIT_SR_DATA`` folders, any folder path, and photos bundled with scikit-image.

A source is a set name under :func:`data_root` ("Set5", "Sun80"), a folder path, or one of the
built-in names: ``builtin`` (ten training photos shipped inside the scikit-image package, seven RGB
and four grayscale) and ``builtin_val`` (two RGB photos). The built-ins need no download or network,
so a fresh clone can train and validate without any data set.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lit_sr.data.images import ImageError, list_images

REPO = Path(__file__).resolve().parents[2]

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


def data_root() -> Path:
    """``$LIT_SR_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("LIT_SR_DATA")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")  # locate without importing (importing is slow)
    if spec is None or not spec.submodule_search_locations:
        raise ImageError("the built-in images need scikit-image; install it (pip install scikit-image)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def resolve_images(source: str) -> tuple[str, list[Path]]:
    """A source name or folder -> (dataset name = folder name, sorted image paths)."""
    source = str(source)
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
    candidates = [root / source, Path(source).expanduser()]
    for folder in candidates:
        if folder.is_dir():
            return folder.resolve().name, list_images(folder)
    origin = "LIT_SR_DATA" if os.environ.get("LIT_SR_DATA") else "the default <repo>/../shared/data"
    raise ImageError(
        f"unknown image source {source!r}: not a built-in name ({', '.join(BUILTIN_SOURCES)}), "
        f"no folder {candidates[0]} (data root from {origin}) and no folder {candidates[1].resolve()}; "
        f"set LIT_SR_DATA to the folder holding the sets, or give a folder path"
    )


def default_val_sets() -> list[str]:
    """``["Set5"]`` when ``data_root()/Set5`` exists, else ``["builtin_val"]``."""
    return ["Set5"] if (data_root() / "Set5").is_dir() else ["builtin_val"]
