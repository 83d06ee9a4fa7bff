"""Named network variants, timm style: one registered function per variant.

Method files decorate one function per named variant with ``@register_model``, one line each::

    @register_model  # Released MS-LapSRN D5R8, the paper's best model (222,801 parameters; 84 layers at x4)
    def ms_lapsrn_d5r8(**kw: Any) -> MSLapSRNNet: return MSLapSRNNet(**{"depth": 5, "recursions": 8, **kw})

Keyword arguments replace the variant's defaults; a scale in the variant's name is passed outside the merge
(``LapSRNNet(scale=8, **{"depth_per_level": 5, **kw})``), so overriding it is an error rather than ignored. The
return annotation names the network class (``network_of``). ``lit_sr.methods`` imports every method file, so
``lit_sr.create_model(name, **overrides)`` sees them all.

The overrides come from ``model.init_args.net``, a plain mapping jsonargparse does not check: ``build_registered``
checks them against the typed constructor of the network class the variant returns (its return annotation),
as jsonargparse checks a typed argument (``lit_sr.typed``), and names the key ``model.init_args.net.<key>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lit_sr.typed import check_typed, type_hints

NET_PREFIX = "model.init_args.net."

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its function name."""
    if fn.__name__ in _REGISTRY and _REGISTRY[fn.__name__] is not fn:
        raise ValueError(f"model variant {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def registered_models() -> list[str]:
    return sorted(_REGISTRY)


def network_of(fn: Callable[..., nn.Module]) -> type | None:
    """The network class a variant function returns, by its return annotation (nothing is built); None when the
    annotation is missing, not a class or cannot be resolved."""
    try:
        network = type_hints(fn).get("return")
    except (NameError, TypeError):
        return None
    return network if isinstance(network, type) else None


def variants_of(network: type[nn.Module]) -> list[str]:
    """The registered variants that build a ``network``."""
    return sorted(n for n, fn in _REGISTRY.items() if network_of(fn) is network)


def network_hints(fn: Callable[..., nn.Module]) -> dict[str, Any]:
    """The constructor type hints of the network class ``fn`` returns; none when that class is unknown (its
    constructor then checks its own arguments)."""
    network = network_of(fn)
    hints = dict(type_hints(network.__init__)) if network is not None else {}
    hints.pop("return", None)
    return hints


def build_registered(name: str, **overrides) -> nn.Module:
    """Build variant ``name`` with keyword overrides replacing its defaults; an override its network's
    constructor hint rejects is a ``FieldError`` naming ``model.init_args.net.<key>``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered variants: {', '.join(sorted(_REGISTRY))}")
    fn = _REGISTRY[name]
    hints = network_hints(fn)
    overrides = check_typed(overrides, hints, NET_PREFIX)
    try:
        return fn(**overrides)
    except TypeError as err:
        unknown = bool(hints) and not set(overrides) <= set(hints)  # a key the constructor has no argument for
        takes = f" ({network_of(fn).__name__}'s arguments: {', '.join(hints)})" if unknown else ""
        raise ValueError(f"model {name!r} does not accept the arguments {sorted(overrides)}: {err}{takes}") from err
