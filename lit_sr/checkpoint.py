"""Safe checkpoint loading: ``torch.load(weights_only=True)`` and a class chosen among lit_sr's own methods.

A checkpoint is data, never code: unpickling is restricted to tensors, containers and the few types lit_sr and
Lightning store (``SAFE_TYPES``), so a file whose pickle would run code fails before anything runs. The class a
checkpoint names (LightningCLI's ``hyper_parameters._class_path``) only selects one
of the registered lit_sr methods; an import path that is not one of them is refused, never imported.

Every failure is a ``CheckpointError`` (a ``UserError``): one line naming the file and what to pass instead.
"""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lit_sr.errors import CheckpointError
from lit_sr.typed import class_path as class_path_of

if TYPE_CHECKING:
    from lit_sr.methods.base import SRMethod

HPARAMS_KEY = "hyper_parameters"
_registered_safe = False


def _safe_types() -> list[type]:
    """Non-builtin types lit_sr checkpoints may hold: Lightning's hyperparameter dict. Everything else lit_sr
    stores (hparams, stages, callback / loop / data-stream states) is plain dicts, lists, numbers and tensors."""
    from lightning.fabric.utilities.data import AttributeDict

    return [AttributeDict]


def register_safe_types() -> None:
    """Allow ``torch.load(weights_only=True)`` to rebuild the few non-builtin types lit_sr checkpoints hold."""
    global _registered_safe
    if not _registered_safe:
        torch.serialization.add_safe_globals(_safe_types())
        _registered_safe = True


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of ``path``, unpickled with ``weights_only=True``; a clear error for anything else."""
    path = Path(path)
    hint = "pass a .ckpt file written by `lit-sr fit` / `lit-sr train` (runs/<method>/<run>/checkpoints/)"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {hint}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch's zip format, or a legacy pickle
        raise CheckpointError(f"{path} is not a checkpoint (not a torch file); {hint}")
    register_safe_types()
    try:
        # zip checkpoints memory-mapped: tensors are read when used, so reading one twice (its class, then its
        # weights; a benchmark's data roles) costs no second copy
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=magic.startswith(b"PK"))
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} refers to code that a checkpoint may not run ({_global_name(err)}): it was not loaded; "
                f"{hint}"
            ) from err
        raise CheckpointError(f"{path} is not a checkpoint or is corrupt ({first}); {hint}") from err
    except Exception as err:  # noqa: BLE001 - torch.load of a non-checkpoint fails in many ways (KeyError, EOF, ...)
        first = type(err).__name__ + (f": {str(err).strip().splitlines()[0]}" if str(err).strip() else "")
        raise CheckpointError(f"{path} is not a checkpoint or is corrupt ({first}); {hint}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is a torch file but not a Lightning checkpoint (no 'state_dict'); {hint}")
    return ckpt


def _global_name(err: Exception) -> str:
    """The blocked global of torch's weights-only unpickler message (``posix.system``, ``getattr``, ...)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else "an unsupported global"


def registered_method_classes() -> dict[str, type[SRMethod]]:
    """``module.QualName`` -> class of every registered lit_sr method (the only classes a checkpoint may name)."""
    from lit_sr.methods import registered_methods

    return {class_path_of(c): c for c in registered_methods().values()}


def method_class_of(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> type[SRMethod]:
    """The registered lit_sr method class a checkpoint names (LightningCLI's ``_class_path``); refuses any other."""
    name = (ckpt.get(HPARAMS_KEY) or {}).get("_class_path")
    if not name:
        raise CheckpointError(
            f"{path} is a Lightning checkpoint but not a lit_sr one (no hyper_parameters._class_path); "
            "pass a checkpoint written by `lit-sr fit`"
        )
    known = registered_method_classes()
    if name not in known:
        raise CheckpointError(
            f"{path} names the class {name!r}, which is not a registered lit_sr method (known: "
            f"{', '.join(sorted(known))}); it was not imported. Pass a checkpoint written by `lit-sr fit`"
        )
    return known[name]


def load_method(
    checkpoint_path: str | Path, map_location: str | torch.device = "cpu", expected: type | None = None
) -> SRMethod:
    """Build the lit_sr method stored in a checkpoint, with its weights, without knowing its class.

    ``expected`` (a method class) refuses a checkpoint of another method with a clear error.
    """
    ckpt = read_checkpoint(checkpoint_path)
    cls = method_class_of(ckpt, checkpoint_path)
    if expected is not None and not issubclass(cls, expected):
        raise CheckpointError(
            f"{checkpoint_path} is a checkpoint of {cls.__name__}, not of {expected.__name__}; "
            f"pass a {expected.__name__} checkpoint"
        )
    hparams = {k: v for k, v in dict(ckpt.get(HPARAMS_KEY) or {}).items() if not str(k).startswith("_")}
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        hparams = {k: v for k, v in hparams.items() if k in params}
    try:
        method = cls(**hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{checkpoint_path}: its hyperparameters do not build {cls.__name__} with this lit_sr version ({err})"
        ) from err
    method.on_load_checkpoint(ckpt)
    try:
        method.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{checkpoint_path}: its weights do not fit {cls.__name__} built from its own hyperparameters ({first})"
        ) from err
    return method.to(map_location)


def check_ckpt_path(ckpt_path: str | None, class_path: str | None) -> None:
    """Validate ``--ckpt_path`` of ``lit-sr fit/validate/test`` against the config's ``model.class_path``.

    ``last`` / ``best`` / ``hpc`` are Lightning's own names (resolved to this run's files later).
    """
    if not ckpt_path or str(ckpt_path) in ("last", "best", "hpc"):
        return
    ckpt = read_checkpoint(ckpt_path)
    cls = method_class_of(ckpt, ckpt_path)
    name = class_path_of(cls)
    if class_path and class_path != name:
        wanted = registered_method_classes().get(class_path)
        if wanted is None or not (issubclass(cls, wanted) or issubclass(wanted, cls)):
            short = class_path.rsplit(".", 1)[-1]
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} is a checkpoint of {cls.__name__} ({name}), but the config trains "
                f"{short} (model.class_path {class_path}); pass a {short} checkpoint, or the config of "
                f"{cls.__name__} (experiments/{cls.name}/...)"
            )
