"""Run a benchmark: every entry (lower bound, upper bound, methods) x every seed, under one plan and budget.

Work folder (``work_dir``, default ``runs/bench/<name>``)::

    benchmark.json            dataset, splits and plan recipe the folder was made for (checked on reuse)
    splits/regime.json        the regime (labelled / unlabelled / test); splits/upper.json: all labelled
    regime/                   run folder of the regime: plan.json, cache/, models/<entry>/seed_<s>/
    upper/                    run folder of the upper bound: the regime's plan.json, its own cache
                              (the cache marks each case labelled or not, so it cannot be shared)
    test/images, test/labels  test images (links) and their reference labels (evaluation only)
    predictions/<entry>/seed_<s>/{test,unlabelled}/ , eval/<entry>/seed_<s>_{test,unlabelled}.json
    pieces/<entry>/seed_<s>.json   one finished run, written atomically: rerunning skips it

Each piece records its configuration key; a piece made under a different configuration stops the run
with a message rather than being mixed into the comparison. Training resumes from its checkpoint and
prediction from the cases already written, so an interrupted benchmark loses at most a few steps.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from semiseg.atomic import link_or_copy
from semiseg.benchmark.config import UPPER, BenchmarkConfig, ConfigError, MethodSpec
from semiseg.benchmark.results import aggregate, comparable_plan, git_commit, provenance
from semiseg.benchmark.runners import SelfTrainRunner, runner_for
from semiseg.config import ALL_AXES, Plan, TrainConfig, comparable_train_config
from semiseg.data.io import atomic_write_json
from semiseg.run import Run, create_run

CURVE_POINTS = 200  # a training curve kept in the results is averaged into at most this many bins
FIGURE_WORDS = ("uncertainty", "quality", "pseudo", "selection")  # PNGs of a run's folder worth reporting


@dataclass
class Layout:
    """The prepared work folder of a benchmark."""

    work: Path
    regime: Run
    upper: Run
    test_images: Path
    test_labels: Path
    unlabelled_images: Path | None = None
    unlabelled_labels: Path | None = None

    def run_for(self, entry: MethodSpec) -> Run:
        return self.upper if entry.name == UPPER else self.regime


def train_config(cfg: BenchmarkConfig, entry: MethodSpec, seed: int) -> TrainConfig:
    """The budget applied to one entry and seed: the same steps and batch sizes for every method."""
    b = cfg.budget
    return TrainConfig(**{**b.train, "method": entry.method, "iterations": b.iterations, "batch_size": b.batch_size,
                          "unlabelled_batch_size": b.unlabelled_batch_size, "seed": seed, "method_params": dict(entry.params)})


def piece_key(cfg: BenchmarkConfig, entry: MethodSpec, seed: int, plan: Plan) -> dict[str, Any]:
    """Everything a piece's numbers depend on (not the device: that is recorded, not keyed), in its JSON form."""
    return _as_json({
        "dataset": str(cfg.dataset),
        "split": cfg.upper_split() if entry.name == UPPER else cfg.split,
        "plan": _plan_key(plan),
        "train_config": _train_key(train_config(cfg, entry, seed)),
        "predictor": cfg.predictor,
        "score_unlabelled": cfg.score_unlabelled,
    })


KEYED_WHEN_SET = {"precision": "auto", "unlabelled_augmentation": "mirror"}  # TrainConfig fields added after pieces existed


def _train_key(tc: TrainConfig) -> dict[str, Any]:
    """The training config as keyed: ``num_workers`` never changes a batch (batches are a function of (seed,
    step)), so it is left out; fields added later (``precision``, ``unlabelled_augmentation``) are left out at their
    defaults so pieces made before they existed stay valid (keys are compared as written, so they keep
    checkpoint_every; runs compare by comparable_train_config). ``method_params`` is keyed as written in the
    benchmark file, not with the method's defaults filled in."""
    d = dataclasses.asdict(tc)
    d.pop("num_workers", None)
    for name, default in KEYED_WHEN_SET.items():
        if d.get(name) == default:
            d.pop(name)
    return d


