"""The benchmark file: dataset, regime, shared plan and budget, methods, seeds and predictor options.

A comparison is data, not code, so that every method provably gets the same network, patch,
preprocessing, number of optimiser steps and seed set (BENCHMARK.md's rules). Example::

    name: la_ssl8_cpu
    dataset: LeftAtrium                 # absolute, relative to the repo root, or to data_root
    split:                              # or a split JSON file (relative to the dataset folder)
      labelled: [la_000..la_007]        # "a..b" expands a numbered range
      unlabelled: [la_008..la_039]
      test: [la_040..la_047]
    plan: {spacing: [1.25, 1.25, 1.25], base_features: 16, overrides: {patch_size: [40, 64, 64]}}
    budget: {iterations: 1000, batch_size: 2, unlabelled_batch_size: 2, train: {checkpoint_every: 250}}
    methods: [mean-teacher, {name: ua-mt-d01, method: ua-mt, params: {dropout: 0.1}}]
    seeds: [0, 1, 2]
    predictor: {step: 0.5}
    postprocess: [{step: largest_component}]   # optional: also score each run after these steps

A file may start from another with ``extends: other.yaml`` (relative to its own folder): the other's
top-level fields, each replaced whole by the fields this file gives (another regime at the same budget is
a name, a description and a split).

The supervised lower bound (``lower``: labelled cases of the regime) and upper bound (``upper``: the
regime's labelled and unlabelled cases, all with labels) are always part of the comparison. Both train with
``bounds: {params: {...}}`` (supervised params, e.g. ``{network: {dropout: 0.5, dropout_at: bottleneck}}``) where
that is the best supervised model of the budget: the bound every method is judged against is never weakened to widen
the gap (issue 15). A method that trains another network or regularisation names its own ``baseline`` entry.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from semiseg.config import read_data_file

LOWER, UPPER = "lower", "upper"
ROLES = {LOWER: "lower bound", UPPER: "upper bound"}
# TrainConfig fields that the benchmark itself sets: a method may not change its own budget or seed
_BUDGET_OWNED = {"method", "iterations", "batch_size", "unlabelled_batch_size", "seed", "method_params"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TOP_KEYS = {"name", "description", "tier", "dataset", "data_root", "split", "plan", "budget", "methods", "seeds",
             "predictor", "score_unlabelled", "work_dir", "results_dir", "postprocess",
             "steps_of", "extends", "bounds"}  # steps_of: written by with_iterations (the benchmark this one re-runs at another step count)


def repo_root() -> Path:
    """The source checkout holding this package (relative paths in configs resolve against it);
    the working directory when semiseg is installed outside a checkout."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def default_data_root() -> Path:
    """``$SEMISEG_DATA_ROOT`` or ``<repo>/../shared/data``, where the project's datasets live."""
    env = os.environ.get("SEMISEG_DATA_ROOT")
    return Path(env) if env else repo_root().parent / "shared" / "data"


@dataclass
class PlanSpec:
    """How the one plan of the benchmark is made (``create_run`` arguments + dotted overrides)."""

    spacing: list[float] | None = None
    max_patch_voxels: int = 128**3
    base_features: int = 32
    max_features: int = 320
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Budget:
    """What every run gets: optimiser steps on the labelled stream, batch sizes, shared TrainConfig fields."""

    iterations: int
    batch_size: int = 2
    unlabelled_batch_size: int = 2
    train: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields, the same for every run


@dataclass
class MethodSpec:
    """One entry of the comparison: a unique name, a registered method and its params."""

    name: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    # the supervised entry this one is judged against beside the lower bound (same network and regularisation,
    # e.g. DLUNet's light net): its paired comparison is in the results as paired_vs_baseline
    baseline: str = LOWER

    @property
    def role(self) -> str:
        return self.name if self.name in ROLES else "method"


