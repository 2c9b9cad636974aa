"""ONNX export of a trained model and an ONNX Runtime backend for the sliding-window predictor.

The exported graph takes one batch of windows (B, C, *patch) with a dynamic batch axis and returns the
full-resolution logits (B, K, *patch), so the predictor streams windows exactly as with torch.
``onnx``/``onnxruntime`` are optional (``pip install semiseg[onnx]``); importing this module does not
need them, only exporting or running does.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from semiseg.runtime import onnx_session

DEFAULT_OPSET = 17


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ImportError(f"the ONNX backend needs '{module}': pip install 'semiseg[onnx]' (onnx, onnxruntime)") from None


def onnx_path_for(model_path: str | Path) -> Path:
    """Where the ONNX twin of ``model_final.pt`` lives by default: next to it, ``model_final.onnx``."""
    return Path(model_path).with_suffix(".onnx")


def plan_path_for(onnx_file: str | Path) -> Path:
    """Where export writes the model's plan: ``model_final.onnx`` -> ``model_final.plan.json``."""
    return Path(onnx_file).with_suffix(".plan.json")


def export_onnx(model_path: str | Path, out_path: str | Path | None = None, opset: int = DEFAULT_OPSET,
                verify: bool = True) -> Path:
    """Export a trained model (model_final.pt) to ONNX, input ``image`` (B, C, *patch) -> ``logits``, and
    its plan to ``<name>.plan.json`` beside it (for torch-free deployment, ``python -m semiseg.deploy``).

    Uses the TorchScript exporter (the dynamo exporter needs onnxscript, which we do not require).
    With ``verify`` the file is run once in ONNX Runtime on random windows and compared with torch, so a
    broken export fails here rather than as silently wrong labels later."""
    _require("onnx")
    from semiseg.networks.model_file import load_model

    net, plan = load_model(model_path, "cpu")
    out = Path(out_path) if out_path is not None else onnx_path_for(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, plan.num_input_channels, *plan.patch_size, generator=torch.Generator().manual_seed(0))
    tmp = out.with_name(f".{out.name}.tmp")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # deprecation of the TorchScript exporter; instance-norm training-mode note
        torch.onnx.export(
            net, (x,), str(tmp), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    os.replace(tmp, out)
    # the plan as JSON beside the graph: the torch-free deploy path (semiseg.deploy) reads only these two files
    plan.save(plan_path_for(out))
    if verify:
        _require("onnxruntime")
        got = OnnxNetwork(out, threads=1)(x)
        with torch.inference_mode():
            ref = net(x)
        err = float((got - ref).abs().max())
        scale = float(ref.abs().max()) + 1e-6
        if err > 1e-3 * max(1.0, scale):
            raise RuntimeError(f"{out}: ONNX Runtime output differs from torch by {err:.3g} (max |logit| {scale:.3g})")
    return out


def ensure_onnx(model_path: str | Path, onnx_path: str | Path | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX file for a model, exported next to it when missing or older than the model; an export made
    before plans were written beside it gets its ``.plan.json`` now."""
    target = Path(onnx_path) if onnx_path is not None else onnx_path_for(model_path)
    if target.is_file() and (onnx_path is not None or target.stat().st_mtime >= Path(model_path).stat().st_mtime):
        if onnx_path is None and not plan_path_for(target).is_file():
            from semiseg.data.io import atomic_write_json
            from semiseg.networks.model_file import read_plan

            atomic_write_json(plan_path_for(target), read_plan(model_path))
        return target
    if onnx_path is not None:
        raise FileNotFoundError(f"{target}: ONNX file not found")
    return export_onnx(model_path, target, opset)


class OnnxNetwork:
    """A callable with the torch network's contract (float32 batch in, logits out) backed by ONNX Runtime."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        _require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        self.session = onnx_session(self.path, threads, providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0]).to(x.device)

    def eval(self) -> "OnnxNetwork":  # so code written for nn.Module can call it
        return self
