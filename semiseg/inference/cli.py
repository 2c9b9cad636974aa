"""CLI pieces of the prediction stage, wired into ``semiseg.cli`` by the lead:

    from semiseg.inference.cli import register_cli, add_backend_options, backend_kwargs
    register_cli(sub)                     # adds `semiseg export-onnx`
    add_backend_options(p)                # in _predict_options: --backend, --onnx, --no-cpu-fast
    PredictorConfig(..., **backend_kwargs(a))
"""
from __future__ import annotations

import argparse
from typing import Any

from semiseg.argtypes import positive_int
from semiseg.inference.onnx_backend import DEFAULT_OPSET


def cmd_export_onnx(a: argparse.Namespace) -> int:
    from semiseg.inference.onnx_backend import export_onnx
    from semiseg.inference.predictor import find_models

    models = find_models(a.model)
    if a.out and len(models) > 1:
        raise ValueError(f"{a.model}: {len(models)} fold models; --out names one file (omit it to write model_final.onnx beside each)")
    for m in models:
        out = export_onnx(m, a.out, opset=a.opset, verify=not a.no_verify)
        print(f"{m} -> {out}")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export-onnx`` to the ``semiseg`` subcommands; returns its parser."""
    p = subparsers.add_parser("export-onnx", help="export trained model(s) to ONNX (dynamic batch, patch-size input)")
    p.add_argument("model", help="model_final.pt, its folder, or a folder of fold_* (one .onnx beside each)")
    p.add_argument("--out", default=None, help="output .onnx (single model only; default: model_final.onnx beside the model)")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET)
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check after export")
    p.set_defaults(func=cmd_export_onnx)
    return p


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """`semiseg predict` options for the backend and the CPU fast path."""
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="onnx: ONNX Runtime (exports model_final.onnx beside the model when missing; fp32)")
    p.add_argument("--onnx", default=None, help="ONNX file to use with --backend onnx (single model)")
    p.add_argument("--no-cpu-fast", action="store_true", help="CPU: keep instance norm / contiguous layout as trained")


def backend_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """PredictorConfig fields from the options of :func:`add_backend_options`."""
    return {"backend": getattr(a, "backend", "torch"), "onnx_path": getattr(a, "onnx", None),
            "cpu_fast": not getattr(a, "no_cpu_fast", False)}
