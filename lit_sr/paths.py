"""Where lit_sr finds things outside the package: the data root and, in a source checkout, the repository."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lit_sr.errors import UserError

#: The source checkout holding this package (meaningful for an editable install only).
REPO = Path(__file__).resolve().parents[1]


BENCHMARKS = ("Set5", "Set14")  # reported only: never validation, nor a checkpoint's or a sweep's choice


def data_root() -> Path:
    """``$LIT_SR_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("LIT_SR_DATA")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def writable_folder(folder: str | Path, flag: str, fix: str = "choose a folder you can write") -> Path:
    """Create ``folder`` and write a probe file in it before any work: a folder that cannot be written is one
    :class:`UserError` naming ``flag`` (``--run_dir``, ``-o``, ``--out``) now, not a traceback after the work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lit_sr_write_check_"):
            pass
    except OSError as err:
        raise UserError(f"{flag} {folder}: cannot write there ({err.strerror or err}); {fix}") from None
    return folder
