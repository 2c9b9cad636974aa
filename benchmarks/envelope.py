"""The compute envelope of the headline tables (issue 15): what the bounds and methods cost, measured where
they have run and estimated where they have not, in hours of the machine's cores.

Each (entry, seed) of a table costs its training's CPU time plus its test prediction (:func:`run_seconds`;
runs are one thread each, two side by side on the two cores, so CPU time is core time; the recorded wall times
are summed too, as a second total). Where it has not run, the estimate is, in order:

1. the mean over the finished runs of the entry and of its tuning siblings (the same method and network, such
   as ``cps`` beside ``cps-scaled``: the same step, other weights; pooled, since runs of one step cost differ
   by up to 2x with the load they met);
2. the same, measured on the first table's benchmark, times the ratio of the two benchmarks' step costs for
   that entry in one step-bench variant measured under one load (``same-load-*`` rows; else the supervised
   step's ratio there; else the ratio of the two benchmarks' lower-bound runs);
3. the step bench (``benchmarks/results/step_bench_cpu.json``, the plan's current network and patch, bf16):
   the entry's s/step over its reference's s/step, times the reference's measured run (the reference is the
   supervised entry on the same network: ``supervised-light`` for the light net, else ``lower``);
4. for self-training, its trainings counted from its params, each costed as one lower-bound run (the fold
   models train on the labelled cases for the same steps), the round-0 ensemble once per seed (it is shared
   between the self-training entries of a seed), and pseudo-labelling as cases x models x rounds at the
   lower bound's per-case prediction time.

Step-bench rows measured at other loads differ by up to ~2.5x for the same step (the committed supervised and
supervised-dropout rows), so estimates from them are rough; the table says which basis each row has.

    python benchmarks/envelope.py --table benchmarks/la_ssl4_cpu.yaml lower upper ... \
        --table benchmarks/chaos_ssl_cpu.yaml lower upper ... --cores 2 --limit-h 16
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from semiseg.atomic import atomic_write_text
from semiseg.benchmark.config import BenchmarkConfig, MethodSpec, load_config

ROOT = Path(__file__).resolve().parents[1]
STEP_BENCH = ROOT / "benchmarks" / "results" / "step_bench_cpu.json"
PLANS = ROOT / "benchmarks" / "plans"
SELF_TRAINING = ("uncertainty", "unfiltered", "noisy-student")
NETWORK_PARAMS = ("light_arch", "network")  # params that change a method's network, hence its step cost


@dataclass
class Cost:
    entry: str
    seeds_done: list[int]
    measured_s: float  # the finished seeds, summed
    estimated_s: float  # the seeds still to run, summed
    basis: str


BASES = ("cpu", "wall")


def run_seconds(run: dict[str, Any], basis: str = "cpu") -> float:
    """A finished piece's cost: training (every model of a multi-model method) plus test prediction.

    ``cpu``: the CPU time the training's process tree used (``auc_cpu_percent_s`` / 100, its data worker
    included), i.e. its cost when the cores are kept busy; runs that met a third process on the two cores
    took up to 2.6x longer in wall time for the same CPU time (mean-teacher seed 0: 2033 s wall, 766 s CPU).
    A multi-model run's models (some trained in earlier sessions) are costed at their wall time times the
    core share its measured session got. ``wall``: the recorded wall times as they are."""
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    train = run.get("train") or {}
    wall = float(train.get("wall_time_s") or 0.0)
    models = float(train.get("models_wall_time_s") or 0.0)
    t = max(wall, models)
    auc = train.get("auc_cpu_percent_s")
    if basis == "cpu" and auc is not None:
        session = float(train.get("wall_time_this_session_s") or wall or 0.0)
        share = (float(auc) / 100.0) / session if session > 0 else 1.0
        t = float(auc) / 100.0 if models <= wall else models * share
    return t + float((run.get("predict") or {}).get("wall_time_s") or 0.0)


def finished_runs(cfg: BenchmarkConfig) -> dict[str, dict[int, dict[str, Any]]]:
    """entry -> seed -> run, from the committed results file (only runs of this configuration's entries)."""
    if not cfg.results_file.is_file():
        return {}
    doc = json.loads(cfg.results_file.read_text())
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in doc.get("runs", []):
        out.setdefault(run["entry"], {})[int(run["seed"])] = run
    return out


SAME_LOAD = "same-load"  # step-bench variants that time several plans under one load, for ratios between them


def step_costs(cfg: BenchmarkConfig, variant: str = "") -> dict[str, float]:
    """entry -> bf16 s/step (median) from the step bench, for the plan's current network and patch;
    ``variant`` "" is the plan's own rows, else the rows of that variant (or every variant starting with it,
    as {variant: {entry: s}} flattened to "variant/entry")."""
    if not STEP_BENCH.is_file() or not (PLANS / f"{cfg.name}.json").is_file():
        return {}
    plan = json.loads((PLANS / f"{cfg.name}.json").read_text())["plan"]
    net = plan["network"]
    costs: dict[str, float] = {}
    for row in json.loads(STEP_BENCH.read_text())["rows"]:
        v = row.get("variant") or ""
        if not (v.startswith(variant) if variant else not v):
            continue
        if (row.get("benchmark") == cfg.name and row.get("precision") == "bf16" and row.get("ok")
                and row.get("patch_size") == plan["patch_size"] and row.get("arch") == net["arch"]
                and row.get("features") == net["features"]):
            costs[f"{v}/{row['entry']}" if variant else row["entry"]] = float(row["s_per_step_median"])  # later rows are newer
    return costs


def network_key(spec: MethodSpec) -> tuple[str, str]:
    return spec.method, json.dumps({k: spec.params.get(k) for k in NETWORK_PARAMS}, sort_keys=True, default=str)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


class Estimator:
    def __init__(self, cfg: BenchmarkConfig, sibling: "Estimator | None" = None, basis: str = "cpu"):
        self.cfg, self.sibling, self.basis = cfg, sibling, basis
        self.runs = finished_runs(cfg)
        self.steps = step_costs(cfg)
        self.round0_counted: set[int] = set()
        lower = list(self.runs.get("lower", {}).values())
        if not lower:
            raise SystemExit(f"{cfg.results_file}: no finished lower-bound run to cost the others against")
        self.lower_s = mean([run_seconds(r, basis) for r in lower])
        self.predict_per_case_s = mean([float(r["predict"]["wall_time_s"]) / max(1, len(cfg.split["test"])) for r in lower])

    def measured(self, name: str) -> list[float]:
        return [run_seconds(r, self.basis) for r in self.runs.get(name, {}).values()]

    def pooled(self, spec: MethodSpec) -> tuple[list[float], list[str]]:
        """Finished runs of the entry and of its tuning siblings (same method and network)."""
        names = [e.name for e in self.cfg.entries() if network_key(e) == network_key(spec) and e.role == spec.role]
        names = [n for n in names if self.measured(n)]
        return [t for n in names for t in self.measured(n)], names

    def ratio_to_sibling(self, spec: MethodSpec) -> tuple[float, str]:
        """This benchmark's step cost over the sibling's: one same-load step-bench variant (newest first) that
        timed the entry (else the supervised step) on both plans, else the two lower-bound runs."""
        assert self.sibling is not None
        here, there = step_costs(self.cfg, SAME_LOAD), step_costs(self.sibling.cfg, SAME_LOAD)
        for name in (spec.name, spec.method, "supervised"):
            for key in sorted((k for k in here if k.endswith(f"/{name}") and k in there), reverse=True):
                return here[key] / there[key], f"step bench {key}"
        return self.lower_s / self.sibling.lower_s, "lower-bound runs"

    def engine_estimate(self, spec: MethodSpec) -> tuple[float, str]:
        times, names = self.pooled(spec)
        if times:
            return mean(times), f"{len(times)} finished run(s) of {', '.join(names)}"
        if self.sibling is not None and spec.name in {e.name for e in self.sibling.cfg.entries()}:
            times, names = self.sibling.pooled(self.sibling.cfg.entry(spec.name))
            if times:
                ratio, how = self.ratio_to_sibling(spec)
                return mean(times) * ratio, f"{len(times)} run(s) of {', '.join(names)} on {self.sibling.cfg.name} x {ratio:.2f} ({how})"
        light = spec.params.get("light_arch") or str((spec.params.get("network") or {}).get("arch", "")).startswith("light")
        refs = (["supervised-light"] if light and spec.name != "supervised-light" else []) + ["lower"]
        bench_name = spec.name if spec.name in self.steps else spec.method
        for ref in refs:
            ref_bench = ref if ref in self.steps else "supervised"
            if bench_name in self.steps and ref_bench in self.steps and self.measured(ref):
                ratio = self.steps[bench_name] / self.steps[ref_bench]
                return ratio * mean(self.measured(ref)), f"step bench {bench_name}/{ref_bench} {ratio:.2f}x the finished {ref} runs"
        return math.nan, "no basis (not in the step bench)"

    def selftrain_estimate(self, spec: MethodSpec, seed: int) -> tuple[float, str]:
        p = spec.params
        k, rounds = int(p.get("k", 5)), int(p.get("rounds", 1))
        share = seed not in self.round0_counted
        self.round0_counted.add(seed)
        trainings = (k if share else 0) + (k * (rounds - 1) if spec.method != "noisy-student" else 0)
        pseudo_rounds = 1 if spec.method == "noisy-student" else rounds
        extra = 1.0  # the final model
        if spec.method == "noisy-student":
            base = self.cfg.budget.batch_size
            ratio = int(p.get("pseudo_per_labelled") or 3)
            batch = -(-max(base, 1 + ratio) // (1 + ratio)) * (1 + ratio)
            finetune = int(p.get("finetune_iterations", 250)) / self.cfg.budget.iterations
            extra = batch / base + finetune  # the student's larger batches, then the fine-tune (width x1: an upper estimate)
        n_unlabelled = len(self.cfg.split["unlabelled"])
        pseudo_s = n_unlabelled * k * pseudo_rounds * self.predict_per_case_s
        total = (trainings + extra) * self.lower_s + pseudo_s
        shared = "round 0 counted here" if share else "round 0 shared"
        return total, f"{trainings} fold + {extra:.2f} final trainings x lower run, pseudo-labels {pseudo_s / 60:.0f} min ({shared})"

    def cost(self, spec: MethodSpec) -> Cost:
        done = self.runs.get(spec.name, {})
        measured = sum(run_seconds(r, self.basis) for r in done.values())
        todo = [s for s in self.cfg.seeds if s not in done]
        if spec.method in SELF_TRAINING:
            for s in done:
                self.round0_counted.add(s)
            parts = [self.selftrain_estimate(spec, s) for s in todo]
            own = self.measured(spec.name)
            if own:
                est, basis = mean(own) * len(todo), f"{len(own)} finished run(s) of {spec.name}"
            else:
                est = sum(p[0] for p in parts)
                basis = parts[0][1] if parts else "all seeds finished"
        else:
            per, basis = self.engine_estimate(spec)
            est = per * len(todo) if todo else 0.0
            if not todo:
                basis = "all seeds finished"
        return Cost(spec.name, sorted(done), measured, est, basis)


def table(est: Estimator, names: Sequence[str]) -> tuple[list[Cost], float, float]:
    costs = [est.cost(est.cfg.entry(n)) for n in names]
    unknown = [c.entry for c in costs if math.isnan(c.estimated_s)]
    if unknown:
        raise SystemExit(f"{est.cfg.name}: no basis to estimate {', '.join(unknown)} (run the step bench for them)")
    return costs, sum(c.measured_s for c in costs), sum(c.estimated_s for c in costs)


Table = tuple[BenchmarkConfig, list[Cost], float, float]


def markdown(tables: list[Table], cores: int, limit_h: float | None, command: str, wall: list[Table] | None = None) -> str:
    """The CPU-time tables with the verdict, then (``wall``) the same totals on recorded wall time."""
    lines = ["# Compute envelope of the headline tables", "",
             f"Core-hours of CPU time (each run is one thread plus its data worker); the machine has {cores} cores, so kept",
             f"busy it takes that / {cores} hours. Measured: finished runs' training CPU time + test prediction, from the",
             "results files. Estimated: see each row's basis (`benchmarks/envelope.py`'s docstring has the rules). Written by:",
             "", f"    {command}", ""]
    grand_m = grand_e = 0.0
    for cfg, costs, m, e in tables:
        lines += [f"## {cfg.name} ({len(cfg.seeds)} seeds, {cfg.budget.iterations} steps)", "",
                  "| entry | seeds finished | measured core-h | still to run core-h | basis of the estimate |", "|---|---|---:|---:|---|"]
        for c in costs:
            lines.append(f"| {c.entry} | {','.join(map(str, c.seeds_done)) or '-'} | {c.measured_s / 3600:.2f} | {c.estimated_s / 3600:.2f} | {c.basis} |")
        lines += [f"| **total** | | **{m / 3600:.1f}** | **{e / 3600:.1f}** | {(m + e) / 3600:.1f} core-h = {(m + e) / 3600 / cores:.1f} h of the {cores} cores |", ""]
        grand_m, grand_e = grand_m + m, grand_e + e
    total_h = (grand_m + grand_e) / 3600 / cores
    verdict = ""
    if limit_h is not None:
        verdict = f" against the {limit_h:g} h allowed: **{'within' if total_h <= limit_h else 'over'}** by {abs(limit_h - total_h):.1f} h"
    lines += [f"**All tables: {(grand_m + grand_e) / 3600:.1f} core-h ({grand_m / 3600:.1f} measured, {grand_e / 3600:.1f} estimated) ="
              f" {total_h:.1f} h of the {cores} cores**{verdict}.", ""]
    if wall:
        parts = [f"{cfg.name} {(m + e) / 3600 / cores:.1f} h ({m / 3600 / cores:.1f} measured)" for cfg, _, m, e in wall]
        total = sum(m + e for _, _, m, e in wall) / 3600 / cores
        lines += [f"On the recorded wall times instead (runs that shared the cores with a third process took longer for the same"
                  f" work): {', '.join(parts)}; {total:.1f} h in all.", ""]
    return "\n".join(lines)


def tables_for(specs: Sequence[Sequence[str]], basis: str) -> list[Table]:
    out: list[Table] = []
    first: Estimator | None = None
    for spec in specs:
        est = Estimator(load_config(spec[0]), sibling=first, basis=basis)
        first = first or est
        costs, m, e = table(est, spec[1:])
        out.append((est.cfg, costs, m, e))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", nargs="+", action="append", required=True, metavar=("CONFIG", "ENTRY"),
                    help="a benchmark config and the entries of its headline table")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--limit-h", type=float, default=None, help="the envelope to judge against, hours of the cores")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "envelope_cpu.md")
    args = ap.parse_args(argv)
    for spec in args.table:
        if len(spec) < 2:
            ap.error(f"--table {spec[0]}: name the entries of its table after the config")
    argv_shown = list(argv) if argv is not None else sys.argv[1:]
    command = "python benchmarks/envelope.py " + " ".join(shlex.quote(a) for a in argv_shown)
    text = markdown(tables_for(args.table, "cpu"), args.cores, args.limit_h, command, wall=tables_for(args.table, "wall"))
    atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
