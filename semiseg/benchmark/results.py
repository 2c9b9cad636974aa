"""Benchmark results: provenance of every number, aggregation over seeds, gap closure.

A results file (``benchmarks/results/<name>.json``) holds the configuration, every run ("piece": one
entry x one seed, with its per-case per-class metrics, command, commit, machine, budget, wall time and
peak RAM) and, per entry, the spread over seeds and the gap closure

    gap closure = (method - lower) / (upper - lower)        on mean foreground Dice over the test cases

computed per seed where all three have that seed, and of the means over each entry's seeds.
Spreads are sample standard deviations (ddof = 1); with one seed there is no spread (null).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from semiseg.benchmark.config import LOWER, UPPER, BenchmarkConfig, repo_root

SCHEMA = 1
METRICS = ("DSC", "IoU", "NSD", "HD95", "ASD")
MIN_GAP = 0.03  # BENCHMARK.md: below this supervised gap, gap closure is seed noise


# -- provenance ------------------------------------------------------------------------------------
def git_commit(root: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout (``-dirty`` appended when tracked files changed), or 'unknown'."""
    root = root or repo_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        commit = head.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=30)
        return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux): timings from two hosts differ by 2x with the same core count."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def machine_info(device: str | None = None) -> dict[str, Any]:
    """Where a number was measured: OS, CPU, cores, RAM, torch and the compute device."""
    import psutil
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_model_text(run: Mapping[str, Any]) -> str:
    """`` (model)`` for a run's machine line when the CPU model was recorded (older runs did not record it)."""
    model = run.get("machine", {}).get("cpu_model")
    return f" ({model})" if model else ""


