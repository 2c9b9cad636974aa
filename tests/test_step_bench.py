"""benchmarks/step_bench.py: per-method step timing on a plan's shape, run in subprocesses, results kept per row."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from semiseg.config import NetworkConfig, Plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sb():
    spec = importlib.util.spec_from_file_location("step_bench", ROOT / "benchmarks" / "step_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_doc(lr: float = 0.01) -> dict:
    plan = Plan(dataset_name="tiny", modality="MRI", num_input_channels=1, labels={"background": 0, "a": 1, "b": 2},
                target_spacing=[1.0, 1.0, 1.0], patch_size=[8, 16, 16],
                network=NetworkConfig(features=[4, 8, 16], kernels=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]))
    return {"benchmark": "tiny", "tier": "cpu", "source": "test", "plan": dataclasses.asdict(plan),
            "budget": {"iterations": 100, "batch_size": 2, "unlabelled_batch_size": 2, "train": {"lr": lr, "checkpoint_every": 50}},
            "entries": [{"name": "supervised", "method": "supervised", "params": {}},
                        {"name": "mpl", "method": "mpl", "params": {"warmup_steps": 25, "finetune_steps": 20}},
                        {"name": "dlunet", "method": "dlunet", "params": {}}]}


@pytest.mark.parametrize("entry", [0, 1, 2])
def test_time_entry_steps_every_method_on_the_plan_shape(sb, entry):
    doc = tiny_doc()
    row = sb.time_entry(doc, doc["entries"][entry], "cpu", amp=True, steps=2, warmup=1)
    assert row["ok"] and row["finite_metrics"] and row["weights_changed"]
    assert row["s_per_step_min"] <= row["s_per_step_median"] and row["s_per_step_min"] > 0
    assert row["amp"] is False  # AMP only takes effect on CUDA
    assert row["patch_size"] == [8, 16, 16] and row["unlabelled_batch_size"] == (0 if entry == 0 else 2)
    assert row["parameters"] > 0 and row["peak_rss_mb"] > 0 and row["cuda_peak_allocated_mb"] is None


def test_time_entry_marks_a_method_that_does_not_learn(sb, monkeypatch):
    import torch

    # an optimizer that never steps: nothing moves, and the row must say so rather than pass (a zero step size
    # would do the same, but TrainConfig refuses lr = 0)
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, closure=None: None)
    doc = tiny_doc()
    row = sb.time_entry(doc, doc["entries"][0], "cpu", amp=False, steps=1, warmup=0)
    assert row["weights_changed"] is False and row["ok"] is False


def test_run_all_writes_rows_and_keeps_rows_of_other_entries(sb, tmp_path):
    plan = tmp_path / "tiny.json"
    plan.write_text(json.dumps(tiny_doc()))
    out = tmp_path / "results"
    path = sb.run_all([str(plan)], "cpu", ["on"], steps=1, warmup=0, threads=1, entries=["supervised"], out=out, command="first")
    doc = json.loads(path.read_text())
    assert [r["entry"] for r in doc["rows"]] == ["supervised"] and not doc["failures"]
    sb.run_all([str(plan)], "cpu", ["on"], steps=1, warmup=0, threads=1, entries=["mpl"], out=out, command="second")
    doc = json.loads(path.read_text())
    assert sorted(r["entry"] for r in doc["rows"]) == ["mpl", "supervised"]
    assert [r["command"] for r in doc["runs"]] == ["first", "second"]
    md = (out / "step_bench_cpu.md").read_text()
    assert "| mpl | fp32 |" in md and "`second`" in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # written atomically, no temporaries left


def test_unknown_entry_is_a_recorded_failure(sb, tmp_path):
    plan = tmp_path / "tiny.json"
    doc = tiny_doc()
    doc["entries"].append({"name": "typo", "method": "no-such-method", "params": {}})
    plan.write_text(json.dumps(doc))
    path = sb.run_all([str(plan)], "cpu", ["on"], 1, 0, 1, ["typo"], tmp_path, "c")
    res = json.loads(path.read_text())
    assert res["rows"] == [] and res["failures"][0]["entry"] == "typo" and "no-such-method" in res["failures"][0]["error"]


def test_plan_file_errors_name_the_file(sb, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        sb.load_plan_file(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"plan": {}}))
    with pytest.raises(ValueError, match=r"bad\.json.*missing benchmark, budget, entries"):
        sb.load_plan_file(str(bad))


def test_committed_plan_files_match_their_configs(sb):
    """The plan files the GPU machine uses hold the configs' budgets and engine entries (the plan itself needs the data)."""
    from semiseg.benchmark.config import load_config

    checked, unreadable = 0, []
    for path in sorted((ROOT / "benchmarks" / "plans").glob("*.json")):
        doc = sb.load_plan_file(str(path))
        try:
            cfg = load_config(ROOT / doc["source"])
        except ValueError as e:  # dataset absent: this config cannot be read here; the others are still checked
            unreadable.append(f"{doc['source']}: {e}")
            continue
        checked += 1
        stale = (f"{path.name} is stale: remake it with `python benchmarks/step_bench.py plan {doc['source']}` "
                 "(or every plan file, configs that extend others included, with `plan --all`)")
        assert doc["benchmark"] == cfg.name and doc["budget"]["iterations"] == cfg.budget.iterations, stale
        assert doc["budget"]["train"] == cfg.budget.train, stale
        engine = [e.name for e in cfg.methods if e.method not in sb.SELF_TRAINING]
        assert [e["name"] for e in doc["entries"]] == ["supervised", *engine], stale
    if not checked:
        pytest.skip("; ".join(unreadable))


