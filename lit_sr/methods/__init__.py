"""One file per method: its plain nn.Module network(s) and its LightningModule.

Every module of this package is imported here, so a new method file registers its variants and its
method class without any other edit.
"""

import importlib
import pkgutil

from torch import nn

from lit_sr.methods.base import SRMethod, method_class, registered_methods
from lit_sr.registry import build_registered, registered_models

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SRMethod", "create_model", "list_models", "method_class", "registered_methods"]


def list_models() -> list[str]:
    """Names of every registered network variant, sorted."""
    return registered_models()


def create_model(name: str, **overrides) -> nn.Module:
    """Return the network (``nn.Module``) of the registered variant ``name``, e.g. ``create_model("vdsr")``."""
    return build_registered(name, **overrides)
