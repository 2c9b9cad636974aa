"""``semiseg benchmark --jobs N`` and ``--iterations N``: pieces side by side in child processes with cores / N threads each,
self-training entries of one seed kept in one job (they share fold models); the same benchmark at another
step count as a benchmark of its own, read back by the convergence table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from semiseg.benchmark.config import MethodSpec, load_config
from semiseg.benchmark.harness import job_groups, run_benchmark
from synthetic_data import make_dataset, tiny_overrides


def test_self_training_entries_of_a_seed_share_one_job():
    sup, mt = MethodSpec("lower", "supervised"), MethodSpec("mean-teacher", "mean-teacher")
    unc, unf = MethodSpec("uncertainty", "uncertainty"), MethodSpec("unfiltered", "unfiltered")
    pending = [(sup, 0), (mt, 0), (unc, 0), (unf, 0), (unc, 1), (sup, 1)]
    groups = [([e.name for e in es], s) for es, s in job_groups(pending)]
    assert groups == [(["lower"], 0), (["mean-teacher"], 0), (["uncertainty", "unfiltered"], 0), (["uncertainty"], 1), (["lower"], 1)]


def test_jobs_run_pieces_side_by_side_into_one_results_file(tmp_path):
    data = make_dataset(tmp_path / "raw", ["l0", "l1", "l2"], ["u0"], ["t0"], shape=(8, 36, 36))
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "provenance": "Tiny synthetic set, licence CC BY-NC-SA 4.0"}))
    raw = {"name": "tiny_jobs", "dataset": str(data),
           "split": {"labelled": ["l0", "l1"], "unlabelled": ["l2", "u0"], "test": ["t0"]},
           "plan": {"overrides": tiny_overrides([8, 32, 32])},
           "budget": {"iterations": 2, "batch_size": 2, "unlabelled_batch_size": 2, "train": {"checkpoint_every": 2}},
           "methods": ["mean-teacher"], "seeds": [0], "predictor": {"device": "cpu"},
           "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results")}
    cfg_file = tmp_path / "tiny_jobs.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    out = run_benchmark(load_config(cfg_file), device="cpu", progress=False, jobs=2, only=["lower", "upper"])
    doc = json.loads(out.read_text())
    assert sorted(r["entry"] for r in doc["runs"]) == ["lower", "upper"]
    logs = sorted(p.name for p in (tmp_path / "work" / "logs").iterdir())
    assert logs == ["lower_seed0.log", "upper_seed0.log"]
    for r in doc["runs"]:  # each child had its share of the cores, recorded with its numbers
        m = r["machine"]
        assert m["torch_threads"] == max(1, (m["cpu_affinity"] or m["cpu_count"]) // 2)
        assert "--only" in r["command"] and "--seeds 0" in r["command"]
    for r in doc["runs"]:  # first-seed pieces keep best/worst thumbnails beside the results, named portably
        assert [t["which"] for t in r["thumbnails"]] == ["best", "worst"]
        assert all(t["png"].startswith(str(tmp_path)) and Path(t["png"]).is_file() for t in r["thumbnails"])
        assert Path(r["thumbnails"][0]["png"]).parent == tmp_path / "results" / "tiny_jobs_thumbnails"
    notice = tmp_path / "results" / "tiny_jobs_thumbnails" / "NOTICE.txt"  # the images carry the data's terms
    assert "Tiny synthetic set, licence CC BY-NC-SA 4.0" in notice.read_text()
    again = run_benchmark(load_config(cfg_file), device="cpu", progress=False, jobs=2, only=["lower", "upper"])
    assert json.loads(again.read_text())["runs"] == doc["runs"]  # finished pieces are not run again


def test_a_failing_job_is_reported_with_its_log(tmp_path, monkeypatch):
    from semiseg.benchmark import harness

    data = make_dataset(tmp_path / "raw", ["l0", "l1"], [], ["t0"], shape=(8, 36, 36))
    raw = {"name": "tiny_fail", "dataset": str(data), "split": {"labelled": ["l0"], "unlabelled": ["l1"], "test": ["t0"]},
           "plan": {"overrides": tiny_overrides([8, 32, 32])}, "budget": {"iterations": 2}, "methods": [], "seeds": [0],
           "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results")}
    cfg_file = tmp_path / "tiny_fail.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(harness, "_semiseg_command", lambda: ["false"])
    with pytest.raises(harness.JobsFailed, match=r"lower seed 0: exit 1, see .*lower_seed0\.log"):
        run_benchmark(load_config(cfg_file), device="cpu", progress=False, jobs=2, only=["lower"])


def _bounds_only_config(tmp_path: Path, name: str) -> Path:
    """A 2-step benchmark of one labelled, one unlabelled and one test case, no methods beyond the bounds."""
    data = make_dataset(tmp_path / "raw", ["l0", "l1"], [], ["t0"], shape=(8, 36, 36))
    raw = {"name": name, "dataset": str(data), "split": {"labelled": ["l0"], "unlabelled": ["l1"], "test": ["t0"]},
           "plan": {"overrides": tiny_overrides([8, 32, 32])}, "budget": {"iterations": 2}, "methods": [], "seeds": [0],
           "predictor": {"device": "cpu"}, "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results")}
    cfg_file = tmp_path / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    return cfg_file


def test_iterations_makes_a_benchmark_of_its_own_and_the_convergence_table_reads_both(tmp_path):
    from semiseg.benchmark.config import ConfigError
    from semiseg.benchmark.convergence import convergence_rows, markdown, step_files

    cfg_file = _bounds_only_config(tmp_path, "tiny_conv")
    main = run_benchmark(load_config(cfg_file), device="cpu", progress=False, only=["lower"])
    longer = load_config(cfg_file, iterations=4)
    assert longer.name == "tiny_conv_steps4" and longer.budget.iterations == 4 and longer.work_dir.name == "work_steps4"
    run_benchmark(longer, device="cpu", progress=False, only=["lower"])
    assert [p.name for p in step_files(main)] == ["tiny_conv.json", "tiny_conv_steps4.json"]
    rows = convergence_rows(step_files(main))
    assert [(r["entry"], r["steps"], r["seed"]) for r in rows] == [("lower", 2, 0), ("lower", 4, 0)]
    assert all(r["dice"] is not None and r["final_loss"] is not None for r in rows)
    assert "| lower | 4 | 0 |" in markdown(rows, "tiny_conv")
    with pytest.raises(ConfigError, match="--iterations must be a positive integer"):
        load_config(cfg_file, iterations=0)


def test_a_config_extends_another_field_by_field(tmp_path):
    from semiseg.benchmark.config import ConfigError

    data = make_dataset(tmp_path / "raw", ["l0", "l1", "l2"], [], ["t0"], shape=(8, 36, 36))
    base = {"name": "base", "dataset": str(data), "split": {"labelled": ["l0"], "unlabelled": ["l1", "l2"], "test": ["t0"]},
            "plan": {"overrides": tiny_overrides([8, 32, 32])}, "budget": {"iterations": 7, "train": {"precision": "bf16"}},
            "methods": ["mean-teacher"], "seeds": [0, 1]}
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "base.yaml").write_text(yaml.safe_dump(base))
    child = tmp_path / "cfgs" / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "base.yaml", "name": "child",
                                     "split": {"labelled": ["l0", "l1"], "unlabelled": ["l2"], "test": ["t0"]}}))
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.split["labelled"] == ["l0", "l1"]  # replaced whole
    assert cfg.budget.iterations == 7 and cfg.budget.train == {"precision": "bf16"} and cfg.seeds == [0, 1]  # inherited
    assert [m.name for m in cfg.methods] == ["mean-teacher"] and cfg.raw["extends"] == "base.yaml"
    (tmp_path / "cfgs" / "base.yaml").write_text(yaml.safe_dump({**base, "extends": "child.yaml"}))
    with pytest.raises(ConfigError, match="cycle"):
        load_config(child)
    child.write_text(yaml.safe_dump({"extends": "nope.yaml", "name": "child"}))
    with pytest.raises(ConfigError, match=r"extends nope\.yaml: .*nope\.yaml not found"):
        load_config(child)


def test_an_entry_is_also_judged_against_its_own_supervised_baseline(tmp_path):
    """DLUNet's light net gets its own supervised baseline (same network), named in the config and paired in the results."""
    from semiseg.benchmark.config import ConfigError, config_from_dict
    from semiseg.benchmark.results import add_paired_vs_baseline

    data = make_dataset(tmp_path / "raw", ["l0", "l1"], ["u0"], ["t0"], shape=(8, 36, 36))
    raw = {"name": "tiny_base", "dataset": str(data), "split": {"labelled": ["l0"], "unlabelled": ["l1", "u0"], "test": ["t0"]},
           "plan": {"overrides": tiny_overrides([8, 32, 32])}, "budget": {"iterations": 2}, "seeds": [0],
           "methods": [{"name": "supervised-light", "method": "supervised", "params": {"network": {"arch": "light_unet"}}},
                       {"method": "dlunet", "baseline": "supervised-light"}]}
    cfg = config_from_dict(raw)
    assert [m.baseline for m in cfg.methods] == ["lower", "supervised-light"]
    with pytest.raises(ConfigError, match="baseline 'nope' is not a supervised entry"):
        config_from_dict({**raw, "methods": [{"method": "dlunet", "baseline": "nope"}]})
    with pytest.raises(ConfigError, match="params.network must map NetworkConfig fields"):
        config_from_dict({**raw, "methods": [{"name": "s", "method": "supervised", "params": {"network": {"archh": "vnet"}}}]})
    per_seed = lambda d: {"0": {"per_case_dice": d}}  # noqa: E731
    entries = {"lower": {"per_seed": per_seed({"a": 0.5, "b": 0.6, "c": 0.7})},
               "supervised-light": {"per_seed": per_seed({"a": 0.3, "b": 0.4, "c": 0.5})},
               "dlunet": {"per_seed": per_seed({"a": 0.4, "b": 0.5, "c": 0.6})}}
    add_paired_vs_baseline(entries, {m.name: m.baseline for m in cfg.methods})
    own = entries["dlunet"]["paired_vs_baseline"]
    assert own["baseline"] == "supervised-light" and own["n"] == 3 and own["mean_diff"] == pytest.approx(0.1)
    assert "paired_vs_baseline" not in entries["supervised-light"]  # judged against the lower bound only


