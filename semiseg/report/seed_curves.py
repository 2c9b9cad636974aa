"""Every seed's training curve of chosen entries, across results files, in one figure and one table, so "why does
this method fall short" is shown with curves rather than argued from a mean (issue 16: UA-MT's students sitting on
the loss plateau that its own supervised network can also sit on):

    python -m semiseg.report.seed_curves --out benchmarks/results/chaos_uamt_curves.png --below 1.0 \\
        benchmarks/results/chaos_ssl_cpu.json:ua-mt,supervised-dropout \\
        benchmarks/results/chaos_ssl_dropout_seeds_cpu.json:supervised-dropout

Left: the supervised loss each run logs (``sup``, or ``loss`` for a supervised run), as a moving mean over
``--smooth`` steps; right: ``grad_share`` (the unlabelled term's gradient norm over the supervised one's) where a
run logs it. Beside the PNG, a markdown table (same name, ``.md``) gives per run its test Dice, the curve's means
over thirds of the run (semiseg.benchmark.explain.curve_thirds, the numbers the notes cite) and, with ``--below``,
the first step whose smoothed supervised loss falls under that value (when the run left the plateau).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from semiseg.atomic import atomic_write_text, save_png
from semiseg.benchmark.explain import curve_thirds
from semiseg.benchmark.paired import format_number
from semiseg.benchmark.results import load_results
from semiseg.benchmark.thumbnails import dataset_terms


@dataclass(frozen=True)
class Curves:
    """One entry of one results file: its label in the figure and its runs that logged a curve, by seed."""

    label: str
    runs: tuple[Mapping[str, Any], ...]
    iterations: int
    dataset: str = ""


def parse_spec(spec: str) -> tuple[Path, list[str]]:
    """``FILE:ENTRY[,ENTRY...]`` -> (file, entries)."""
    path, sep, names = spec.rpartition(":")
    entries = [n for n in names.split(",") if n]
    if not sep or not path or not entries:
        raise ValueError(f"{spec!r}: expected RESULTS.json:ENTRY[,ENTRY...]")
    return Path(path), entries


def gather(specs: Sequence[str]) -> list[Curves]:
    """The runs each spec names, labelled by entry (and by file stem where two files give the same entry)."""
    picked: list[tuple[Path, str, dict[str, Any]]] = []
    for spec in specs:
        path, entries = parse_spec(spec)
        doc = load_results(path)
        for name in entries:
            if not any(r["entry"] == name and r.get("curve") for r in doc["runs"]):
                have = sorted({r["entry"] for r in doc["runs"] if r.get("curve")})
                raise ValueError(f"{path}: no run of entry {name!r} with a training curve; entries with one: {', '.join(have)}")
            picked.append((path, name, doc))
    names = [n for _, n, _ in picked]
    out = []
    for path, name, doc in picked:
        runs = tuple(sorted((r for r in doc["runs"] if r["entry"] == name and r.get("curve")), key=lambda r: int(r["seed"])))
        label = f"{name} ({path.stem})" if names.count(name) > 1 else name
        out.append(Curves(label, runs, int(doc["benchmark"]["budget"]["iterations"]), str(doc["benchmark"].get("dataset", ""))))
    return out


def supervised_key(curve: Mapping[str, Any]) -> str:
    """The supervised term as logged: ``sup`` for a method, ``loss`` for a supervised run."""
    return "sup" if "sup" in curve else "loss"


def smoothed(curve: Mapping[str, Any], key: str, window: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, moving mean over ``window`` steps centred on each step) of ``key`` where it was logged."""
    pairs = [(float(s), float(v)) for s, v in zip(curve["step"], curve[key]) if v is not None and not math.isnan(float(v))]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = (np.array(x) for x in zip(*pairs))
    if window <= 0:
        return steps, values
    means = np.array([values[np.abs(steps - s) <= window / 2].mean() for s in steps])
    return steps, means


def first_step_below(curve: Mapping[str, Any], key: str, window: float, value: float) -> float | None:
    """The first step whose smoothed ``key`` is under ``value``; None if it never is."""
    steps, means = smoothed(curve, key, window)
    under = np.flatnonzero(means < value)
    return float(steps[under[0]]) if under.size else None


def _iterations(run: Mapping[str, Any], budget: int) -> int:
    return max(budget, math.ceil(max(run["curve"]["step"])))  # a fine-tune can outlast the budget (explain does the same)


