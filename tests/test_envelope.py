"""benchmarks/envelope.py: the headline tables' compute cost, measured where runs finished, estimated by stated rules."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from semiseg.benchmark.config import BenchmarkConfig, Budget, MethodSpec, PlanSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("envelope", ROOT / "benchmarks" / "envelope.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "envelope", mod)  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    plan = {"patch_size": [8, 16, 16], "network": {"arch": "res_unet", "features": [4, 8]}}
    (tmp_path / "plans").mkdir()
    for name in ("tiny", "big"):
        (tmp_path / "plans" / f"{name}.json").write_text(json.dumps({"plan": plan}))
    row = {"precision": "bf16", "ok": True, "patch_size": [8, 16, 16], "arch": "res_unet", "features": [4, 8]}
    rows = [{**row, "benchmark": "tiny", "entry": "supervised", "s_per_step_median": 0.1},
            {**row, "benchmark": "tiny", "entry": "dlunet", "s_per_step_median": 0.5},
            {**row, "benchmark": "tiny", "entry": "supervised", "variant": "same-load-x", "s_per_step_median": 0.2},
            {**row, "benchmark": "big", "entry": "supervised", "variant": "same-load-x", "s_per_step_median": 0.3},
            {**row, "benchmark": "big", "entry": "cps", "variant": "same-load-x", "s_per_step_median": 1.0},
            {**row, "benchmark": "tiny", "entry": "cps", "variant": "same-load-x", "s_per_step_median": 0.5},
            {**row, "benchmark": "tiny", "entry": "cps", "variant": "same-load-x", "s_per_step_median": 0.4, "ok": False}]
    (tmp_path / "sb.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(mod, "PLANS", tmp_path / "plans")
    monkeypatch.setattr(mod, "STEP_BENCH", tmp_path / "sb.json")
    return mod


def config(tmp_path: Path, name: str, runs: list[dict]) -> BenchmarkConfig:
    methods = [MethodSpec("cps", "cps"), MethodSpec("cps-scaled", "cps", {"cps_weight": 1.0}),
               MethodSpec("dlunet", "dlunet", {"light_arch": "light_res_unet"}),
               MethodSpec("uncertainty", "uncertainty", {"k": 2, "rounds": 2}), MethodSpec("noisy-student", "noisy-student", {"k": 2})]
    cfg = BenchmarkConfig(name=name, dataset=tmp_path, split={"labelled": ["a", "b"], "unlabelled": ["u1", "u2", "u3", "u4"], "test": ["t1", "t2"]},
                          plan=PlanSpec(), budget=Budget(iterations=100, batch_size=2), methods=methods, seeds=[0, 1, 2],
                          results_dir=tmp_path / name)
    cfg.results_dir.mkdir()
    cfg.results_file.write_text(json.dumps({"runs": runs}))
    return cfg


def run(entry: str, seed: int, train_s: float, predict_s: float, **train) -> dict:
    return {"entry": entry, "seed": seed, "train": {"wall_time_s": train_s, **train}, "predict": {"wall_time_s": predict_s}}


def test_measured_runs_and_each_estimation_rule(env, tmp_path):
    runs = [run("lower", 0, 96, 4), run("lower", 1, 116, 4), run("cps", 0, 380, 20), run("uncertainty", 0, 50, 10, models_wall_time_s=900)]
    est = env.Estimator(config(tmp_path, "tiny", runs))
    assert est.lower_s == pytest.approx(110) and est.predict_per_case_s == pytest.approx(2)
    costs = {c.entry: c for c in env.table(est, ["lower", "cps", "cps-scaled", "dlunet", "uncertainty", "noisy-student"])[0]}
    # lower: seed 2 still to run, at the mean of the two finished ones
    assert costs["lower"].seeds_done == [0, 1] and costs["lower"].measured_s == pytest.approx(220) and costs["lower"].estimated_s == pytest.approx(110)
    # cps: two seeds left at its one run; cps-scaled (same method and network) pools with it
    assert costs["cps"].estimated_s == pytest.approx(2 * 400) and costs["cps-scaled"].estimated_s == pytest.approx(3 * 400)
    # dlunet: step-bench ratio over the supervised step (no supervised-light run to compare with), times the lower runs
    assert costs["dlunet"].estimated_s == pytest.approx(3 * 5 * 110) and "step bench" in costs["dlunet"].basis
    # uncertainty: a multi-model run costs its models' time (900 + 10 predicting), not the last model's
    assert costs["uncertainty"].measured_s == pytest.approx(910) and costs["uncertainty"].estimated_s == pytest.approx(2 * 910)
    # noisy student: round 0 is shared with uncertainty, whose cost holds it on every seed (measured on seed 0, at that
    # run's mean on 1 and 2), so noisy student pays its student (batches of 4 = 2x the base batch), its fine-tune
    # (250 of 100 steps) and its teacher's pseudo-labels (4 cases x 2 models x 2 s), each seed
    assert costs["noisy-student"].estimated_s == pytest.approx(3 * ((4 / 2 + 250 / 100) * 110 + 4 * 2 * 2))
    assert "round 0 shared" in costs["noisy-student"].basis


def test_a_second_benchmark_scales_the_first_ones_runs_by_the_same_load_step_ratio(env, tmp_path):
    tiny = env.Estimator(config(tmp_path, "tiny", [run("lower", 0, 100, 0), run("cps", 0, 400, 0)]))
    big = env.Estimator(config(tmp_path, "big", [run("lower", 0, 300, 0)]), sibling=tiny)
    cost = big.cost(big.cfg.entry("cps"))
    # cps timed on both plans in the same-load variant: 1.0 / 0.5 (the failed row is ignored)
    assert cost.estimated_s == pytest.approx(3 * 400 * 2.0) and "same-load-x/cps" in cost.basis
    # a self-training entry measured there: scaled by the supervised step's same-load ratio (no row of its own)
    tiny.runs["uncertainty"] = {0: run("uncertainty", 0, 1000, 0)}
    unc = big.cost(big.cfg.entry("uncertainty"))
    assert unc.estimated_s == pytest.approx(3 * 1000 * 0.3 / 0.2) and "same-load-x/supervised" in unc.basis
    # dlunet measured nowhere and big has no plain step-bench rows: no basis, and the table refuses to guess
    with pytest.raises(SystemExit, match="dlunet"):
        env.table(big, ["dlunet"])


def test_markdown_states_the_command_and_the_verdict(env, tmp_path):
    est = env.Estimator(config(tmp_path, "tiny", [run("lower", s, 3600, 0) for s in (0, 1, 2)]))
    costs, m, e = env.table(est, ["lower"])
    text = env.markdown([(est.cfg, costs, m, e)], cores=2, limit_h=1.0, command="python benchmarks/envelope.py X")
    assert "python benchmarks/envelope.py X" in text and "3.0 core-h" in text and "**over** by 0.5 h" in text


def test_cpu_basis_counts_the_cpu_a_run_used_not_the_wall_time_it_waited(env):
    contended = run("mt", 0, 2000, 10, auc_cpu_percent_s=80000.0)  # 800 CPU-s over 2000 s: it met a third process
    assert env.run_seconds(contended, "cpu") == pytest.approx(810) and env.run_seconds(contended, "wall") == pytest.approx(2010)
    # a multi-model run resumed in a later session: its models' wall time at the core share of the measured session
    resumed = run("uncertainty", 0, 500, 0, wall_time_this_session_s=500, models_wall_time_s=3000, auc_cpu_percent_s=25000.0)
    assert env.run_seconds(resumed, "cpu") == pytest.approx(3000 * 0.5)
    with pytest.raises(ValueError, match="basis"):
        env.run_seconds(contended, "gpu")


def test_resumed_and_earlier_trained_runs_keep_their_whole_training(env):
    # resumed: 1000 s of wall over all sessions, the last session 400 s at half a core -> 500 CPU-s
    resumed = run("ua-mt", 0, 1000, 0, wall_time_this_session_s=400, auc_cpu_percent_s=20000.0, resumed_from_step=500, steps=3000)
    assert env.run_seconds(resumed, "cpu") == pytest.approx(500)
    # trained in an earlier session (nothing measured now): its logged wall time stands
    earlier = run("ua-mt", 1, 1000, 0, wall_time_this_session_s=1000, auc_cpu_percent_s=100.0, resumed_from_step=3000, steps=3000)
    assert env.run_seconds(earlier, "cpu") == pytest.approx(1000)


def test_same_load_rows_win_over_plain_rows_and_round0_needs_the_same_k(env, tmp_path):
    sb = json.loads(env.STEP_BENCH.read_text())
    row = {"precision": "bf16", "ok": True, "patch_size": [8, 16, 16], "arch": "res_unet", "features": [4, 8], "benchmark": "tiny"}
    sb["rows"] += [{**row, "entry": "dlunet", "variant": "same-load-y", "s_per_step_median": 0.8},
                   {**row, "entry": "supervised", "variant": "same-load-y", "s_per_step_median": 0.2}]
    env.STEP_BENCH.write_text(json.dumps(sb))
    cfg = config(tmp_path, "tiny", [run("lower", 0, 100, 0)])
    cfg.methods.append(MethodSpec("noisy-k3", "noisy-student", {"k": 3}))
    est = env.Estimator(cfg)
    costs = {c.entry: c for c in env.table(est, ["dlunet", "uncertainty", "noisy-student", "noisy-k3"])[0]}
    assert costs["dlunet"].estimated_s == pytest.approx(3 * 4.0 * 100) and "same-load-y" in costs["dlunet"].basis  # not the plain 5x
    assert "round 0 shared" in costs["noisy-student"].basis  # k 2, as uncertainty's
    assert "round 0 counted here" in costs["noisy-k3"].basis  # k 3: other folds, other models
    # a second call costs the same (the round-0 bookkeeping starts afresh)
    assert [c.estimated_s for c in env.table(est, ["uncertainty", "noisy-student"])[0]] == [costs["uncertainty"].estimated_s, costs["noisy-student"].estimated_s]
