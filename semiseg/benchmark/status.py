"""Where a benchmark stands, read from its work folder without running anything (``semiseg benchmark --status``).

A benchmark at the decisive budget runs for days of CPU time across sessions and side-by-side jobs: this
answers "which runs are finished, which are training and when will they be done" from the files the runs
already write (finished pieces, the committed results file, each training's checkpoint), so nobody has to
load checkpoints by hand. It reads only: a run's configuration key is checked when the run itself starts.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from semiseg.benchmark.config import BenchmarkConfig
from semiseg.benchmark.results import load_results


@dataclass
class RunStatus:
    """One entry and seed: ``state`` is finished, scoring (trained, not yet predicted and scored), training or
    not started; step, time and ETA come from the newest checkpoint of a training in progress."""

    entry: str
    seed: int
    state: str
    dice: float | None = None
    step: int | None = None
    steps: int | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    checkpoint_age_s: float | None = None
    where: str = ""  # a self-training's model folder in progress, relative to the run's folder

    def describe(self) -> str:
        if self.state == "finished":
            return "finished" + (f", Dice {self.dice:.3f}" if self.dice is not None else "")
        if self.state != "training":
            return self.state
        text = f"training, step {self.step}/{self.steps}" + (f" in {self.where}" if self.where else "")
        if self.elapsed_s is not None:
            text += f", {_minutes(self.elapsed_s)} so far"
        if self.eta_s is not None:
            text += f", ~{_minutes(self.eta_s)} to go"
        if self.checkpoint_age_s is not None:
            text += f" (checkpoint {_minutes(self.checkpoint_age_s)} old)"
        return text


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _finished_dice(cfg: BenchmarkConfig, seeds: Sequence[int]) -> dict[tuple[str, int], float | None]:
    """Finished runs: the work folder's pieces, then the committed results file (a fresh clone has only that)."""
    done: dict[tuple[str, int], float | None] = {}
    if cfg.results_file.is_file():
        for r in load_results(cfg.results_file).get("runs", []):
            done[(r.get("entry"), int(r.get("seed", -1)))] = r.get("test", {}).get("foreground_mean", {}).get("DSC")
    for e in cfg.entries():
        for seed in seeds:
            path = cfg.piece_path(e.name, seed)
            try:
                piece = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # absent (pieces are written atomically, so a present one reads whole)
            done[(e.name, seed)] = piece.get("test", {}).get("foreground_mean", {}).get("DSC")
    return done


def _training(folder: Path, entry: str, seed: int, now: float) -> RunStatus:
    """A training in progress: the newest checkpoint under ``folder`` (a self-training has one per model)."""
    from semiseg.networks.model_file import read_file

    checkpoints = sorted(folder.rglob("checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        return RunStatus(entry, seed, "started, no checkpoint yet")
    newest = checkpoints[-1]
    ck = read_file(newest)
    step, wall = int(ck.get("step", 0)), float(ck.get("wall_time_s", 0.0))
    cfg_file = newest.parent / "train_config.json"
    steps = int(json.loads(cfg_file.read_text()).get("iterations", 0)) if cfg_file.is_file() else None
    eta = wall / step * (steps - step) if steps and step else None
    where = "" if newest.parent == folder else str(newest.parent.relative_to(folder))
    return RunStatus(entry, seed, "training", step=step, steps=steps, elapsed_s=wall, eta_s=eta,
                     checkpoint_age_s=max(0.0, now - newest.stat().st_mtime), where=where)


def benchmark_status(cfg: BenchmarkConfig, only: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[RunStatus]:
    """The state of every entry x seed of ``cfg`` (or of ``only`` / ``seeds``), in the benchmark's run order."""
    seeds = list(seeds) if seeds else cfg.seeds
    done = _finished_dice(cfg, seeds)
    now = time.time()
    rows = []
    for seed in seeds:
        for e in cfg.entries():
            if only and e.name not in only:
                continue
            if (e.name, seed) in done:
                rows.append(RunStatus(e.name, seed, "finished", dice=done[(e.name, seed)]))
                continue
            folder = cfg.model_dir(e.name, seed)
            if (folder / "benchmark_profile.json").is_file():
                rows.append(RunStatus(e.name, seed, "trained, not yet scored"))
            elif folder.is_dir() and any(folder.rglob("train_config.json")):  # the engine writes it when a training starts
                rows.append(_training(folder, e.name, seed, now))
            else:
                rows.append(RunStatus(e.name, seed, "not started"))
    return rows


def format_status(cfg: BenchmarkConfig, rows: Sequence[RunStatus]) -> str:
    """A plain-text table and a count line, for the terminal."""
    width = max([len(r.entry) for r in rows] + [5])
    lines = [f"{cfg.name}: {cfg.budget.iterations} steps a run, work folder {cfg.work_dir}"]
    lines += [f"  {r.entry:<{width}}  seed {r.seed}  {r.describe()}" for r in rows]
    n_done = sum(r.state == "finished" for r in rows)
    n_train = sum(r.state == "training" for r in rows)
    lines.append(f"{n_done} of {len(rows)} run(s) finished, {n_train} training, {len(rows) - n_done - n_train} other")
    return "\n".join(lines)
