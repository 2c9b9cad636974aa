"""A method's parameters as a dataclass: names, types and defaults declared once, checked wherever a method is
built (``semiseg train --set method_params.X=...``, a benchmark file, the Python API), so a typo or a value of
the wrong type is refused by name instead of silently falling back to the default.

Types understood: bool, int, float (an int is a float), str, Literal[...] (a choice), list[...] / tuple,
dict, unions of these and Any. Range checks a type cannot say go in the dataclass's ``__post_init__``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A method without parameters."""


def parse_params(cls: type[T], given: Mapping[str, Any], method: str) -> T:
    """``given`` (a method_params mapping, as written by a user) as the dataclass ``cls``; ValueError naming the
    method, the offending key and the valid ones for unknown names, and the expected type for a wrong value."""
    if not isinstance(given, Mapping):
        raise ValueError(f"method '{method}': method_params must be a mapping, got {type(given).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(given) - set(names))
    if unknown:
        valid = ", ".join(names) if names else "none: it takes no params"
        raise ValueError(f"method '{method}': unknown params {unknown} (valid: {valid})")
    hints = typing.get_type_hints(cls)
    for k, v in given.items():
        if not fits(v, hints[k]):
            if typing.get_origin(hints[k]) is Literal:
                raise ValueError(f"method '{method}': {k} must be one of {', '.join(map(repr, typing.get_args(hints[k])))}, "
                                 f"got {v!r}")
            raise ValueError(f"method '{method}': {k} must be {describe(hints[k])}, got {v!r}")
    return cls(**given)


def fits(value: Any, tp: Any) -> bool:
    """Whether a JSON/YAML value has the declared type (bool is not a number here; an int is a float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(fits(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def require_fractions(params: Any, method: str, *names: str) -> None:
    """ValueError naming the method and field unless each named field lies in [0, 1] (weights, thresholds and
    schedule points given as fractions): the range check several methods' ``__post_init__`` share."""
    for name in names:
        value = getattr(params, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{method}: {name} must lie in [0, 1], got {value}")
