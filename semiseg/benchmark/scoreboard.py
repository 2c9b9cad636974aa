"""Issue 16's done-criteria read off committed results files, so "does every method earn its place" is a command,
not a reading of many tables:

    python -m semiseg.benchmark.scoreboard benchmarks/results/la_ssl4_cpu.json benchmarks/results/chaos_ssl_cpu.json \\
        [--seeds N] [--out benchmarks/results/scoreboard.md]

Per benchmark it lists every row of the seed methods (the five papers' methods, grouped by family: a family's rows
are its settings and network variants) against the supervised run of that row's own network, paired by seed and
case, and the largest gap closure of any method. A row counts once it has all the seeds its benchmark lists (or
``--seeds N``); its verdict is *above*
or *below* where the 95% CI of the paired difference excludes 0, else *at*. A family is *at or above* once one of its
complete rows is, *below* when every complete row is, *open* while none is complete. Every row is printed, so the
reader sees what a family verdict was chosen from.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from semiseg.atomic import atomic_write_text
from semiseg.benchmark.config import LOWER, UPPER, repo_root
from semiseg.benchmark.paired import format_closure, format_diff
from semiseg.benchmark.results import load_results, own_bound_comparison

# issue 16's list of seed methods, in its order
FAMILIES = ("mean-teacher", "ua-mt", "cps", "cps-alw", "dlunet", "mpl", "uncertainty (paper rule)",
            "uncertainty (relative rule)", "noisy-student")
CLOSURE_TARGET = 0.5


def family(entry: Mapping[str, Any]) -> str | None:
    """The seed-method family of a results entry; None for the bounds, supervised rows and other methods."""
    method, params = entry.get("method"), entry.get("params") or {}
    if method == "cps":
        return "cps-alw" if params.get("adaptive_weight") else "cps"
    if method == "uncertainty":
        relative = (params.get("selection") or {}).get("top_fraction") is not None
        return f"uncertainty ({'relative' if relative else 'paper'} rule)"
    return method if method in FAMILIES else None


def verdict(ci95: Sequence[float]) -> str:
    """above / below where the CI excludes 0, else at."""
    return "above" if ci95[0] > 0 else "below" if ci95[1] < 0 else "at"


@dataclass(frozen=True)
class Row:
    """One results entry on the scoreboard."""
    name: str
    family: str | None
    seeds: int
    dice: float | None
    own_bound: str | None
    own: dict[str, Any] | None          # paired comparison with its own network's supervised run
    closure: dict[str, Any] | None      # paired gap closure on the bounds' scale
    hd95: float | None
    s_per_step: float | None
    peak_gb: float | None

    def complete(self, seeds: int) -> bool:
        return self.seeds >= seeds

    @property
    def verdict(self) -> str | None:
        return None if self.own is None else verdict(self.own["ci95"])


def _mean(stat: Mapping[str, Any] | None) -> float | None:
    return None if not stat or stat.get("mean") is None else float(stat["mean"])


def rows(doc: Mapping[str, Any]) -> list[Row]:
    """Every method entry of a results document (the bounds and supervised rows left out)."""
    out = []
    for name, e in doc["entries"].items():
        if name in (LOWER, UPPER) or e.get("method") == "supervised":
            continue
        peak = _mean(e.get("peak_rss_mb"))
        out.append(Row(name, family(e), len(e.get("seeds") or ()), _mean((e.get("foreground") or {}).get("DSC")),
                       e.get("baseline"), own_bound_comparison(e), (e.get("gap_closure") or {}).get("paired"),
                       _mean((e.get("foreground") or {}).get("HD95")), _mean(e.get("seconds_per_step")),
                       None if peak is None else peak / 1024))
    return out


def family_verdict(members: Sequence[Row], seeds: int) -> str:
    """at or above / below / open (no complete row yet), from the complete rows' own-bound verdicts."""
    done = [r for r in members if r.complete(seeds) and r.verdict is not None]
    if not done:
        return "open"
    return "at or above" if any(r.verdict in ("at", "above") for r in done) else "below"


def best_closure(board: Sequence[Row], seeds: int, seed_methods_only: bool = False) -> Row | None:
    """The complete row with the largest paired gap closure (of the seed methods alone if asked)."""
    done = [r for r in board if r.complete(seeds) and r.closure and r.closure.get("closure") is not None
            and (r.family is not None or not seed_methods_only)]
    return max(done, key=lambda r: r.closure["closure"], default=None)