def table(groups: Sequence[Curves], window: float, below: float | None, command: str) -> str:
    """The markdown beside the figure: per run its test Dice and its curve by thirds."""
    head = ["entry", "seed", "test Dice", "supervised loss by thirds", "grad_share by thirds"]
    if below is not None:
        head.append(f"first step with the {window:g}-step mean under {below:g}")
    lines = ["<!-- generated by `" + command + "`; do not edit -->", "",
             "| " + " | ".join(head) + " |", "|---|---:|---:|---|---|" + ("---:|" if below is not None else "")]

    def thirds(run: Mapping[str, Any], key: str, budget: int) -> str:
        if key not in run["curve"]:
            return "—"
        means = curve_thirds({"step": run["curve"]["step"], key: run["curve"][key]}, _iterations(run, budget))[key]
        return " / ".join("—" if m is None else f"{m:.3g}" for m in means)

    for g in groups:
        for run in g.runs:
            key = supervised_key(run["curve"])
            dice = ((run.get("test") or {}).get("foreground_mean") or {}).get("DSC")
            cells = [g.label, str(run["seed"]), format_number(dice), thirds(run, key, g.iterations),
                     thirds(run, "grad_share", g.iterations)]
            if below is not None:
                step = first_step_below(run["curve"], key, window, below)
                cells.append("never" if step is None else f"{step:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + _terms(groups)) + "\n"


def _terms(groups: Sequence[Curves]) -> list[str]:
    """A line per dataset whose dataset.json states terms (CHAOS: CC BY-NC-SA 4.0): what is derived from it carries
    them. Datasets not on this machine are skipped."""
    lines = []
    for dataset in dict.fromkeys(g.dataset for g in groups if g.dataset):
        try:
            terms = dataset_terms(dataset)
        except (OSError, ValueError):
            continue
        if terms is not None:
            lines.append(f"\nThese curves come from training on {terms[0]}; derived from it, they are under its terms: {terms[1]}")
    return lines


def figure(groups: Sequence[Curves], window: float, below: float | None, path: Path) -> Path:
    """Supervised loss (left) and grad_share (right) of every run: one colour per entry, one line per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shares = any("grad_share" in r["curve"] for g in groups for r in g.runs)
    fig = Figure(figsize=(11.0 if shares else 6.0, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if shares else 1, squeeze=False)[0]
    styles = ["-", "--", ":", "-."]
    for i, g in enumerate(groups):
        for j, run in enumerate(g.runs):
            dice = ((run.get("test") or {}).get("foreground_mean") or {}).get("DSC")
            label = f"{g.label} seed {run['seed']} (Dice {format_number(dice)})"
            style = dict(color=f"C{i}", ls=styles[j % len(styles)], lw=1.3)
            axes[0].plot(*smoothed(run["curve"], supervised_key(run["curve"]), window), label=label, **style)
            if shares and "grad_share" in run["curve"]:
                axes[1].plot(*smoothed(run["curve"], "grad_share", window), label=label, **style)
    axes[0].set_title(f"supervised loss as logged ({window:g}-step moving mean)", fontsize=10)
    if below is not None:
        axes[0].axhline(below, color="grey", lw=0.8, ls=":")
    if shares:
        axes[1].set_yscale("log")
        axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
        axes[1].set_title("unlabelled / supervised gradient norm (grad_share)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_png(fig, path)


def _relative(args: Sequence[str]) -> list[str]:
    """The arguments with paths under the working directory made relative: the table names no absolute path."""
    cwd = Path.cwd()
    out = []
    for a in args:
        p = Path(a)
        out.append(str(p.relative_to(cwd)) if p.is_absolute() and p.is_relative_to(cwd) else a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semiseg.report.seed_curves", description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", metavar="RESULTS.json:ENTRY[,ENTRY...]", help="entries to draw, by results file")
    ap.add_argument("--out", type=Path, required=True, help="the PNG; the table goes beside it with the suffix .md")
    ap.add_argument("--smooth", type=float, default=200.0, help="moving-mean window in steps (0: as logged; default 200)")
    ap.add_argument("--below", type=float, help="also report the first step whose smoothed supervised loss is under this")
    a = ap.parse_args(argv)
    if a.out.suffix != ".png":
        ap.error(f"--out {a.out}: must end in .png")
    if a.smooth < 0:
        ap.error("--smooth must be at least 0")
    try:
        groups = gather(a.specs)
    except (OSError, ValueError) as err:
        ap.exit(2, f"seed_curves: {err}\n")
    command = "python -m semiseg.report.seed_curves " + shlex.join(_relative(argv if argv is not None else sys.argv[1:]))
    figure(groups, a.smooth, a.below, a.out)
    atomic_write_text(a.out.with_suffix(".md"), table(groups, a.smooth, a.below, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
