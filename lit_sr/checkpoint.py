"""Loading a lit_sr checkpoint without knowing its method: the class comes from the method registry."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_sr.methods import SRMethod, registered_methods


def load_method(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> SRMethod:
    """The method stored in a checkpoint written by ``lit-sr fit``; its class must be a registered method."""
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    class_path = (ckpt.get("hyper_parameters") or {}).get("_class_path", "")
    by_path = {f"{c.__module__}.{c.__qualname__}": c for c in registered_methods().values()}
    if class_path not in by_path:
        raise ValueError(
            f"{checkpoint_path} is not a checkpoint of a registered lit_sr method (class {class_path or 'unknown'}); "
            f"registered: {', '.join(registered_methods())}"
        )
    return by_path[class_path].load_from_checkpoint(checkpoint_path, map_location=map_location)
