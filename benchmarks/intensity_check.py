"""Does the label-free intensity check (semiseg.data.intensity_profile) name the test scans the models fail on?

For each benchmark config: the quantile profile of every training image (labelled and unlabelled) and test
image after the plan's per-case z-score, each test case's distance to the training images' median, the
flag, and the lower and upper bounds' Dice on that case (mean over the committed seeds, mean foreground
Dice per case) read from the committed results file.

    python benchmarks/intensity_check.py                     # LA-SSL-4 and CHAOS-SSL, writes the results
    python benchmarks/intensity_check.py benchmarks/la_ssl4_cpu.yaml

Results: benchmarks/results/intensity_check.md (with the command and commit).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from statistics import mean

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semiseg.atomic import atomic_write_text  # noqa: E402
from semiseg.benchmark.config import load_config  # noqa: E402
from semiseg.benchmark.results import git_commit, load_results  # noqa: E402
from semiseg.data.dataset import RawDataset  # noqa: E402
from semiseg.data.intensity_profile import check_dataset  # noqa: E402

DEFAULT = ["benchmarks/la_ssl4_cpu.yaml", "benchmarks/chaos_ssl_cpu.yaml"]


def case_dice(results: dict, entry: str) -> dict[str, float]:
    """Per test case: mean over seeds of the mean foreground Dice."""
    per: dict[str, list[float]] = {}
    for run in results["runs"]:
        if run["entry"] != entry:
            continue
        for case, classes in run["test"]["cases"].items():
            per.setdefault(case, []).append(mean(v["DSC"] for v in classes.values()))
    return {c: mean(v) for c, v in per.items()}


def check(config: str) -> list[str]:
    cfg = load_config(ROOT / config)
    ds = RawDataset.open(cfg.dataset, cfg.split)
    if {str(m).lower() for m in ds.meta["channel_names"].values()} & {"ct"}:
        raise SystemExit(f"{config}: CT normalisation needs the plan's fingerprint; this script checks MR datasets")
    qc = check_dataset(ds, [{"scheme": "zscore"}] * len(ds.image_paths(ds.test[0])))
    res_path = ROOT / "benchmarks" / "results" / f"{cfg.name}.json"
    res = load_results(res_path) if res_path.is_file() else {"runs": []}
    lower, upper = case_dice(res, "lower"), case_dice(res, "upper")
    seeds = sorted({r["seed"] for r in res["runs"] if r["entry"] == "lower"})
    train_d = sorted(qc.training.values())
    lines = [f"## {cfg.name} ({len(qc.training)} training images, {len(ds.test)} test cases)", "",
             f"Training images' distances: median {np.median(train_d):.3f}, 90th percentile "
             f"{qc.p90:.3f}, largest {train_d[-1]:.3f}; flagged above {qc.threshold:.3f}. "
             f"Dice: mean foreground Dice per case, mean over seeds {seeds} of results/{cfg.name}.json.", "",
             "| test case | distance | flagged | lower-bound Dice | upper-bound Dice |", "|---|---:|---|---:|---:|"]
    for c in ds.test:
        fmt = lambda d: f"{d[c]:.3f}" if c in d else "n/a"  # noqa: E731
        lines.append(f"| {c} | {qc.distances[c]:.3f} | {'**yes**' if c in qc.outliers else 'no'} | {fmt(lower)} | {fmt(upper)} |")
    return lines + [""]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/intensity_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", help=f"benchmark configs (default: {' '.join(DEFAULT)}, and the results file is written)")
    configs = ap.parse_args(argv).configs or DEFAULT
    body = [line for c in configs for line in check(c)]
    cmd = "python benchmarks/intensity_check.py" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    text = "\n".join(["# Label-free intensity check against the bounds' per-case Dice", "",
                      f"`{cmd}` (commit {git_commit()})", "", *body])
    print(text)
    if not argv:
        atomic_write_text(ROOT / "benchmarks" / "results" / "intensity_check.md", text)


if __name__ == "__main__":
    main(sys.argv[1:])