def _plan_key(plan: Plan) -> dict[str, Any]:
    """The plan as keyed; ``mirror_axes``, ``network.dropout_at``, ``foreground_inside`` and ``label_resampling`` are
    left out at their defaults (padded patches, linear) so pieces made before those fields existed stay valid, and
    the fields no number depends on (``results.UNKEYED_PLAN_FIELDS``) always."""
    d = dataclasses.asdict(plan)
    if tuple(d.get("mirror_axes", ALL_AXES)) == ALL_AXES:
        d.pop("mirror_axes", None)
    if d["network"].get("dropout_at", "auto") == "auto":  # likewise for network.dropout_at, added later
        d["network"].pop("dropout_at", None)
    if not d.get("foreground_inside", False):  # and for foreground_inside (stop 25)
        d.pop("foreground_inside", None)
    if d.get("label_resampling", "linear") == "linear":  # and label_resampling (stop 26)
        d.pop("label_resampling", None)
    return comparable_plan(d)


def _as_json(obj: Any) -> Any:
    """What ``obj`` reads back as from a JSON file (tuples become lists), so comparisons with files are exact."""
    return json.loads(json.dumps(obj))


def _gather(cfg: BenchmarkConfig, cases: list[str], images: Path, labels: Path) -> None:
    """Images (linked) and hidden reference labels (copied) of cases that are evaluated, never trained on."""
    from semiseg.data.dataset import RawDataset

    ds = RawDataset.open(cfg.dataset, cfg.split)
    for case in cases:
        for p in ds.image_paths(case):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: image of case '{case}' not found")
            link_or_copy(p, images / p.name, how="symbolic")
        ref = ds.reference_label_path(case)
        if not ref.is_file():
            raise FileNotFoundError(f"{ref}: reference label of evaluated case '{case}' not found")
        link_or_copy(ref, labels / ref.name, how="copy")


def prepare(cfg: BenchmarkConfig, progress: bool = True) -> Layout:
    """Create (or check and reuse) the work folder: splits, the shared plan, both run folders, test data."""
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    recipe = {"dataset": str(cfg.dataset), "split": cfg.split, "plan": dataclasses.asdict(cfg.plan)}
    stamp = work / "benchmark.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        diff = sorted(k for k in recipe if old.get(k) != recipe[k])
        if diff:
            raise ConfigError(f"{work} was made for a different {' and '.join(diff)} than {cfg.source or 'this config'}; "
                              "delete that folder or give the benchmark another name or work_dir")
    else:
        atomic_write_json(stamp, recipe)
    splits = work / "splits"
    for name, split in (("regime", cfg.split), ("upper", cfg.upper_split())):
        path = splits / f"{name}.json"
        if not path.is_file() or json.loads(path.read_text()) != split:
            atomic_write_json(path, split)
    regime_root = work / "regime"
    if (regime_root / "plan.json").is_file() and (regime_root / "source.json").is_file():
        regime = Run(regime_root)
    else:
        p = cfg.plan
        regime = create_run(cfg.dataset, regime_root, splits / "regime.json", spacing=p.spacing, max_patch_voxels=p.max_patch_voxels,
                            base_features=p.base_features, max_features=p.max_features, overrides=p.overrides or None, progress=progress)
    upper = Run(work / "upper")
    upper.root.mkdir(exist_ok=True)
    plan_text = (regime.root / "plan.json").read_text()  # one plan for every run: same network, patch, preprocessing
    if not (upper.root / "plan.json").is_file() or (upper.root / "plan.json").read_text() != plan_text:
        regime.plan.save(upper.root / "plan.json")
    source = {"dataset": str(cfg.dataset), "split": str((splits / "upper.json").resolve())}
    if not (upper.root / "source.json").is_file() or json.loads((upper.root / "source.json").read_text()) != source:
        atomic_write_json(upper.root / "source.json", source)
    layout = Layout(work, regime, upper, work / "test" / "images", work / "test" / "labels")
    _gather(cfg, cfg.split["test"], layout.test_images, layout.test_labels)
    if cfg.score_unlabelled and cfg.split["unlabelled"]:
        layout.unlabelled_images, layout.unlabelled_labels = work / "unlabelled" / "images", work / "unlabelled" / "labels"
        _gather(cfg, cfg.split["unlabelled"], layout.unlabelled_images, layout.unlabelled_labels)
    return layout


