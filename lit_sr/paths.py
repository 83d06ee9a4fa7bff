"""Where lit_sr finds things outside the package: the data root and, in a source checkout, the repository."""

from __future__ import annotations

import os
from pathlib import Path

#: The source checkout holding this package (meaningful for an editable install only).
REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$LIT_SR_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("LIT_SR_DATA")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"
