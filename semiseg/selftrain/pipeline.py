"""Offline self-training: fold ensembles -> pseudo-labels -> pairwise-Dice selection -> next round.

Methods (``SelfTrainConfig.method``):

- ``uncertainty`` (Alves & de Wilde, FLARE22): round 0 trains k fold models on the labelled cases;
  each round predicts the unlabelled cases, keeps the softmax-averaged ensemble label as pseudo-label,
  scores each case by the pairwise Dice of the k hard masks, and selects the confident ones; round
  r > 0 trains on labelled + the cases selected in round r - 1. ``final/`` is one model trained on
  the labelled cases and the last round's selection. ``rounds=1`` is the paper's single-round ablation.
- ``unfiltered``: the same with every case selected (Table 3, "unfiltered").
- ``noisy-student`` (Kalisch et al., FLARE22): a teacher fold ensemble labels every unlabelled case;
  a student (same or half width) learns from batches of 1 labelled : 3 pseudo-labelled patches with
  the stronger ``student`` augmentation, then is fine-tuned on the labelled cases only.

Layout (every step resumable: finished models and per-case pseudo-labels are never redone)::

    RUN/selftrain_<method>/selftrain.json        the SelfTrainConfig
    RUN/selftrain_<method>/round_<r>/fold_<f>/   fold models (noisy student: teacher/fold_<f>/)
                           round_<r>/pseudo/     pseudo-label cache, same space as RUN/cache
                           round_<r>/uncertainty.csv, selected.json, uncertainty.png
                           round_<r>/quality.json, quality.png   (evaluation only, hidden labels)
    RUN/selftrain_<method>/final/                the single final model (noisy student: student/, finetune/)
    RUN/selftrain_<method>/summary.json

Where the work runs is an executor's business (:mod:`semiseg.selftrain.executor`): the k fold models of a
round, the shards of its pseudo-labelling and the final models are tasks, in this process one after
another by default or as Ray tasks on a cluster; the results do not depend on it (at equal threads per task).

Labels of unlabelled cases are never read for training or selection: the cache holds none for them,
and :func:`evaluate_pseudo_labels` (the only reader, for the quality report) writes nothing that
training or selection reads.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from semiseg.atomic import is_temporary, link_or_copy
from semiseg.config import Plan, TrainConfig, apply_overrides
from semiseg.data.cache import Cache
from semiseg.data.cases import shard_of
from semiseg.data.io import atomic_save_npy, atomic_write_json, read_array
from semiseg.data.preprocess import class_locations, preprocess_array
from semiseg.engine.trainer import DataSpec, train
from semiseg.inference.predictor import Predictor, PredictorConfig
from semiseg.run import Run
from semiseg.selftrain.executor import Executor, InProcessExecutor, Task
from semiseg.selftrain.selection_report import plot_quality_scatter, plot_uncertainty, pseudo_label_quality
from semiseg.selftrain.uncertainty import (
    PairwiseDiceAccumulator,
    SelectionConfig,
    pairwise_dice_matrix,
    select_cases,
    uncertainty_score,
    write_uncertainty_csv,
)

METHODS = ("uncertainty", "unfiltered", "noisy-student")
NOISY_STUDENT_RATIO = 3  # pseudo-labelled patches per labelled patch in a student batch (paper)
CONFIG_FILE = "selftrain.json"
MANIFEST_FILE = "selftrain_inputs.json"
# fields that may change between a run and its resumption without invalidating finished work
_RESUMABLE_CHANGES = ("rounds", "evaluate_quality", "save_model_masks")


@dataclass
class SelfTrainConfig:
    """What a self-training run does; saved to RUN/selftrain_<method>/selftrain.json."""

    method: str = "uncertainty"  # uncertainty | unfiltered | noisy-student
    rounds: int = 4  # ensemble rounds before the final model (paper: iterations 0-3, then 4 = final)
    k: int = 5  # fold models per ensemble
    iterations: int = 1000  # optimiser steps per fold model and per final model
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    student_width: float = 1.0  # noisy student: 1.0 same width as the teacher, 0.5 half
    student_iterations: int | None = None  # None = ``iterations``
    finetune_iterations: int = 250
    finetune_augmentation: str = "teacher"
    pseudo_per_labelled: int | None = None  # None: pooled (uncertainty/unfiltered), 3 (noisy student)
    batch_size: int | None = None  # None = the plan's batch size
    seed: int = 0
    predict_step: float = 0.5  # sliding-window step when pseudo-labelling
    evaluate_quality: bool = True  # pseudo-label Dice vs hidden labels where they exist (evaluation only)
    save_model_masks: bool = False  # also write each fold model's hard mask (pseudo/model_masks/)
    train_overrides: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields, e.g. lr

    def __post_init__(self) -> None:
        if isinstance(self.selection, dict):
            self.selection = SelectionConfig(**self.selection)
        if self.method not in METHODS:
            raise ValueError(f"self-training method must be one of {METHODS}, got {self.method!r}")
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (pairwise Dice needs two models), got {self.k}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        for name in ("iterations", "finetune_iterations", "student_iterations"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.student_width <= 1:
            raise ValueError(f"student_width must be in (0, 1], got {self.student_width}")
        if self.pseudo_per_labelled is not None and self.pseudo_per_labelled < 0:
            raise ValueError(f"pseudo_per_labelled must be >= 0, got {self.pseudo_per_labelled}")

    @property
    def effective_selection(self) -> SelectionConfig:
        """Only ``uncertainty`` filters; the others keep every case (scores are still reported)."""
        return dataclasses.replace(self.selection, enabled=self.method == "uncertainty")

    @property
    def ratio(self) -> int:
        """Pseudo per labelled patch in a batch; 0 = pool both sets and sample cases uniformly."""
        if self.pseudo_per_labelled is not None:
            return self.pseudo_per_labelled
        return NOISY_STUDENT_RATIO if self.method == "noisy-student" else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "SelfTrainConfig":
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class RoundResult:
    """What one ensemble round leaves for the next: where its pseudo-labels are and which to use."""

    folder: Path
    pseudo_dir: Path
    scores: dict[str, float]
    selected: list[str]


# -- small helpers --------------------------------------------------------------------------------
def selftrain_dir(run: Run, method: str) -> Path:
    return run.root / f"selftrain_{method}"


def foreground_classes(plan: Plan) -> tuple[list[int], list[str]]:
    """Scored class ids and names (background excluded), in label order."""
    items = sorted((v, k) for k, v in plan.labels.items() if v != 0)
    return [v for v, _ in items], [k for _, k in items]


def _note(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(f"[selftrain] {msg}")


def _json_safe(obj: Any) -> Any:
    """NaN/inf (an undefined correlation, an empty group's mean) as null: strict JSON readers refuse NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def scaled_width(plan: Plan, width: float) -> Plan:
    """The plan with every stage's feature count scaled (0.5 = the half-width student)."""
    if width == 1.0:
        return plan
    feats = [max(1, int(round(f * width))) for f in plan.network.features]
    return dataclasses.replace(plan, network=dataclasses.replace(plan.network, features=feats))


def train_config(plan: Plan, cfg: SelfTrainConfig, **changes: Any) -> TrainConfig:
    """The supervised TrainConfig every self-training model starts from, plus per-stage changes."""
    base = TrainConfig(method="supervised", iterations=cfg.iterations, seed=cfg.seed,
                       batch_size=cfg.batch_size or plan.batch_size, augmentation="teacher")
    base = apply_overrides(base, cfg.train_overrides)
    return dataclasses.replace(base, **changes)


def final_model_setup(plan: Plan, cfg: SelfTrainConfig) -> tuple[Plan, TrainConfig]:
    """The plan and TrainConfig of the one model a self-training run keeps: the final model trained on labels and
    selected pseudo-labels, or the noisy student's fine-tune (the student's width, labelled cases only)."""
    if cfg.method == "noisy-student":
        return scaled_width(plan, cfg.student_width), train_config(plan, cfg, iterations=cfg.finetune_iterations,
                                                                   augmentation=cfg.finetune_augmentation)
    return plan, train_config(plan, cfg)


def _check_resumable(folder: Path, cfg: SelfTrainConfig) -> None:
    """Refuse to resume a folder made with a different configuration (finished work would mix)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(cfg.to_dict()))
    diff = sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{path}: this folder was made with a different configuration ({', '.join(diff)} differ); "
                         "use the same settings to resume, or remove the folder to start over")


# -- training -------------------------------------------------------------------------------------
def training_spec(run: Run, labelled: list[str], pseudo_dir: Path | None, pseudo: list[str], ratio: int, pool_dir: Path) -> DataSpec:
    """Data for one model. ``ratio`` > 0 mixes each batch 1 : ratio (noisy student); 0 pools the
    labelled and pseudo-labelled cases into one set sampled uniformly (the self-learning paper),
    through a folder of hard links to both caches."""
    if not pseudo:
        return DataSpec(run.cache, list(labelled))
    assert pseudo_dir is not None
    overlap = set(labelled) & set(pseudo)
    if overlap:
        raise ValueError(f"cases both labelled and pseudo-labelled: {sorted(overlap)}")
    if ratio > 0:
        return DataSpec(run.cache, list(labelled), pseudo_cache=pseudo_dir, pseudo=list(pseudo), pseudo_per_labelled=ratio)
    for c in labelled:
        Cache(pool_dir).link_case(Cache(run.cache), c, labelled=True)
    for c in pseudo:
        Cache(pool_dir).link_case(Cache(pseudo_dir), c, labelled=True)
    return DataSpec(pool_dir, sorted(labelled) + sorted(pseudo))


def shared_models_dir(run: Run) -> Path:
    """Where models trained on labelled cases only are shared between self-training methods: next to
    the (resolved) preprocessing cache, so seed runs that link one cache share one store too."""
    return run.cache.resolve().parent / "selftrain_shared_models"


def _share_key(plan: Plan, tc: TrainConfig, spec: DataSpec) -> str:
    """A model is determined by its plan, training config and data: the same inputs give the same model."""
    inputs = {"plan": dataclasses.asdict(plan), "train_config": dataclasses.asdict(tc), "cache": str(Path(spec.cache).resolve()),
              "labelled": sorted(spec.labelled)}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


_SHARED_FILES = ("model_final.pt", "plan.json", "train_config.json", "log.json", "curve.png")


def train_model(plan: Plan, tc: TrainConfig, spec: DataSpec, out: Path, device: str | None = None,
                progress: bool = True, init_weights: Path | None = None, share_dir: Path | None = None) -> Path:
    """``train`` with a manifest of its inputs, so a finished model is reused only for the same inputs.

    With ``share_dir``, a model trained on labelled cases only (the round-0 fold models, which are the
    same for uncertainty, unfiltered and the noisy student's teacher) is taken from that store when an
    identical one was trained before, and published there after training; ``shared_from`` in the
    manifest says so (its training time then belongs to the method that trained it first)."""
    def rel(p: Path | None) -> str | None:  # relative, so a moved run folder still resumes
        return os.path.relpath(p, out) if p is not None else None

    manifest = {"cache": rel(spec.cache), "labelled": spec.labelled, "pseudo_cache": rel(spec.pseudo_cache), "pseudo": spec.pseudo,
                "pseudo_per_labelled": spec.pseudo_per_labelled, "train_config": dataclasses.asdict(tc),
                "features": plan.network.features, "init_weights": rel(init_weights)}
    path = out / MANIFEST_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        old.pop("shared_from", None)
        if old != json.loads(json.dumps(manifest)):
            raise ValueError(f"{out}: holds a model trained on other inputs than now requested; remove the folder to retrain it")
    shared = None
    if share_dir is not None and not spec.pseudo and init_weights is None:
        shared = share_dir / _share_key(plan, tc, spec)
    final = out / "model_final.pt"
    if shared is not None and not final.is_file() and (shared / "model_final.pt").is_file():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**manifest, "shared_from": str(shared)})
        for name in _SHARED_FILES:  # model_final.pt last: its presence marks the folder finished
            if name != "model_final.pt" and (shared / name).is_file():
                link_or_copy(shared / name, out / name)
        link_or_copy(shared / "model_final.pt", final)
        return final
    if not path.is_file():
        atomic_write_json(path, manifest)
    model = train(plan, tc, spec, out, resume=True, device=device, progress=progress, init_weights=init_weights)
    if shared is not None and Path(model).is_file() and not (shared / "model_final.pt").is_file():
        tmp = shared.with_name(f".{shared.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for name in _SHARED_FILES:
            if (out / name).is_file():
                link_or_copy(out / name, tmp / name)
        try:
            os.replace(tmp, shared)
        except OSError:  # another process published the same model first
            shutil.rmtree(tmp, ignore_errors=True)
    return model


def lineage_history(model_dir: Path, _seen: frozenset[Path] = frozenset()) -> list[dict[str, float]]:
    """The training log of the model in ``model_dir`` preceded by that of the model it was fine-tuned from (its
    manifest's ``init_weights``), steps offset to follow on, and so on up the chain: a noisy student's curve is the
    student's 3000 steps then the fine-tune's few hundred, where the fine-tune's own log is only the latter."""
    log = model_dir / "log.json"
    history = list(json.loads(log.read_text()).get("history", [])) if log.is_file() else []
    manifest = model_dir / MANIFEST_FILE
    init = json.loads(manifest.read_text()).get("init_weights") if manifest.is_file() else None
    if not init:
        return history
    here = model_dir.resolve()
    parent = (model_dir / init).resolve().parent
    if parent == here or parent in _seen:
        raise ValueError(f"{model_dir / MANIFEST_FILE}: init_weights {init!r} leads back to a model of its own lineage")
    earlier = lineage_history(parent, _seen | {here})
    offset = earlier[-1]["step"] + 1 if earlier else 0
    return earlier + [{**h, "step": h["step"] + offset} for h in history]


def train_task(plan: Plan, tc: TrainConfig, spec: DataSpec, out: Path, executor: Executor, device: str | None = None,
               progress: bool = True, **kw: Any) -> Task:
    """One :func:`train_model` call as an executor task (its data folders are made before, by the caller)."""
    return Task(train_model, (plan, tc, spec, out), dict(device=device, progress=progress and not executor.distributed, **kw),
                name=f"train {out.parent.name}/{out.name}")


def train_ensemble(run: Run, plan: Plan, cfg: SelfTrainConfig, folder: Path, prev: RoundResult | None,
                   device: str | None = None, progress: bool = True, executor: Executor | None = None) -> list[Path]:
    """k fold models on the folds' labelled training cases plus every case selected in ``prev``; the k
    trainings are independent tasks of ``executor`` (one after another in this process by default)."""
    executor = executor or InProcessExecutor()
    pseudo_dir, pseudo = (prev.pseudo_dir, prev.selected) if prev else (None, [])
    tasks = []
    for f, split in enumerate(run.folds(cfg.k)):
        spec = training_spec(run, split["train"], pseudo_dir, pseudo, cfg.ratio, folder / "train_cache")
        tc = train_config(plan, cfg, seed=cfg.seed + f)
        _note(f"{folder.name} fold {f}/{cfg.k}: {len(split['train'])} labelled + {len(pseudo)} pseudo-labelled", progress)
        share = shared_models_dir(run) if not pseudo else None  # round 0: the same models for every method
        tasks.append(train_task(plan, tc, spec, folder / f"fold_{f}", executor, device, progress, share_dir=share))
    return executor.run(tasks, progress, desc=f"{folder.name} fold models")


def train_one(plan: Plan, tc: TrainConfig, spec: DataSpec, out: Path, executor: Executor | None, device: str | None = None,
              progress: bool = True, **kw: Any) -> Path:
    """One model (final, student, fine-tune) through ``executor``, so on a cluster it gets a worker's GPU too."""
    executor = executor or InProcessExecutor()
    return executor.run([train_task(plan, tc, spec, out, executor, device, progress, **kw)], progress, desc=out.name)[0]


# -- pseudo-labels ----------------------------------------------------------------------------------
def pseudo_label_case(predictor: Predictor, cache: Path, case: str, out: Path, save_model_masks: bool = False) -> np.ndarray:
    """Ensemble pseudo-label of one cached case into ``out`` (a cache folder); returns its pairwise-Dice
    matrix. Each model's hard mask goes to the accumulator as soon as it is made (no stacked softmax)."""
    class_ids, _ = foreground_classes(predictor.plan)
    acc = PairwiseDiceAccumulator(class_ids)

    def each_model(i: int, probs: torch.Tensor) -> None:
        mask = probs.argmax(0).to(torch.int16).cpu().numpy()
        acc.add(mask)
        if save_model_masks:
            atomic_save_npy(out / "model_masks" / f"{case}_model{i}.npy", mask.astype(np.uint8))

    src, dst = Cache(cache), Cache(out)
    mean = predictor.predict_preprocessed(src.load_data(case), each_model=each_model)  # checked against its record
    seg = mean.argmax(0).to(torch.int16).cpu().numpy()
    matrix = acc.matrix()
    props = src.props(case)
    if props is None:
        raise FileNotFoundError(f"{src.props_path(case)}: case '{case}' is not in the preprocessing cache")
    props.update(labelled=True, pseudo=True, class_locations=class_locations(seg, sorted(predictor.plan.labels.values())),
                 pairwise_dice=matrix.tolist(), num_models=len(predictor.networks))
    dst.write_case(case, src.data_path(case), seg, props)  # data linked; the properties last mark the case complete
    return matrix


def _remove_partial_case(out: Path, case: str) -> None:
    """Temporary files a killed writer of ``case`` left behind (atomic writes never leave a half-written
    target, only these): its cache entry's and its model masks'. Safe only because one shard alone writes a
    given case."""
    Cache(out).remove_partial(case)
    masks = out / "model_masks"
    for p in masks.glob(f".{glob.escape(case)}_model[0-9]*.npy.*"):
        if is_temporary(p):
            p.unlink(missing_ok=True)


def _is_finished(out: Path, case: str) -> bool:
    return Cache(out).has_all_files(case, labelled=True)


def _finished_matrix(out: Path, case: str) -> np.ndarray | None:
    props = Cache(out).props(case) if _is_finished(out, case) else None
    return None if props is None else np.asarray(props["pairwise_dice"], dtype=np.float64)


def pseudo_label(run: Run, models: Sequence[Path], cases: Sequence[str], out: Path, cfg: SelfTrainConfig,
                 device: str | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Pseudo-label ``cases`` from RUN/cache into the cache folder ``out``; resumable per case.
    Returns each case's (n_classes, n_pairs) pairwise-Dice matrix."""
    out.mkdir(parents=True, exist_ok=True)
    predictor: Predictor | None = None
    matrices: dict[str, np.ndarray] = {}
    for case in tqdm(cases, desc=f"pseudo-label {out.parent.name}", unit="case", disable=not progress):
        m = _finished_matrix(out, case)
        if m is None:
            _remove_partial_case(out, case)
            if predictor is None:  # loading models costs time; skip it when every case is done
                predictor = Predictor(list(models), PredictorConfig(step=cfg.predict_step, device=device or "auto"))
            m = pseudo_label_case(predictor, run.cache, case, out, cfg.save_model_masks)
        matrices[case] = m
    return matrices


def pseudo_label_sharded(run: Run, models: Sequence[Path], cases: Sequence[str], out: Path, cfg: SelfTrainConfig,
                         executor: Executor, device: str | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """:func:`pseudo_label` over ``executor``'s shards of ``cases``, in case order. Shards are blocks of
    the sorted cases (:func:`shard_of`), so no two write the same case; each loads the k models once.
    Shards whose every case is finished are not started (their models are not even loaded)."""
    out.mkdir(parents=True, exist_ok=True)
    n = executor.shard_count(len(cases))
    shards = [shard_of(cases, i, n) for i in range(n)]
    todo = [(i, s) for i, s in enumerate(shards) if not all(_is_finished(out, c) for c in s)]
    tasks = [Task(pseudo_label, (run, list(models), s, out, cfg), dict(device=device, progress=progress and not executor.distributed),
                  name=f"pseudo-label {out.parent.name} shard {i}/{n}") for i, s in todo]
    done: dict[str, np.ndarray] = {}
    for part in executor.run(tasks, progress, desc=f"{out.parent.name} pseudo-label shards"):
        done.update(part)
    matrices = {}
    for c in cases:
        m = done[c] if c in done else _finished_matrix(out, c)
        if m is None:
            raise RuntimeError(f"{out}: case {c} has no finished pseudo-label after every shard ended")
        matrices[c] = m
    return matrices


# -- selection ----------------------------------------------------------------------------------------
def score_cases(matrices: dict[str, np.ndarray], sel: SelectionConfig) -> tuple[dict[str, float], list[str]]:
    """Scores and selected cases: a pure function of the matrices and the selection config."""
    scores = {c: uncertainty_score(m, sel) for c, m in matrices.items()}
    return scores, select_cases(scores, sel)


def write_selection(folder: Path, matrices: dict[str, np.ndarray], class_names: list[str], sel: SelectionConfig) -> tuple[dict[str, float], list[str]]:
    """uncertainty.csv, selected.json and the ranking/histogram plot of one round."""
    scores, selected = score_cases(matrices, sel)
    write_uncertainty_csv(folder / "uncertainty.csv", matrices, class_names, sel)
    atomic_write_json(folder / "selected.json", {"selected": selected, "n_selected": len(selected), "n_cases": len(scores),
                                                 "selection": dataclasses.asdict(sel)})
    plot_uncertainty(scores, sel, folder / "uncertainty.png")
    return scores, selected


# -- evaluation only ------------------------------------------------------------------------------------
def _truth_in_cache_space(run: Run, plan: Plan, case: str, truth_dir: Path) -> np.ndarray:
    """EVALUATION ONLY: the hidden label of an unlabelled case, preprocessed onto its cache grid.
    Kept in ``truth_dir``, a folder no training or selection step reads."""
    path = Cache(truth_dir).seg_path(case)  # a folder of label files only: no case there is ever complete
    if path.is_file():
        return np.load(path)
    ds = run.dataset()
    image, _, geo = ds.load_case(case, with_label=False)
    truth, _ = read_array(ds.reference_label_path(case))
    _, lab, _ = preprocess_array(image, geo, plan, truth.astype(np.int16))
    assert lab is not None
    atomic_save_npy(path, lab.astype(np.int16))
    return lab


def evaluate_pseudo_labels(run: Run, pseudo_dir: Path, scores: dict[str, float], sel: SelectionConfig, folder: Path,
                           truth_dir: Path, progress: bool = True) -> dict[str, Any] | None:
    """EVALUATION ONLY (never used to select or train): each pseudo-label's mean foreground Dice against
    the hidden label where one exists, and whether the uncertainty score ranks cases by that Dice
    (Spearman rho, scatter plot). Writes quality.json/quality.png; None when no hidden label exists."""
    ds, plan = run.dataset(), run.plan
    cases = [c for c in sorted(scores) if ds.reference_label_path(c).is_file()]
    if not cases:
        return None
    class_ids, _ = foreground_classes(plan)
    dice: dict[str, float] = {}
    for c in tqdm(cases, desc="pseudo-label quality (evaluation only)", unit="case", disable=not progress):
        pseudo = Cache(pseudo_dir).load_seg(c)
        truth = _truth_in_cache_space(run, plan, c, truth_dir)
        if truth.shape != pseudo.shape:
            raise ValueError(f"{c}: hidden label preprocesses to {truth.shape}, pseudo-label has {pseudo.shape}")
        dice[c] = float(pairwise_dice_matrix([pseudo, truth], class_ids).mean())
    kept = [d for c, d in dice.items() if c in set(select_cases(scores, sel))]
    report: dict[str, Any] = {"n": len(dice), "mean_dice": float(np.mean(list(dice.values()))), "n_selected": len(kept),
                              "mean_dice_selected": float(np.mean(kept)) if kept else float("nan")}
    if len(dice) >= 3:  # a rank correlation needs at least three cases
        report.update(pseudo_label_quality(scores, dice, sel))
        plot_quality_scatter(scores, dice, sel, folder / "quality.png")
    report["per_case_dice"] = dice
    atomic_write_json(folder / "quality.json", _json_safe(report))
    return report


# -- rounds ----------------------------------------------------------------------------------------------
def run_round(run: Run, plan: Plan, cfg: SelfTrainConfig, folder: Path, prev: RoundResult | None,
              device: str | None = None, progress: bool = True, executor: Executor | None = None) -> RoundResult:
    """Train the ensemble (on labelled + ``prev``'s selection), pseudo-label every unlabelled case,
    score and select once every shard is done; each part skips what an earlier, interrupted call finished."""
    executor = executor or InProcessExecutor()
    folder.mkdir(parents=True, exist_ok=True)
    models = train_ensemble(run, plan, cfg, folder, prev, device, progress, executor)
    unlabelled = sorted(run.dataset().unlabelled)
    matrices = pseudo_label_sharded(run, models, unlabelled, folder / "pseudo", cfg, executor, device, progress)
    sel = cfg.effective_selection
    scores, selected = write_selection(folder, matrices, foreground_classes(plan)[1], sel)
    _note(f"{folder.name}: {len(selected)}/{len(scores)} unlabelled cases selected", progress)
    if cfg.evaluate_quality:
        evaluate_pseudo_labels(run, folder / "pseudo", scores, sel, folder, folder.parent / "evaluation_only_truth", progress)
    return RoundResult(folder, folder / "pseudo", scores, selected)


def _round_summary(r: RoundResult) -> dict[str, Any]:
    out: dict[str, Any] = {"folder": r.folder.name, "n_unlabelled": len(r.scores), "n_selected": len(r.selected),
                           "mean_score": float(np.mean(list(r.scores.values()))) if r.scores else float("nan")}
    q = r.folder / "quality.json"
    if q.is_file():
        keep = ("mean_dice", "spearman_rho", "p_value", "mean_dice_selected", "mean_dice_rejected")
        out["quality"] = {k: v for k, v in json.loads(q.read_text()).items() if k in keep}
    return out


def _self_learning(run: Run, plan: Plan, cfg: SelfTrainConfig, root: Path, device: str | None, progress: bool,
                   executor: Executor) -> tuple[Path, list[RoundResult]]:
    """uncertainty / unfiltered: ``rounds`` ensemble rounds, then one model on the last selection."""
    results: list[RoundResult] = []
    prev = None
    for r in range(cfg.rounds):
        prev = run_round(run, plan, cfg, root / f"round_{r}", prev, device, progress, executor)
        results.append(prev)
    assert prev is not None
    labelled = sorted(run.dataset().labelled)
    spec = training_spec(run, labelled, prev.pseudo_dir, prev.selected, cfg.ratio, root / "final" / "train_cache")
    _note(f"final: {len(labelled)} labelled + {len(prev.selected)} pseudo-labelled", progress)
    final_plan, final_cfg = final_model_setup(plan, cfg)
    final = train_one(final_plan, final_cfg, spec, root / "final", executor, device, progress)
    return final, results


def _noisy_student(run: Run, plan: Plan, cfg: SelfTrainConfig, root: Path, device: str | None, progress: bool,
                   executor: Executor) -> tuple[Path, list[RoundResult]]:
    """Teacher ensemble -> hard pseudo-labels of every case -> student (1 : ratio batches, strong
    augmentation) -> fine-tune on the labelled cases only."""
    teacher = run_round(run, plan, cfg, root / "teacher", None, device, progress, executor)
    labelled = sorted(run.dataset().labelled)
    student_plan, ft = final_model_setup(plan, cfg)
    ratio = max(1, cfg.ratio)
    base_batch = cfg.batch_size or plan.batch_size
    batch = -(-max(base_batch, 1 + ratio) // (1 + ratio)) * (1 + ratio)  # a multiple of 1 + ratio
    spec = training_spec(run, labelled, teacher.pseudo_dir, teacher.selected, ratio, root / "student" / "train_cache")
    tc = train_config(plan, cfg, iterations=cfg.student_iterations or cfg.iterations, augmentation="student", batch_size=batch)
    _note(f"student (width x{cfg.student_width}): batches of {batch}, 1 labelled : {ratio} pseudo-labelled", progress)
    student = train_one(student_plan, tc, spec, root / "student", executor, device, progress)
    _note("fine-tune the student on the labelled cases", progress)
    final = train_one(student_plan, ft, DataSpec(run.cache, labelled), root / "finetune", executor, device, progress, init_weights=student)
    return final, [teacher]


def run_selftrain(run: Run, cfg: SelfTrainConfig, device: str | None = None, progress: bool = True,
                  executor: Executor | None = None) -> Path:
    """Run (or resume) a self-training method; returns the final model's ``model_final.pt``. ``executor``
    runs the trainings and pseudo-labelling shards (default: in this process, one after another); the
    results do not depend on it (at equal threads per task). The run folder must be on a filesystem every worker sees."""
    ds = run.dataset()
    if not ds.unlabelled:
        raise ValueError(f"{ds.root}: the split has no unlabelled cases to pseudo-label")
    root = selftrain_dir(run, cfg.method)
    _check_resumable(root, cfg)
    root.mkdir(parents=True, exist_ok=True)
    cfg.save(root / CONFIG_FILE)
    run.ensure_preprocessed(labelled=True, unlabelled=True, progress=progress)
    plan = run.plan
    stages = _noisy_student if cfg.method == "noisy-student" else _self_learning
    final, rounds = stages(run, plan, cfg, root, device, progress, executor or InProcessExecutor())
    reused = sorted(str(p.parent.relative_to(root)) for p in root.rglob(MANIFEST_FILE) if "shared_from" in json.loads(p.read_text()))
    atomic_write_json(root / "summary.json", _json_safe({"method": cfg.method, "final_model": str(final),
                                                         "rounds": [_round_summary(r) for r in rounds],
                                                         "models_reused_from_another_method": reused}))
    return final