def test_precision_and_plan_variants_are_rows_of_their_own(sb, tmp_path):
    """bf16 autocast is timed on the CPU as asked, and a --set variant (another network on the same plan) is
    recorded under its name with its overrides, beside the plain rows instead of replacing them."""
    plan = tmp_path / "tiny.json"
    plan.write_text(json.dumps(tiny_doc()))
    path = sb.run_all([str(plan)], "cpu", ["on"], 1, 0, 1, ["supervised"], tmp_path, "c", precisions=["bf16", "fp32"])
    sb.run_all([str(plan)], "cpu", ["on"], 1, 0, 1, ["supervised"], tmp_path, "c", precisions=["fp32"],
               plan_set={"network.arch": "res_unet"}, variant="res")
    rows = json.loads(path.read_text())["rows"]
    got = sorted((r["variant"], r["precision"], r["arch"]) for r in rows)
    assert got == [("", "bf16", "unet"), ("", "fp32", "unet"), ("res", "fp32", "res_unet")]
    assert all(r["ok"] for r in rows)
    assert "## tiny, res" in (tmp_path / "step_bench_cpu.md").read_text()


def test_rows_of_an_earlier_plan_of_the_same_name_are_kept_apart(sb, tmp_path):
    """A benchmark whose plan changed (another patch) keeps its old rows under a title of their own, never mixed
    into the new plan's table or used as its supervised reference."""
    plan = tmp_path / "tiny.json"
    doc = tiny_doc()
    plan.write_text(json.dumps(doc))
    sb.run_all([str(plan)], "cpu", ["on"], 1, 0, 1, ["supervised", "mpl"], tmp_path, "old", precisions=["fp32"])
    doc["plan"]["patch_size"] = [p * 2 for p in doc["plan"]["patch_size"]]
    plan.write_text(json.dumps(doc))
    sb.run_all([str(plan)], "cpu", ["on"], 1, 0, 1, ["supervised"], tmp_path, "new", precisions=["fp32"])
    md = (tmp_path / "step_bench_cpu.md").read_text()
    new, old = md.index("## tiny\n"), md.index("## tiny (an earlier plan of this name)")
    assert new < old and "| mpl |" in md[old:] and "| mpl |" not in md[new:old]
