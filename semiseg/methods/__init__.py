"""Training methods: one small class per algorithm, registered by name."""
from __future__ import annotations

from typing import Any

from torch import nn

from semiseg.config import Plan, TrainConfig
from semiseg.methods.base import METHODS, Method, StepContext, register
# each module registers its methods: adding a method is its file plus its name here
from semiseg.methods import admt, bcp, cps, mean_teacher, mpl, supervised, unimatch  # noqa: E402,F401,I001


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def build_method(plan: Plan, cfg: TrainConfig) -> Method:
    """The configured method with its networks built from the plan (on the CPU; the caller moves it)."""
    from semiseg.networks import build_network

    cls = get_method(cfg.method)

    def make_net(**overrides: Any) -> nn.Module:
        return build_network(plan.network, plan.num_input_channels, plan.num_classes, **overrides)

    return cls(make_net, plan.num_classes, cfg.method_params, cfg)


__all__ = ["METHODS", "Method", "StepContext", "register", "get_method", "build_method"]
