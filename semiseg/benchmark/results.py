"""Benchmark results: provenance of every number, aggregation over seeds, gap closure.

A results file (``benchmarks/results/<name>.json``) holds the configuration, every run ("piece": one
entry x one seed, with its per-case per-class metrics, command, commit, machine, budget, wall time and
peak RAM) and, per entry, the spread over seeds and the gap closure

    gap closure = (method - lower) / (upper - lower)        on mean foreground Dice over the test cases

computed per seed where all three have that seed, and of the means over each entry's seeds.
Spreads are sample standard deviations (ddof = 1); with one seed there is no spread (null).
Every entry but the lower bound also gets ``paired_vs_lower``: its case Dice against the lower bound's on
the same (seed, test case) pairs, with a bootstrap CI and a Wilcoxon p (semiseg.benchmark.paired).

Paths are written portable: under the data root as ``data:<relative>``, under the checkout as
``./<relative>`` (``.`` for the checkout itself); ``load_results`` turns them back into paths of the
machine reading the file, so a results file names no directory of the machine that made it.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from itertools import takewhile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from semiseg.benchmark.config import LOWER, UPPER, BenchmarkConfig, default_data_root, repo_root
from semiseg.benchmark.paired import paired_comparison, paired_gap_closure, seeds_and_cases_comparison

SCHEMA = 1
METRICS = ("DSC", "IoU", "NSD", "HD95", "ASD")
MIN_GAP = 0.03  # BENCHMARK.md: below this supervised gap, gap closure is seed noise
DATA_MARK, REPO_MARK = "data:", "."  # portable path prefixes: data root, checkout


# -- provenance ------------------------------------------------------------------------------------
# Tracked outputs, not code: a benchmark job beside another rewrites the results files (and the README table is made
# from them), so a change there must not mark the other job's run ``-dirty``.
OUTPUT_PATHS = ("benchmarks/results", "README.md")


def git_commit(root: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout (``-dirty`` appended when tracked files other than
    :data:`OUTPUT_PATHS` changed), or 'unknown'."""
    root = root or repo_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        commit = head.stdout.strip()
        outputs = [f":(exclude){p}" for p in OUTPUT_PATHS]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs], cwd=root,
                               capture_output=True, text=True, timeout=30)
        return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Plan fields no number depends on: median_shape is planning's input to patch_size, and patch_size is keyed itself
# (LA-SSL-8's upper bound, all 40 labelled, trains exactly as LA-SSL-4's though their regimes' median shapes differ).
UNKEYED_PLAN_FIELDS = ("median_shape",)


def comparable_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """A piece key's plan without the fields no number depends on, so keys written before they were dropped match."""
    return {k: v for k, v in plan.items() if k not in UNKEYED_PLAN_FIELDS}

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
    """Where a number was measured: OS, CPU, cores, RAM, torch, the compute device, and whether the CPU runs bf16
    natively (without it bf16 steps are emulated and an order of magnitude slower: semiseg.precision)."""
    import psutil
    import torch

    from semiseg.precision import cpu_has_native_bf16

    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(), "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_key(run: Mapping[str, Any]) -> tuple[str | None, bool | None]:
    """The CPU a run trained on, as far as it was recorded (older runs did not): (model, native bf16). fp32 training is
    not bit-reproducible across CPUs, so two runs of one seed on different CPUs differ by the machine too."""
    m = run.get("machine") or {}
    return m.get("cpu_model") or None, m.get("cpu_native_bf16")


def cpu_model_text(run: Mapping[str, Any]) -> str:
    """`` (model)`` for a run's machine line when the CPU model was recorded, with ``no native bf16`` where that was
    recorded false."""
    model, bf16 = cpu_key(run)
    parts = ([model] if model else []) + (["no native bf16"] if bf16 is False else [])
    return f" ({', '.join(parts)})" if parts else ""


def same_cpu(a: tuple[str | None, bool | None], b: tuple[str | None, bool | None]) -> bool | None:
    """Whether two :func:`cpu_key` name the same CPU; None where that is not known (a model not recorded, or the same
    model with a bf16 flag one run did not record: one model name covers CPU generations with and without it)."""
    if a[0] is None or b[0] is None:
        return None
    if a[0] != b[0]:
        return False
    return None if a[1] is None or b[1] is None else a[1] == b[1]


