"""Torch-free pieces both predictors share (semiseg.inference with torch, semiseg.deploy without):
finding the model files of a training folder or an ensemble, opening an ONNX Runtime session, and the
resumable loop over the cases of an input folder (or one shard of them), kept apart from any other prediction's
outputs by the folder's record (semiseg.data.outputs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from semiseg.data.cases import discover_cases, shard_of
from semiseg.data.outputs import PredictionFolder


def find_model_files(path: str | Path, name: str, hint: str = "") -> list[Path]:
    """A model file, a folder with ``name`` in it, or a folder of fold_*/``name`` (an ensemble)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / name).is_file():
        return [p / name]
    found = sorted(p.glob(f"fold_*/{name}"))
    if not found:
        raise FileNotFoundError(f"{p}: no {name} here nor in fold_*/ subfolders{hint}")
    return found


# what models of one ensemble must share: they see the same preprocessed volume and their scores are averaged
ENSEMBLE_FIELDS = ("target_spacing", "normalization", "labels", "num_input_channels")


def plan_mismatch(a: Any, b: Any, fields: Sequence[str] = ENSEMBLE_FIELDS) -> list[str]:
    """The plan fields (of ``fields``) in which two models' plans differ; empty when they can form an ensemble."""
    return [f for f in fields if getattr(a, f) != getattr(b, f)]


def onnx_session(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> Any:
    """An ONNX Runtime session on CUDA when available, else the CPU; ``threads`` intra-op threads, one
    inter-op thread. A file ONNX Runtime cannot load is a ValueError naming it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("ONNX prediction needs onnxruntime: pip install 'semiseg[onnx]' (onnx, onnxruntime)") from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    avail = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in avail]
    try:
        return ort.InferenceSession(str(path), so, providers=chosen or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for corrupt files
        raise ValueError(f"{path}: cannot load ONNX model: {e}") from None


def predict_folder(predict_files: Callable[[Sequence[Path], Path], Path], input_path: str | Path,
                   output_dir: str | Path, channels: int, stamp: dict[str, Any], overwrite: bool = False,
                   progress: bool = True, shard: tuple[int, int] | None = None) -> list[Path]:
    """``predict_files(channel_paths, target)`` for a file or every case of a folder, each written under its
    input's name. Outputs of this same prediction (``stamp``: semiseg.data.outputs.prediction_stamp) are kept
    (resumable); label maps of any other one in the folder are refused, or replaced with ``overwrite``.
    ``shard`` (i, n): only shard i of n of the sorted cases (semiseg.data.cases.shard_of), so n jobs started by
    any scheduler into one output folder predict every case exactly once (each keeps its own record)."""
    cases = discover_cases(input_path, channels)
    if shard is not None:
        cases = {c: cases[c] for c in shard_of(list(cases), *shard)}
    out = Path(output_dir)
    folder = PredictionFolder(out, stamp, overwrite, part=f"shard-{shard[0]}-of-{shard[1]}" if shard is not None else "")
    done = folder.begin(cases)  # refuses label maps of another prediction (model, options, input) unless overwrite
    written = []
    for case, (paths, ending) in tqdm(cases.items(), desc="predict", unit="case", disable=not progress):
        target = out / f"{case}{ending}"
        if case not in done:
            predict_files(paths, target)
            folder.record(case, target, paths)
        written.append(target)
    return written
