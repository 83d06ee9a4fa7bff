"""Named network variants, timm style: one registered function per variant.

Method files decorate one function per named variant with ``@register_model``; ``lit_sr.methods``
imports every method file, so ``lit_sr.create_model(name, **overrides)`` sees them all.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its function name."""
    if fn.__name__ in _REGISTRY and _REGISTRY[fn.__name__] is not fn:
        raise ValueError(f"model variant {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def registered_models() -> list[str]:
    return sorted(_REGISTRY)


def variants_of(network: type[nn.Module]) -> list[str]:
    """The registered variants that build a ``network``, found by their return annotation (none is built)."""
    return sorted(n for n, fn in _REGISTRY.items() if fn.__annotations__.get("return") in (network, network.__name__))


def build_registered(name: str, **overrides) -> nn.Module:
    """Build variant ``name`` with keyword overrides replacing its defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered variants: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name](**overrides)
    except TypeError as err:
        raise ValueError(f"model {name!r} does not accept the arguments {sorted(overrides)}: {err}") from err
