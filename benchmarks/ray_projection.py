"""Self-training over Ray: the measured speed-up of a local 2-worker Ray run over the in-process run on a
tiny config, and the FLARE setting's wall time projected for 1, 4 and 16 workers from per-task times.

    python benchmarks/ray_projection.py                      # measure (about 2-3 min on 2 CPU cores), project
    python benchmarks/ray_projection.py --train-s 86400 --load-s 5 --pass-s 30   # project your own task times

Tiny config: the embedded ChaosT2 sample (4 labelled, 2 unlabelled MRI cases), a [4, 8, 16] U-Net, k = 2
fold models of ``--iterations`` steps, 2 rounds, one torch thread per task. Both runs must give the same
selections (checked). The runs alternate (in-process, Ray, in-process, Ray) on fresh folders. Per-task times come from the in-process run (trainings, pseudo-labelling of a
round) and a separate timing of loading the k models; the Ray overhead per batch of tasks (submission,
scheduling, worker start, results) is the Ray run's batch wall time minus the makespan of its tasks' own
times on 2 workers.

Projection, per round: the k fold trainings (at most k run at once, however many workers), then the
pseudo-labelling shards (``--cases-per-shard`` cases each, one model load per shard), then the selection
on the driver (the in-process run's time outside tasks); after the rounds, the final model. 1 worker is
the in-process executor (one shard a round, no Ray overhead). Workloads: the issue's count (4 rounds x 5
folds = 20 trainings, 10,000 whole-CT predictions of one model = 500 cases x 5 models a round) and the
whole seed setting (2,000 unlabelled cases every round, 40,000 predictions, plus the final model).

Results: benchmarks/results/ray_projection.json (command, commit, machine, every measured time) and .md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's semiseg, in the driver and (Ray copies sys.path) in the workers
RESULTS = ROOT / "benchmarks" / "results"
TINY_PLAN = dict(spacing=(7.7, 5.0, 5.0), max_patch_voxels=16 * 48 * 48, base_features=4, max_features=16)
WORKERS = (1, 4, 16)
# (name, rounds, k, unlabelled cases pseudo-labelled per round, final model counted)
WORKLOADS = (("issue count: 20 trainings, 10,000 predictions", 4, 5, 500, False),
             ("seed setting: 21 trainings, 40,000 predictions", 4, 5, 2000, True))


def lpt_makespan(durations: Sequence[float], workers: int) -> float:
    """Longest-processing-time-first schedule of independent tasks on ``workers`` equal workers."""
    loads = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def project(t: dict[str, float], rounds: int, k: int, cases: int, final: bool, workers: int, cases_per_shard: int) -> dict[str, float]:
    """Wall seconds of the phases of one self-training run on ``workers`` workers (see the module docstring)."""
    ray = workers > 1
    overhead = t["ray_overhead_per_batch_s"] if ray else 0.0
    train = rounds * (math.ceil(k / workers) * t["train_s"] + overhead)
    shard_sizes = [len(range(i, min(i + cases_per_shard, cases))) for i in range(0, cases, cases_per_shard)] if ray else [cases]
    shards = [t["load_s"] * k + n * k * t["pass_s"] for n in shard_sizes]
    predict = rounds * (lpt_makespan(shards, workers) + overhead)
    driver = rounds * t["driver_per_round_s"]
    last = (t["train_s"] + overhead) if final else 0.0
    return {"training_s": train + last, "pseudo_labelling_s": predict, "driver_s": driver, "total_s": train + last + predict + driver}


def measure(iterations: int, repeats: int, work: Path) -> dict[str, Any]:
    """Both runs on the tiny config, alternating (in-process, Ray, in-process, ...) so a change in the load
    of a shared machine touches both alike; per-task times, overhead, wall times, and whether they agree."""
    import ray

    from semiseg.demo import sample_dataset
    from semiseg.inference.predictor import Predictor, PredictorConfig
    from semiseg.run import create_run
    from semiseg.selftrain.executor import InProcessExecutor, RayExecutor
    from semiseg.selftrain.pipeline import SelfTrainConfig, run_selftrain, selftrain_dir
    from semiseg.selftrain.uncertainty import SelectionConfig

    # the better half of the cases is selected, so round 1 trains on new data (a threshold may select none,
    # and round 1 would then reuse round 0's models)
    cfg = SelfTrainConfig(method="uncertainty", rounds=2, k=2, iterations=iterations, evaluate_quality=False,
                          selection=SelectionConfig(top_fraction=0.5))
    order = [(name, rep) for rep in range(repeats) for name in ("local", "ray")]
    runs = {}
    for name, rep in order:
        run = create_run(sample_dataset(), work / f"{name}_{rep}", overrides={}, progress=False, **TINY_PLAN)
        run.ensure_preprocessed(labelled=True, unlabelled=True, progress=False)  # not timed: the same for both
        runs[name, rep] = run
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    executors: dict[str, list[Any]] = {"local": [], "ray": []}
    init_t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - init_t0
    try:
        for name, rep in order:
            ex = InProcessExecutor() if name == "local" else RayExecutor(cases_per_shard=1)
            t0 = time.perf_counter()
            run_selftrain(runs[name, rep], cfg, progress=False, executor=ex)
            walls[name].append(time.perf_counter() - t0)
            executors[name].append(ex)
    finally:
        ray.shutdown()
    sel = {key: [json.loads((selftrain_dir(r, cfg.method) / f"round_{i}" / "selected.json").read_text())["selected"]
                 for i in range(cfg.rounds)] for key, r in runs.items()}
    local = [x for ex in executors["local"] for x in ex.timings]
    trains = [x.seconds for x in local if x.name.startswith("train round_")]
    shards = [x.seconds for x in local if x.name.startswith("pseudo-label")]
    models = [selftrain_dir(runs["local", 0], cfg.method) / "round_0" / f"fold_{f}" / "model_final.pt" for f in range(cfg.k)]
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        Predictor(models, PredictorConfig(step=cfg.predict_step, device="cpu"))
        loads.append((time.perf_counter() - t0) / cfg.k)
    load_s = statistics.median(loads)
    n_cases = len(runs["local", 0].dataset().unlabelled)
    pass_s = statistics.median((s - load_s * cfg.k) / (n_cases * cfg.k) for s in shards)
    # Ray overhead: each batch's wall time minus its tasks' own times scheduled on the 2 workers
    overheads = []
    for ex in executors["ray"]:
        batches: dict[str, list[Any]] = {}
        for x in ex.timings:
            key = x.name.rsplit("/", 1)[0] if x.name.startswith("train round_") else x.name.split(" shard")[0]
            batches.setdefault(key, []).append(x)
        overheads += [max(x.finished_after for x in b) - lpt_makespan([x.seconds for x in b], 2) for b in batches.values()]
    driver = statistics.median(w - sum(x.seconds for x in ex.timings) for w, ex in zip(walls["local"], executors["local"])) / cfg.rounds
    best_local, best_ray = min(walls["local"]), min(walls["ray"])
    share = {name: sum(x.cpu_seconds for ex in exs for x in ex.timings if x.name.startswith("train"))
             / sum(x.seconds for ex in exs for x in ex.timings if x.name.startswith("train")) for name, exs in executors.items()}
    return {
        "tiny_config": {"data": "embedded ChaosT2 sample: 4 labelled, 2 unlabelled", "plan": TINY_PLAN, "selftrain": cfg.to_dict(),
                        "threads_per_task": 1, "ray": "local, ray.init(num_cpus=2), RayExecutor(cases_per_shard=1)", "repeats": repeats},
        "wall_s": {"in_process": walls["local"], "ray_2_workers": walls["ray"], "ray_init": ray_init_s},
        "speedup_ray_2_workers": best_local / best_ray,
        "speedup_ray_2_workers_with_init": best_local / (best_ray + ray_init_s),
        "speedup_note": "best in-process wall over best Ray wall of the alternating repeats",
        "cpu_share_per_training": share,
        "cpu_share_note": ("CPU seconds over wall seconds of the trainings, each with one thread: 1.0 when a task has a core "
                           "to itself; two Ray workers at 0.5 each means the machine had one core free for this run"),
        "same_selections": all(v == sel["local", 0] for v in sel.values()),
        "selections": sel["local", 0],
        "tasks": {name: [[dataclasses.asdict(x) for x in ex.timings] for ex in exs] for name, exs in executors.items()},
        "per_task": {"train_s": statistics.median(trains), "load_s": load_s, "pass_s": pass_s,
                     "ray_overhead_per_batch_s": statistics.median(overheads), "driver_per_round_s": driver},
        "per_task_note": (f"medians over the runs. train_s: one fold model ({iterations} steps); load_s: loading one model; "
                          "pass_s: one model's sliding-window pass over one case (the pseudo-labelling of a round minus its model "
                          "loads, per case and model); ray_overhead_per_batch_s: a Ray batch's wall time minus its tasks' "
                          "makespan on 2 workers; driver_per_round_s: the in-process run's time outside tasks (selection, "
                          "CSV, plot, training folders), per round"),
    }


def fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else (f"{s / 60:.1f} min" if s < 36000 else f"{s / 3600:.1f} h")


def table(t: dict[str, float], cases_per_shard: int) -> tuple[list[dict[str, Any]], list[str]]:
    rows, md = [], []
    for name, rounds, k, cases, final in WORKLOADS:
        md += [f"**{name}** ({rounds} rounds x {k} folds, {cases} cases x {k} models pseudo-labelled a round"
               f"{', then the final model' if final else ''}; {cases_per_shard} cases a shard)", "",
               "| workers | trainings | pseudo-labelling | driver | total | speed-up |", "|---:|---:|---:|---:|---:|---:|"]
        base = None
        for w in WORKERS:
            p = project(t, rounds, k, cases, final, w, cases_per_shard)
            base = base or p["total_s"]
            rows.append({"workload": name, "workers": w, **p, "speedup": base / p["total_s"]})
            md.append(f"| {w} | {fmt_s(p['training_s'])} | {fmt_s(p['pseudo_labelling_s'])} | {fmt_s(p['driver_s'])} | "
                      f"{fmt_s(p['total_s'])} | {base / p['total_s']:.2f}x |")
        md.append("")
    return rows, md


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=80, help="steps per tiny fold model")
    ap.add_argument("--repeats", type=int, default=2, help="alternating in-process and Ray runs of the measurement")
    ap.add_argument("--cases-per-shard", type=int, default=10, help="shard size of the projected Ray runs")
    ap.add_argument("--train-s", type=float, default=None, help="project with this training time instead of measuring")
    ap.add_argument("--load-s", type=float, default=None, help="... and this model load time")
    ap.add_argument("--pass-s", type=float, default=None, help="... and this per-model per-case prediction time")
    ap.add_argument("--overhead-s", type=float, default=1.0, help="Ray overhead per batch with your own times")
    ap.add_argument("--measured", type=Path, default=None, help="re-project from this script's earlier JSON instead of measuring")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from semiseg.benchmark.results import git_commit, machine_info, portable_paths
    from semiseg.data.io import atomic_write_json, atomic_write_text

    command = " ".join(["python", "benchmarks/ray_projection.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    doc: dict[str, Any] = {"command": command, "git_commit": git_commit(), "machine": machine_info("cpu")}
    doc["machine"]["load_average_at_start"] = list(os.getloadavg())
    doc["machine"].pop("hostname", None)
    own = [a.train_s, a.load_s, a.pass_s]
    if all(v is not None for v in own):
        t = {"train_s": a.train_s, "load_s": a.load_s, "pass_s": a.pass_s, "ray_overhead_per_batch_s": a.overhead_s, "driver_per_round_s": 0.0}
        doc["per_task"], doc["per_task_note"] = t, "given on the command line"
        out_name = "ray_projection_given"
    elif any(v is not None for v in own):
        raise SystemExit("--train-s, --load-s and --pass-s go together")
    elif a.measured:
        old = json.loads(a.measured.read_text())
        doc = {**{k: v for k, v in old.items() if k != "projection"}, "projected_by": command}
        t, out_name = doc["per_task"], "ray_projection"
    else:
        with tempfile.TemporaryDirectory(prefix="ray_projection_") as tmp:
            doc.update(measure(a.iterations, a.repeats, Path(tmp)))
        t = doc["per_task"]
        out_name = "ray_projection"
        if not doc["same_selections"]:
            raise SystemExit(f"in-process and Ray selections differ: {doc['selections']}")
    rows, md_rows = table(t, a.cases_per_shard)
    doc["projection"] = rows
    md = ["# Self-training over Ray: measured speed-up and projected FLARE wall time", "",
          f"Command: `{doc['command']}`  ", f"Commit: `{doc['git_commit']}`  ",
          f"Machine: {doc['machine'].get('platform')}, {doc['machine'].get('cpu_count')} CPUs; load average at start "
          f"{[round(x, 1) for x in doc['machine']['load_average_at_start']]} (shared machine: other jobs ran concurrently)", ""]
    if doc.get("projected_by"):
        md.insert(3, f"Projection re-computed by: `{doc['projected_by']}`  ")
    if "wall_s" in doc:
        w = doc["wall_s"]
        it = doc["tiny_config"]["selftrain"]
        cases = sum(x["name"].startswith("pseudo-label round_0 shard") for x in doc["tasks"]["ray"][0])  # one case a Ray shard
        check = {n: project(t, it["rounds"], it["k"], cases, True, n, 1)["total_s"] for n in (1, 2)}
        md += ["## Measured on the tiny config", "",
               f"{doc['tiny_config']['data']}; plan {doc['tiny_config']['plan']}; k = {it['k']} fold models of {it['iterations']} steps, {it['rounds']} rounds, one thread a task.", "",
               "| run | wall | speed-up |", "|---|---:|---:|",
               f"| in-process | {' / '.join(f'{x:.1f}' for x in w['in_process'])} s | 1.00x |",
               f"| Ray, 2 local workers | {' / '.join(f'{x:.1f}' for x in w['ray_2_workers'])} s | {doc['speedup_ray_2_workers']:.2f}x |",
               f"| Ray, 2 local workers, with ray.init ({w['ray_init']:.1f} s, once) | | {doc['speedup_ray_2_workers_with_init']:.2f}x |", "",
               f"Walls of the alternating repeats; speed-up: {doc['speedup_note']}. CPU share a one-thread training "
               f"received (CPU seconds / wall seconds): in-process {doc['cpu_share_per_training']['local']:.2f}, Ray workers "
               f"{doc['cpu_share_per_training']['ray']:.2f} each ({doc['cpu_share_note']}).", "",
               f"Same selections in both runs: {doc['same_selections']}.", "",
               f"The projection model on this tiny config itself, from the per-task times below: 1 worker {check[1]:.1f} s "
               f"(measured in-process: best {min(w['in_process']):.1f} s); 2 workers with a core each {check[2]:.1f} s, a "
               f"{check[1] / check[2]:.2f}x speed-up, which this machine could not show with the CPU share above.", ""]
    md += ["## Per-task times", "", "| task | seconds |", "|---|---:|"]
    md += [f"| {k} | {v:.3f} |" for k, v in t.items()] + ["", doc["per_task_note"], "", "## Projected wall time", ""] + md_rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{out_name}.json", portable_paths(doc))
    atomic_write_text(RESULTS / f"{out_name}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