# -- one run ---------------------------------------------------------------------------------------
def _checkpoint_step(folder: Path) -> int:
    ck = folder / "checkpoint.pt"
    if not ck.is_file():
        return 0
    from semiseg.networks.model_file import read_file

    return int(read_file(ck).get("step", 0))


def downsample_history(history: list[dict[str, float]], points: int = CURVE_POINTS) -> dict[str, list[float | None]]:
    """A training log averaged into at most ``points`` bins of consecutive steps (keeps results files small)."""
    import numpy as np

    if not history:
        return {}
    from semiseg.engine.trainer import history_keys

    keys = history_keys(history)
    bins = np.array_split(np.arange(len(history)), min(points, len(history)))
    out: dict[str, list[float | None]] = {"step": [float(np.mean([history[i]["step"] for i in b])) for b in bins]}
    for k in keys:
        col = []
        for b in bins:
            v = [history[i].get(k) for i in b]
            v = [float(x) for x in v if x is not None and np.isfinite(x)]
            col.append(float(np.mean(v)) if v else None)
        out[k] = col
    return out


def _train(cfg: BenchmarkConfig, layout: Layout, entry: MethodSpec, seed: int, device: str | None, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train (or find trained) one entry and seed; wall time and peak RSS cover training only."""
    from semiseg.profiling import profile_call

    run = layout.run_for(entry)
    tcfg = train_config(cfg, entry, seed)
    runner = runner_for(entry.method)
    out = cfg.model_dir(entry.name, seed)
    profile_file = out / "benchmark_profile.json"
    if profile_file.is_file():
        info = json.loads(profile_file.read_text())
        if comparable_train_config(info.get("train_config") or {}) != comparable_train_config(dataclasses.asdict(tcfg)):
            raise ConfigError(f"{out} holds a model trained with another configuration; delete that folder to retrain")
        if Path(info["model"]).exists():
            return Path(info["model"]), info
    started = out / "train_config.json"  # written by the engine when a training starts
    if started.is_file() and comparable_train_config(json.loads(started.read_text())) != comparable_train_config(dataclasses.asdict(tcfg)):
        raise ConfigError(f"{out} holds a training started with another configuration; delete that folder to retrain")
    runner.prepare(run, tcfg, progress)  # preprocessing is not part of the measured training
    start = _checkpoint_step(out)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # timings on a shared machine need this context
    model, eff = profile_call(runner.train, run, tcfg, out, device, progress)
    model = Path(model)
    log_file = (model.parent if model.is_file() else model) / "log.json"
    log = json.loads(log_file.read_text()) if log_file.is_file() else {}
    measured = tcfg.iterations - start
    wall = session = eff.wall_time_s
    if measured <= 0:  # already trained before this session: only the engine's own log knows the time
        wall = session = log.get("wall_time_s")
        measured = tcfg.iterations
    elif start > 0 and log.get("wall_time_s") is not None:
        wall = log["wall_time_s"]  # resumed: the whole training, earlier sessions included (s/step stays this session's)
    info = {
        "model": str(model), "model_dir": str(out), "log": str(log_file) if log_file.is_file() else None,
        "wall_time_s": wall, "wall_time_this_session_s": session, "peak_rss_mb": eff.peak_rss_mb if start < tcfg.iterations else None,
        "max_gpu_mb": eff.max_gpu_mb, "auc_cpu_percent_s": eff.auc_cpu_percent_s,
        "steps": tcfg.iterations, "steps_measured": measured, "resumed_from_step": start,
        "seconds_per_step": (session / measured) if session is not None and measured else None, "device": log.get("device", device),
        "train_config": dataclasses.asdict(tcfg), "load_average_1min_at_start": load,
        **_models_time(out),
    }
    atomic_write_json(profile_file, info)
    return model, info


def _models_time(out: Path) -> dict[str, Any]:
    """Training time of every model a multi-model method (self-training: fold ensembles, students) trained in
    ``out``, from each model's own log (which spans all the sessions of a resumed training). The measured
    ``wall_time_s`` covers only this invocation; this is the method's whole training cost. Models taken from
    the shared store (``shared_from`` in their manifest: round-0 folds another method of the seed trained
    first) are counted apart, so that their time is not paid twice."""
    from semiseg.selftrain.pipeline import MANIFEST_FILE

    logs = sorted(out.rglob("log.json"))
    if len(logs) <= 1:
        return {}
    own, shared = [], 0
    for p in logs:
        manifest = p.parent / MANIFEST_FILE
        if manifest.is_file() and "shared_from" in json.loads(manifest.read_text()):
            shared += 1
            continue
        own.append(json.loads(p.read_text()).get("wall_time_s"))
    return {"models_trained": len(own), "models_shared": shared, "models_wall_time_s": float(sum(t for t in own if t is not None))}


def _predict_and_score(cfg: BenchmarkConfig, model: Path, images: Path, labels: Path, pred_dir: Path, out_file: Path,
                       device: str | None, progress: bool) -> tuple[dict[str, Any], float]:
    from semiseg.evaluation.evaluate import evaluate_folders
    from semiseg.inference import Predictor, PredictorConfig

    opts = {**cfg.predictor, **({"device": device} if device else {})}
    t0 = time.perf_counter()
    Predictor.from_path(model, PredictorConfig(**opts)).predict_folder(images, pred_dir, progress=progress)
    wall = time.perf_counter() - t0
    evaluate_folders(pred_dir, labels, cfg.dataset / "dataset.json", out_file, progress=progress)
    result = json.loads(out_file.read_text())  # the JSON file already holds NaN as null
    return {k: result[k] for k in ("cases", "mean", "foreground_mean", "tolerances_mm")} | {
        "pred_dir": str(pred_dir), "ref_dir": str(labels), "images_dir": str(images)}, wall


def _figures(folder: Path) -> tuple[list[str], dict[str, Any]]:
    """Pseudo-label quality / uncertainty PNGs and quality JSON a method left in its folder."""
    pngs, quality = [], {}
    if folder.is_dir():
        for p in sorted(folder.rglob("*.png")):
            if any(w in p.name.lower() for w in FIGURE_WORDS):
                pngs.append(str(p))
        for p in sorted(folder.rglob("*quality*.json")):
            try:
                quality[str(p.relative_to(folder))] = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
    return pngs, quality


def training_history(train_info: dict[str, Any]) -> list[dict[str, float]]:
    """The final model's training log, with the runs it was fine-tuned from before it (a noisy student's student)."""
    from semiseg.selftrain.pipeline import lineage_history

    return lineage_history(Path(train_info["log"]).parent) if train_info.get("log") else []  # "log": None when none was written


def run_piece(cfg: BenchmarkConfig, layout: Layout, entry: MethodSpec, seed: int, device: str | None = None,
              progress: bool = True, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, predict the test cases, evaluate: the piece of the results for one entry and seed."""
    commit = git_commit()  # the code this process runs is the checkout's at its start; HEAD may move during a long run
    model, train_info = _train(cfg, layout, entry, seed, device, progress)
    tag = Path(entry.name) / f"seed_{seed}"
    test, predict_wall = _predict_and_score(cfg, model, layout.test_images, layout.test_labels, layout.work / "predictions" / tag / "test",
                                            layout.work / "eval" / entry.name / f"seed_{seed}_test.json", device, progress)
    piece: dict[str, Any] = {
        "entry": entry.name, "method": entry.method, "role": entry.role, "params": entry.params, "seed": seed,
        "key": piece_key(cfg, entry, seed, layout.run_for(entry).plan),
        "train": train_info, "predict": {"wall_time_s": predict_wall}, "test": test,
    }
    if layout.unlabelled_images is not None and layout.unlabelled_labels is not None and entry.name != UPPER:
        piece["unlabelled"], _ = _predict_and_score(cfg, model, layout.unlabelled_images, layout.unlabelled_labels,
                                                    layout.work / "predictions" / tag / "unlabelled",
                                                    layout.work / "eval" / entry.name / f"seed_{seed}_unlabelled.json", device, progress)
    piece["curve"] = downsample_history(training_history(train_info))
    piece["figures"], piece["pseudo_label_quality"] = _figures(Path(train_info["model_dir"]))
    for summary in sorted(Path(train_info["model_dir"]).glob("selftrain_*/summary.json")):
        # rounds, selection counts, pseudo-label quality, and which models were reused from another
        # method of the same seed (their training time is in that method's wall time, not this one's)
        piece["selftrain"] = json.loads(summary.read_text())
    piece["budget"] = dataclasses.asdict(cfg.budget)
    piece.update(provenance(device, command, commit))
    return piece


