"""Every seed's training curve of chosen entries, across results files, in one figure and one table, so "why does
this method fall short" is shown with curves rather than argued from a mean (issue 16: UA-MT's students sitting on
the loss plateau that its own supervised network can also sit on):

    python -m semiseg.report.seed_curves --out benchmarks/results/chaos_uamt_curves.png --below 1.0 \\
        benchmarks/results/chaos_ssl_cpu.json:ua-mt,supervised-dropout \\
        benchmarks/results/chaos_ssl_dropout_seeds_cpu.json:supervised-dropout

Left: the kept network's labelled loss as each run logs it (semiseg.benchmark.explain.supervised_curve_key), as a
mean over the previous ``--smooth`` steps; right: ``grad_share`` (the unlabelled term's gradient norm over the
supervised one's) where a run logs it. Beside the PNG, a markdown table (same name, ``.md``) gives per run its test
Dice, the curve's means over thirds of the run (explain.curve_thirds, the numbers the notes cite) and, with
``--below``, the first step whose trailing mean falls under that value (when the run left the plateau), then the
terms of the data the runs trained on.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from semiseg.atomic import atomic_write_text
from semiseg.benchmark.explain import curve_span, curve_thirds, logged_values, supervised_curve_key
from semiseg.benchmark.paired import format_number
from semiseg.benchmark.results import load_results
from semiseg.benchmark.thumbnails import dataset_terms
from semiseg.report.html import agg_figure, save_figure


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
    """The runs each spec names, once each, labelled by entry (and by results file where two give the same entry)."""
    picked: dict[tuple[Path, str], dict[str, Any]] = {}
    for spec in specs:
        path, entries = parse_spec(spec)
        doc = load_results(path)
        for name in entries:
            if not any(r["entry"] == name and r.get("curve") for r in doc["runs"]):
                have = sorted({r["entry"] for r in doc["runs"] if r.get("curve")})
                raise ValueError(f"{path}: no run of entry {name!r} with a training curve; entries with one: "
                                 f"{', '.join(have) or 'none'}")
            if not isinstance((doc["benchmark"].get("budget") or {}).get("iterations"), int):
                raise ValueError(f"{path}: benchmark.budget.iterations missing: cannot split the run into thirds")
            picked[(path.resolve(), name)] = doc
    files = {p for p, _ in picked}
    by_stem = len({p.stem for p in files}) == len(files)  # stems name the files unless two share one
    names = [n for _, n in picked]
    out = []
    for (path, name), doc in picked.items():
        runs = tuple(sorted((r for r in doc["runs"] if r["entry"] == name and r.get("curve")), key=lambda r: int(r["seed"])))
        where = path.stem if by_stem else os.path.relpath(path)
        label = f"{name} ({where})" if names.count(name) > 1 else name
        out.append(Curves(label, runs, int(doc["benchmark"]["budget"]["iterations"]), str(doc["benchmark"].get("dataset", ""))))
    return out


def _key(run: Mapping[str, Any]) -> str:
    key = supervised_curve_key(run["curve"])
    if key is None:
        raise ValueError(f"entry {run['entry']!r} seed {run['seed']}: its curve logs no labelled loss "
                         f"(sup, student_sup or loss); it logs {', '.join(k for k in run['curve'] if k != 'step')}")
    return key


def _test_dice(run: Mapping[str, Any]) -> float | None:
    return ((run.get("test") or {}).get("foreground_mean") or {}).get("DSC")


def smoothed(curve: Mapping[str, Any], key: str, window: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over the steps in (step - ``window``, step]) of ``key`` where it was logged: a trailing mean, so
    a step's value uses nothing logged after it."""
    steps, values = (np.asarray(v, dtype=float) for v in logged_values(curve, key))
    if window <= 0 or steps.size == 0:
        return steps, values
    means = np.array([values[(steps > s - window) & (steps <= s)].mean() for s in steps])
    return steps, means


def first_step_below(curve: Mapping[str, Any], key: str, window: float, value: float) -> float | None:
    """The first step whose trailing mean of ``key`` is under ``value``; None if it never is."""
    steps, means = smoothed(curve, key, window)
    under = np.flatnonzero(means < value)
    return float(steps[under[0]]) if under.size else None


def _thirds(run: Mapping[str, Any], key: str, budget: int) -> str:
    if key not in run["curve"]:
        return "—"
    means = curve_thirds({"step": run["curve"]["step"], key: run["curve"][key]}, curve_span(run["curve"], budget))[key]
    return " / ".join("—" if m is None else f"{m:.3g}" for m in means)


