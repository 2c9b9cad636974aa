"""Benchmarks: every method under one plan, one budget and one seed set, with both supervised bounds.

    config.py       the benchmark file (YAML/JSON) -> BenchmarkConfig, with errors that name the field
    runners.py      method name -> how to train it (engine methods, offline self-training)
    harness.py      run_benchmark: splits, shared run folders, resumable (method, seed) pieces
    results.py      aggregation, gap closure, provenance (command, commit, machine)
    paired.py       paired comparison with the lower bound: bootstrap CI, Wilcoxon p (numpy + scipy)
    thumbnails.py   small best/worst-case overlay PNGs kept with the results
    readme_table.py README results table generated from benchmarks/results/*.json
    cli.py          ``semiseg benchmark`` and ``semiseg report`` (register_cli)

The HTML report of results files is semiseg.report.html (reports sit above the benchmark).
"""
from semiseg.benchmark.config import BenchmarkConfig, load_config
from semiseg.benchmark.results import gap_closure

__all__ = ["BenchmarkConfig", "load_config", "gap_closure", "run_benchmark"]


def __getattr__(name: str):  # torch loads only when asked for
    if name == "run_benchmark":
        from semiseg.benchmark.harness import run_benchmark

        return run_benchmark
    raise AttributeError(name)