# -- the benchmark ---------------------------------------------------------------------------------
def collect_pieces(cfg: BenchmarkConfig, layout: Layout) -> tuple[list[dict[str, Any]], list[str]]:
    """Finished pieces of this configuration's entries, and the paths of stale ones (other configuration)."""
    pieces, stale = [], []
    plan = layout.regime.plan
    for entry in cfg.entries():
        for path in sorted(cfg.pieces_dir(entry.name).glob("seed_*.json")):
            p = json.loads(path.read_text())
            if stored_key(p) == piece_key(cfg, entry, int(p["seed"]), plan):
                pieces.append(p)
            else:
                stale.append(str(path))
    return pieces, stale


def postprocess_pieces(cfg: BenchmarkConfig, layout: Layout, progress: bool = False) -> int:
    """Score every finished piece after the config's ``postprocess`` steps (once per set of steps)."""
    from semiseg.benchmark.postprocessed import is_current, score_piece

    if not cfg.postprocess:
        return 0
    done = 0
    plan = layout.regime.plan
    for entry in cfg.entries():
        for path in sorted(cfg.pieces_dir(entry.name).glob("seed_*.json")):
            p = json.loads(path.read_text())
            if stored_key(p) == piece_key(cfg, entry, int(p["seed"]), plan) and not is_current(p, cfg.postprocess):
                try:
                    done += score_piece(path, cfg.postprocess, cfg.dataset, progress)
                except FileNotFoundError as e:  # predictions deleted: the raw scores stand, the entry shows no post-processed ones
                    print(f"[{cfg.name}] not post-processed: {e}", flush=True)
    return done