def provenance(device: str | None = None, command: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        "command": " ".join(command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cwd": os.getcwd(),
        "git_commit": git_commit(),
        "machine": machine_info(device),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- numbers ---------------------------------------------------------------------------------------
def gap_closure(method: float | None, lower: float | None, upper: float | None) -> float | None:
    """(method - lower) / (upper - lower); None when a value is missing or the bounds coincide."""
    if method is None or lower is None or upper is None or any(math.isnan(v) for v in (method, lower, upper)):
        return None
    gap = upper - lower
    if abs(gap) < 1e-12:
        return None
    return (method - lower) / gap


def spread(values: Iterable[float | None]) -> dict[str, Any]:
    """mean, sample std (ddof 1; None for one value), n, min, max of the finite values."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return {"mean": None, "std": None, "n": 0, "min": None, "max": None}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n": len(v),
            "min": float(min(v)), "max": float(max(v))}


def case_foreground(per_class: Mapping[str, Mapping[str, float | None]], metric: str = "DSC") -> float | None:
    """Mean over the foreground classes of one case (NaN/None skipped)."""
    v = [m.get(metric) for m in per_class.values()]
    v = [float(x) for x in v if x is not None and not math.isnan(float(x))]
    return float(np.mean(v)) if v else None


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# -- aggregation -----------------------------------------------------------------------------------
def aggregate_entry(pieces: Sequence[Mapping[str, Any]], postprocess: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Per seed and over seeds: foreground metrics, per class, per case, time and memory of one entry;
    the scores after ``postprocess`` too when every seed has them for exactly those steps."""
    by_seed = {int(p["seed"]): p for p in sorted(pieces, key=lambda p: p["seed"])}
    per_seed: dict[str, Any] = {}
    for s, p in by_seed.items():
        test = p["test"]
        per_seed[str(s)] = {
            "foreground": {m: _num(test["foreground_mean"].get(m)) for m in METRICS},
            "per_class_dice": {c: _num(v.get("DSC")) for c, v in test["mean"].items()},
            "per_case_dice": {case: case_foreground(v) for case, v in test["cases"].items()},
        }
    first = next(iter(per_seed.values()))
    classes, cases = list(first["per_class_dice"]), list(first["per_case_dice"])
    out: dict[str, Any] = {
        "seeds": sorted(by_seed),
        "per_seed": per_seed,
        "foreground": {m: spread(ps["foreground"][m] for ps in per_seed.values()) for m in METRICS},
        "per_class_dice": {c: spread(ps["per_class_dice"].get(c) for ps in per_seed.values()) for c in classes},
        "per_case_dice": {c: spread(ps["per_case_dice"].get(c) for ps in per_seed.values()) for c in cases},
        "train_wall_time_s": spread(p["train"]["wall_time_s"] for p in by_seed.values()),
        "peak_rss_mb": spread(p["train"]["peak_rss_mb"] for p in by_seed.values()),
        "seconds_per_step": spread(p["train"]["seconds_per_step"] for p in by_seed.values()),
        "predict_wall_time_s": spread(p["predict"]["wall_time_s"] for p in by_seed.values()),
    }
    steps = [dict(x) for x in postprocess]
    if steps and all(p.get("test_postprocessed", {}).get("steps") == steps for p in by_seed.values()):
        pp = {str(s): {"foreground": {m: _num(p["test_postprocessed"]["foreground_mean"].get(m)) for m in METRICS}}
              for s, p in by_seed.items()}
        out["foreground_postprocessed"] = {m: spread(v["foreground"][m] for v in pp.values()) for m in METRICS}
        out["per_seed_postprocessed"] = pp
    unl = [p["unlabelled"]["foreground_mean"].get("DSC") for p in by_seed.values() if p.get("unlabelled")]
    if unl:
        out["unlabelled_dice"] = spread(unl)
    return out


def _dice_by_seed(entry: Mapping[str, Any], suffix: str = "") -> dict[str, float | None]:
    return {s: v["foreground"]["DSC"] for s, v in entry["per_seed" + suffix].items()}


def add_gap_closure(entries: dict[str, dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    """Fill each entry's ``gap_closure`` and return the supervised gap (upper - lower) with its spread.

    ``suffix="_postprocessed"`` does the same on the post-processed scores (entries that have them)."""
    fg, out = "foreground" + suffix, "gap_closure" + suffix
    entries = {n: e for n, e in entries.items() if fg in e}
    if LOWER not in entries or UPPER not in entries:
        for e in entries.values():
            e[out] = None
        return {"available": False, "note": "gap closure needs both bounds; run the 'lower' and 'upper' entries"}
    lo, up = _dice_by_seed(entries[LOWER], suffix), _dice_by_seed(entries[UPPER], suffix)
    lo_mean, up_mean = entries[LOWER][fg]["DSC"]["mean"], entries[UPPER][fg]["DSC"]["mean"]
    for e in entries.values():
        d = _dice_by_seed(e, suffix)
        per_seed = {s: gap_closure(d[s], lo[s], up[s]) for s in d if s in lo and s in up}
        e[out] = {
            "per_seed": per_seed,
            "over_seeds": spread(per_seed.values()),
            "of_means": gap_closure(e[fg]["DSC"]["mean"], lo_mean, up_mean),
        }
    gaps = {s: up[s] - lo[s] for s in lo if s in up and lo[s] is not None and up[s] is not None}
    gap = {"available": True, "per_seed": gaps, "over_seeds": spread(gaps.values()),
           "of_means": None if lo_mean is None or up_mean is None else up_mean - lo_mean, "min_meaningful": MIN_GAP}
    if gap["of_means"] is not None and gap["of_means"] < MIN_GAP:
        gap["warning"] = (f"supervised gap (upper - lower) is {gap['of_means']:.3f} Dice < {MIN_GAP}: at this budget "
                          "gap closure is within seed noise; calibrate the budget before comparing methods")
    return gap


def aggregate(cfg: BenchmarkConfig, pieces: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, Any]] = (),
              stale: Sequence[str] = (), command: Sequence[str] | None = None, device: str | None = None) -> dict[str, Any]:
    """The results document of a benchmark from its finished pieces."""
    order = [e.name for e in cfg.entries()]
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for p in pieces:
        grouped.setdefault(p["entry"], []).append(p)
    entries: dict[str, dict[str, Any]] = {}
    for name in order:
        if name in grouped:
            spec = cfg.entry(name)
            entries[name] = {"method": spec.method, "params": spec.params, "role": spec.role, **aggregate_entry(grouped[name], cfg.postprocess)}
    gap = add_gap_closure(entries)
    gap_pp = add_gap_closure(entries, "_postprocessed") if cfg.postprocess else None
    expected = {(e, s) for e in order for s in cfg.seeds}
    done = {(p["entry"], int(p["seed"])) for p in pieces}
    plans = {json.dumps(p["key"]["plan"], sort_keys=True) for p in pieces}
    runs = [{**p, "key": {k: v for k, v in p["key"].items() if k != "plan"}} for p in pieces]  # the plan is stated once
    return {
        "schema": SCHEMA,
        "benchmark": cfg.summary(),
        "plan": json.loads(next(iter(plans))) if len(plans) == 1 else [json.loads(p) for p in sorted(plans)],
        "written_by": provenance(device, command),
        "entries": entries,
        "supervised_gap": gap,
        **({"supervised_gap_postprocessed": gap_pp} if gap_pp is not None else {}),
        "complete": expected <= done,
        "missing": sorted(f"{e}/seed_{s}" for e, s in expected - done),
        "skipped": list(skipped),
        "stale_pieces": list(stale),
        "runs": sorted(runs, key=lambda p: (order.index(p["entry"]) if p["entry"] in order else len(order), p["seed"])),
    }


def load_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read benchmark results: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or "entries" not in doc:
        raise ValueError(f"{p}: not a semiseg benchmark results file (schema {SCHEMA})")
    return doc
