"""The compute envelope of the headline tables (issue 15): what the bounds and methods cost, measured where
they have run and estimated where they have not, in core-hours of CPU time and in recorded wall time.

Each (entry, seed) of a table costs its training plus its test prediction (:func:`run_seconds`). On the ``cpu``
basis a training costs the CPU time its process tree used (data worker included): runs are one thread each, two
side by side on the two cores, so CPU time is core time, and core-hours / cores is the elapsed time with the
cores kept busy, a lower bound (serial phases and contention only add to it). On the ``wall`` basis it costs
its recorded wall time, which runs that met a third process on the cores inflate: an upper bound. Prediction
and pseudo-labelling are wall time on both. Where an (entry, seed) has not run, the estimate is, in order:

1. engine methods: the mean over the finished runs of the entry and of its tuning siblings (the same method and
   network, such as ``cps`` beside ``cps-scaled``: the same step, other weights); self-training: its own runs;
2. any entry measured on the first table's benchmark only: those runs times the two benchmarks' step-cost
   ratio for the entry in the newest step-bench variant measured under one load (``same-load-*`` rows; else the
   supervised step's ratio there; else the ratio of the two benchmarks' lower-bound runs);
3. engine methods: the step bench (``benchmarks/results/step_bench_cpu.json``, the plan's current network and
   patch, bf16): the entry's s/step over its reference's, both from the newest same-load variant that has both
   rows, else from the plain rows, times the reference's finished runs; the reference is the supervised entry on
   the same network (``supervised-light`` for the light net, else ``lower``, whose step-bench row is
   ``supervised``);
4. self-training: its trainings counted from its ``SelfTrainConfig``, each costed as one lower-bound run (the fold
   models train on the labelled cases for the same steps), the round-0 ensemble once per seed and setting (the
   self-training entries of a seed with the same k and overrides share it), and pseudo-labelling as cases x
   models x rounds at the lower bound's per-case prediction time.

Step-bench rows measured at other loads differ by up to ~2.5x for the same step (the committed supervised and
supervised-dropout rows), hence the preference for same-load rows; the table says which basis each row has.

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
from semiseg.benchmark.results import training_time
from semiseg.benchmark.runners import SelfTrainRunner, runner_for

ROOT = Path(__file__).resolve().parents[1]
STEP_BENCH = ROOT / "benchmarks" / "results" / "step_bench_cpu.json"
PLANS = ROOT / "benchmarks" / "plans"
NETWORK_PARAMS = ("light_arch", "network")  # params that change a method's network, hence its step cost
BASES = ("cpu", "wall")
SAME_LOAD = "same-load"  # step-bench variants that time several entries and plans under one load


@dataclass
class Cost:
    entry: str
    seeds_done: list[int]
    measured_s: float  # the finished seeds, summed
    estimated_s: float  # the seeds still to run, summed
    basis: str


def is_self_training(method: str) -> bool:
    return isinstance(runner_for(method), SelfTrainRunner)


def run_seconds(run: dict[str, Any], basis: str = "cpu") -> float:
    """A finished piece's cost: training (every model a multi-model method trained itself) plus test prediction.

    ``cpu``: the training's wall time (of all its sessions, or of all its models) times the share of a core its
    measured session used (``auc_cpu_percent_s`` / 100 over that session's wall time): runs that met a third
    process on the two cores took up to 2.6x longer in wall time for the same CPU time (mean-teacher seed 0:
    2033 s wall, 766 s CPU). A piece trained before its measured session has no such share and counts its wall
    time. ``wall``: the recorded wall times as they are."""
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    train = run.get("train") or {}
    wall = float(train.get("wall_time_s") or 0.0)
    t = float(training_time(train)[0] or 0.0)
    auc, session = train.get("auc_cpu_percent_s"), float(train.get("wall_time_this_session_s") or wall)
    trained_now = int(train.get("resumed_from_step") or 0) < int(train.get("steps") or 1)
    if basis == "cpu" and auc is not None and session > 0 and trained_now:
        t *= (float(auc) / 100.0) / session
    return t + float((run.get("predict") or {}).get("wall_time_s") or 0.0)


def finished_runs(cfg: BenchmarkConfig) -> dict[str, dict[int, dict[str, Any]]]:
    """entry -> seed -> run, from the committed results file."""
    if not cfg.results_file.is_file():
        return {}
    doc = json.loads(cfg.results_file.read_text())
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in doc.get("runs", []):
        out.setdefault(run["entry"], {})[int(run["seed"])] = run
    return out


def step_rows(cfg: BenchmarkConfig) -> list[tuple[str, str, float]]:
    """(variant, entry, bf16 s/step median) of the step bench's rows for the plan's current network and patch,
    in the file's order (later rows are newer); variant "" is the plan's own rows."""
    if not STEP_BENCH.is_file() or not (PLANS / f"{cfg.name}.json").is_file():
        return []
    plan = json.loads((PLANS / f"{cfg.name}.json").read_text())["plan"]
    net = plan["network"]
    return [(row.get("variant") or "", row["entry"], float(row["s_per_step_median"]))
            for row in json.loads(STEP_BENCH.read_text())["rows"]
            if row.get("benchmark") == cfg.name and row.get("precision") == "bf16" and row.get("ok")
            and row.get("patch_size") == plan["patch_size"] and row.get("arch") == net["arch"] and row.get("features") == net["features"]]


def newest_pair(rows: list[tuple[str, str, float]], a: str, b: str,
                other: list[tuple[str, str, float]] | None = None) -> tuple[float, float, str] | None:
    """s/step of entries ``a`` and ``b`` measured under one load: the newest same-load variant holding both, else
    the plain rows. With ``other`` (another benchmark's rows), ``a`` here and ``b`` there, same-load only."""
    there = rows if other is None else other

    def latest(rs: list[tuple[str, str, float]], variant: str, entry: str) -> float | None:
        found = [t for v, e, t in rs if v == variant and e == entry]
        return found[-1] if found else None

    variants = [v for v, _, _ in reversed(rows) if v.startswith(SAME_LOAD)]
    for v in dict.fromkeys(variants):  # newest first, each once
        x, y = latest(rows, v, a), latest(there, v, b)
        if x is not None and y is not None:
            return x, y, v
    if other is None:
        x, y = latest(rows, "", a), latest(rows, "", b)
        if x is not None and y is not None:
            return x, y, "plain rows"
    return None


def network_key(spec: MethodSpec) -> tuple[str, str]:
    return spec.method, json.dumps({k: spec.params.get(k) for k in NETWORK_PARAMS}, sort_keys=True, default=str)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


class Estimator:
    """Costs the entries of one benchmark on one basis; ``sibling`` is the first table's, for rule 2."""

    def __init__(self, cfg: BenchmarkConfig, sibling: "Estimator | None" = None, basis: str = "cpu"):
        self.cfg, self.sibling, self.basis = cfg, sibling, basis
        self.runs = finished_runs(cfg)
        self.rows = step_rows(cfg)
        self.round0_counted: set[tuple[int, int, str]] = set()
        lower = list(self.runs.get("lower", {}).values())
        if not lower:
            raise SystemExit(f"{cfg.results_file}: no finished lower-bound run to cost the others against")
        self.lower_s = mean([run_seconds(r, basis) for r in lower])
        self.predict_per_case_s = mean([float((r.get("predict") or {}).get("wall_time_s") or 0.0) / max(1, len(cfg.split["test"]))
                                        for r in lower])

    def measured(self, name: str) -> list[float]:
        return [run_seconds(r, self.basis) for r in self.runs.get(name, {}).values()]

    def pooled(self, spec: MethodSpec) -> tuple[list[float], list[str]]:
        """Finished runs of the entry and of its tuning siblings (same method and network)."""
        names = [e.name for e in self.cfg.entries() if network_key(e) == network_key(spec) and e.role == spec.role]
        names = [n for n in names if self.measured(n)]
        return [t for n in names for t in self.measured(n)], names

    def ratio_to_sibling(self, spec: MethodSpec) -> tuple[float, str]:
        """This benchmark's step cost over the sibling's (rule 2)."""
        assert self.sibling is not None
        for name in (spec.name, spec.method, "supervised"):
            pair = newest_pair(self.rows, name, name, other=self.sibling.rows)
            if pair is not None and pair[1] > 0:
                return pair[0] / pair[1], f"step bench {pair[2]}/{name}"
        if self.sibling.lower_s > 0:
            return self.lower_s / self.sibling.lower_s, "lower-bound runs"
        return math.nan, "no ratio"

    def engine_estimate(self, spec: MethodSpec) -> tuple[float, str]:
        """Per-seed cost of an engine method that has not run (rules 1-3)."""
        times, names = self.pooled(spec)
        if times:
            return mean(times), f"{len(times)} finished run(s) of {', '.join(names)}"
        if self.sibling is not None and spec.name in {e.name for e in self.sibling.cfg.entries()}:
            times, names = self.sibling.pooled(self.sibling.cfg.entry(spec.name))
            if times:
                ratio, how = self.ratio_to_sibling(spec)
                return mean(times) * ratio, f"{len(times)} run(s) of {', '.join(names)} on {self.sibling.cfg.name} x {ratio:.2f} ({how})"
        network = spec.params.get("network") or {}
        light = bool(spec.params.get("light_arch")) or str(network.get("arch", "")).startswith("light")
        refs = ([("supervised-light", "supervised-light")] if light and spec.name != "supervised-light" else []) + [("lower", "supervised")]
        names = [spec.name] + ([spec.method] if not any(spec.params.get(k) for k in NETWORK_PARAMS) else [])
        for ref, ref_row in refs:
            if not self.measured(ref):
                continue
            for name in names:
                pair = newest_pair(self.rows, name, ref_row)
                if pair is not None and pair[1] > 0:
                    ratio = pair[0] / pair[1]
                    return ratio * mean(self.measured(ref)), f"step bench {name}/{ref_row} {ratio:.2f}x ({pair[2]}) the finished {ref} runs"
        return math.nan, "no basis (not in the step bench)"

    def selftrain_config(self, spec: MethodSpec, seed: int) -> Any:
        from semiseg.selftrain.pipeline import SelfTrainConfig

        return SelfTrainConfig(method=spec.method, iterations=self.cfg.budget.iterations, batch_size=self.cfg.budget.batch_size,
                               seed=seed, **spec.params)

    def round0_key(self, spec: MethodSpec, seed: int) -> tuple[int, int, str]:
        """What decides whether two self-training entries share their round-0 ensemble (the pipeline's share key
        holds the plan, the fold's data and the training config: the same here unless k or the overrides differ)."""
        st = self.selftrain_config(spec, seed)
        return seed, st.k, json.dumps(st.train_overrides, sort_keys=True, default=str)

    def selftrain_estimate(self, spec: MethodSpec, seed: int) -> tuple[float, str]:
        """One seed of a self-training entry that has not run (rule 4)."""
        st = self.selftrain_config(spec, seed)
        key = self.round0_key(spec, seed)
        share = key not in self.round0_counted
        self.round0_counted.add(key)
        noisy = spec.method == "noisy-student"
        trainings = (st.k if share else 0) + (0 if noisy else st.k * (st.rounds - 1))
        extra = 1.0  # the final model
        if noisy:
            ratio = max(1, st.ratio)
            batch = -(-max(st.batch_size, 1 + ratio) // (1 + ratio)) * (1 + ratio)
            steps = (st.student_iterations or st.iterations) / self.cfg.budget.iterations
            # the student's larger batches (at its width x1: an upper estimate), then the fine-tune
            extra = steps * batch / st.batch_size + st.finetune_iterations / self.cfg.budget.iterations
        pseudo_s = len(self.cfg.split["unlabelled"]) * st.k * (1 if noisy else st.rounds) * self.predict_per_case_s
        total = (trainings + extra) * self.lower_s + pseudo_s
        shared = "round 0 counted here" if share else "round 0 shared"
        return total, f"{trainings} fold + {extra:.2f} final trainings x lower run, pseudo-labels {pseudo_s / 60:.0f} min ({shared})"

    def cost(self, spec: MethodSpec) -> Cost:
        done = self.runs.get(spec.name, {})
        measured = sum(run_seconds(r, self.basis) for r in done.values())
        todo = [s for s in self.cfg.seeds if s not in done]
        if is_self_training(spec.method):
            own = self.measured(spec.name)
            if own:  # its runs hold the round 0 it trained (a shared one is not in their time): it pays round 0 on every seed
                est, basis = mean(own) * len(todo), f"{len(own)} finished run(s) of {spec.name}"
                self.round0_counted |= {self.round0_key(spec, s) for s in self.cfg.seeds}
            elif self.sibling is not None and spec.name in {e.name for e in self.sibling.cfg.entries()} and self.sibling.measured(spec.name):
                there = self.sibling.measured(spec.name)
                ratio, how = self.ratio_to_sibling(spec)
                est = mean(there) * ratio * len(todo)
                basis = f"{len(there)} run(s) of {spec.name} on {self.sibling.cfg.name} x {ratio:.2f} ({how})"
                self.round0_counted |= {self.round0_key(spec, s) for s in self.cfg.seeds}
            else:
                parts = [self.selftrain_estimate(spec, s) for s in todo]
                est, basis = sum(p[0] for p in parts), (parts[0][1] if parts else "all seeds finished")
        else:
            per, basis = self.engine_estimate(spec)
            est = per * len(todo) if todo else 0.0
        if not todo:
            basis = "all seeds finished"
        return Cost(spec.name, sorted(done), measured, est, basis)


def table(est: Estimator, names: Sequence[str]) -> tuple[list[Cost], float, float]:
    """The costs of the named entries, in order; refuses an entry it has no basis to estimate."""
    est.round0_counted = set()
    costs = [est.cost(est.cfg.entry(n)) for n in names]
    unknown = [c.entry for c in costs if math.isnan(c.estimated_s)]
    if unknown:
        raise SystemExit(f"{est.cfg.name}: no basis to estimate {', '.join(unknown)} (run the step bench for them)")
    return costs, sum(c.measured_s for c in costs), sum(c.estimated_s for c in costs)


Table = tuple[BenchmarkConfig, list[Cost], float, float]


def _verdict(total_h: float, limit_h: float | None) -> str:
    if limit_h is None:
        return ""
    return f" against the {limit_h:g} h allowed: **{'within' if total_h <= limit_h else 'over'}** by {abs(limit_h - total_h):.1f} h"


def markdown(tables: list[Table], cores: int, limit_h: float | None, command: str, wall: list[Table] | None = None) -> str:
    """The CPU-time tables with their verdict (a lower bound on elapsed time), then (``wall``) the totals and
    verdict on recorded wall time (an upper bound)."""
    lines = ["# Compute envelope of the headline tables", "",
             f"Core-hours of CPU time (each run is one thread plus its data worker); the machine has {cores} cores, so kept",
             f"busy it takes that / {cores} hours, a lower bound on the elapsed time. Recorded wall times (inflated where runs",
             "shared the cores with a third process) give the upper bound below. Measured: finished runs' training + test",
             "prediction, from the results files. Estimated: see each row's basis (`benchmarks/envelope.py`'s docstring has",
             "the rules). Written by:", "", f"    {command}", ""]
    grand_m = grand_e = 0.0
    for cfg, costs, m, e in tables:
        lines += [f"## {cfg.name} ({len(cfg.seeds)} seeds, {cfg.budget.iterations} steps)", "",
                  "| entry | seeds finished | measured core-h | still to run core-h | basis of the estimate |", "|---|---|---:|---:|---|"]
        for c in costs:
            lines.append(f"| {c.entry} | {','.join(map(str, c.seeds_done)) or '-'} | {c.measured_s / 3600:.2f} | {c.estimated_s / 3600:.2f} | {c.basis} |")
        lines += [f"| **total** | | **{m / 3600:.1f}** | **{e / 3600:.1f}** | {(m + e) / 3600:.1f} core-h = {(m + e) / 3600 / cores:.1f} h of the {cores} cores |", ""]
        grand_m, grand_e = grand_m + m, grand_e + e
    total_h = (grand_m + grand_e) / 3600 / cores
    lines += [f"**All tables, CPU time: {(grand_m + grand_e) / 3600:.1f} core-h ({grand_m / 3600:.1f} measured, {grand_e / 3600:.1f} estimated)"
              f" = {total_h:.1f} h of the {cores} cores**{_verdict(total_h, limit_h)}.", ""]
    if wall:
        parts = [f"{cfg.name} {(m + e) / 3600 / cores:.1f} h ({m / 3600 / cores:.1f} measured)" for cfg, _, m, e in wall]
        wall_h = sum(m + e for _, _, m, e in wall) / 3600 / cores
        lines += [f"**All tables, recorded wall time: {wall_h:.1f} h of the {cores} cores**{_verdict(wall_h, limit_h)}"
                  f" ({', '.join(parts)}).", ""]
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