def table(groups: Sequence[Curves], window: float, below: float | None, command: str) -> str:
    """The markdown beside the figure: per run its test Dice and its curve by thirds, then the data's terms."""
    head = ["entry", "seed", "test Dice", "labelled loss by thirds (key)", "grad_share by thirds"]
    if below is not None:
        head.append(f"first step with the trailing {window:g}-step mean under {below:g}")
    lines = ["<!-- generated by `" + command + "`; do not edit -->", "",
             "The labelled loss is each run's as its method logs it, not always the same quantity across methods: "
             "read a run's shape against its bound's, not levels across methods.", "",
             "| " + " | ".join(head) + " |", "|---|---:|---:|---|---|" + ("---:|" if below is not None else "")]
    for g in groups:
        for run in g.runs:
            key = _key(run)
            cells = [g.label, str(run["seed"]), format_number(_test_dice(run)), f"{_thirds(run, key, g.iterations)} ({key})",
                     _thirds(run, "grad_share", g.iterations)]
            if below is not None:
                step = first_step_below(run["curve"], key, window, below)
                cells.append("never" if step is None else f"{step:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + terms(groups)) + "\n"


def terms(groups: Sequence[Curves]) -> list[str]:
    """A line per dataset the runs trained on: its stated terms (CHAOS: CC BY-NC-SA 4.0), which what is derived
    from it carries; where its dataset.json is not on this machine, a line saying the terms could not be read."""
    lines = []
    for dataset in dict.fromkeys(g.dataset for g in groups if g.dataset):
        try:
            found = dataset_terms(dataset)
        except OSError:
            lines.append(f"These curves come from training on {Path(dataset).name}, whose dataset.json is not on the machine "
                         "that wrote this table: they are under that dataset's terms (its dataset.json `provenance`).")
            continue
        if found is not None:
            lines.append(f"These curves come from training on {found[0]}; derived from it, they are under its terms: {found[1]}")
    return lines


def figure(groups: Sequence[Curves], window: float, below: float | None, path: Path) -> Path:
    """Labelled loss (left) and grad_share (right) of every run: one colour per entry, one line style per seed."""
    shares = any("grad_share" in r["curve"] for g in groups for r in g.runs)
    fig, axes = agg_figure(11.0 if shares else 6.0, 4.4, 1, 2 if shares else 1)
    axes = axes[0]
    styles = ["-", "--", ":", "-."]
    for i, g in enumerate(groups):
        for j, run in enumerate(g.runs):
            label = f"{g.label} seed {run['seed']} (Dice {format_number(_test_dice(run))})"
            style = dict(color=f"C{i % 10}", ls=styles[j % len(styles)], lw=1.3)
            axes[0].plot(*smoothed(run["curve"], _key(run), window), label=label, **style)
            if shares and "grad_share" in run["curve"]:
                axes[1].plot(*smoothed(run["curve"], "grad_share", window), label=label, **style)
    axes[0].set_title(f"labelled loss as logged (mean over the previous {window:g} steps)", fontsize=10)
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
    if any(g.dataset for g in groups):
        fig.text(0.005, 0.005, f"Derived from the training data; its terms: {path.with_suffix('.md').name}", fontsize=6)
    return save_figure(fig, path)


def _relative(args: Sequence[str]) -> list[str]:
    """The arguments with absolute paths (also as ``--opt=/path``) made relative to the working directory, so the
    table names no absolute path."""
    out = []
    for a in args:
        opt, eq, value = a.partition("=") if a.startswith("--") else ("", "", a)
        out.append(f"{opt}{eq}{os.path.relpath(value)}" if os.path.isabs(value) else a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semiseg.report.seed_curves", description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", metavar="RESULTS.json:ENTRY[,ENTRY...]", help="entries to draw, by results file")
    ap.add_argument("--out", type=Path, required=True, help="the PNG; the table goes beside it with the suffix .md")
    ap.add_argument("--smooth", type=float, default=200.0, help="trailing-mean window in steps (0: as logged; default 200)")
    ap.add_argument("--below", type=float, help="also report the first step whose trailing mean of the labelled loss is under this")
    a = ap.parse_args(argv)
    if a.out.suffix != ".png":
        ap.error(f"--out {a.out}: must end in .png")
    if a.smooth < 0:
        ap.error("--smooth must be at least 0")
    try:
        groups = gather(a.specs)
        text = table(groups, a.smooth, a.below, "python -m semiseg.report.seed_curves " +
                     shlex.join(_relative(argv if argv is not None else sys.argv[1:])))
    except (OSError, ValueError) as err:
        ap.exit(2, f"seed_curves: {err}\n")
    figure(groups, a.smooth, a.below, a.out)
    atomic_write_text(a.out.with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