def cpu_mismatch(runs: Sequence[Mapping[str, Any]], entry: str, bound: str) -> tuple[int, int]:
    """(seeds on which ``entry``'s run and ``bound``'s ran on different CPUs, seeds where both CPUs are known)."""
    cpus: dict[tuple[str, int], tuple[str | None, bool | None]] = {(r["entry"], int(r["seed"])): cpu_key(r) for r in runs}
    same = [same_cpu(k, cpus[(bound, s)]) for (e, s), k in cpus.items() if e == entry and (bound, s) in cpus]
    known = [v for v in same if v is not None]
    return sum(not v for v in known), len(known)


def provenance(device: str | None = None, command: Sequence[str] | None = None, commit: str | None = None) -> dict[str, Any]:
    """Where a number came from; ``commit`` as taken when the work began (default: now)."""
    return {
        "command": " ".join(command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cwd": os.getcwd(),
        "git_commit": commit if commit is not None else git_commit(),
        "machine": machine_info(device),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _command_config(command: str) -> tuple[str | None, list[str]]:
    """The config path and the ``--only`` entries of a recorded ``semiseg ... benchmark CONFIG ...`` command."""
    try:
        words = shlex.split(command)
    except ValueError:  # recorded as argv joined by spaces, so an argument with a lone quote does not parse
        words = command.split()
    if "benchmark" not in words:
        return None, []
    rest = words[words.index("benchmark") + 1:]
    config = next((w for w in rest if not w.startswith("-") and w.endswith((".yaml", ".yml", ".json"))), None)
    only = list(takewhile(lambda w: not w.startswith("-"), rest[rest.index("--only") + 1:])) if "--only" in rest else []
    return config, only


def renamed_since(doc: Mapping[str, Any]) -> str | None:
    """A sentence for the provenance line when recorded commands name a config or entries that these results no
    longer go by (a config renamed or repointed, an entry renamed, results migrated between files): the commands
    stay as run, at their commits, and this says which file and entries rerun them today. None when all match."""
    config = str(doc.get("benchmark", {}).get("config_file") or "")
    if not config:
        return None
    root = repo_root()  # commands run in the checkout; config_file is relative to it, or resolved by load_results
    here = (root / config).resolve()
    names = set(doc.get("entries", {})) | {str(m).split("/")[0] for m in doc.get("missing", [])}
    old_configs, old_entries = set(), set()
    for r in doc.get("runs", []):
        cmd_config, only = _command_config(str(r.get("command", "")))
        if cmd_config is not None and (root / cmd_config).resolve() != here:
            old_configs.add(cmd_config)
        old_entries.update(e for e in only if e not in names)
    if not old_configs and not old_entries:
        return None
    parts = []
    if old_configs:
        parts.append(f"config {', '.join(sorted(old_configs))}")
    if old_entries:
        parts.append(f"entries {', '.join(sorted(old_entries))}")
    return (f"Commands are as run, at their commits; they name {' and '.join(parts)} as things were then: these "
            f"results are now {portable_text(str(here)).removeprefix('./')}'s, rerun with that file and the entries in the table")


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


def per_case_dice(test: Mapping[str, Any]) -> dict[str, float | None]:
    """Foreground-mean Dice of every case of an evaluation (``test`` or ``test_postprocessed`` of a piece)."""
    return {case: case_foreground(v) for case, v in test["cases"].items()}


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# -- aggregation -----------------------------------------------------------------------------------
def training_time(train: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(wall time s, s/step) of one piece's training, resumption-proof.

    A single model's ``wall_time_s`` already spans every session of a resumed training. A multi-model method
    (self-training: fold ensembles, students) is measured from the benchmark's own invocation, which covers
    only the last session's share when it was interrupted between models (LA uncertainty-dropout seed 1:
    508 s measured, 4221 s in its models' logs). Its time is the larger of that measure and the sum of its
    own models' logs, and its s/step that time over the run's steps (its cost per step of the final model's
    budget); models another entry trained and it shared are not counted (their time stays with that entry)."""
    wall, sps = train.get("wall_time_s"), train.get("seconds_per_step")
    models = train.get("models_wall_time_s")
    if models is None or (wall is not None and float(models) <= float(wall)):
        return wall, sps
    steps = train.get("steps")
    return float(models), (float(models) / int(steps) if steps else sps)


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
            "per_case_dice": per_case_dice(test),
        }
    first = next(iter(per_seed.values()))
    classes, cases = list(first["per_class_dice"]), list(first["per_case_dice"])
    out: dict[str, Any] = {
        "seeds": sorted(by_seed),
        "per_seed": per_seed,
        "foreground": {m: spread(ps["foreground"][m] for ps in per_seed.values()) for m in METRICS},
        "per_class_dice": {c: spread(ps["per_class_dice"].get(c) for ps in per_seed.values()) for c in classes},
        "per_case_dice": {c: spread(ps["per_case_dice"].get(c) for ps in per_seed.values()) for c in cases},
        "train_wall_time_s": spread(training_time(p["train"])[0] for p in by_seed.values()),
        "peak_rss_mb": spread(p["train"]["peak_rss_mb"] for p in by_seed.values()),
        "seconds_per_step": spread(training_time(p["train"])[1] for p in by_seed.values()),
        "predict_wall_time_s": spread(p["predict"]["wall_time_s"] for p in by_seed.values()),
    }
    steps = [dict(x) for x in postprocess]
    if steps and all(p.get("test_postprocessed", {}).get("steps") == steps for p in by_seed.values()):
        pp = {str(s): {"foreground": {m: _num(p["test_postprocessed"]["foreground_mean"].get(m)) for m in METRICS},
                       "per_case_dice": per_case_dice(p["test_postprocessed"])} for s, p in by_seed.items()}
        out["foreground_postprocessed"] = {m: spread(v["foreground"][m] for v in pp.values()) for m in METRICS}
        out["per_seed_postprocessed"] = pp
    unl = [p["unlabelled"]["foreground_mean"].get("DSC") for p in by_seed.values() if p.get("unlabelled")]
    if unl:
        out["unlabelled_dice"] = spread(unl)
    return out


def pseudo_label_rounds(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per self-training round of each run: how many unlabelled cases were selected, the pseudo-labels' Dice
    against the hidden labels (all, selected, rejected; evaluation only, never seen by training) and the Spearman
    rho of the selection score with that Dice (issue 16: is the uncertainty telling good pseudo-labels from bad?).
    Read from the quality files a run left (``pseudo_label_quality``: ``.../<round>/quality.json``)."""
    rows: list[dict[str, Any]] = []
    for r in runs:
        for where, q in sorted((r.get("pseudo_label_quality") or {}).items()):
            if not isinstance(q, Mapping) or "mean_dice" not in q:
                continue
            parts = Path(where).parts
            rows.append({"entry": r["entry"], "seed": int(r["seed"]), "round": parts[-2] if len(parts) >= 2 else where,
                         "n": q.get("n"), "n_selected": q.get("n_selected"), "mean_dice": _num(q.get("mean_dice")),
                         "mean_dice_selected": _num(q.get("mean_dice_selected")), "mean_dice_rejected": _num(q.get("mean_dice_rejected")),
                         "spearman_rho": _num(q.get("spearman_rho")), "p_value": _num(q.get("p_value"))})
    def order(name: str) -> tuple[int, str]:  # round_2 before round_10
        tail = name.rsplit("_", 1)[-1]
        return (int(tail), name) if name.startswith("round_") and tail.isdigit() else (-1, name)

    return sorted(rows, key=lambda x: (x["entry"], x["seed"], order(str(x["round"]))))


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
    add_paired_gap_closure(entries, suffix)
    gaps = {s: up[s] - lo[s] for s in lo if s in up and lo[s] is not None and up[s] is not None}
    gap = {"available": True, "per_seed": gaps, "over_seeds": spread(gaps.values()),
           "of_means": None if lo_mean is None or up_mean is None else up_mean - lo_mean, "min_meaningful": MIN_GAP}
    if gap["of_means"] is not None and gap["of_means"] < MIN_GAP:
        gap["warning"] = (f"supervised gap (upper - lower) is {gap['of_means']:.3f} Dice < {MIN_GAP}: at this budget "
                          "gap closure is within seed noise; calibrate the budget before comparing methods")
    return gap


def case_dice_by_pair(entry: Mapping[str, Any], suffix: str = "") -> dict[tuple[str, str], float | None]:
    """Case Dice keyed by (seed, case): the unit on which two entries are paired."""
    return {(s, c): v for s, ps in entry["per_seed" + suffix].items() for c, v in ps.get("per_case_dice", {}).items()}


def add_paired_gap_closure(entries: dict[str, dict[str, Any]], suffix: str = "") -> None:
    """``gap_closure<suffix>.paired`` of every method entry: the closure over the (seed, case) pairs it shares with
    both bounds, with a bootstrap CI (:func:`semiseg.benchmark.paired.paired_gap_closure`)."""
    out = "gap_closure" + suffix
    if LOWER not in entries or UPPER not in entries or "per_seed" + suffix not in entries[UPPER]:
        return
    lo, up = case_dice_by_pair(entries[LOWER], suffix), case_dice_by_pair(entries[UPPER], suffix)
    for name, e in entries.items():
        if name not in (LOWER, UPPER) and isinstance(e.get(out), dict) and "per_seed" + suffix in e:
            e[out]["paired"] = paired_gap_closure(case_dice_by_pair(e, suffix), lo, up)


def add_paired_vs_lower(entries: dict[str, dict[str, Any]], suffix: str = "") -> dict[str, Any] | None:
    """Fill ``paired_vs_lower<suffix>`` of every entry but the lower bound; returns the upper bound's, which says
    whether the supervised gap is larger than the case-to-case noise. None throughout without a lower bound."""
    out = "paired_vs_lower" + suffix
    entries = {n: e for n, e in entries.items() if "per_seed" + suffix in e}
    lower = case_dice_by_pair(entries[LOWER], suffix) if LOWER in entries else None
    for name, e in entries.items():
        if name != LOWER:
            e[out] = None if lower is None else paired_comparison(case_dice_by_pair(e, suffix), lower, "lower bound")
    return entries.get(UPPER, {}).get(out)


def add_paired_vs_baseline(entries: dict[str, dict[str, Any]], baselines: Mapping[str, str], suffix: str = "") -> None:
    """``paired_vs_baseline<suffix>`` of every entry judged against a supervised entry other than the lower bound."""
    for name, base in baselines.items():
        e, b = entries.get(name), entries.get(base)
        if base != LOWER and e is not None and b is not None and "per_seed" + suffix in e and "per_seed" + suffix in b:
            e["paired_vs_baseline" + suffix] = {"baseline": base, **paired_comparison(case_dice_by_pair(e, suffix),
                                                                                      case_dice_by_pair(b, suffix), base)}


def own_bound_comparison(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The paired comparison of a method entry with the supervised run of its own network: the ``baseline`` it
    declares (the lower bound where it trains the bounds' network). None for supervised rows, for results that predate
    declared baselines and while the baseline has no finished run: a method is never judged against another network."""
    if entry.get("method") == "supervised" or entry.get("role") in (LOWER, UPPER) or "baseline" not in entry:
        return None
    c = entry.get("paired_vs_lower") if entry["baseline"] == LOWER else entry.get("paired_vs_baseline")
    return dict(c) if c and c.get("mean_diff") is not None and c.get("ci95") else None


def seed_spread_comparison(entry: Mapping[str, Any], bound: Mapping[str, Any]) -> dict[str, Any] | None:
    """``entry`` against ``bound`` with seeds resampled as well as cases (:func:`seeds_and_cases_comparison`, each
    side's seeds on their own): whether a difference exceeds seed noise, which the pairs-only CI of
    :func:`own_bound_comparison` does not ask (it treats a seed's cases as independent pairs). None under 2 common
    seeds (no seed spread to resample) or 2 cases."""
    if "per_seed" not in entry or "per_seed" not in bound:
        return None
    return seeds_and_cases_comparison(case_dice_by_pair(entry), case_dice_by_pair(bound))


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
            entries[name] = {"method": spec.method, "params": spec.params, "role": spec.role,
                             **({"baseline": spec.baseline} if spec.method != "supervised" else {}),
                             **aggregate_entry(grouped[name], cfg.postprocess)}
    gap = add_gap_closure(entries)
    gap["paired"] = add_paired_vs_lower(entries)
    gap_pp = add_gap_closure(entries, "_postprocessed") if cfg.postprocess else None
    if gap_pp is not None:
        gap_pp["paired"] = add_paired_vs_lower(entries, "_postprocessed")
    baselines = {m.name: m.baseline for m in cfg.methods}
    add_paired_vs_baseline(entries, baselines)
    if cfg.postprocess:
        add_paired_vs_baseline(entries, baselines, "_postprocessed")
    expected = {(e, s) for e in order for s in cfg.seeds}
    done = {(p["entry"], int(p["seed"])) for p in pieces}
    plans = {json.dumps(comparable_plan(p["key"]["plan"]), sort_keys=True) for p in pieces}
    runs = [{**p, "key": {k: v for k, v in p["key"].items() if k != "plan"}} for p in pieces]  # the plan is stated once
    return portable_paths({
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
    })


# -- portable paths --------------------------------------------------------------------------------
def _roots() -> list[tuple[str, str, str]]:
    """(absolute root, prefix of a path under it, name of the root itself), the deepest root first so a data
    root inside the checkout is named as the data root; a root reached through a link is matched both ways."""
    named = [(default_data_root(), DATA_MARK, DATA_MARK), (repo_root(), REPO_MARK + "/", REPO_MARK)]
    roots = {str(Path(os.path.abspath(form))): (prefix, bare) for root, prefix, bare in named for form in (root, Path(root).resolve())}
    return sorted(((r, prefix, bare) for r, (prefix, bare) in roots.items()), key=lambda t: -len(t[0]))


def portable_text(text: str, roots: Sequence[tuple[str, str, str]] | None = None) -> str:
    """``text`` with every absolute path under a root rewritten relative to it; paths inside a command line too."""
    for root, prefix, bare in roots if roots is not None else _roots():
        if root == os.sep:
            continue  # a root of / would make every path "relative"
        pattern = rf"(?<![^\s='\"]){re.escape(root)}(/|(?=[\s'\"]|$))"  # a whole path, or a word of a command line
        text = re.sub(pattern, lambda m, p=prefix, b=bare: p if m.group(1) else b, text)
    return text


def resolve_text(text: str) -> str:
    """A portable path (``data:...``, ``./...``, ``.``) as a path on this machine; any other string as it is.
    Strings with whitespace (command lines) are left alone: they are for reading, not for opening."""
    if any(c.isspace() for c in text):
        return text
    if text.startswith(DATA_MARK):
        return str(Path(os.path.abspath(default_data_root())) / text[len(DATA_MARK):])
    if text == REPO_MARK or text.startswith(REPO_MARK + "/"):
        return str(repo_root() / text[len(REPO_MARK) + 1:])
    return text


def _map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_map_strings(v, fn) for v in obj]
    return obj


def portable_paths(doc: Any) -> Any:
    """A copy of ``doc`` whose string values name paths relative to the data root or the checkout."""
    roots = _roots()
    return _map_strings(doc, lambda s: portable_text(s, roots))


def resolved_paths(doc: Any) -> Any:
    """The inverse of ``portable_paths`` on this machine's roots."""
    return _map_strings(doc, resolve_text)


def load_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read benchmark results: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or "entries" not in doc:
        raise ValueError(f"{p}: not a semiseg benchmark results file (schema {SCHEMA})")
    return with_paired(resolved_paths(doc))


def with_paired(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the paired comparison and the paired gap closure filled in when it was written before they
    existed: the per-case scores they need are in every results file (the post-processed ones need per-case scores
    older files lack)."""
    gap = doc.get("supervised_gap")
    if isinstance(gap, dict) and "paired" not in gap:
        gap["paired"] = add_paired_vs_lower(doc["entries"])
    for suffix in ("", "_postprocessed"):
        if any(isinstance(e.get("gap_closure" + suffix), dict) and "paired" not in e["gap_closure" + suffix]
               for n, e in doc["entries"].items() if n not in (LOWER, UPPER)):
            add_paired_gap_closure(doc["entries"], suffix)
    return doc
