"""``semiseg benchmark`` and ``semiseg report``: thin commands over run_benchmark and write_report.

Wired into ``semiseg/cli.py`` with ``register_cli(sub)`` on its subparsers; the parser's global
``--quiet`` turns progress bars off.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from semiseg.argtypes import nonnegative_int, positive_int


def cmd_benchmark(a: argparse.Namespace) -> int:
    from semiseg.benchmark.config import load_config
    from semiseg.benchmark.harness import JobsFailed, run_benchmark

    cfg = load_config(a.config, iterations=a.iterations)
    if a.work_dir:
        cfg.work_dir = Path(a.work_dir).resolve()
    if a.results_dir:
        cfg.results_dir = Path(a.results_dir).resolve()
    if a.status:
        from semiseg.benchmark.status import benchmark_status, format_status

        print(format_status(cfg, benchmark_status(cfg, only=a.only, seeds=a.seeds)))
        return 0
    # the command recorded with every number is this process's own command line (sys.argv)
    if a.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {a.jobs}")
    try:
        run_benchmark(cfg, only=a.only, seeds=a.seeds, device=a.device, progress=not getattr(a, "quiet", False), jobs=a.jobs)
    except JobsFailed as e:
        print(f"semiseg benchmark: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from semiseg.report.html import write_report

    index = write_report(a.results, a.out)
    print(f"report: {index}")
    return 0


def register_cli(sub: Any) -> None:
    """Add the ``benchmark`` and ``report`` subcommands to ``semiseg``'s subparsers."""
    p = sub.add_parser("benchmark", help="run a benchmark file (methods x seeds + supervised bounds); resumable")
    p.add_argument("config", help="benchmark YAML/JSON, e.g. benchmarks/la_ssl_cpu.yaml")
    p.add_argument("--only", nargs="+", metavar="ENTRY", default=None, help="run only these entries (lower, upper, method names)")
    p.add_argument("--seeds", nargs="+", type=nonnegative_int, default=None, help="replace the configured seeds for this invocation")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="the same benchmark at another step count, as '<name>_steps<N>' (its own work folder and results file): "
                        "for the steps-vs-Dice convergence table")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="pieces run side by side in child processes, each with cores / jobs torch threads (default 1)")
    p.add_argument("--work-dir", default=None, help="override the config's work_dir (run folders, predictions, pieces)")
    p.add_argument("--results-dir", default=None, help="override the config's results_dir (default benchmarks/results)")
    p.add_argument("--status", action="store_true",
                   help="run nothing: list each entry x seed as finished (Dice), training (step, ETA) or not started")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("report", help="HTML report (embedded PNGs) of benchmark results files")
    p.add_argument("results", nargs="+", help="benchmarks/results/<name>.json files")
    p.add_argument("--out", required=True, help="output folder (index.html + PNGs)")
    p.set_defaults(func=cmd_report)
