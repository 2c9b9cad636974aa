"""HTML report of one or more benchmark results files: one file, every image embedded (base64 PNG).

Per benchmark: the provenance (command, commit, machine, budget, plan), a summary table, Dice per entry
with its spread over seeds, each method's paired gap closure with its CI (a forest plot), each method against
its own network's supervised run (a second forest plot), per-case Dice
against the lower bound, per-class Dice, training curves, pseudo-label quality / uncertainty figures where
a method has them, and overlay thumbnails of the best and worst test case of every entry. The PNGs are
also written beside ``index.html`` for reuse. A report needs only the results file: overlays are drawn
from a run's images and predictions when they are on disk, else taken from the thumbnails kept with the
results (semiseg.benchmark.thumbnails); what is neither (and a method's own figures whose run folder is
gone) is left out with one note.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from semiseg.atomic import atomic_write_text, save_png
from semiseg.benchmark.config import LOWER, UPPER
from semiseg.benchmark.explain import logged_values, supervised_curve_key
from semiseg.benchmark.paired import format_closure, format_diff, format_number, format_p, format_p_value
from semiseg.benchmark.results import cpu_model_text, load_results, own_bound_comparison, pseudo_label_rounds, renamed_since
from semiseg.benchmark.thumbnails import best_and_worst, case_files

_COLOURS = {LOWER: "#7f7f7f", UPPER: "#2f2f2f"}
_CYCLE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def _colour(name: str, order: list[str]) -> str:
    if name in _COLOURS:
        return _COLOURS[name]
    methods = [n for n in order if n not in _COLOURS]
    return _CYCLE[methods.index(name) % len(_CYCLE)]


def agg_figure(w: float, h: float, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    """A figure on the Agg canvas without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure atomically (semiseg.atomic.replacing), leaving pyplot's state alone."""
    fig.tight_layout()
    return save_png(fig, path)


_fmt = format_number


def _pm(s: Mapping[str, Any], digits: int = 3) -> str:
    if s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s.get("std") is not None else "")


