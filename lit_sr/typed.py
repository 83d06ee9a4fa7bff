"""Typed arguments: the checks jsonargparse makes from a config, also where jsonargparse does not parse.

``lit-sr fit`` builds the DataModule and the method through jsonargparse, which checks each argument against
its type hint (``Literal``, ``PositiveInt`` from ``jsonargparse.typing``, ...) and names the bad key. The same
hints must hold when a class is built directly from Python, and inside plain mappings jsonargparse passes on
untouched (``model.init_args.stages``): :func:`check_typed` checks them there. It also hands values back as
plain ``int``/``float``: jsonargparse passes ``PositiveInt`` etc. on as its own subclasses, which
``torch.load(weights_only=True)`` refuses should one reach a checkpoint (say, in a data stream's state).
:func:`positive_int` is the same check for an ``argparse`` option (``lit-sr train --nodes``).
"""

from __future__ import annotations

import argparse
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from jsonargparse import Namespace
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt

from lit_sr.errors import ConfigError

#: the hints checked, and how a message names what they accept
KINDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    PositiveInt: "a positive integer",
    NonNegativeInt: "an integer >= 0",
    PositiveFloat: "a positive number",
    NonNegativeFloat: "a number >= 0",
    OpenUnitInterval: "a number in (0, 1)",
}


class FieldError(ConfigError):
    """A value its type hint rejects; the message starts with the value's key."""


@functools.cache
def type_hints(obj: Any) -> dict[str, Any]:
    """``typing.get_type_hints`` of a class or function, cached."""
    return typing.get_type_hints(obj)


def check_typed(values: Mapping[str, Any], hints: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values`` with plain ``int``/``float`` for jsonargparse's restricted numbers; ``FieldError`` naming
    ``<prefix><key>`` for the first value its hint rejects.

    Checked: ``Literal[...]``, ``X | None``, ``bool``, ``int``, ``float``, jsonargparse's positive/non-negative
    numbers, ``OpenUnitInterval`` and ``Mapping[str, <one of these>]``; any other hint is left to the code that
    uses the value.
    """
    out = dict(values)
    for key, value in values.items():
        hint = hints.get(key)
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                continue
            hint = next(a for a in args if a is not type(None)) if len(args) == 2 else None
            args = typing.get_args(hint)
        if typing.get_origin(hint) is Literal:
            if value not in args:
                raise FieldError(f"{prefix}{key}: {value!r} is not one of {list(args)}")
        elif typing.get_origin(hint) in (Mapping, dict) and isinstance(value, Mapping):
            check_typed(value, dict.fromkeys(value, args[1]), f"{prefix}{key}.")
        elif hint in KINDS:
            if not _accepts(hint, value):
                raise FieldError(f"{prefix}{key} must be {KINDS[hint]}, got {value!r}")
            out[key] = value if hint is bool else (int if issubclass(hint, int) else float)(value)
    return out


def check_arguments(fn: Any, arguments: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """:func:`check_typed` of a constructor's ``arguments`` (its ``locals()``, the ones ``fn`` hints) against its
    hints, as a config would be: ``check_arguments(CMSCNet.__init__, locals(), "CMSCNet.")`` raises ``FieldError``
    ``CMSCNet.channels ...``; returns the checked arguments (plain ints and floats)."""
    hints = type_hints(fn)
    return check_typed({k: v for k, v in arguments.items() if k in hints}, hints, prefix)


def _accepts(hint: type, value: Any) -> bool:
    if hint is bool or isinstance(value, bool):
        return hint is bool and isinstance(value, bool)
    if not isinstance(value, int if issubclass(hint, int) else (int, float)):
        return False
    try:
        hint(value)  # jsonargparse's restriction (v>0, v>=0); plain int and float take any number
    except ValueError:
        return False
    return True


def positive_int(text: str) -> int:
    """``argparse`` ``type=`` of a positive integer option; argparse's error names the option
    (``argument --nodes: must be a positive integer, got '0'``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be {KINDS[PositiveInt]}, got {text!r}")
    return value


def class_path(cls: type) -> str:
    """The import path of ``cls``, as a config's ``class_path`` names it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def config_entry(cls: type, **init_args: Any) -> Namespace:
    """A ``class_path``/``init_args`` config entry of ``cls`` (a callback, logger or plugin the run's config.yaml
    can hold and load again, unlike an instance)."""
    return Namespace(class_path=class_path(cls), init_args=Namespace(**init_args))