def thumbnail_pieces(cfg: BenchmarkConfig, layout: Layout) -> int:
    """Best/worst-case overlay thumbnails of each entry's first-seed piece, kept beside the results file
    (``<results_dir>/<name>_thumbnails/``) so the committed report shows them on a clone without predictions."""
    from semiseg.benchmark.thumbnails import piece_thumbnails, write_data_notice

    done, seed, plan = 0, cfg.seeds[0], layout.regime.plan
    folder = cfg.results_dir / f"{cfg.name}_thumbnails"
    for entry in cfg.entries():
        path = cfg.piece_path(entry.name, seed)
        if not path.is_file():
            continue
        p = json.loads(path.read_text())
        if p.get("thumbnails") or stored_key(p) != piece_key(cfg, entry, seed, plan):
            continue
        made = piece_thumbnails(p["test"], folder, f"{entry.name}_seed_{seed}")
        if made:
            atomic_write_json(path, {**p, "thumbnails": made})
            done += 1
    if any(folder.glob("*.png")):
        write_data_notice(folder, cfg.dataset)  # images of the data carry its terms (CHAOS: CC BY-NC-SA 4.0)
    return done


def write_results(cfg: BenchmarkConfig, layout: Layout, skipped: Sequence[dict[str, Any]] = (), device: str | None = None,
                  command: Sequence[str] | None = None) -> Path:
    postprocess_pieces(cfg, layout)
    thumbnail_pieces(cfg, layout)
    pieces, stale = collect_pieces(cfg, layout)
    doc = aggregate(cfg, pieces, skipped, stale, command, device)
    atomic_write_json(cfg.results_file, doc)
    return cfg.results_file


def stored_key(piece: dict[str, Any]) -> dict[str, Any]:
    """A finished piece's key as compared: its plan without the unkeyed fields, which keys written before they
    were left out still hold."""
    key = dict(piece.get("key", {}))
    if isinstance(key.get("plan"), dict):
        key["plan"] = comparable_plan(key["plan"])
    return key


