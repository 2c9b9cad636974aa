"""Why an entry scores what it does, as text: each test case against the lower bound (and the entry's own supervised
baseline where it has one), seed by seed, its training curve's diagnostics averaged over thirds of the run, and for
self-training each round's pseudo-label quality.

A mean Dice alone cannot tell a method that loses everywhere from one that fails on two hard cases, nor an inert
unlabelled term (``grad_share`` ~0) from a runaway one (>> 1); the closing notes of issue 16 read exactly this.
It reads a committed results file only, so it runs anywhere the file is, without the work folder:

    python -m semiseg.benchmark.explain benchmarks/results/la_ssl4_cpu.json cps-alw-dropout [--seeds 1 2] [--against cps-dropout]

``--against`` adds other entries as references: a paired verdict over the (seed, case) pairs both have among the
shown seeds, and their per-case columns (e.g. CPS-ALW against plain CPS on the same network).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from semiseg.benchmark.config import LOWER
from semiseg.benchmark.paired import format_closure, format_diff, format_number, format_p, paired_comparison
from semiseg.benchmark.results import case_dice_by_pair, cpu_model_text, load_results, pseudo_label_rounds


def curve_thirds(curve: Mapping[str, Sequence[float | None]], iterations: int) -> dict[str, list[float | None]]:
    """Mean of every logged key of ``curve`` over steps [0, n/3), [n/3, 2n/3), [2n/3, n]; None where a third
    has no logged value (a key logged only in one phase, e.g. MPL's fine-tune)."""
    steps = list(curve["step"])
    edges = [iterations * k / 3 for k in range(4)]
    out: dict[str, list[float | None]] = {}
    for key, values in curve.items():
        if key == "step":
            continue
        means: list[float | None] = []
        for i in range(3):
            last = i == 2
            v = [float(x) for st, x in zip(steps, values)
                 if x is not None and not math.isnan(float(x)) and edges[i] <= st and (st < edges[i + 1] or last)]
            means.append(sum(v) / len(v) if v else None)
        out[key] = means
    return out


def logged_values(curve: Mapping[str, Sequence[float | None]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) where ``key`` was logged (not None, not NaN); results curves are binned means already
    (harness.downsample_history)."""
    pairs = [(float(st), float(v)) for st, v in zip(curve["step"], curve[key]) if v is not None and not math.isnan(float(v))]
    return [st for st, _ in pairs], [v for _, v in pairs]


def supervised_curve_key(curve: Mapping[str, Sequence[float | None]]) -> str | None:
    """The key of the kept network's labelled loss in a run's curve: ``sup`` (consistency methods; CPS sums its two
    networks'), ``student_sup`` (MPL, whose ``loss`` is the student's pseudo-label loss), else ``loss`` (supervised
    runs); None when the curve has none of them."""
    return next((k for k in ("sup", "student_sup", "loss") if k in curve), None)


def curve_span(curve: Mapping[str, Sequence[float | None]], iterations: int) -> int:
    """The steps a logged curve covers: the budget, or more where a fine-tune follows it (MPL, noisy student)."""
    return max(iterations, math.ceil(max(curve["step"])))


def _run(doc: Mapping[str, Any], entry: str, seed: int) -> Mapping[str, Any] | None:
    return next((r for r in doc["runs"] if r["entry"] == entry and int(r["seed"]) == seed), None)


def _case_dice(doc: Mapping[str, Any], entry: str, seed: int) -> dict[str, float | None]:
    per_seed = (doc["entries"].get(entry) or {}).get("per_seed") or {}
    return dict((per_seed.get(str(seed)) or {}).get("per_case_dice") or {})


def cpu_line(doc: Mapping[str, Any], names: Sequence[str], seed: int) -> str | None:
    """Which CPU each named entry's run of ``seed`` trained on, as recorded: fp32 training is not bit-reproducible
    across CPUs, so a pair whose runs trained on different ones differs by the machine too. None if none recorded."""
    runs = {name: _run(doc, name, seed) for name in names}
    cpus = {n: cpu_model_text(r).strip()[1:-1] for n, r in runs.items() if r and cpu_model_text(r)}
    if not cpus:
        return None
    if len(set(cpus.values())) == 1 and len(cpus) == len(names):
        return f"CPU: all {next(iter(cpus.values()))}"
    return "CPU: " + "; ".join(f"{n} {cpus.get(n, 'not recorded')}" for n in names) + " (fp32 differs across CPUs)"


def _cell(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _pairs(doc: Mapping[str, Any], entry: str, seeds: Sequence[int]) -> dict[tuple[str, str], float | None]:
    return {k: v for k, v in case_dice_by_pair(doc["entries"][entry]).items() if int(k[0]) in seeds}


def explain(doc: Mapping[str, Any], entry: str, seeds: Sequence[int] | None = None, against: Sequence[str] = ()) -> str:
    """The text: the entry's paired verdicts, then per seed its cases against the bounds (and ``against``) and its
    curve by thirds."""
    if entry in against:
        raise ValueError(f"--against names {entry!r} itself")
    for name in (entry, *against):
        if name not in doc["entries"]:
            raise ValueError(f"entry {name!r} has no finished run in this results file; it has: {', '.join(doc['entries'])}")
    e = doc["entries"][entry]
    baseline = (e.get("paired_vs_baseline") or {}).get("baseline")
    refs = list(dict.fromkeys([LOWER] + ([baseline] if baseline else []) + list(against)))
    done = sorted(int(s) for s in (e.get("per_seed") or {}))
    chosen = list(seeds) if seeds is not None else done
    missing = [s for s in chosen if s not in done]
    if missing:
        raise ValueError(f"entry {entry!r} has no finished seed {', '.join(map(str, missing))}; finished: {done}")
    dsc = (e.get("foreground") or {}).get("DSC") or {}
    lines = [f"# {entry} ({e.get('method')}): Dice {format_number(dsc.get('mean'))} over {len(done)} seed(s)"]
    if e.get("paired_vs_lower"):
        lines.append(f"- vs {LOWER}: {format_diff(e['paired_vs_lower'])}, Wilcoxon p {format_p(e['paired_vs_lower'])}; "
                     f"gap closure {format_closure((e.get('gap_closure') or {}).get('paired'))}")
    if baseline:
        lines.append(f"- vs {baseline} (its own network's supervised run): {format_diff(e['paired_vs_baseline'])}, "
                     f"Wilcoxon p {format_p(e['paired_vs_baseline'])}")
    for other in against:
        mine, theirs = _pairs(doc, entry, chosen), _pairs(doc, other, chosen)
        shared = sorted({int(s) for s, _ in mine} & {int(s) for s, _ in theirs})
        if not shared:
            lines.append(f"- vs {other}: no finished seed in common among {', '.join(map(str, chosen))}")
            continue
        c = paired_comparison(mine, theirs, other)
        lines.append(f"- vs {other} (paired over seeds {', '.join(map(str, shared))}, {c['n']} pairs): {format_diff(c)}, "
                     f"Wilcoxon p {format_p(c)}: {c['verdict']}")
    iterations = int(doc["benchmark"]["budget"]["iterations"])
    for seed in chosen:
        mine = _case_dice(doc, entry, seed)
        theirs = {r: _case_dice(doc, r, seed) for r in refs if r != entry}
        lines += ["", f"## seed {seed}", "",
                  "| case | " + entry + " | " + " | ".join(f"{r} | Δ" for r in theirs) + " |",
                  "|---|---:|" + "---:|---:|" * len(theirs)]
        for case in sorted(mine):
            cells = [_cell(mine[case])]
            for ref in theirs.values():
                b = ref.get(case)
                cells += [_cell(b), _cell(None if b is None or mine[case] is None else mine[case] - b, signed=True)]
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
        if (cpu := cpu_line(doc, [entry, *theirs], seed)) is not None:
            lines += ["", cpu]
        run = _run(doc, entry, seed)
        if run and run.get("curve"):  # thirds of the logged run, which outlasts the budget where a fine-tune follows it
            n = curve_span(run["curve"], iterations)
            lines += ["", f"curve, mean over steps 0-{n // 3} / {n // 3}-{2 * n // 3} / {2 * n // 3}-{n}:"]
            for key, means in curve_thirds(run["curve"], n).items():
                lines.append(f"- {key}: " + " / ".join("—" if m is None else f"{m:.4g}" for m in means))
        rounds = pseudo_label_rounds([run] if run else [])
        if rounds:
            lines += ["", "pseudo-labels by round (Dice against the hidden labels, for evaluation only):"]
        for q in rounds:
            lines.append(f"- {q['round']}: {q['n_selected']} of {q['n']} kept; Dice {_cell(q['mean_dice'])} (kept "
                         f"{_cell(q['mean_dice_selected'])}, left {_cell(q['mean_dice_rejected'])}); Spearman rho of the "
                         f"selection score with it {format_number(q['spearman_rho'], 2)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semiseg.benchmark.explain", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a benchmark results file (benchmarks/results/NAME.json)")
    ap.add_argument("entry", help="the entry to explain")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds to show (default: every finished one)")
    ap.add_argument("--against", nargs="+", default=[], metavar="ENTRY",
                    help="other entries to pair with, by seed and case (e.g. plain CPS against CPS-ALW)")
    a = ap.parse_args(argv)
    try:
        print(explain(load_results(a.results), a.entry, a.seeds, a.against))
    except (OSError, ValueError) as err:
        ap.exit(2, f"explain: {a.results}: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
