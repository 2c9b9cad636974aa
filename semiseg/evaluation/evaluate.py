"""Score a folder of predicted label maps against a folder of references.

Cases are matched by file name (``<case><file_ending>``, file_ending from dataset.json). Every
reference needs a prediction; a pred/ref pair must share shape, spacing, origin and direction, since a
silently resampled or flipped prediction would give meaningless numbers. Spacing comes from the
reference and is turned from SimpleITK's (x, y, z) into array order (z, y, x).

Writes ``out_file`` (JSON: per case, per class metrics, mean per class, mean over foreground classes;
NaN written as null) and ``<stem>.csv`` beside it (one row per case x class), both atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from semiseg.data.io import atomic_write_text, make_folder, read_array
from semiseg.evaluation.metrics import (
    DEFAULT_NSD_ZERO_BELOW_DSC,
    DEFAULT_TOLERANCE_MM,
    METRIC_NAMES,
    SLICE_RESTRICTED_CLASSES,
    evaluate_case,
    foreground_labels,
    summarize,
    tolerance_for,
)


def read_dataset_json(path: str | Path) -> tuple[dict[str, int], str]:
    """(labels, file_ending) from an nnU-Net style dataset.json."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read dataset.json: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict):
        raise ValueError(f"{path}: needs a 'labels' object mapping class name -> integer value")
    try:
        foreground_labels(raw["labels"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return dict(raw["labels"]), str(raw.get("file_ending", ".nii.gz"))


def _read_label_map(path: Path, labels: Mapping[str, int], what: str) -> tuple[np.ndarray, Any]:
    """A label map whose values are all declared: an undeclared one would be scored as if its class were absent."""
    arr, geometry = read_array(path)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{path}: a label map must hold integer values, found fractional ones")
        arr = arr.astype(np.int64)
    declared = {0, *(int(v) for v in labels.values())}
    undeclared = sorted(set(np.unique(arr).tolist()) - declared)
    if undeclared:
        shown = undeclared[:10] + (["..."] if len(undeclared) > 10 else [])
        raise ValueError(f"{path}: the {what} holds label values {shown} that dataset.json does not declare "
                         f"(declared: {sorted(declared)})")
    return arr, geometry


def _evaluate_pair(job: tuple[str, Path, Path, dict[str, int], dict[str, Any]]) -> tuple[str, dict[str, dict[str, float]]]:
    """Worker: read one pred/ref pair, check they share a grid and hold only declared labels, score it."""
    case, pred_path, ref_path, labels, options = job
    ref, ref_geometry = _read_label_map(ref_path, labels, "reference")
    pred, pred_geometry = _read_label_map(pred_path, labels, "prediction")
    mismatch = ref_geometry.matches(pred_geometry)
    if mismatch is not None:
        raise ValueError(f"{pred_path}: prediction grid differs from reference {ref_path}: {mismatch} (ref vs pred)")
    return case, evaluate_case(pred, ref, ref_geometry.spacing_zyx, labels, **options)


def _cases(folder: Path, ending: str) -> dict[str, Path]:
    return {p.name[: -len(ending)]: p for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith(ending)}


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    dataset_json: str | Path,
    out_file: str | Path,
    tolerances: Mapping[str, float] | None = None,
    num_workers: int = 1,
    *,
    default_tolerance: float = DEFAULT_TOLERANCE_MM,
    nsd_zero_below_dsc: float | None = DEFAULT_NSD_ZERO_BELOW_DSC,
    slice_restricted: Iterable[str] = SLICE_RESTRICTED_CLASSES,
    exclusive_upper_slice: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every reference case, write JSON + CSV, and return the result (NaN kept as float NaN)."""
    pred_dir, ref_dir, out_file = Path(pred_dir), Path(ref_dir), Path(out_file)
    labels, ending = read_dataset_json(dataset_json)
    make_folder(out_file.parent, f"folder for {out_file}")  # before scoring: a path under a file fails now, by name
    if out_file.is_dir():
        raise ValueError(f"{out_file}: is a folder; --out names the metrics JSON file")
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: {what} folder not found")
    refs, preds = _cases(ref_dir, ending), _cases(pred_dir, ending)
    if not refs:
        raise ValueError(f"{ref_dir}: no reference files ending in '{ending}'")
    missing = [c for c in refs if c not in preds]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{pred_dir}: missing prediction for case(s) {shown} (expected {missing[0]}{ending})")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")

    options = {
        "tolerances": dict(tolerances or {}),
        "default_tolerance": default_tolerance,
        "nsd_zero_below_dsc": nsd_zero_below_dsc,
        "slice_restricted": sorted(slice_restricted),
        "exclusive_upper_slice": exclusive_upper_slice,
    }
    jobs = [(case, preds[case], refs[case], labels, options) for case in refs]
    bar = dict(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    if num_workers == 1:
        results = [_evaluate_pair(j) for j in tqdm(jobs, **bar)]
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=ctx) as pool:
            results = list(tqdm(pool.map(_evaluate_pair, jobs), **bar))

    per_case = dict(results)
    mean, foreground = summarize(per_case)
    result: dict[str, Any] = {
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "metrics": list(METRIC_NAMES),
        "tolerances_mm": {n: tolerance_for(n, tolerances, default_tolerance) for n in foreground_labels(labels)},
        "settings": {k: v for k, v in options.items() if k != "tolerances"},
        "cases": per_case,
        "mean": mean,
        "foreground_mean": foreground,
    }
    atomic_write_text(out_file, json.dumps(_nan_to_none(result), indent=2))
    atomic_write_text(out_file.with_suffix(".csv"), _to_csv(per_case))
    return result


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _to_csv(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "class", *METRIC_NAMES])
    for case, classes in per_case.items():
        for cls, metrics in classes.items():
            writer.writerow([case, cls, *(repr(float(metrics[m])) for m in METRIC_NAMES)])
    return buf.getvalue()


def format_summary(result: Mapping[str, Any]) -> str:
    """A plain-text table: class x mean DSC / NSD / HD95, with the foreground mean last."""
    rows = [(cls, m) for cls, m in result["mean"].items()] + [("mean (foreground)", result["foreground_mean"])]
    width = max(len(name) for name, _ in rows)

    def fmt(v: Any, digits: int) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    lines = [f"{'class':<{width}}  {'DSC':>7}  {'NSD':>7}  {'HD95':>8}"]
    lines += [f"{name:<{width}}  {fmt(m.get('DSC'), 4):>7}  {fmt(m.get('NSD'), 4):>7}  {fmt(m.get('HD95'), 2):>8}" for name, m in rows]
    return "\n".join(lines)