def restore_pieces(cfg: BenchmarkConfig, layout: Layout) -> int:
    """Write back, from the committed results file, the pieces this work folder lacks; returns how many.

    A fresh clone has the results file but not ``runs/``: without this, the first piece it finished would
    rewrite the results from that piece alone and drop every committed run. Only runs whose key equals this
    configuration's key are restored (the file states the plan once; it is put back into each key), so a
    changed config still reruns rather than mixing. A restored piece keeps its recorded paths and scores;
    its model and predictions are not there, so post-processing steps added later cannot rescore it."""
    if not cfg.results_file.is_file():
        return 0
    from semiseg.benchmark.results import load_results

    doc = load_results(cfg.results_file)
    plans = doc.get("plan")
    # a list: several plans in one file, restorable only where they are one plan up to the unkeyed fields
    distinct = {json.dumps(comparable_plan(p), sort_keys=True) for p in (plans if isinstance(plans, list) else [plans])
                if isinstance(p, dict)}
    if len(distinct) != 1:
        return 0
    plan = json.loads(distinct.pop())
    names = {e.name: e for e in cfg.entries()}
    restored = 0
    for run in doc.get("runs", []):
        entry = names.get(run.get("entry"))
        if entry is None:
            continue
        seed = int(run["seed"])
        path = cfg.piece_path(entry.name, seed)
        piece = {**run, "key": {**run.get("key", {}), "plan": plan}}
        if path.is_file() or piece["key"] != piece_key(cfg, entry, seed, layout.run_for(entry).plan):
            continue
        atomic_write_json(path, piece)
        restored += 1
    return restored


def _check_piece(path: Path, key: dict[str, Any]) -> bool:
    """True if finished under this configuration; raise if finished under another one."""
    if not path.is_file():
        return False
    old = stored_key(json.loads(path.read_text()))
    if old == key:
        return True
    diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
    raise ConfigError(f"{path} was made with a different {', '.join(diff)}; delete it and its model folder "
                      f"({path.parents[2] / '<regime|upper>' / 'models' / path.parent.name / path.stem}) to rerun, "
                      "or give the benchmark another name")


class JobsFailed(RuntimeError):
    """Some ``--jobs`` children failed (the others' pieces are kept and in the results file)."""


def job_groups(pending: Sequence[tuple[MethodSpec, int]]) -> list[tuple[list[MethodSpec], int]]:
    """Pending pieces as independent jobs, in run order: one per engine piece, and one per seed for its
    self-training entries, which share the seed's round-0 fold models (two jobs must never train one model)."""
    groups: list[tuple[list[MethodSpec], int]] = []
    shared: dict[int, list[MethodSpec]] = {}
    for e, seed in pending:
        if isinstance(runner_for(e.method), SelfTrainRunner):
            if seed not in shared:
                shared[seed] = []
                groups.append((shared[seed], seed))
            shared[seed].append(e)
        else:
            groups.append(([e], seed))
    return groups


def _semiseg_command() -> list[str]:
    exe = Path(sys.executable).with_name("semiseg")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "semiseg"]


def _run_jobs(cfg: BenchmarkConfig, layout: Layout, groups: list[tuple[list[MethodSpec], int]], jobs: int,
              device: str | None, progress: bool) -> list[str]:
    """Run each group as a ``semiseg benchmark --only ... --seeds S`` child, ``jobs`` at a time, each with its
    share of the cores (semiseg.engine.threads); returns the failures (each with its log file)."""
    from tqdm import tqdm

    from semiseg.engine.threads import child_env

    if cfg.source is None:
        raise ConfigError(f"benchmark '{cfg.name}' was not read from a file: --jobs needs the config file for its workers")
    for entries, seed in groups:  # preprocess once, here: two workers must not fill one cache
        for e in entries:
            runner_for(e.method).prepare(layout.run_for(e), train_config(cfg, e, seed), progress)
    logs = cfg.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env(jobs)
    todo, running, failed = list(groups), [], []
    bar = tqdm(total=len(groups), desc=f"{cfg.name}: jobs", disable=not progress, dynamic_ncols=True)
    try:
        _schedule(cfg, todo, running, failed, jobs, env, logs, device, bar)
    finally:  # an error or Ctrl-C here stops the children too (their finished pieces stay)
        for proc, *_ in running:
            proc.terminate()
        bar.close()
    return failed


