"""A run folder: the plan, where the data comes from, the preprocessing cache and the trained models.

    RUN/plan.json          what self-configuration decided (edit freely)
    RUN/source.json        dataset root and split (so every later command knows where the data is)
    RUN/cache/             preprocessed labelled/unlabelled cases
    RUN/splits_final.json  k-fold split of the labelled cases
    RUN/<method>/fold_<f>/ trained models (model_final.pt, checkpoint.pt, log.json, curve.png)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semiseg.config import Plan, TrainConfig
from semiseg.data.cache import Cache
from semiseg.data.dataset import RawDataset
from semiseg.data.io import atomic_write_json, make_folder
from semiseg.data.plan import fingerprint, make_plan
from semiseg.data.preprocess import preprocess_dataset
from semiseg.networks import check_patch


@dataclass
class Run:
    root: Path

    @property
    def plan(self) -> Plan:
        return Plan.load(self._file("plan.json"))

    @property
    def source(self) -> dict[str, Any]:
        return json.loads(self._file("source.json").read_text())

    def _file(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"{self.root}: not a run folder (no {name}; make one with `semiseg plan DATASET --out {self.root}`)")
        return path

    def dataset(self) -> RawDataset:
        s = self.source
        return RawDataset.open(s["dataset"], s.get("split"))

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def ensure_preprocessed(self, labelled: bool = True, unlabelled: bool = False, workers: int = 1, progress: bool = True) -> None:
        ds = self.dataset()
        cases: dict[str, bool] = {}
        if labelled:
            cases.update({c: True for c in ds.labelled})
        if unlabelled:
            cases.update({c: False for c in ds.unlabelled})
        self._check_cache_plan()
        preprocess_dataset(ds.root, self.source.get("split"), self.plan, cases, self.cache, workers, progress)
        if labelled and ds.labelled and not any(Cache(self.cache).has_foreground(c) for c in ds.labelled):
            raise ValueError(f"{ds.label_path(ds.labelled[0]).parent}: every labelled mask is empty after preprocessing "
                             f"({len(ds.labelled)} cases, e.g. {ds.label_path(ds.labelled[0]).name}): there is nothing to learn")

    def _check_cache_plan(self) -> None:
        """The cache is only valid for the preprocessing it was made with: if plan.json's spacing,
        normalisation or labels changed since, the (derived, rebuildable) cache is emptied."""
        p = self.plan
        key = {"target_spacing": p.target_spacing, "normalization": p.normalization, "labels": p.labels}
        stamp = self.cache / "preprocessing.json"
        if stamp.is_file() and json.loads(stamp.read_text()) != key:
            import shutil

            print(f"{self.cache}: plan preprocessing changed; rebuilding the cache")
            shutil.rmtree(self.cache)
        self.cache.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            atomic_write_json(stamp, key)

    def folds(self, k: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
        """k-fold split of the labelled cases, created once and then read from splits_final.json."""
        path = self.root / "splits_final.json"
        cases = sorted(self.dataset().labelled)
        if path.is_file():
            splits = json.loads(path.read_text())
            if len(splits) == k:
                stored = sorted(c for s in splits for c in s["val"])
                if stored != cases:  # the split changed since: these folds would train on cases no longer labelled
                    gone, new = sorted(set(stored) - set(cases)), sorted(set(cases) - set(stored))
                    raise ValueError(f"{path}: these folds were made for other labelled cases than the split's now "
                                     f"(no longer labelled: {gone[:5] or 'none'}; newly labelled: {new[:5] or 'none'}); "
                                     "delete the file (and the fold models trained on it) to derive new folds")
                return splits
        if len(cases) < k:
            raise ValueError(f"{len(cases)} labelled cases cannot make {k} folds")
        order = np.random.default_rng(seed).permutation(len(cases))
        chunks = np.array_split(order, k)
        splits = [{"train": sorted(cases[i] for j, ch in enumerate(chunks) if j != f for i in ch),
                   "val": sorted(cases[i] for i in chunks[f])} for f in range(k)]
        atomic_write_json(path, splits)
        return splits

    def training_cases(self, fold: str | int, k: int = 5) -> tuple[list[str], list[str]]:
        check_fold(fold, k)
        if str(fold) == "all":
            return sorted(self.dataset().labelled), []
        s = self.folds(k)[int(fold)]
        return s["train"], s["val"]


def check_fold(fold: str | int, k: int) -> None:
    """A fold is 'all' or 0..k-1 of k >= 2 folds; checked before any work (the CLI calls it at once)."""
    if str(fold) != "all" and k < 2:
        raise ValueError(f"--k {k}: k-fold training needs k >= 2 folds (or --fold all)")
    if str(fold) != "all" and (not str(fold).isdigit() or not 0 <= int(fold) < k):
        raise ValueError(f"fold {fold!r}: choose 0..{k - 1} (k = {k}) or 'all'")


def create_run(
    dataset: str | Path,
    out: str | Path,
    split: str | Path | None = None,
    spacing: list[float] | None = None,
    max_patch_voxels: int = 128**3,
    base_features: int = 32,
    max_features: int = 320,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> Run:
    """Fingerprint + plan a dataset into a run folder (``overrides`` are dotted plan fields)."""
    from semiseg.config import apply_overrides

    ds = RawDataset.open(dataset, split)
    fp = fingerprint(ds, progress=progress)
    plan = make_plan(ds, fp, spacing=spacing, max_patch_voxels=max_patch_voxels, base_features=base_features, max_features=max_features)
    if overrides:
        plan = apply_overrides(plan, overrides)
    check_patch(plan.network, plan.patch_size, "plan (with --set overrides)" if overrides else "plan")
    root = make_folder(out, "run folder")
    plan.save(root / "plan.json")
    atomic_write_json(root / "source.json", {"dataset": str(Path(dataset).resolve()), "split": str(Path(split).resolve()) if split else None})
    return Run(root)


def model_dir(run: Run, method: str, fold: str | int, name: str | None = None) -> Path:
    """RUN/<name or method>/fold_<fold>."""
    return run.root / (name or method) / f"fold_{fold}"


def train_fold(
    run: Run,
    fold: str | int,
    cfg: TrainConfig,
    k: int = 5,
    out: str | Path | None = None,
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Train one fold (or ``all``) of a run with any method; preprocesses what it needs first.

    Unlabelled cases (for methods that use them) enter only as images: the cache holds no labels for them."""
    from semiseg import distributed
    from semiseg.engine.trainer import DataSpec, train
    from semiseg.methods import get_method

    plan = run.plan
    check_patch(plan.network, plan.patch_size, str(run.root / "plan.json"))  # plan.json may have been edited since
    method_cls = get_method(cfg.method)
    method_cls.parse_params(cfg.method_params)  # a typo is refused before any preprocessing or training
    needs_u = method_cls.needs_unlabelled
    distributed.setup(device)  # under torchrun: process 0 preprocesses, the others then read its cache
    with distributed.main_first() as info:
        run.ensure_preprocessed(labelled=True, unlabelled=needs_u, workers=workers, progress=progress and info.is_main)
    train_cases, _ = run.training_cases(fold, k)
    unlabelled = sorted(run.dataset().unlabelled) if needs_u else []
    spec = DataSpec(run.cache, train_cases, unlabelled)
    target = Path(out) if out is not None else model_dir(run, cfg.method, fold)
    return train(plan, cfg, spec, target, resume=resume, device=device, progress=progress)
