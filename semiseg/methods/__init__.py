"""Training methods: one small class per algorithm, registered by name."""
from __future__ import annotations

import importlib

from semiseg.methods.base import METHODS, Method, StepContext, register

_MODULES = ["semiseg.methods.supervised", "semiseg.methods.mean_teacher", "semiseg.methods.cps", "semiseg.methods.mpl"]


def get_method(name: str) -> type[Method]:
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["METHODS", "Method", "StepContext", "register", "get_method"]