@dataclass
class BenchmarkConfig:
    name: str
    dataset: Path
    split: dict[str, list[str]]  # labelled / unlabelled / test of the regime
    plan: PlanSpec
    budget: Budget
    methods: list[MethodSpec]  # the methods under test (bounds excluded)
    seeds: list[int]
    predictor: dict[str, Any] = field(default_factory=dict)  # PredictorConfig fields
    score_unlabelled: bool = False  # also predict the unlabelled cases and score them against their hidden labels
    postprocess: list[dict[str, Any]] = field(default_factory=list)  # semiseg.postprocess steps, scored beside the raw predictions
    work_dir: Path = Path("runs/bench")
    results_dir: Path = Path("benchmarks/results")
    tier: str = "cpu"
    description: str = ""
    source: Path | None = None  # the file it was read from
    raw: dict[str, Any] = field(default_factory=dict)  # the file's content, kept in the results
    steps_override: int | None = None  # made by ``load_config(..., iterations=N)`` from the file's budget
    bounds_params: dict[str, Any] = field(default_factory=dict)  # the supervised params both bounds train with

    def entries(self) -> list[MethodSpec]:
        """Lower bound, upper bound, then the methods: the order of runs and of every table."""
        return [MethodSpec(LOWER, "supervised", dict(self.bounds_params)), MethodSpec(UPPER, "supervised", dict(self.bounds_params)),
                *self.methods]

    def entry(self, name: str) -> MethodSpec:
        for e in self.entries():
            if e.name == name:
                return e
        raise ValueError(f"benchmark '{self.name}' has no entry '{name}' (entries: {', '.join(e.name for e in self.entries())})")

    def upper_split(self) -> dict[str, list[str]]:
        """The upper bound's split: the regime's unlabelled cases become labelled; test is unchanged."""
        return {"labelled": sorted(self.split["labelled"] + self.split["unlabelled"]), "unlabelled": [], "test": list(self.split["test"])}

    @property
    def results_file(self) -> Path:
        return self.results_dir / f"{self.name}.json"

    def pieces_dir(self, entry: str) -> Path:
        """One entry's finished runs, ``seed_<s>.json`` each (see ``piece_path``)."""
        return self.work_dir / "pieces" / entry

    def piece_path(self, entry: str, seed: int) -> Path:
        """One finished run, written atomically: its presence means the run needs no more work."""
        return self.pieces_dir(entry) / f"seed_{seed}.json"

    def model_dir(self, entry: str, seed: int) -> Path:
        """Where one entry and seed trains: the upper bound in its own run folder (its cache marks every case
        labelled), every other entry in the regime's."""
        return self.work_dir / ("upper" if entry == UPPER else "regime") / "models" / entry / f"seed_{seed}"

    def summary(self) -> dict[str, Any]:
        """What the results file records about the configuration (JSON-ready)."""
        return {
            "name": self.name, "tier": self.tier, "description": self.description, "dataset": str(self.dataset),
            "split": self.split, "upper_split": self.upper_split(), "plan": dataclasses.asdict(self.plan),
            "budget": dataclasses.asdict(self.budget), "methods": [dataclasses.asdict(m) for m in self.entries()],
            "seeds": self.seeds, "predictor": self.predictor, "score_unlabelled": self.score_unlabelled, "postprocess": self.postprocess,
            "config_file": str(self.source) if self.source else None, "config": self.raw,
        }


# -- loading ---------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """A benchmark file problem; the message names the file and the field."""


def expand_cases(items: Any, where: str) -> list[str]:
    """Case lists with ranges: ``la_000..la_007`` -> la_000, la_001, ... la_007 (same prefix, same width)."""
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{where}: expected a list of case names (ranges like 'la_000..la_007' allowed)")
    out: list[str] = []
    for item in items:
        if ".." not in item:
            out.append(item)
            continue
        a, b = item.split("..", 1)
        ma, mb = re.fullmatch(r"(.*?)(\d+)", a), re.fullmatch(r"(.*?)(\d+)", b)
        if not ma or not mb or ma.group(1) != mb.group(1) or int(mb.group(2)) < int(ma.group(2)):
            raise ConfigError(f"{where}: bad range '{item}' (expected PREFIXnnn..PREFIXmmm with the same prefix, mmm >= nnn)")
        width = len(ma.group(2))
        out += [f"{ma.group(1)}{i:0{width}d}" for i in range(int(ma.group(2)), int(mb.group(2)) + 1)]
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: a case is listed twice")
    return out