def test_both_bounds_train_with_the_bounds_params_and_plain_supervised_becomes_an_entry(tmp_path):
    """``bounds: {params}`` (issue 15: the best supervised model of the budget, e.g. with dropout) reaches both bounds'
    training configs (and so their piece keys), is checked like supervised params, and frees plain supervised to be a baseline entry."""
    from semiseg.benchmark.config import ConfigError, config_from_dict
    from semiseg.benchmark.harness import train_config

    data = make_dataset(tmp_path / "raw", ["l0", "l1"], ["u0"], ["t0"], shape=(8, 36, 36))
    drop = {"network": {"dropout": 0.5, "dropout_at": "bottleneck"}}
    raw = {"name": "tiny_bounds", "dataset": str(data), "split": {"labelled": ["l0"], "unlabelled": ["l1", "u0"], "test": ["t0"]},
           "plan": {"overrides": tiny_overrides([8, 32, 32])}, "budget": {"iterations": 2}, "seeds": [0],
           "bounds": {"params": drop},
           "methods": [{"name": "supervised-plain", "method": "supervised", "params": {}},
                       {"method": "mean-teacher", "baseline": "supervised-plain"}]}
    cfg = config_from_dict(raw)
    lower, upper, plain = cfg.entries()[:3]
    assert (lower.params, upper.params, plain.params) == (drop, drop, {})
    keys = {e.name: train_config(cfg, e, 0).method_params for e in cfg.entries()}  # what each piece is keyed and trained with
    assert keys["lower"] == keys["upper"] == drop and keys["supervised-plain"] == {}
    assert [m.baseline for m in cfg.methods] == ["lower", "supervised-plain"]
    plain_bounds = config_from_dict({k: v for k, v in raw.items() if k != "bounds"} | {"methods": []})
    assert plain_bounds.entries()[0].params == {}
    with pytest.raises(ConfigError, match=r"methods\[0\]: supervised training with these params is the lower bound"):
        config_from_dict({**raw, "methods": [{"name": "s", "method": "supervised", "params": drop}]})
    with pytest.raises(ConfigError, match="no params is the lower bound"):
        config_from_dict({**raw, "bounds": None})
    with pytest.raises(ConfigError, match=r"bounds\.params: .*NetworkConfig"):
        config_from_dict({**raw, "bounds": {"params": {"network": {"dropoutt": 0.5}}}})
    with pytest.raises(ConfigError, match=r"bounds: expected \{params"):
        config_from_dict({**raw, "bounds": {"network": drop["network"]}})


