"""Regenerate the README results table from ``benchmarks/results/*.json`` (never typed by hand).

    python -m semiseg.benchmark.readme_table [--readme README.md] [--results benchmarks/results] [--check]

Replaces everything between ``<!-- results:start -->`` and ``<!-- results:end -->`` in the README;
``--check`` only reports whether the README is up to date (exit 1 if not), for CI.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from semiseg.benchmark.config import LOWER, UPPER, repo_root
from semiseg.benchmark.paired import format_closure, format_diff, format_number, format_p, format_p_value
from semiseg.benchmark.results import cpu_model_text, load_results, pseudo_label_rounds, renamed_since

START, END = "<!-- results:start -->", "<!-- results:end -->"
_SEEDS = re.compile(r"^(?P<head>.* --seeds)(?P<seeds>(?: \d+)+)(?P<tail>(?: .*)?)$")
LISTED_COMMITS = 4  # more than this many commits are counted, not listed: each run's own stays in the results file


def merged_commands(commands: Iterable[str]) -> list[str]:
    """The distinct commands, those that differ only in their ``--seeds`` as one with the seeds joined: a table
    built over many sessions keeps a source line a reader can use to rerun it (each run's own is in the file)."""
    seeds: dict[tuple[str, str], set[int]] = {}
    out: set[str] = set()
    for c in commands:
        m = _SEEDS.match(c)
        if m is None:
            out.add(c)
        else:
            seeds.setdefault((m["head"], m["tail"]), set()).update(int(x) for x in m["seeds"].split())
    out |= {f"{head} {' '.join(map(str, sorted(s)))}{tail}" for (head, tail), s in seeds.items()}
    return sorted(out)


def commits_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """``commit ...``: the commits the runs were trained at, listed when few, else counted with the first and last by run time."""
    def short(c: str) -> str:
        return c[:12] + ("-dirty" if c.endswith("-dirty") else "")
    commits = sorted({short(r["git_commit"]) for r in runs})
    if len(commits) <= LISTED_COMMITS:
        return "commit " + (", ".join(commits) or "n/a")
    by_time = sorted(runs, key=lambda r: r.get("time") or "")
    return (f"{len(commits)} commits, from {short(by_time[0]['git_commit'])} to {short(by_time[-1]['git_commit'])} "
            "(each run's in the results file)")


def _pm(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s.get("std") is not None else "")


def _gap_text(name: str, gc: Mapping[str, Any] | None) -> str:
    """The closure over the (seed, case) pairs shared with both bounds, with its CI; of the means in older files."""
    if name in (LOWER, UPPER) or not gc:
        return "—"
    if (gc.get("paired") or {}).get("closure") is not None:
        return format_closure(gc["paired"])
    return "—" if gc.get("of_means") is None else f"{gc['of_means']:.2f}"


def _paired_text(name: str, c: Mapping[str, Any] | None) -> str:
    """``Δ [CI] | p`` cells against the lower bound, the Δ in bold when the CI excludes 0; a dash for the lower bound."""
    if name == LOWER:
        return "— | —"
    diff = format_diff(c)
    return f"{f'**{diff}**' if c and c.get('verdict') != 'not distinguishable' else diff} | {format_p(c)}"


def _baseline_text(c: Mapping[str, Any] | None) -> str:
    """``baseline: Δ [CI]`` against the entry's own supervised baseline (its network and regularisation), bold when
    the CI excludes 0; a dash for entries judged against the lower bound only."""
    if not c:
        return "—"
    diff = format_diff(c)
    return f"{c['baseline']}: {f'**{diff}**' if c.get('verdict') != 'not distinguishable' else diff}"


def _params_text(params: Mapping[str, Any] | None, prefix: str = "") -> str:
    """``network.dropout 0.5, network.dropout_at bottleneck``: what a bound trains with beyond plain supervised."""
    out = []
    for k, v in (params or {}).items():
        out.append(_params_text(v, f"{prefix}{k}.") if isinstance(v, Mapping) else f"{prefix}{k} {v}")
    return ", ".join(x for x in out if x)


def table_for(doc: Mapping[str, Any], source: str) -> str:
    """One benchmark: heading with its regime and budget, a row per entry, and the provenance line."""
    b = doc["benchmark"]
    sp, bud = b["split"], b["budget"]
    lines = [
        f"**{b['name']}** ({b.get('tier', '')} tier): {Path(b['dataset']).name}, {len(sp['labelled'])} labelled / "
        f"{len(sp['unlabelled'])} unlabelled / {len(sp['test'])} test cases; {bud['iterations']} steps, batch {bud['batch_size']}"
        f"{' + ' + str(bud['unlabelled_batch_size']) + ' unlabelled' if bud.get('unlabelled_batch_size') else ''}"
        f"{'' if doc.get('complete') else ' (incomplete: ' + str(len(doc.get('missing', []))) + ' run(s) missing)'}",
        "",
    ]
    pp = any("foreground_postprocessed" in e for e in doc["entries"].values())
    own = any(e.get("paired_vs_baseline") for e in doc["entries"].values())
    lines += [
        "| method | seeds | Dice (test) | gap closure [95% CI] | Δ Dice vs lower [95% CI] | p (Wilcoxon) |"
        + (" Δ Dice vs own baseline [95% CI] |" if own else "") + " NSD | HD95 (mm) | ASD (mm) |"
        " train time (min) | s/step | peak RAM (GiB) |"
        + (" Dice, post-processed | gap closure, post-processed [95% CI] | HD95, post-processed (mm) |" if pp else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if own else "") + "---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if pp else ""),
    ]
    for name, e in doc["entries"].items():
        fg = e["foreground"]
        bound = {LOWER: "lower bound (supervised, labelled only", UPPER: "upper bound (supervised, all labelled"}.get(name)
        params = _params_text(e.get("params"))
        label = name if bound is None else f"{bound}{'; ' + params if params else ''})"
        gc_text = _gap_text(name, e.get("gap_closure"))
        t, ram = e["train_wall_time_s"].get("mean"), e["peak_rss_mb"].get("max")
        t_text = "n/a" if t is None else f"{t / 60:.1f}"
        sps = (e.get("seconds_per_step") or {}).get("mean")  # training time per budget step (the last session's, if resumed)
        sps_text = "n/a" if sps is None else f"{sps:.2f}"
        ram_text = "n/a" if ram is None else f"{ram / 1024:.2f}"
        lines.append(f"| {label} | {len(e['seeds'])} | {_pm(fg['DSC'])} | {gc_text} | {_paired_text(name, e.get('paired_vs_lower'))} | "
                     + (f"{_baseline_text(e.get('paired_vs_baseline'))} | " if own else "")
                     + f"{_pm(fg['NSD'])} | {_pm(fg['HD95'], 2)} | "
                     f"{_pm(fg['ASD'], 2)} | {t_text} | {sps_text} | {ram_text} |"
                     + (f" {_pm((e.get('foreground_postprocessed') or {}).get('DSC'))} | {_gap_text(name, e.get('gap_closure_postprocessed'))} |"
                        f" {_pm((e.get('foreground_postprocessed') or {}).get('HD95'), 2)} |" if pp else ""))
    runs = doc.get("runs", [])
    commands = merged_commands(r["command"] for r in runs)
    machines = sorted({f"{r['machine'].get('cpu_count')} CPU cores{cpu_model_text(r)}, {r['train'].get('device')}, torch {r['machine'].get('torch')}" for r in runs})
    gap, gap_pp = doc.get("supervised_gap", {}), doc.get("supervised_gap_postprocessed") or {}
    lines += ["", f"Source: `{source}`; command: {', '.join(f'`{c}`' for c in commands) or 'n/a'}; {commits_text(runs)}; "
                  f"machine: {'; '.join(machines) or 'n/a'}." + (f" {renamed}." if (renamed := renamed_since(doc)) else "")
              + (f" Note: {gap['warning']}." if gap.get("warning") else "")
              + (" Δ Dice vs lower: each test case of each seed against the lower bound's on the same case and seed, mean with "
                 "a 95% bootstrap CI over those pairs (bold: the CI excludes 0) and the Wilcoxon signed-rank p. Gap closure: "
                 "mean(method - lower) / mean(upper - lower) over the pairs the three share, its CI from the same resampling."
                 if any(e.get("paired_vs_lower") for e in doc["entries"].values()) else "")
              + (" Δ vs own baseline: the same pairing against the supervised entry that trains the method's own network "
                 "and regularisation (e.g. UA-MT's dropout)." if own else "")
              + (f" Post-processing: `{json.dumps(b.get('postprocess'))}`" + (
                  f"; supervised gap after it {gap_pp['of_means']:.3f}" if gap_pp.get("of_means") is not None else "") + "." if pp else "")]
    lines += rounds_table(runs)
    return "\n".join(lines)


def rounds_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Self-training rounds: selection and pseudo-label quality (empty when no run left quality files)."""
    rows = pseudo_label_rounds(runs)
    if not rows:
        return []
    out = ["", "Self-training rounds (pseudo-labels of the unlabelled cases scored against their hidden labels, for evaluation only):", "",
           "| entry | seed | round | selected | pseudo-label Dice: all / selected / rejected | Spearman ρ, selection score vs Dice (p) |",
           "|---|---:|---|---:|---|---:|"]
    for r in rows:
        out.append(f"| {r['entry']} | {r['seed']} | {r['round']} | {r['n_selected']}/{r['n']} | {format_number(r['mean_dice'])} / "
                   f"{format_number(r['mean_dice_selected'])} / {format_number(r['mean_dice_rejected'])} | "
                   f"{format_number(r['spearman_rho'], 2)} ({format_p_value(r['p_value'])}) |")
    return out


def render(results: Sequence[Path], root: Path) -> str:
    parts = [START, "<!-- generated by `python -m semiseg.benchmark.readme_table` from benchmarks/results/*.json; do not edit -->", ""]
    if not results:
        parts += ["No benchmark results yet: run `semiseg benchmark benchmarks/<config>.yaml`.", ""]
    for p in results:
        try:
            rel = p.resolve().relative_to(root)
        except ValueError:
            rel = p
        parts += [table_for(load_results(p), str(rel)), ""]
    parts.append(END)
    return "\n".join(parts)


def update_readme(readme: Path, results_dir: Path, check: bool = False) -> bool:
    """Write the table into ``readme``; returns True if the file changed (or, with check, would change)."""
    text = readme.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{readme}: add the markers '{START}' and '{END}' (in that order) where the table belongs")
    files = []
    for f in sorted(results_dir.glob("*.json")):  # other tools may keep their own JSON there
        try:
            load_results(f)
            files.append(f)
        except ValueError:
            print(f"readme_table: {f}: not a benchmark results file, left out", file=sys.stderr)
    block = render(files, readme.resolve().parent)
    new = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    if new == text:
        return False
    if not check:
        from semiseg.data.io import atomic_write_text

        atomic_write_text(readme, new)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    root = repo_root()
    ap = argparse.ArgumentParser(prog="python -m semiseg.benchmark.readme_table", description=__doc__.splitlines()[0])
    ap.add_argument("--readme", default=str(root / "README.md"))
    ap.add_argument("--results", default=str(root / "benchmarks" / "results"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README table is out of date; change nothing")
    a = ap.parse_args(argv)
    try:
        changed = update_readme(Path(a.readme), Path(a.results), a.check)
    except (OSError, ValueError) as e:
        print(f"readme_table: error: {e}", file=sys.stderr)
        return 2
    if a.check:
        print(f"{a.readme}: results table {'out of date' if changed else 'up to date'}")
        return 1 if changed else 0
    print(f"{a.readme}: results table {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