def closure_met(row: Row | None) -> bool:
    """Issue 16's bar: closure >= 0.5 with a 95% CI that excludes 0."""
    return bool(row and row.closure and row.closure["closure"] >= CLOSURE_TARGET and row.closure["ci95"][0] > 0)


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def render_board(title: str, board: Sequence[Row], seeds: int) -> tuple[str, bool]:
    """Markdown for one benchmark, and whether it meets both of issue 16's criteria."""
    lines = [f"## {title}", "",
             "| family | verdict | row | seeds | Dice | own bound | Δ vs own bound [95% CI] | row verdict "
             "| gap closure [95% CI] | HD95 mm | s/step | peak RAM GB |",
             "|---|---|---|---:|---:|---|---|---|---|---:|---:|---:|"]
    verdicts = {}
    for fam in FAMILIES:
        members = [r for r in board if r.family == fam]
        verdicts[fam] = family_verdict(members, seeds)
        if not members:
            lines.append(f"| {fam} | open | (not run) | 0/{seeds} | — | — | — | — | — | — | — | — |")
        for i, r in enumerate(members):
            lines.append(" | ".join([
                f"| {fam if i == 0 else ''}", verdicts[fam] if i == 0 else "", r.name, f"{r.seeds}/{seeds}",
                _num(r.dice, ".3f"), r.own_bound or "—", format_diff(r.own), r.verdict or "—",
                format_closure(r.closure), _num(r.hd95, ".1f"), _num(r.s_per_step, ".2f"), _num(r.peak_gb, ".2f")]) + " |")
    every = all(v == "at or above" for v in verdicts.values())
    best, best_seed = best_closure(board, seeds), best_closure(board, seeds, seed_methods_only=True)
    met = closure_met(best)
    lines += ["", f"- every seed method at or above its own bound: **{'yes' if every else 'no'}** ("
              + ", ".join(f"{f}: {v}" for f, v in verdicts.items()) + ")"]
    for label, r in (("any method", best), ("seed methods", best_seed)):
        text = "none complete" if r is None else f"{r.name} {format_closure(r.closure)}"
        lines.append(f"- largest gap closure ({label}, {seeds} seeds): {text}; "
                     f"bar ≥ {CLOSURE_TARGET} with a CI excluding 0: **{'met' if closure_met(r) else 'not met'}**")
    return "\n".join(lines) + "\n", every and met


def _shown(path: Path) -> str:
    """The path as the header's command names it: relative to the checkout when inside it (no machine's paths)."""
    try:
        return Path(path).resolve().relative_to(repo_root().resolve()).as_posix()
    except ValueError:
        return Path(path).name


def render(paths: Sequence[Path], seeds: int | None = None) -> tuple[str, bool]:
    """The whole scoreboard and whether every benchmark meets issue 16's criteria; a row needs ``seeds`` seeds, by
    default as many as its benchmark lists."""
    command = " ".join(_shown(p) for p in paths) + ("" if seeds is None else f" --seeds {seeds}")
    parts = ["# Issue 16 scoreboard", "",
             f"<!-- generated by `python -m semiseg.benchmark.scoreboard {command}`; do not edit -->", "",
             "Each method row against the supervised run of its own network (its declared baseline; the lower bound "
             "where it trains the bounds' network), paired by seed and test case. Row verdict: above / below where the "
             "95% CI excludes 0, else at. A family is at or above once one of its rows with all seeds is; the gap "
             "closure is on the bounds' scale.", ""]
    ok = True
    for p in paths:
        doc = load_results(p)
        bench = doc.get("benchmark") or {}
        need = seeds if seeds is not None else len(bench.get("seeds") or (0, 1, 2))
        text, met = render_board(bench.get("name", p.stem), rows(doc), need)
        parts.append(text)
        ok = ok and met
    return "\n".join(parts), ok


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semiseg.benchmark.scoreboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="committed results files (benchmarks/results/*.json)")
    ap.add_argument("--seeds", type=int, help="seeds a row needs to count (default: all its benchmark lists)")
    ap.add_argument("--out", type=Path, help="write the markdown here (temporary name, then rename) instead of stdout")
    args = ap.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be at least 1")
    for p in args.results:
        if not p.is_file():
            ap.error(f"{p}: no such results file")
    text, _ = render(args.results, args.seeds)
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
