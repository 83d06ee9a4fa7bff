"""Exceptions for mistakes a user can fix, and for controlled stops of a run.

``lit-sr`` prints a ``UserError`` as one line ``lit-sr: error: <message>`` and exits with status 2 (no traceback
unless ``--debug``), so every message must name the file / key / value at fault and say what to do instead.
This module imports nothing of lit_sr: every layer may raise these.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A mistake the user can fix (bad file, config value, folder, URL); the message says how."""


class CheckpointError(UserError, ValueError):
    """A file that is not a usable lit_sr checkpoint (corrupt, unsafe, unknown class, another method)."""


class ConfigError(UserError, ValueError):
    """A bad config or command-line value; the message names its key path."""


class DivergedError(UserError, FloatingPointError):
    """The training loss became NaN/inf; the message gives step, stage and lr (a sweep prunes the trial).

    Every DDP rank raises it together; ``quiet`` ones (ranks > 0) exit with status 2 but leave the message to
    rank 0, which names the ranks that diverged (one line, not one per rank).
    """

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


class RunInterrupted(Exception):
    """Training stopped on a signal (SIGTERM, SIGUSR1 under SLURM) after saving a checkpoint; exit status 0."""

    def __init__(self, message: str, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


DEBUG_VAR = "LIT_SR_DEBUG"  # "1": show tracebacks (set by ``lit-sr --debug``, inherited by DDP ranks)
_PACKAGE = Path(__file__).resolve().parent


def _raised_in_lit_sr(err: BaseException) -> bool:
    """The ``raise`` is lit_sr's own validation code (its innermost frame is in this package)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def user_error_message(err: BaseException, argv: Sequence[str] = ()) -> str | None:
    """The one-line message for an exception caused by the user, or None for a bug (shown with its traceback).

    Follows ``raise ... from`` causes: jsonargparse re-raises a failed ``__init__`` as its own ValueError.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        message = _direct_message(err, argv)
        if message is not None:
            return message
        err = err.__cause__
    return None


#: lines of a jsonargparse error that say nothing of the mistake (the Union of a class and None, the value echoed)
_PARSER_NOISE = re.compile(r"\s*(Does not validate against any of the Union subtypes|Subtypes: |Errors:|"
                           r"- Expected a <class 'NoneType'>|Given value type: |Given value: )")


def _parse_error(err: argparse.ArgumentError, argv: Sequence[str]) -> str:
    """A jsonargparse error (``Parser key "data.batch_size": Not of type ...``) without the usage and the noise."""
    lines = [line.strip(" -") for line in str(err).splitlines() if not _PARSER_NOISE.match(line)]
    command = argv[0] if argv and argv[0] in ("validate", "test") else "fit"  # lit-sr train takes fit's keys
    number = re.search(r"Expected a <class 'str'>\. Got value: (\d+)", str(err))
    quote = f"; quote a name that looks like a number, e.g. '[\"{number[1]}\"]'" if number else ""
    return f"{' '.join(line for line in lines if line)}{quote} (lit-sr {command} --help lists the keys)"


def _direct_message(err: BaseException, argv: Sequence[str]) -> str | None:
    if isinstance(err, UserError):
        return _one_line(err)
    if isinstance(err, argparse.ArgumentError):  # jsonargparse's (exit_on_error=False); argparse's own exit
        return _parse_error(err, argv)
    if isinstance(err, RuntimeError) and str(err).startswith("Error(s) in loading state_dict"):
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        return _one_line(f"the checkpoint's weights do not fit the network this config builds ({details[0][:300]}"
                         f"{' ...' if len(details) > 1 else ''}); resume or test with the config the run was trained "
                         "with (its run folder's config.yaml)")
    if isinstance(err, SystemExit) and isinstance(err.code, str):
        return _one_line(err.code)
    if isinstance(err, (ValueError, KeyError, FileNotFoundError)) and _raised_in_lit_sr(err):
        return _one_line(err.args[0] if isinstance(err, KeyError) and err.args else err)
    if isinstance(err, OSError) and err.filename:
        return _one_line(
            f"{err.filename}: {err.strerror or err}; check the path, or choose a folder you can write "
            "(--run_dir, --out)"
        )
    module = type(err).__module__ or ""
    if type(err).__name__ == "MisconfigurationException" and module.startswith("lightning"):
        return _one_line(f"{err} (Lightning refuses this setting: check the trainer keys and flags you gave)")
    if module.startswith("sqlalchemy") and type(err).__name__ in ("OperationalError", "ArgumentError"):
        url = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--storage"), "the storage URL")
        first = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        return _one_line(
            f"cannot use the Optuna storage {url} ({first}); check the URL (postgresql+psycopg2://user@host:port/db), "
            "that the database server runs and accepts connections from this machine"
        )
    return None


def take_debug_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug``; if it was there, set :data:`DEBUG_VAR` (DDP ranks and trials inherit it)."""
    rest = [a for a in argv if a != "--debug"]
    if len(rest) < len(argv):
        os.environ[DEBUG_VAR] = "1"
    return rest


def run_reporting_errors(
    fn: Callable[..., int], *args: Any, argv: Sequence[str] = (), debug: bool = False, prog: str = "lit-sr"
) -> int:
    """``fn(*args)``; a user mistake prints ``<prog>: error: <one line>`` and returns 2 (re-raised if ``debug``)."""
    try:
        return fn(*args)
    except RunInterrupted as stop:
        print(f"{prog}: {_one_line(stop)}", file=sys.stderr, flush=True)
        return 0
    except (Exception, SystemExit) as err:  # noqa: BLE001 - classified below, everything else re-raised
        message = None if debug else user_error_message(err, argv)
        if message is None:
            raise
        if not getattr(err, "quiet", False):
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 2