def test_supervised_trains_the_network_its_params_name():
    from semiseg.config import Plan, TrainConfig
    from semiseg.methods import build_method

    plan = Plan(dataset_name="t", modality="MRI", num_input_channels=1, labels={"background": 0, "a": 1}, target_spacing=[1.0] * 3,
                patch_size=[8, 32, 32])
    plan.network.features, plan.network.strides = [4, 8, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    plan.network.kernels = [[3, 3, 3]] * 3
    m = build_method(plan, TrainConfig(method="supervised", method_params={"network": {"arch": "light_res_unet"}}))
    assert type(m.net).__name__ == "LightUNet" and m.inference_network_overrides == {"arch": "light_res_unet"}
    assert type(build_method(plan, TrainConfig()).net).__name__ == "UNet"


def test_a_piece_records_the_commit_its_run_started_at(tmp_path, monkeypatch):
    from semiseg.benchmark import harness, results

    cfg_file = _bounds_only_config(tmp_path, "tiny_commit")
    train = harness._train

    def train_then_commit(*args, **kwargs):  # HEAD moves while the run trains
        out = train(*args, **kwargs)
        monkeypatch.setattr(results, "git_commit", lambda root=None: "moved")
        return out

    monkeypatch.setattr(harness, "git_commit", lambda root=None: "at-start")
    monkeypatch.setattr(harness, "_train", train_then_commit)
    out = run_benchmark(load_config(cfg_file), device="cpu", progress=False, only=["lower"])
    assert [r["git_commit"] for r in json.loads(out.read_text())["runs"]] == ["at-start"]
