"""Method runners: how one (method, seed) entry of a benchmark is trained.

Engine methods (registered in ``semiseg.methods``: supervised, mean-teacher, ua-mt, cps, dlunet, mpl, ...)
train with ``semiseg.run.train_fold``. Offline self-training (uncertainty, unfiltered, noisy-student)
goes through ``semiseg.selftrain.pipeline.run_selftrain`` (imported when a piece runs: it pulls in torch).
A new family of methods plugs in with :func:`register_runner`, without touching the harness.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Protocol

from semiseg.config import TrainConfig
from semiseg.data.io import atomic_write_text
from semiseg.run import Run


class Runner(Protocol):
    """What the harness needs from a way of training."""

    def check_params(self, method: str, params: dict[str, Any]) -> None:
        """Raise ValueError for params the method cannot take (called when the config is loaded)."""

    def prepare(self, run: Run, cfg: TrainConfig, progress: bool) -> None:
        """Work that is not training (preprocessing), done before time and memory are measured."""

    def train(self, run: Run, cfg: TrainConfig, out: Path, device: str | None, progress: bool) -> Path:
        """Train into ``out`` (resuming what is there) and return the model for ``Predictor.from_path``."""


class EngineRunner:
    """Methods of the training engine: one ``train_fold(run, 'all', cfg)`` on the run's labelled cases."""

    def check_params(self, method: str, params: dict[str, Any]) -> None:
        """The method's own declaration (its Params dataclass) judges the params."""
        from semiseg.methods import get_method

        get_method(method).parse_params(params)

    def prepare(self, run: Run, cfg: TrainConfig, progress: bool) -> None:
        from semiseg.methods import get_method

        run.ensure_preprocessed(labelled=True, unlabelled=get_method(cfg.method).needs_unlabelled, progress=progress)

    def train(self, run: Run, cfg: TrainConfig, out: Path, device: str | None, progress: bool) -> Path:
        from semiseg.run import train_fold

        return train_fold(run, "all", cfg, out=out, device=device, resume=True, progress=progress)


class SelfTrainRunner:
    """Offline self-training via ``semiseg.selftrain.pipeline.run_selftrain(run, SelfTrainConfig)``.

    The pipeline writes into ``RUN/selftrain_<method>/``, so each seed trains in its own small run
    folder (``out``: the benchmark's plan.json and source.json, and ``cache`` linked to the shared
    preprocessing cache) and seeds never collide. The benchmark's budget maps onto SelfTrainConfig:
    ``iterations`` (per model), ``seed``, ``batch_size``, and the shared TrainConfig fields as
    ``train_overrides``; the entry's params are SelfTrainConfig fields (rounds, k, selection, ...)."""

    def check_params(self, method: str, params: dict[str, Any]) -> None:
        """The entry's params must be SelfTrainConfig fields."""
        from semiseg.selftrain.pipeline import SelfTrainConfig

        known = {f.name for f in dataclasses.fields(SelfTrainConfig)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"method '{method}': params {unknown} are not SelfTrainConfig fields ({sorted(known)})")

    def prepare(self, run: Run, cfg: TrainConfig, progress: bool) -> None:
        run.ensure_preprocessed(labelled=True, unlabelled=True, progress=progress)

    @staticmethod
    def seed_run(run: Run, out: Path) -> Run:
        """A run folder for one seed that shares ``run``'s plan, split and preprocessing cache."""
        out.mkdir(parents=True, exist_ok=True)
        for name in ("plan.json", "source.json"):
            text = (run.root / name).read_text()
            if not (out / name).is_file() or (out / name).read_text() != text:
                atomic_write_text(out / name, text)
        link = out / "cache"
        if not link.exists():
            os.symlink(run.cache.resolve(), link, target_is_directory=True)
        return Run(out)

    def selftrain_config(self, cfg: TrainConfig) -> Any:
        from semiseg.selftrain.pipeline import SelfTrainConfig

        self.check_params(cfg.method, cfg.method_params)
        known = {f.name for f in dataclasses.fields(SelfTrainConfig)}
        params = dict(cfg.method_params)
        defaults = TrainConfig()
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)
                  if f.name not in ("method", "iterations", "batch_size", "unlabelled_batch_size", "seed", "method_params")
                  and getattr(cfg, f.name) != getattr(defaults, f.name)}
        fields = {"method": cfg.method, "iterations": cfg.iterations, "seed": cfg.seed, "batch_size": cfg.batch_size}
        fields["train_overrides"] = {**shared, **params.pop("train_overrides", {})}
        return SelfTrainConfig(**{k: v for k, v in fields.items() if k in known}, **params)

    def train(self, run: Run, cfg: TrainConfig, out: Path, device: str | None, progress: bool) -> Path:
        from semiseg.selftrain.pipeline import run_selftrain

        return run_selftrain(self.seed_run(run, out), self.selftrain_config(cfg), device=device, progress=progress)


ENGINE = EngineRunner()
_BY_METHOD: dict[str, Runner] = {m: SelfTrainRunner() for m in ("uncertainty", "unfiltered", "noisy-student")}


def register_runner(methods: list[str] | tuple[str, ...], runner: Runner) -> None:
    """Route these method names to ``runner`` (methods not listed anywhere go to the engine)."""
    for m in methods:
        _BY_METHOD[m] = runner


def runner_for(method: str) -> Runner:
    """The runner of a method name; ValueError naming every known method if there is none."""
    if method in _BY_METHOD:
        return _BY_METHOD[method]
    from semiseg.methods import METHODS, get_method

    try:
        get_method(method)
    except ValueError:
        known = sorted(set(METHODS) | set(_BY_METHOD))
        raise ValueError(f"unknown method '{method}' (known: {', '.join(known)})") from None
    return ENGINE
