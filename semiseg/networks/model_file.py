"""The model and checkpoint files: one owner for their format, and safe to open.

``model_final.pt`` holds plain types only: the kept network's weights (tensors), the plan, the network
config, the method name and the training config (JSON-like dicts). Checkpoints add optimiser and scaler
states and the loss history, also tensors and plain types. So every file is read with
``torch.load(weights_only=True)``, which refuses pickled objects instead of running their code: opening a
model someone shared cannot execute anything. A file that needs more is refused with its name.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semiseg.config import NetworkConfig, Plan

MODEL_KEYS = ("weights", "plan", "network")  # what every model file holds (and "method", "train_config")


class ModelFileError(ValueError):
    """A model or checkpoint file that cannot be read safely, or that lacks what a model file holds."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write under a temporary name unique to this process, then rename: never a half-written file, and two
    processes writing in one folder never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A model or checkpoint file's content, loaded without unpickling arbitrary objects."""
    p = Path(path)
    try:
        obj = torch.load(p, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        why = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if why or "Unsupported operand" not in str(e):
            raise ModelFileError(f"{p}: refused: the file holds pickled objects beyond weights and plain types"
                                 f"{f' ({why.group(1)})' if why else ''}, which could run code when opened; re-save it with "
                                 "semiseg, or load it yourself if you trust where it came from") from None
        raise ModelFileError(f"{p}: cannot read the model or checkpoint file: not a torch file, or corrupt") from None
    except (OSError, RuntimeError, EOFError) as e:
        raise ModelFileError(f"{p}: cannot read the model or checkpoint file: {e}") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{p}: not a semiseg model or checkpoint file (holds a {type(obj).__name__})")
    return obj


def read_model(path: str | Path) -> dict[str, Any]:
    """A model file's content (``weights``, ``plan``, ``network``, ``method``, ``train_config``)."""
    state = read_file(path)
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise ModelFileError(f"{path}: not a semiseg model file (missing {', '.join(missing)})")
    return state


def read_plan(path: str | Path) -> dict[str, Any]:
    """The plan a model was trained with, in its JSON form."""
    return read_model(path)["plan"]


def save_model(path: str | Path, net: nn.Module, plan: Plan, network: NetworkConfig, method: str, train_config: dict[str, Any]) -> None:
    atomic_torch_save({"weights": net.state_dict(), "plan": dataclasses.asdict(plan), "network": dataclasses.asdict(network),
                       "method": method, "train_config": train_config}, path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Plan]:
    """A trained network (eval mode) and its plan, from model_final.pt."""
    from semiseg.networks import build_network

    state = read_model(path)
    plan = Plan.from_dict(state["plan"])
    net_cfg = NetworkConfig(**state["network"])
    net = build_network(dataclasses.replace(net_cfg, deep_supervision=False), plan.num_input_channels, plan.num_classes)
    missing = net.load_state_dict(state["weights"], strict=False)
    bad = [k for k in missing.missing_keys]
    if bad:
        raise ModelFileError(f"{path}: weights do not fit the network ({len(bad)} missing keys, e.g. {bad[:3]})")
    return net.to(device).eval(), plan
