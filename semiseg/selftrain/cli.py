"""``semiseg selftrain RUN --method uncertainty|unfiltered|noisy-student``: a thin layer over
:func:`semiseg.selftrain.pipeline.run_selftrain`. ``semiseg.cli`` calls :func:`register_cli`."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from semiseg.argtypes import float_in, int_at_least, nonnegative_int, positive_float, positive_int, unit_fraction
from semiseg.selftrain.executor import EXECUTORS, InProcessExecutor, RayExecutor, import_ray, make_executor
from semiseg.selftrain.pipeline import METHODS, SelfTrainConfig
from semiseg.selftrain.uncertainty import SelectionConfig

_DEFAULT = SelfTrainConfig()
_RAY = RayExecutor()


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``selftrain`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    p = subparsers.add_parser("selftrain", help="offline self-training: uncertainty-guided rounds, unfiltered, noisy student")
    p.add_argument("run", help="run folder (from `semiseg plan`)")
    p.add_argument("--method", default=_DEFAULT.method, choices=METHODS)
    p.add_argument("--rounds", type=positive_int, default=_DEFAULT.rounds, help="ensemble rounds before the final model (1 = single-round ablation)")
    p.add_argument("--k", type=int_at_least(2), default=_DEFAULT.k, help="fold models per ensemble")
    p.add_argument("--iterations", type=positive_int, default=_DEFAULT.iterations, help="optimiser steps per model")
    p.add_argument("--threshold", type=float_in(0.0, 1.0), default=_DEFAULT.selection.threshold, help="keep a case when its score >= this")
    p.add_argument("--top-fraction", type=unit_fraction, default=None,
                   help="keep this share of the best-scored cases instead of applying --threshold (e.g. 0.5)")
    p.add_argument("--reduce-pairs", default=_DEFAULT.selection.pair_reduction, choices=["mean", "min"])
    p.add_argument("--reduce-classes", default=_DEFAULT.selection.class_reduction, choices=["mean", "min"])
    p.add_argument("--student-width", type=float, default=_DEFAULT.student_width, choices=[1.0, 0.5])
    p.add_argument("--student-iterations", type=positive_int, default=None, help="noisy student (default: --iterations)")
    p.add_argument("--finetune-iterations", type=positive_int, default=_DEFAULT.finetune_iterations)
    p.add_argument("--seed", type=nonnegative_int, default=_DEFAULT.seed)
    p.add_argument("--step", type=unit_fraction, default=_DEFAULT.predict_step, help="sliding-window step when pseudo-labelling")
    p.add_argument("--no-quality", action="store_true", help="skip the pseudo-label quality report against hidden labels")
    p.add_argument("--device", default=None)
    g = p.add_argument_group("executor", "where the fold trainings and pseudo-labelling shards run (results do not depend on it)")
    g.add_argument("--executor", default="local", choices=EXECUTORS, help="local: one after another in this process; ray: Ray tasks")
    g.add_argument("--address", default=None, help="ray: 'auto' joins this machine's cluster, ray://HEAD:10001 a remote one "
                                                   "(default: a local Ray instance)")
    g.add_argument("--gpus-per-task", type=float_in(0.0), default=_RAY.gpus_per_task, help="ray: GPUs per training/shard task (0.5 shares one)")
    g.add_argument("--cpus-per-task", type=positive_float, default=_RAY.cpus_per_task, help="ray: CPUs per task (also its torch threads)")
    g.add_argument("--cases-per-shard", type=positive_int, default=_RAY.cases_per_shard, help="ray: unlabelled cases per pseudo-labelling task")
    g.add_argument("--max-retries", type=nonnegative_int, default=_RAY.max_retries, help="ray: retries of a task whose worker died")
    p.set_defaults(func=cmd_selftrain)
    return p


def config_from_args(a: argparse.Namespace) -> SelfTrainConfig:
    sel = SelectionConfig(threshold=a.threshold, pair_reduction=a.reduce_pairs, class_reduction=a.reduce_classes,
                          top_fraction=a.top_fraction)
    return SelfTrainConfig(method=a.method, rounds=a.rounds, k=a.k, iterations=a.iterations, selection=sel,
                           student_width=a.student_width, student_iterations=a.student_iterations,
                           finetune_iterations=a.finetune_iterations, seed=a.seed, predict_step=a.step,
                           evaluate_quality=not a.no_quality)


def executor_from_args(a: argparse.Namespace) -> InProcessExecutor | RayExecutor:
    """The executor the options name; a missing Ray fails here, before any work starts."""
    if getattr(a, "executor", "local") == "local":
        if getattr(a, "address", None):
            raise ValueError("--address needs --executor ray")
        return make_executor("local")
    import_ray()
    return make_executor("ray", address=a.address, gpus_per_task=a.gpus_per_task, cpus_per_task=a.cpus_per_task,
                         cases_per_shard=a.cases_per_shard, max_retries=a.max_retries)


def cmd_selftrain(a: argparse.Namespace) -> int:
    from semiseg.run import Run
    from semiseg.selftrain.pipeline import run_selftrain, selftrain_dir

    executor = executor_from_args(a)
    # workers elsewhere resolve paths against their own working folder: give them absolute ones
    run = Run(Path(a.run).resolve() if executor.distributed else Path(a.run))
    cfg = config_from_args(a)
    t0 = time.time()
    with executor:
        final = run_selftrain(run, cfg, device=a.device, progress=not getattr(a, "quiet", False), executor=executor)
    summary = json.loads((selftrain_dir(run, cfg.method) / "summary.json").read_text())
    for r in summary["rounds"]:
        q = r.get("quality", {})
        extra = "".join(f", {name} {q[key]:.3f}" for key, name in (("mean_dice", "pseudo-label Dice"), ("spearman_rho", "Spearman rho"))
                        if q.get(key) is not None)
        print(f"{r['folder']}: {r['n_selected']}/{r['n_unlabelled']} selected, mean score {r['mean_score']:.3f}{extra}")
    print(f"{final} ({time.time() - t0:.0f} s)")
    return 0
