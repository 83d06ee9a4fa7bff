"""Where a method's configs live: ``experiments/<method>/<preset>.yaml`` and ``sweeps/<method>.yaml``.

One mapping for the whole package: the method name (its registry key, ``lit_sr.methods``) names its preset
folder, its sweep file, its run folder ``runs/<method>/`` and its W&B tag. The folders (and ``trainers/``)
are looked up in the current directory, then in the source checkout, then in ``lit_sr/configs/``, where a
wheel carries copies of the checkout's folders (package data, see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

from lit_sr.errors import ConfigError
from lit_sr.paths import REPO

#: the config folders a wheel installs inside the package (``[tool.setuptools.package-dir]`` in pyproject.toml)
PACKAGED = Path(__file__).resolve().parent / "configs"
CONFIG_FOLDERS = ("experiments", "sweeps", "trainers")


def config_roots() -> list[Path]:
    """Folders that may hold ``experiments/``, ``sweeps/`` and ``trainers/``, in lookup order."""
    roots = [Path.cwd(), REPO, PACKAGED]
    return list(dict.fromkeys(r.resolve() for r in roots))


def _find(relative: str) -> Path | None:
    return next((root / relative for root in config_roots() if (root / relative).is_file()), None)


def preset_names(method: str) -> list[str]:
    """The presets of ``method`` (e.g. ``["paper", "quick"]``)."""
    return sorted({p.stem for root in config_roots() for p in (root / "experiments" / method).glob("*.yaml")})


def preset_path(method: str, preset: str) -> Path:
    """``experiments/<method>/<preset>.yaml``; a ``ConfigError`` listing what exists."""
    path = _find(f"experiments/{method}/{preset}.yaml")
    if path is None:
        known = {m: preset_names(m) for root in config_roots() for m in _dirs(root / "experiments")}
        listing = "; ".join(f"{m}: {', '.join(p)}" for m, p in sorted(known.items())) or "none found"
        raise ConfigError(f"no preset experiments/{method}/{preset}.yaml (searched {_roots()}); presets: {listing}")
    return path


def sweep_path(method: str) -> Path:
    """``sweeps/<method>.yaml``; a ``ConfigError`` listing what exists."""
    path = _find(f"sweeps/{method}.yaml")
    if path is None:
        known = sorted({p.stem for root in config_roots() for p in (root / "sweeps").glob("*.yaml")})
        raise ConfigError(f"no sweep file sweeps/{method}.yaml (searched {_roots()}); sweep files: {known}")
    return path


def _dirs(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def _roots() -> str:
    return ", ".join(map(str, config_roots()))