def _resolve(path: str | Path, *bases: Path) -> Path:
    """Absolute as is; else the first base under which it exists; else under the first base."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    for b in bases:
        if (b / p).exists():
            return (b / p).resolve()
    return (bases[0] / p).resolve()


def _fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} (known: {sorted(known)})")
    return dict(raw)


def _split(raw: Any, dataset: Path, where: str) -> dict[str, list[str]]:
    if isinstance(raw, str):
        path = _resolve(raw, dataset, repo_root())
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: cannot read split file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with labelled/unlabelled/test or a split JSON file")
    split = {k: expand_cases(raw.get(k, []), f"{where}.{k}") for k in ("labelled", "unlabelled", "test")}
    if not split["labelled"] or not split["test"]:
        raise ConfigError(f"{where}: needs at least one labelled and one test case")
    for a, b in (("labelled", "unlabelled"), ("labelled", "test"), ("unlabelled", "test")):
        both = sorted(set(split[a]) & set(split[b]))
        if both:
            raise ConfigError(f"{where}: case(s) {both[:5]} are both {a} and {b}")
    return split


def _bounds(raw: Any, where: str) -> dict[str, Any]:
    """``bounds: {params: {...}}``: the supervised params of both bounds, checked as the supervised method checks them."""
    from semiseg.benchmark.runners import runner_for

    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or set(raw) - {"params"} or not isinstance(raw.get("params", {}), Mapping):
        raise ConfigError(f"{where}: expected {{params: {{...}}}}, the supervised params both bounds train with")
    params = dict(raw.get("params") or {})
    try:
        runner_for("supervised").check_params("supervised", params)
    except ValueError as e:
        raise ConfigError(f"{where}.params: {e}") from None
    return params


def _methods(raw: Any, where: str, bounds: Mapping[str, Any] | None = None) -> list[MethodSpec]:
    from semiseg.benchmark.runners import runner_for

    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of methods (names or {{name, method, params}} mappings)")
    out: list[MethodSpec] = []
    for i, m in enumerate(raw):
        w = f"{where}[{i}]"
        if isinstance(m, str):
            m = {"method": m}
        if not isinstance(m, dict) or not isinstance(m.get("method"), str):
            raise ConfigError(f"{w}: expected a method name or a mapping with 'method'")
        spec = MethodSpec(**{"name": m["method"], **_fields(MethodSpec, m, w)})
        if not _NAME.fullmatch(spec.name):
            raise ConfigError(f"{w}: name '{spec.name}' must be letters, digits, '_', '-', '.' (it names folders)")
        if not isinstance(spec.params, dict):
            raise ConfigError(f"{w}.params: expected a mapping")
        if spec.name in ROLES:
            raise ConfigError(f"{w}: '{spec.name}' is reserved for the supervised bound, which every benchmark runs")
        if spec.method == "supervised" and spec.params == dict(bounds or {}):
            raise ConfigError(f"{w}: supervised training with {'these params' if spec.params else 'no params'} is the lower "
                              "bound, which every benchmark runs already")
        try:
            runner_for(spec.method).check_params(spec.method, spec.params)
        except ValueError as e:
            raise ConfigError(f"{w}: {e}") from None
        out.append(spec)
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: duplicate entry name(s) {dup}; give each a distinct 'name'")
    supervised = {LOWER, *(m.name for m in out if m.method == "supervised")}
    for i, m in enumerate(out):
        if m.baseline not in supervised:
            raise ConfigError(f"{where}[{i}]: baseline '{m.baseline}' is not a supervised entry (choose from {sorted(supervised)})")
    return out


def config_from_dict(raw: Mapping[str, Any], source: Path | None = None) -> BenchmarkConfig:
    """Validate and resolve a benchmark mapping; every error names the file and the field."""
    from semiseg.config import TrainConfig
    from semiseg.inference import PredictorConfig

    where = str(source) if source else "benchmark config"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of benchmark fields")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} (known: {sorted(_TOP_KEYS)})")
    for key in ("name", "dataset", "split", "budget", "seeds"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required field '{key}'")
    name = str(raw["name"])
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name '{name}' must be letters, digits, '_', '-', '.' (it names files)")
    root = repo_root()
    data_root = _resolve(raw["data_root"], root) if raw.get("data_root") else default_data_root()
    dataset = _resolve(raw["dataset"], root, data_root)
    if not (dataset / "dataset.json").is_file():
        raise ConfigError(f"{where}: dataset: {dataset}/dataset.json not found (paths resolve against {root} then {data_root})")
    split = _split(raw["split"], dataset, f"{where}: split")
    plan = PlanSpec(**_fields(PlanSpec, raw.get("plan"), f"{where}: plan"))
    budget = Budget(**_fields(Budget, raw["budget"], f"{where}: budget"))
    if not isinstance(budget.iterations, int) or budget.iterations < 1:
        raise ConfigError(f"{where}: budget.iterations must be a positive integer")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(budget.train) - (train_fields - _BUDGET_OWNED))
    if bad:
        raise ConfigError(f"{where}: budget.train: field(s) {bad} are not allowed there "
                          f"(allowed: {sorted(train_fields - _BUDGET_OWNED)}; iterations and batch sizes are budget fields)")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of distinct integers")
    predictor = dict(raw.get("predictor") or {})
    try:
        PredictorConfig(**predictor)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: predictor: {e}") from None
    postprocess = raw.get("postprocess") or []
    if not isinstance(postprocess, list) or not all(isinstance(s, Mapping) for s in postprocess):
        raise ConfigError(f"{where}: postprocess must be a list of step mappings, e.g. [{{step: largest_component}}]")
    try:
        from semiseg.benchmark.postprocessed import build_pipeline

        build_pipeline(postprocess, dataset)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{where}: postprocess: {e}") from None
    bounds = _bounds(raw.get("bounds"), f"{where}: bounds")
    work = _resolve(raw.get("work_dir", f"runs/bench/{name}"), root)
    results = _resolve(raw.get("results_dir", "benchmarks/results"), root)
    return BenchmarkConfig(
        name=name, dataset=dataset, split=split, plan=plan, budget=budget, methods=_methods(raw.get("methods"), f"{where}: methods", bounds),
        seeds=list(seeds), predictor=predictor, score_unlabelled=bool(raw.get("score_unlabelled", False)),
        postprocess=[dict(s) for s in postprocess], work_dir=work, results_dir=results, tier=str(raw.get("tier", "cpu")), description=str(raw.get("description", "")),
        source=source, raw=dict(raw), bounds_params=bounds,
    )


def with_iterations(raw: Mapping[str, Any], iterations: int, where: str) -> dict[str, Any]:
    """The same benchmark at another step count, as a benchmark of its own (``<name>_steps<N>``: its own work
    folder and results file), for the steps-vs-Dice table that shows whether a budget has converged."""
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"{where}: --iterations must be a positive integer, got {iterations}")
    if not isinstance(raw.get("budget"), Mapping) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}: --iterations needs the config's name and budget")
    out = {**raw, "name": f"{raw['name']}_steps{iterations}", "budget": {**raw["budget"], "iterations": iterations},
           "steps_of": {"name": raw["name"], "iterations": raw["budget"].get("iterations")}}
    if "work_dir" in raw:
        out["work_dir"] = f"{raw['work_dir']}_steps{iterations}"
    return out


def _extended(path: Path, raw: Any, chain: list[Path]) -> Any:
    """``raw`` over the file it ``extends`` (top-level fields replaced whole), recursively, refusing cycles."""
    if not isinstance(raw, Mapping) or "extends" not in raw:
        return raw
    base_path = (path.parent / str(raw["extends"])).resolve()
    if base_path in chain:
        raise ConfigError(f"{path}: extends {raw['extends']}: a cycle ({' -> '.join(p.name for p in [*chain, base_path])})")
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {raw['extends']}: {base_path} not found")
    base = _extended(base_path, read_data_file(base_path), [*chain, base_path])
    if not isinstance(base, Mapping):
        raise ConfigError(f"{base_path}: expected a mapping of benchmark fields (extended by {path})")
    out = {**{k: v for k, v in base.items() if k != "extends"}, **raw}
    out["extends"] = str(raw["extends"])
    return out


def load_config(path: str | Path, iterations: int | None = None) -> BenchmarkConfig:
    """Read a benchmark YAML/JSON file (see the module docstring); ``iterations`` derives the same
    benchmark at another step count (:func:`with_iterations`)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"{p}: benchmark config not found")
    raw = _extended(p, read_data_file(p), [p])
    if iterations is not None:
        raw = with_iterations(raw, iterations, str(p))
    cfg = config_from_dict(raw, p)
    cfg.steps_override = iterations
    return cfg