# -- plots -----------------------------------------------------------------------------------------
def plot_dice(doc: Mapping[str, Any], path: Path) -> Path:
    """Mean foreground Dice per entry, error bar = sd over seeds, dots = seeds, bounds as dashed lines."""
    entries = doc["entries"]
    names = list(entries)
    fig, ax = agg_figure(max(6.0, 1.1 * len(names) + 2), 4.2)
    ax = ax[0, 0]
    for i, n in enumerate(names):
        s = entries[n]["foreground"]["DSC"]
        if s["mean"] is None:
            continue
        ax.bar(i, s["mean"], color=_colour(n, names), alpha=0.85, yerr=s["std"] or 0, capsize=5)
        seeds = [v["foreground"]["DSC"] for v in entries[n]["per_seed"].values() if v["foreground"]["DSC"] is not None]
        ax.scatter(np.full(len(seeds), i) + np.linspace(-0.15, 0.15, len(seeds)), seeds, color="k", s=12, zorder=3)
        gc = (entries[n].get("gap_closure") or {}).get("of_means")
        if gc is not None and n not in (LOWER, UPPER):
            ax.text(i, s["mean"] + (s["std"] or 0) + 0.01, f"gap closed\n{gc:+.2f}", ha="center", va="bottom", fontsize=8)
    for b, style in ((LOWER, "--"), (UPPER, ":")):
        if b in entries and entries[b]["foreground"]["DSC"]["mean"] is not None:
            ax.axhline(entries[b]["foreground"]["DSC"]["mean"], color="k", ls=style, lw=1, label=f"{b} bound")
    vals = [entries[n]["foreground"]["DSC"]["mean"] for n in names if entries[n]["foreground"]["DSC"]["mean"] is not None]
    lo = min(vals) if vals else 0.0
    ax.set_ylim(max(0.0, lo - 0.15), 1.0)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("mean foreground Dice (test)")
    ax.set_title("Dice per method (mean ± sd over seeds; dots: seeds)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


CLOSURE_LIMITS = (-1.5, 1.5)  # the forest plot's x range: an interval beyond it is drawn to the edge with an arrow


def closure_rows(doc: Mapping[str, Any]) -> list[tuple[str, int, float, float, float]]:
    """(entry, pairs, closure, CI low, CI high) of each method with a paired gap closure, in the table's order."""
    rows = []
    for n, e in doc["entries"].items():
        c = ((e.get("gap_closure") or {}).get("paired") or {})
        if n in (LOWER, UPPER) or c.get("closure") is None or not c.get("ci95"):
            continue
        rows.append((n, int(c["n"]), float(c["closure"]), float(c["ci95"][0]), float(c["ci95"][1])))
    return rows


def _forest(rows: Sequence[tuple[str, float, float, float]], limits: tuple[float, float], path: Path, xlabel: str,
            title: str, refs: Sequence[float]) -> Path:
    """A forest plot of (label, estimate, CI low, CI high) rows, top to bottom in the given order. Green: the CI
    excludes 0 from above; red: from below; an interval beyond the axis is drawn to its edge with an arrow."""
    lo, hi = limits
    span = hi - lo
    digits = 2 if span > 1 else 3
    fig, ax = agg_figure(7.6, 0.9 + 0.38 * len(rows))
    ax = ax[0, 0]
    for i, (_, c, a, b) in enumerate(reversed(rows)):
        colour = "#2ca02c" if a > 0 else "#d62728" if b < 0 else "#555555"
        if max(a, lo) < min(b, hi):  # the part of the interval inside the axis
            ax.plot([max(a, lo), min(b, hi)], [i, i], color=colour, lw=2)
        ax.plot(min(max(c, lo), hi), i, "o", color=colour, ms=6)
        for end, edge, mark in ((a, lo, "<"), (b, hi, ">")):
            if (end < lo if mark == "<" else end > hi):
                ax.plot(edge, i, mark, color=colour, ms=6)
        ax.text(hi + span / 60, i, f"{c:+.{digits}f} [{a:+.{digits}f}, {b:+.{digits}f}]", va="center", fontsize=8)
    for x, style in zip(refs, ("--", ":")):
        ax.axvline(x, color="k", ls=style, lw=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_gap_closure(doc: Mapping[str, Any], path: Path) -> Path | None:
    """The headline of every comparison as a forest plot: each method's paired gap closure with its 95% CI, on the
    scale where 0 is the lower bound and 1 the upper bound. Green: the CI excludes 0 from above; red: from below."""
    rows = closure_rows(doc)
    if not rows:
        return None
    return _forest([(f"{name} ({n} pairs)", c, a, b) for name, n, c, a, b in rows], CLOSURE_LIMITS, path,
                   "gap closure, paired by seed and case: (method - lower) / (upper - lower)",
                   "Share of the supervised gap closed (95% CI); dashed: lower, dotted: upper", (0.0, 1.0))


def own_bound_rows(doc: Mapping[str, Any]) -> list[tuple[str, str, int, float, float, float]]:
    """(entry, reference, pairs, Dice difference, CI low, CI high) of each method against the supervised run of its own
    network, the ``baseline`` its entry declares (the lower bound where it trains the bounds' network): issue 16's
    per-method bar. A method whose baseline has no finished run yet, or whose results predate the declared baseline,
    is left out rather than compared with another network."""
    rows = []
    for n, e in doc["entries"].items():
        c = own_bound_comparison(e)
        if c is not None:
            rows.append((n, e["baseline"], int(c["n"]), float(c["mean_diff"]), float(c["ci95"][0]), float(c["ci95"][1])))
    return rows


def plot_own_bound(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Each method's paired Dice difference from the supervised run of its own network (95% CI): a method that keeps
    another network than the bounds' (plain, light) is judged here against that network, not against the bounds."""
    rows = own_bound_rows(doc)
    if not rows:
        return None
    reach = max(0.1, *(max(abs(a), abs(b)) for *_, a, b in rows))
    limit = min(0.5, float(np.ceil(reach * 20) / 20))
    return _forest([(f"{name} - {ref} ({n} pairs)", d, a, b) for name, ref, n, d, a, b in rows], (-limit, limit), path,
                   "Dice, paired by seed and case: method - its own network's supervised run",
                   "Each method against its own lower bound (95% CI)", (0.0,))


def plot_scatter(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Per test case: Dice of each entry (mean over seeds) against the lower bound's; above the diagonal = better."""
    entries = doc["entries"]
    if LOWER not in entries:
        return None
    base = {c: s["mean"] for c, s in entries[LOWER]["per_case_dice"].items()}
    names = list(entries)
    fig, ax = agg_figure(5.2, 5.0)
    ax = ax[0, 0]
    allv = [v for v in base.values() if v is not None]
    for n in names:
        if n == LOWER:
            continue
        pts = [(base[c], s["mean"]) for c, s in entries[n]["per_case_dice"].items() if base.get(c) is not None and s["mean"] is not None]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, color=_colour(n, names), label=n, s=22, alpha=0.85)
            allv += list(y)
    lo = max(0.0, min(allv) - 0.05) if allv else 0.0
    ax.plot([lo, 1], [lo, 1], color="k", lw=0.8, ls="--")
    ax.set(xlim=(lo, 1), ylim=(lo, 1), xlabel="lower bound Dice (per case)", ylabel="Dice (per case)", title="per-case Dice vs the lower bound")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_classes(doc: Mapping[str, Any], path: Path) -> Path:
    """Dice per class and entry (mean over seeds, sd as error bar)."""
    entries = doc["entries"]
    names = list(entries)
    classes = list(next(iter(entries.values()))["per_class_dice"])
    fig, ax = agg_figure(max(5.0, 1.4 * len(classes) * max(1, len(names)) / 3 + 2), 4.0)
    ax = ax[0, 0]
    width = 0.8 / max(1, len(names))
    for j, n in enumerate(names):
        means = [entries[n]["per_class_dice"].get(c, {}).get("mean") or 0.0 for c in classes]
        sds = [entries[n]["per_class_dice"].get(c, {}).get("std") or 0.0 for c in classes]
        ax.bar(np.arange(len(classes)) + (j - (len(names) - 1) / 2) * width, means, width, yerr=sds, capsize=3,
               color=_colour(n, names), label=n, alpha=0.85)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (test, mean over seeds)")
    ax.set_title("Dice per class")
    ax.legend(fontsize=8, ncol=min(5, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_curves(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Training curves per entry: every logged loss of the first seed, the total loss of the other seeds."""
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for r in doc["runs"]:
        if r.get("curve"):
            runs.setdefault(r["entry"], []).append(r)
    if not runs:
        return None
    n = len(runs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = agg_figure(4.2 * cols, 3.0 * rows, rows, cols)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (name, rs) in zip(axes.ravel(), runs.items()):
        first = rs[0]["curve"]
        keys = [k for k in first if k != "step" and not k.endswith("_w") and k not in ("threshold", "certain")]
        for k in keys:
            ax.plot(first["step"], [np.nan if v is None else v for v in first[k]], lw=1.2, label=f"{k} (seed {rs[0]['seed']})")
        for r in rs[1:]:
            k = "loss" if "loss" in r["curve"] else keys[0]
            ax.plot(r["curve"]["step"], [np.nan if v is None else v for v in r["curve"][k]], lw=0.8, alpha=0.6, label=f"{k} (seed {r['seed']})")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_diagnostics(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Why a method helps or not, first seed of each entry: the unlabelled term's gradient norm relative to the
    supervised one (``grad_share``: ~0 is an inert term, >>1 a runaway one) and the supervised loss beside the
    lower bound's (a method that stops fitting its labelled cases shows it here)."""
    first: dict[str, Mapping[str, Any]] = {}
    for r in doc["runs"]:
        if r.get("curve") and r["entry"] not in first:
            first[r["entry"]] = r
    shares = {n: r for n, r in first.items() if "grad_share" in r["curve"]}
    if not shares:
        return None
    order = list(doc["entries"])
    fig, axes = agg_figure(11.0, 3.8, 1, 2)
    ax_g, ax_s = axes[0, 0], axes[0, 1]
    for n, r in shares.items():
        x, y = logged_values(r["curve"], "grad_share")
        ax_g.plot(x, y, lw=1.3, color=_colour(n, order), label=f"{n} (seed {r['seed']})")
    ax_g.set_yscale("log")
    ax_g.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax_g.set_title("unlabelled / supervised gradient norm (grad_share)", fontsize=10)
    for n, r in (({LOWER: first[LOWER]} if LOWER in first else {}) | shares).items():
        key = supervised_curve_key(r["curve"])
        if key is None:
            continue
        x, y = logged_values(r["curve"], key)
        ax_s.plot(x, y, lw=2.0 if n == LOWER else 1.2, ls="--" if n == LOWER else "-", color=_colour(n, order),
                  label=f"{n} ({key})")
    ax_s.set_title("supervised term as logged (lower bound dashed)", fontsize=10)
    for ax in (ax_g, ax_s):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_unlabelled(doc: Mapping[str, Any], path: Path) -> Path | None:
    """Dice of each entry's predictions on the unlabelled cases against their hidden labels."""
    entries = {n: e["unlabelled_dice"] for n, e in doc["entries"].items() if e.get("unlabelled_dice")}
    if not entries:
        return None
    names = list(entries)
    fig, ax = agg_figure(max(5.0, 1.1 * len(names) + 2), 3.6)
    ax = ax[0, 0]
    for i, n in enumerate(names):
        ax.bar(i, entries[n]["mean"], yerr=entries[n]["std"] or 0, capsize=5, color=_colour(n, list(doc["entries"])), alpha=0.85)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice on unlabelled cases")
    ax.set_title("predictions on the unlabelled cases\nvs their hidden labels (evaluation only)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _dataset_labels(doc: Mapping[str, Any]) -> dict[str, int] | None:
    """Label names and values from the dataset's ``dataset.json`` (None when the dataset is not on this machine)."""
    ds_json = Path(doc["benchmark"]["dataset"]) / "dataset.json"
    return json.loads(ds_json.read_text())["labels"] if ds_json.is_file() else None


def _caption(entry: str, which: str, case: str, dice: float) -> str:
    return f"{entry}: {which} ({case}, Dice {dice:.3f})"


def overlays(doc: Mapping[str, Any], out: Path, prefix: str) -> tuple[list[tuple[str, Path]], int]:
    """Best and worst test case of every entry (its first seed), image | reference | prediction: drawn from the
    run's files when on disk, else the run's kept thumbnail; returns the figures and how many were neither."""
    from semiseg.data.io import read_array
    from semiseg.report import overlay_png

    labels = _dataset_labels(doc)
    made, missing = [], 0
    seen: set[str] = set()
    for r in doc["runs"]:
        if r["entry"] in seen:
            continue
        seen.add(r["entry"])
        kept = {t["which"]: t for t in r.get("thumbnails") or [] if Path(t["png"]).is_file()}
        for which, case, dice in best_and_worst(r["test"]["cases"]):
            files = case_files(r["test"], case) if labels is not None else None
            if files is not None:
                image, geo = read_array(files[0])
                ref, _ = read_array(files[1])
                pred, _ = read_array(files[2])
                png = out / f"{prefix}_overlay_{r['entry']}_{which}.png"
                overlay_png(image, ref, pred, labels, png, f"{r['entry']} seed {r['seed']} - {which}: {case}, Dice {dice:.3f}", geo.spacing_zyx)
                made.append((_caption(r["entry"], which, case, dice), png))
            elif which in kept:
                t = kept[which]
                made.append((_caption(r["entry"], which, t["case"], t["dice"]) + " [thumbnail]", Path(t["png"])))
            else:
                missing += 1
    return made, missing


# -- HTML ------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}h3{margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}tr.bound td{background:#fafafa;font-style:italic}
.meta{font-size:0.85em;color:#444}.meta code{background:#f4f4f4;padding:1px 4px}.warn{background:#fff4e0;border-left:4px solid #f0a020;padding:6px 10px;margin:8px 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;flex:0 1 auto}figcaption{font-size:0.8em;color:#555}
.thumbs figure{flex:0 1 48%}.thumbs img{width:100%}
.note{color:#555;font-size:0.9em;border-left:4px solid #ccc;padding:4px 10px;margin:8px 0}
img{max-width:100%;height:auto;border:1px solid #eee}pre{background:#f7f7f7;padding:8px;font-size:0.8em;overflow-x:auto}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure_html(path: Path | None, caption: str) -> str:
    if path is None or not path.is_file():
        return ""
    return f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


_PAIRED_TEXT = ("Each entry's foreground Dice on every test case of every seed minus the lower bound's on the same case "
                "and seed: mean difference with a 95% percentile-bootstrap CI ({resamples} resamples of the pairs, RNG seed "
                "{rng_seed}) and the two-sided Wilcoxon signed-rank p. An entry beats the lower bound only when the whole CI "
                "is above 0; pairs of one case over seeds are not independent, so read the CI as optimistic. Gap closure, "
                "paired: mean(entry - lower) / mean(upper - lower) over the pairs all three share, its CI from the same "
                "resampling.")


def _paired_cells(name: str, c: Mapping[str, Any] | None) -> list[str]:
    """Mean difference [CI] and p of one entry against the lower bound ('-' for the lower bound itself)."""
    if name == LOWER:
        return ["-", "-"]
    return [format_diff(c), format_p(c)]


def _rounds_html(runs: Sequence[Mapping[str, Any]]) -> str:
    """Self-training rounds of every seed: selection, pseudo-label Dice (all / selected / rejected), Spearman rho."""
    rows = pseudo_label_rounds(runs)
    if not rows:
        return ""
    f = format_number
    cells = [(r["entry"], [r["entry"], str(r["seed"]), str(r["round"]), f"{r['n_selected']}/{r['n']}", f(r["mean_dice"]),
                           f(r["mean_dice_selected"]), f(r["mean_dice_rejected"]), f"{f(r['spearman_rho'], 2)} ({format_p_value(r['p_value'])})"])
             for r in rows]
    head = ["entry", "seed", "round", "selected", "pseudo-label Dice", "selected", "rejected", "Spearman ρ, selection score vs Dice (p)"]
    return ("<p>Self-training rounds: the pseudo-labels of the unlabelled cases scored against their hidden labels "
            "(evaluation only; training never reads them).</p>" + _table(head, cells))


def _summary_table(doc: Mapping[str, Any]) -> str:
    """Narrow tables (accuracy, paired with the lower bound, after post-processing, cost) rather than one wider than the page."""
    pp = any("foreground_postprocessed" in e for e in doc["entries"].values())
    acc_head = ["entry", "seeds", "Dice (mean ± sd)", "gap closure (of means)", "gap closure (per seed)", "IoU", "NSD", "HD95 mm", "ASD mm"]
    paired_head = ["entry", "pairs", "Δ Dice vs lower [95% CI]", "p (Wilcoxon)", "verdict", "gap closure, paired [95% CI]",
                   "Δ Dice vs own baseline [95% CI]"]
    pp_head = ["entry", "Dice", "gap closure (of means)", "gap closure (per seed)", "Δ Dice vs lower [95% CI]", "p (Wilcoxon)", "NSD", "HD95 mm"]
    cost_head = ["entry", "method and parameters", "train s", "s/step", "peak RSS MiB"]
    acc, paired, post, cost = [], [], [], []
    boot = next((e["paired_vs_lower"]["bootstrap"] for e in doc["entries"].values() if e.get("paired_vs_lower")), None)
    for name, e in doc["entries"].items():
        bound = name in (LOWER, UPPER)
        gc = e.get("gap_closure") or {}
        fg = e["foreground"]
        acc.append((name, [name, str(len(e["seeds"])), _pm(fg["DSC"]),
                           "-" if bound else _fmt(gc.get("of_means"), 2), "-" if bound else _pm(gc.get("over_seeds", {}), 2),
                           _pm(fg["IoU"]), _pm(fg["NSD"]), _pm(fg["HD95"], 2), _pm(fg["ASD"], 2)]))
        pv = e.get("paired_vs_lower")
        none = name == LOWER or pv is None
        own = e.get("paired_vs_baseline")
        paired.append((name, [name, "-" if none else str(pv["n"]), *_paired_cells(name, pv), "-" if none else pv["verdict"],
                              "-" if bound or not gc.get("paired") else format_closure(gc["paired"]),
                              "-" if own is None else f"{own['baseline']}: {format_diff(own)}, p {format_p(own)}"]))
        if pp:
            fp = e.get("foreground_postprocessed") or {}
            gpp = e.get("gap_closure_postprocessed") or {}
            post.append((name, [name, _pm(fp.get("DSC") or {}), "-" if bound else _fmt(gpp.get("of_means"), 2),
                                "-" if bound else _pm(gpp.get("over_seeds", {}), 2), *_paired_cells(name, e.get("paired_vs_lower_postprocessed")),
                                _pm(fp.get("NSD") or {}), _pm(fp.get("HD95") or {}, 2)]))
        cost.append((name, [name, e["method"] + (f" {json.dumps(e['params'])}" if e["params"] else ""),
                            _pm(e["train_wall_time_s"], 0), _pm(e["seconds_per_step"], 3), _fmt(e["peak_rss_mb"].get("max"), 0)]))
    out = "<h3>Accuracy on the test cases</h3>" + _table(acc_head, acc)
    if boot is not None:
        out += ("<h3>Paired with the lower bound (same seed, same test case)</h3><p class='meta'>"
                + html.escape(_PAIRED_TEXT.format(**boot)) + "</p>" + _table(paired_head, paired))
    if pp:
        out += ("<h3>After post-processing</h3><p>Each run's test predictions after <code>"
                f"{html.escape(json.dumps(doc['benchmark'].get('postprocess')))}</code> (semiseg.postprocess), scored again.</p>"
                + _table(pp_head, post))
    return out + "<h3>Cost</h3>" + _table(cost_head, cost)


def _table(head: list[str], rows: list[tuple[str, list[str]]]) -> str:
    bound = ' class="bound"'
    body = "".join(f"<tr{bound if name in (LOWER, UPPER) else ''}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                   for name, cells in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + body + "</table>"


def _per_case_table(doc: Mapping[str, Any]) -> str:
    entries = doc["entries"]
    names = list(entries)
    cases = list(next(iter(entries.values()))["per_case_dice"])
    rows = []
    for c in cases:
        rows.append(f"<tr><td>{html.escape(c)}</td>" + "".join(f"<td>{_pm(entries[n]['per_case_dice'].get(c, {}))}</td>" for n in names) + "</tr>")
    return ("<details><summary>per-case foreground Dice (mean ± sd over seeds)</summary><table><tr><th>case</th>"
            + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>" + "".join(rows) + "</table></details>")


def _meta(doc: Mapping[str, Any]) -> str:
    b, w = doc["benchmark"], doc["written_by"]
    sp = b["split"]
    plan_bits = json.dumps({k: v for k, v in b["plan"].items() if v not in (None, {}, [])})
    commands = sorted({r["command"] for r in doc["runs"]})
    commits = sorted({r["git_commit"] for r in doc["runs"]})
    machines = sorted({f"{r['machine'].get('platform')}, {r['machine'].get('cpu_count')} CPUs{cpu_model_text(r)}, {r['machine'].get('ram_gb')} GiB, "
                       f"torch {r['machine'].get('torch')}, device {r['train'].get('device')}" for r in doc["runs"]})
    loads = [r["train"].get("load_average_1min_at_start") for r in doc["runs"]]
    loads = [x for x in loads if x is not None]
    plan = doc.get("plan") if isinstance(doc.get("plan"), dict) else {}
    net = plan.get("network", {})
    items = [
        ("dataset", f"{b['dataset']} ({len(sp['labelled'])} labelled / {len(sp['unlabelled'])} unlabelled / {len(sp['test'])} test; "
                    f"upper bound: {len(b['upper_split']['labelled'])} labelled)"),
        ("tier", b.get("tier", "")),
        ("budget", json.dumps(b["budget"])), ("plan recipe", plan_bits),
        ("plan", f"spacing {plan.get('target_spacing')} mm (z, y, x), patch {plan.get('patch_size')}, {net.get('arch')} {net.get('features')}"
                 if plan else "several plans (see the results file)"), ("predictor", json.dumps(b["predictor"] or "defaults")),
        ("seeds", ", ".join(map(str, b["seeds"]))), ("config", b.get("config_file") or "(given as a mapping, not a file)"),
        ("run commands", " | ".join(commands) + (f" ({renamed})" if (renamed := renamed_since(doc)) else "")),
        ("git commits", ", ".join(commits)), ("machines", " | ".join(machines)),
        ("machine load at training start (1-min load average)", f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"),
        ("results written", f"{w['time']} by <code>{html.escape(w['command'])}</code>"),
    ]
    return "<div class='meta'>" + "".join(
        f"<div><b>{k}</b>: {v if k == 'results written' else '<code>' + html.escape(str(v)) + '</code>'}</div>" for k, v in items) + "</div>"


def _not_on_disk_note(overlays_missing: int, figures_missing: int) -> str:
    """One line for everything drawn from run folders that are gone, instead of one warning per picture."""
    what = [f"{overlays_missing} best/worst-case overlay(s)" if overlays_missing else "",
            f"{figures_missing} method figure(s)" if figures_missing else ""]
    if not any(what):
        return ""
    return (f"<p class='note'>{html.escape(' and '.join(w for w in what if w))} left out: the images, predictions or figures they "
            "are drawn from are not on disk (run folders are not committed; rerun the benchmark to draw them).</p>")


def _warnings(doc: Mapping[str, Any]) -> str:
    w = []
    gap = doc.get("supervised_gap", {})
    if gap.get("warning"):
        w.append(gap["warning"])
    if (doc.get("supervised_gap_postprocessed") or {}).get("warning"):
        w.append("after post-processing: " + doc["supervised_gap_postprocessed"]["warning"])
    if not gap.get("available", True):
        w.append(gap.get("note", "gap closure unavailable"))
    if not doc.get("complete", True):
        w.append(f"incomplete benchmark; missing runs: {', '.join(doc.get('missing', []))}")
    w += [f"skipped {s['entry']}: {s['reason']}" for s in doc.get("skipped", [])]
    if doc.get("stale_pieces"):
        w.append(f"{len(doc['stale_pieces'])} run(s) made with another configuration were left out")
    return "".join(f"<div class='warn'>{html.escape(x)}</div>" for x in w)


def _gap_paired_text(c: Mapping[str, Any] | None) -> str:
    """Whether the supervised gap stands out from the case-to-case noise (upper vs lower on the same pairs)."""
    if not c or c.get("mean_diff") is None:
        return ""
    meaning = {"beats lower bound": "the gap is real (the whole CI is above 0)",
               "below lower bound": "the upper bound is below the lower bound"}.get(c["verdict"], "the gap is not distinguishable from 0")
    return (f"<p>Paired over {c['n']} (seed, test case) pairs, upper - lower: <b>{html.escape(format_diff(c))}</b>, "
            f"Wilcoxon p {html.escape(format_p(c))}: {meaning}.</p>")


def benchmark_section(doc: Mapping[str, Any], out: Path) -> str:
    """The HTML of one results document; its PNGs are written to ``out`` as ``<name>_*.png``."""
    name = doc["benchmark"]["name"]
    if not doc["entries"]:
        return f"<h2>{html.escape(name)}</h2><div class='warn'>no finished runs yet</div>"
    gap = doc.get("supervised_gap", {})
    figs = [
        _figure_html(plot_dice(doc, out / f"{name}_dice.png"), "Dice per method: mean over seeds with sd; dashed: lower bound, dotted: upper bound"),
        _figure_html(plot_gap_closure(doc, out / f"{name}_gap_closure.png"),
                     "gap closure per method, paired with the lower bound by seed and test case, with its 95% bootstrap CI"),
        _figure_html(plot_own_bound(doc, out / f"{name}_own_bound.png"),
                     "each method against the supervised run of its own network (its lower bound), paired by seed and test case"),
        _figure_html(plot_scatter(doc, out / f"{name}_per_case.png"), "per-case Dice against the lower bound"),
        _figure_html(plot_classes(doc, out / f"{name}_per_class.png"), "Dice per class"),
    ]
    curves = plot_curves(doc, out / f"{name}_curves.png")
    unl = plot_unlabelled(doc, out / f"{name}_unlabelled.png")
    diag = plot_diagnostics(doc, out / f"{name}_diagnostics.png")
    thumbs, overlays_missing = overlays(doc, out, name)
    figures_missing = 0
    method_figs = []
    shown: set[str] = set()
    for r in doc["runs"]:  # a method's own figures, first seed of each entry that has any (quality: the rounds table)
        if r["entry"] in shown or not r.get("figures"):
            continue
        shown.add(r["entry"])
        for f in r.get("figures", []):
            p = Path(f)
            if p.is_file():
                method_figs.append(_figure_html(p, f"{r['entry']} seed {r['seed']}: {p.parent.name}/{p.name}"))
            else:
                figures_missing += 1
    gap_text = ""
    if gap.get("available"):
        gap_text = (f"<p>Supervised gap (upper - lower, mean foreground Dice): <b>{_fmt(gap.get('of_means'))}</b>"
                    f" (per seed: {_pm(gap.get('over_seeds', {}))}). Gap closure = (method - lower) / (upper - lower).</p>")
        gap_text += _gap_paired_text(gap.get("paired"))
    gap_pp = doc.get("supervised_gap_postprocessed") or {}
    if gap_pp.get("available"):
        gap_text += (f"<p>After post-processing: supervised gap <b>{_fmt(gap_pp.get('of_means'))}</b>"
                     f" (per seed: {_pm(gap_pp.get('over_seeds', {}))}).</p>") + _gap_paired_text(gap_pp.get("paired"))
    parts = [
        f"<h2>{html.escape(name)}</h2>",
        f"<p>{html.escape(doc['benchmark'].get('description', ''))}</p>" if doc["benchmark"].get("description") else "",
        _meta(doc), _warnings(doc), _not_on_disk_note(overlays_missing, figures_missing), gap_text, _summary_table(doc), _per_case_table(doc),
        "<h3>Dice</h3><div class='grid'>" + "".join(figs) + "</div>",
        "<h3>Training curves</h3>" + (_figure_html(curves, "training losses (binned means over steps)") if curves else "<p>no training logs</p>"),
        ("<h3>Diagnostics</h3>" + _figure_html(diag, "left: the unlabelled loss's gradient norm over the supervised one's "
         "(first seed; ~0: an inert term, >>1: it drowns the labels); right: the supervised term each method logs beside the "
         "lower bound's loss (dashed), not always the same quantity (BCP's is on its pasted images, CPS's sums both nets')") if diag else ""),
        "<h3>Pseudo-label quality and uncertainty</h3>" + _rounds_html(doc["runs"]) + (
            "<div class='grid'>" + _figure_html(unl, "Dice on the unlabelled cases") + "".join(method_figs) + "</div>"
            if unl or method_figs else "<p>none shown (see the note above)</p>" if figures_missing
            else "<p>none of these methods produced pseudo-label or uncertainty figures "
                 "(set <code>score_unlabelled: true</code> to score predictions on the unlabelled cases)</p>"),
        "<h3>Best and worst test case per entry</h3>" + ("<div class='grid thumbs'>" + "".join(_figure_html(p, cap) for cap, p in thumbs)
                                                         + "</div>" if thumbs else "<p>none shown (see the note above)</p>"),
    ]
    return "\n".join(parts)


def write_report(results: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` (self-contained) and its PNGs for the given results files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [load_results(p) for p in results]
    if not docs:
        raise ValueError("no results files given")
    names = [d["benchmark"]["name"] for d in docs]
    toc = "<ul>" + "".join(f"<li><a href='#{html.escape(n)}'>{html.escape(n)}</a></li>" for n in names) + "</ul>" if len(docs) > 1 else ""
    body = "\n".join(f"<section id='{html.escape(d['benchmark']['name'])}'>{benchmark_section(d, out)}</section>" for d in docs)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>semiseg benchmark: {html.escape(', '.join(names))}</title>"
            f"<style>{_CSS}</style></head><body><h1>semiseg benchmark report</h1>{toc}{body}"
            "<p class='meta'>Generated by <code>semiseg report</code>; every figure is embedded, so this file can be mailed as is.</p>"
            "</body></html>\n")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
