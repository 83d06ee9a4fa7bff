"""One file per method: its plain nn.Module network(s) and its LightningModule."""

from torch import nn

from lit_sr.methods import cmsc, irlapsrn, lapsrn, vdsr  # noqa: F401  (registers the variants)
from lit_sr.registry import build_registered, registered_models


def list_models() -> list[str]:
    """Names of every registered network variant, sorted."""
    return registered_models()


def create_model(name: str, **overrides) -> nn.Module:
    """Return the network (``nn.Module``) of the registered variant ``name``, e.g. ``create_model("vdsr")``."""
    return build_registered(name, **overrides)