def _schedule(cfg: BenchmarkConfig, todo: list, running: list, failed: list[str], jobs: int, env: dict[str, str], logs: Path,
              device: str | None, bar: Any) -> None:
    import subprocess

    while todo or running:
        while todo and len(running) < jobs:
            entries, seed = todo.pop(0)
            names = [e.name for e in entries]
            cmd = [*_semiseg_command(), "--quiet", "benchmark", str(cfg.source), "--only", *names, "--seeds", str(seed),
                   "--work-dir", str(cfg.work_dir), "--results-dir", str(cfg.results_dir)] + (["--device", device] if device else []) \
                + (["--iterations", str(cfg.steps_override)] if cfg.steps_override else [])
            log = logs / f"{'+'.join(names)}_seed{seed}.log"
            with open(log, "w") as fh:
                running.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), names, seed, log))
            bar.write(f"[{cfg.name}] started {' '.join(names)} seed {seed} (log: {log})")
        time.sleep(1.0)
        for job in [j for j in running if j[0].poll() is not None]:
            running.remove(job)
            proc, names, seed, log = job
            bar.update()
            if proc.returncode != 0:
                failed.append(f"{' '.join(names)} seed {seed}: exit {proc.returncode}, see {log}")
                bar.write(f"[{cfg.name}] FAILED {' '.join(names)} seed {seed} (exit {proc.returncode}): {log}")
            else:
                bar.write(f"[{cfg.name}] finished {' '.join(names)} seed {seed}")


def run_benchmark(cfg: BenchmarkConfig, only: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                  device: str | None = None, progress: bool = True, command: Sequence[str] | None = None,
                  jobs: int = 1) -> Path:
    """Run what is not finished yet (seed by seed, bounds first) and write ``results_dir/<name>.json``.

    ``only`` restricts to some entries (``lower``, ``upper`` or method entry names); ``seeds`` replaces
    the configured seeds for this invocation. The results file is rewritten after every finished run,
    so a half-finished benchmark already has one (``complete: false``, ``missing`` lists the rest).
    ``jobs > 1`` runs independent pieces side by side in child processes, each with cores / jobs threads."""
    names = [e.name for e in cfg.entries()]
    unknown = [n for n in (only or []) if n not in names]
    if unknown:
        raise ConfigError(f"--only: unknown entr{'y' if len(unknown) == 1 else 'ies'} {unknown} (entries: {', '.join(names)})")
    layout = prepare(cfg, progress)
    restored = restore_pieces(cfg, layout)
    if restored:
        print(f"[{cfg.name}] {restored} finished run(s) restored from {cfg.results_file}", flush=True)
    entries = [e for e in cfg.entries() if not only or e.name in only]
    skipped: list[dict[str, Any]] = []  # every runner runs here; the results keep the field older files fill
    if jobs > 1:
        pending = [(e, seed) for seed in (list(seeds) if seeds else cfg.seeds) for e in entries
                   if not _check_piece(cfg.piece_path(e.name, seed), piece_key(cfg, e, seed, layout.run_for(e).plan))]
        failed = _run_jobs(cfg, layout, job_groups(pending), jobs, device, progress)
        out = write_results(cfg, layout, skipped, device, command)
        print(f"[{cfg.name}] results: {out}", flush=True)
        if failed:
            raise JobsFailed(f"{len(failed)} benchmark job(s) failed: " + "; ".join(failed))
        return out
    for seed in (list(seeds) if seeds else cfg.seeds):
        for e in entries:
            path = cfg.piece_path(e.name, seed)
            if _check_piece(path, piece_key(cfg, e, seed, layout.run_for(e).plan)):
                print(f"[{cfg.name}] {e.name} seed {seed}: finished earlier, skipped", flush=True)
                continue
            print(f"[{cfg.name}] {e.name} seed {seed}: {e.method}, {cfg.budget.iterations} steps", flush=True)
            piece = run_piece(cfg, layout, e, seed, device, progress, command)
            atomic_write_json(path, piece)
            t, dsc = piece["train"], piece["test"]["foreground_mean"].get("DSC")
            print(f"[{cfg.name}] {e.name} seed {seed}: Dice {'n/a' if dsc is None else f'{dsc:.4f}'}, "
                  f"train {t['wall_time_s'] or 0:.0f} s, peak RSS {t['peak_rss_mb'] or 0:.0f} MiB", flush=True)
            write_results(cfg, layout, skipped, device, command)
    out = write_results(cfg, layout, skipped, device, command)
    print(f"[{cfg.name}] results: {out}", flush=True)
    return out
