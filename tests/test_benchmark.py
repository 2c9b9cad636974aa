"""Benchmark harness on a tiny synthetic dataset: results structure, gap closure, resume, refusal of
mixed configurations, HTML report (self-contained, rendered by
headless Chromium when installed) and the generated README table."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from semiseg.benchmark.config import ConfigError, config_from_dict, expand_cases, load_config
from semiseg.benchmark.harness import run_benchmark
from semiseg.benchmark.results import add_gap_closure, gap_closure
from synthetic_data import make_dataset, tiny_overrides

LABELLED, UNLABELLED, TEST = ["l0", "l1", "l2"], ["u0", "u1"], ["t0", "t1"]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


def raw_config(data: Path, base: Path, **changes) -> dict:
    raw = {
        "name": "tiny",
        "dataset": str(data),
        "split": {"labelled": ["l0..l2"], "unlabelled": UNLABELLED, "test": TEST},
        "plan": {"overrides": tiny_overrides([8, 32, 32])},
        "budget": {"iterations": 3, "batch_size": 2, "unlabelled_batch_size": 2, "train": {"checkpoint_every": 2}},
        "methods": ["mean-teacher"],
        "seeds": [0],
        "predictor": {"device": "cpu"},
        "score_unlabelled": True,
        "work_dir": str(base / "work"),
        "results_dir": str(base / "results"),
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    data = make_dataset(base / "raw", LABELLED, UNLABELLED, TEST, shape=(8, 36, 36))
    cfg_file = base / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(raw_config(data, base)))
    cfg = load_config(cfg_file)
    results = run_benchmark(cfg, device="cpu", progress=False, command=["semiseg", "benchmark", str(cfg_file)])
    return {"base": base, "data": data, "cfg_file": cfg_file, "cfg": cfg, "results": results}


def test_results_file_holds_every_number_with_its_provenance(bench):
    doc = json.loads(bench["results"].read_text())
    assert bench["results"] == bench["base"] / "results" / "tiny.json"
    assert list(doc["entries"]) == ["lower", "upper", "mean-teacher"] and doc["complete"] and doc["missing"] == []
    assert len(doc["runs"]) == 3
    for r in doc["runs"]:
        assert sorted(r["test"]["cases"]) == TEST
        for case in TEST:
            assert sorted(r["test"]["cases"][case]) == ["lesion", "organ"]
            assert set(r["test"]["cases"][case]["organ"]) == {"DSC", "IoU", "NSD", "HD95", "ASD"}
        assert r["command"] == f"semiseg benchmark {bench['cfg_file']}"
        assert r["git_commit"] and r["machine"]["cpu_count"] >= 1 and r["machine"]["torch"] and "cpu_model" in r["machine"]
        assert r["budget"]["iterations"] == 3 and r["key"]["train_config"]["iterations"] == 3
        t = r["train"]
        assert t["wall_time_s"] > 0 and t["peak_rss_mb"] > 0 and t["seconds_per_step"] > 0 and t["steps"] == 3
        assert r["curve"]["step"] == [0.0, 1.0, 2.0] and "loss" in r["curve"]
        assert ("unlabelled" in r) == (r["entry"] != "upper")  # predictions on the unlabelled cases, scored on hidden labels
    mt = doc["entries"]["mean-teacher"]
    assert mt["seeds"] == [0] and mt["foreground"]["DSC"]["n"] == 1 and mt["foreground"]["DSC"]["std"] is None
    assert set(mt["gap_closure"]) == {"per_seed", "over_seeds", "of_means", "paired"} and set(mt["gap_closure"]["per_seed"]) <= {"0"}
    assert mt["gap_closure"]["paired"]["n"] == len(TEST)  # one seed: its closure pairs every test case with both bounds
    assert sorted(mt["per_class_dice"]) == ["lesion", "organ"] and sorted(mt["per_case_dice"]) == TEST
    assert doc["supervised_gap"]["available"]
    assert doc["written_by"]["command"] == f"semiseg benchmark {bench['cfg_file']}"
    assert doc["plan"]["patch_size"] == [8, 32, 32] and all("plan" not in r["key"] for r in doc["runs"])  # one plan, stated once


def test_one_plan_and_disjoint_data_for_every_run(bench):
    work = bench["base"] / "work"
    assert json.loads((work / "splits" / "upper.json").read_text())["labelled"] == LABELLED + UNLABELLED
    assert (work / "upper" / "plan.json").read_text() == (work / "regime" / "plan.json").read_text()
    regime_cache, upper_cache = work / "regime" / "cache", work / "upper" / "cache"
    assert not list(regime_cache.glob("u*_seg.npy"))  # the regime never caches unlabelled labels
    assert sorted(p.name for p in upper_cache.glob("*_seg.npy")) == sorted(f"{c}_seg.npy" for c in LABELLED + UNLABELLED)
    assert not list(regime_cache.glob("t*")) and not list(upper_cache.glob("t*"))  # test cases are never trained on
    assert sorted(p.name for p in (work / "test" / "labels").iterdir()) == [f"{c}.nii.gz" for c in TEST]


def test_gap_closure_formula_on_hand_made_numbers():
    assert gap_closure(0.85, 0.80, 0.90) == pytest.approx(0.5)
    assert gap_closure(0.95, 0.80, 0.90) == pytest.approx(1.5)
    assert gap_closure(0.80, 0.80, 0.80) is None and gap_closure(None, 0.8, 0.9) is None

    def entry(d0: float, d1: float) -> dict:
        mean = (d0 + d1) / 2
        return {"per_seed": {"0": {"foreground": {"DSC": d0}}, "1": {"foreground": {"DSC": d1}}}, "foreground": {"DSC": {"mean": mean}}}

    entries = {"lower": entry(0.70, 0.80), "upper": entry(0.90, 0.90), "m": entry(0.75, 0.90)}
    gap = add_gap_closure(entries)
    gc = entries["m"]["gap_closure"]
    assert gc["per_seed"] == {"0": pytest.approx(0.25), "1": pytest.approx(1.0)}  # (0.75-0.7)/0.2, (0.9-0.8)/0.1
    assert gc["over_seeds"]["mean"] == pytest.approx(0.625)
    assert gc["of_means"] == pytest.approx((0.825 - 0.75) / (0.90 - 0.75))  # 0.5: not the mean of ratios
    assert entries["lower"]["gap_closure"]["of_means"] == 0 and entries["upper"]["gap_closure"]["of_means"] == 1
    assert gap["of_means"] == pytest.approx(0.15) and "warning" not in gap
    entries = {"lower": entry(0.80, 0.80), "upper": entry(0.82, 0.81)}
    assert "warning" in add_gap_closure(entries)  # a gap under 0.03 Dice is flagged


def test_resume_skips_finished_runs(bench):
    work = bench["base"] / "work"
    pieces = sorted((work / "pieces").rglob("seed_*.json"))
    models = sorted(work.rglob("model_final.pt"))
    assert len(pieces) == 3 and len(models) == 3
    before = {p: p.stat().st_mtime_ns for p in pieces + models}
    cfg = load_config(bench["cfg_file"])
    run_benchmark(cfg, device="cpu", progress=False)
    assert {p: p.stat().st_mtime_ns for p in pieces + models} == before
    # a lost piece is rebuilt from its trained model (not retrained): only that piece changes
    lost = work / "pieces" / "mean-teacher" / "seed_0.json"
    lost.unlink()
    run_benchmark(cfg, device="cpu", progress=False)
    assert lost.is_file()
    assert {p: p.stat().st_mtime_ns for p in pieces + models if p != lost} == {p: t for p, t in before.items() if p != lost}
    assert json.loads(bench["results"].read_text())["complete"]


def test_fresh_clone_extends_committed_results_instead_of_dropping_them(bench, tmp_path):
    """Only the results file is committed: a new work folder gets its pieces back from it, nothing is retrained."""
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(bench["results"], results / "tiny.json")
    before = json.loads((results / "tiny.json").read_text())
    cfg = config_from_dict(raw_config(bench["data"], bench["base"], work_dir=str(tmp_path / "fresh"), results_dir=str(results)))
    run_benchmark(cfg, device="cpu", progress=False)
    assert not list((tmp_path / "fresh").rglob("model_final.pt"))  # every run came back from the file
    assert sorted(p.name for p in (tmp_path / "fresh" / "pieces").rglob("seed_*.json")) == ["seed_0.json"] * 3
    after = json.loads((results / "tiny.json").read_text())
    assert after["complete"] and after["entries"] == before["entries"] and after["runs"] == before["runs"]
    # runs made under another configuration are not restored: that entry is trained again
    changed = config_from_dict(raw_config(bench["data"], bench["base"], work_dir=str(tmp_path / "fresh2"), results_dir=str(results),
                                          methods=[{"method": "mean-teacher", "params": {"ema_decay": 0.9}}]))
    from semiseg.benchmark.harness import prepare, restore_pieces

    assert restore_pieces(changed, prepare(changed, progress=False)) == 2  # lower and upper only


def test_pieces_restore_across_plans_that_differ_only_in_median_shape(bench, tmp_path):
    """median_shape is planning's input to patch_size, which is keyed itself: LA-SSL-8's upper bound trains exactly
    as LA-SSL-4's (all 40 labelled) though the regimes' median shapes differ, so its runs restore. A file written
    while pieces keyed with and without median_shape were mixed restores too; another patch size does not."""
    from semiseg.benchmark.harness import collect_pieces, prepare, restore_pieces

    doc = json.loads(bench["results"].read_text())
    assert "median_shape" not in doc["plan"]  # written by this version: the field is not in keys

    def restored(plan: object, name: str) -> int:
        results = tmp_path / name
        results.mkdir()
        (results / "tiny.json").write_text(json.dumps({**doc, "plan": plan}))
        cfg = config_from_dict(raw_config(bench["data"], bench["base"], work_dir=str(tmp_path / name / "work"), results_dir=str(results)))
        layout = prepare(cfg, progress=False)
        n = restore_pieces(cfg, layout)
        assert len(collect_pieces(cfg, layout)[0]) == n  # what was restored counts as finished, not stale
        return n

    older = {**doc["plan"], "median_shape": [7, 40, 40]}  # as keyed before, under another regime's median shape
    assert restored(older, "older") == 3
    assert restored([doc["plan"], older], "mixed") == 3
    assert restored({**older, "patch_size": [8, 16, 16]}, "patch") == 0
    assert restored([doc["plan"], {**doc["plan"], "patch_size": [8, 16, 16]}], "two_plans") == 0


def test_changed_budget_is_refused_not_mixed(bench):
    cfg = config_from_dict(raw_config(bench["data"], bench["base"], budget={"iterations": 4}))
    with pytest.raises(ConfigError, match="different train_config"):
        run_benchmark(cfg, device="cpu", progress=False)


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown field"),
    ({"split": {"labelled": ["l0", "l1"], "unlabelled": ["l1"], "test": ["t0"]}}, "both labelled and unlabelled"),
    ({"methods": ["no-such-method"]}, "unknown method 'no-such-method'"),
    ({"methods": ["supervised"]}, "lower bound"),
    ({"methods": [{"name": "lower", "method": "cps"}]}, "reserved"),
    ({"budget": {"iterations": 3, "train": {"iterations": 5}}}, "not allowed"),
    ({"seeds": []}, "seeds"),
    ({"predictor": {"tta": "9"}}, "predictor"),
])
def test_config_errors_name_the_field(bench, change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw_config(bench["data"], bench["base"], **change))


def test_case_ranges():
    assert expand_cases(["la_008..la_011", "x"], "t") == ["la_008", "la_009", "la_010", "la_011", "x"]
    with pytest.raises(ConfigError, match="bad range"):
        expand_cases(["a_1..b_2"], "t")


@pytest.fixture(scope="module")
def report(bench):
    from semiseg.report.html import write_report

    return write_report([bench["results"]], bench["base"] / "report")


def test_report_is_self_contained(report):
    page = report.read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) >= 5 + 6  # dice, per-case, per-class, curves, unlabelled + best/worst of 3 entries
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", page) and "<link" not in page and "<script" not in page
    for name in ("tiny_dice.png", "tiny_per_case.png", "tiny_per_class.png", "tiny_curves.png", "tiny_unlabelled.png",
                 "tiny_overlay_mean-teacher_best.png", "tiny_overlay_lower_worst.png"):
        assert (report.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "gap closure" in page and "mean-teacher" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900", report.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text and plots, not a blank page


def test_a_bound_row_names_the_params_it_trains_with():
    """Bounds trained with ``bounds: {params}`` (e.g. dropout) say so in their row; plain bounds read as before."""
    from semiseg.benchmark.readme_table import _params_text

    assert _params_text({}) == "" and _params_text(None) == ""
    assert _params_text({"network": {"dropout": 0.5, "dropout_at": "bottleneck"}}) == "network.dropout 0.5, network.dropout_at bottleneck"


def test_the_source_line_merges_commands_that_differ_only_in_seeds_and_counts_many_commits():
    """A table built one seed a session names each rerun command once with its seeds joined, and past a few
    commits gives their count with the first and last by run time instead of a list nobody reads."""
    from semiseg.benchmark.readme_table import commits_text, merged_commands

    cmd = "semiseg --threads 1 benchmark b.yaml --only {} --seeds {}"
    merged = merged_commands([cmd.format("bcp", 2), cmd.format("bcp", 0), cmd.format("mpl", 1), cmd.format("bcp", "0 1"),
                              cmd.format("bcp", 0) + " --iterations 6000", "semiseg benchmark b.yaml"])
    assert merged == ["semiseg --threads 1 benchmark b.yaml --only bcp --seeds 0 --iterations 6000",
                      "semiseg --threads 1 benchmark b.yaml --only bcp --seeds 0 1 2",
                      "semiseg --threads 1 benchmark b.yaml --only mpl --seeds 1", "semiseg benchmark b.yaml"]
    runs = [{"git_commit": c, "time": t} for c, t in [("a" * 40, "2026-12-02"), ("b" * 40 + "-dirty", "2026-12-01")]]
    assert commits_text(runs) == f"commit {'a' * 12}, {'b' * 12}-dirty"
    runs += [{"git_commit": f"{i}" * 40, "time": f"2026-12-0{i}"} for i in range(3, 6)]
    assert commits_text(runs) == f"5 commits, from {'b' * 12}-dirty to {'5' * 12} (each run's in the results file)"
    assert commits_text([]) == "commit n/a"


def test_commands_naming_a_renamed_config_or_entry_say_which_file_reruns_them():
    """Results moved to another config (a precision ablation renamed, an entry renamed) keep their commands as run;
    the provenance line then names the file and entries that rerun them today, and says nothing when all match."""
    from semiseg.benchmark.results import renamed_since

    def doc(config: str, *commands: str) -> dict:
        return {"benchmark": {"config_file": config}, "entries": {"lower": {}, "upper": {}}, "missing": ["bcp/seed_0"],
                "runs": [{"command": c} for c in commands]}

    same = doc("./benchmarks/a_cpu.yaml", "semiseg --quiet --threads 1 benchmark benchmarks/a_cpu.yaml --only lower upper --seeds 0",
               "semiseg benchmark benchmarks/a_cpu.yaml --only bcp --seeds 0 --iterations 6000")
    assert renamed_since(same) is None
    moved = doc("./benchmarks/a_bf16_cpu.yaml", "semiseg benchmark benchmarks/a_cpu.yaml --only supervised-dropout lower --seeds 1",
                "semiseg benchmark benchmarks/a_bf16_cpu.yaml --only upper")
    text = renamed_since(moved)
    assert text is not None and "config benchmarks/a_cpu.yaml" in text and "entries supervised-dropout" in text
    assert "now benchmarks/a_bf16_cpu.yaml's" in text and "lower" not in text.split("entries")[1].split(" as ")[0]
    assert renamed_since({"benchmark": {}, "runs": [{"command": "semiseg benchmark x.yaml"}]}) is None  # no config file recorded


def test_readme_table_is_generated_between_markers(bench, tmp_path):
    from semiseg.benchmark.readme_table import END, START, main, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{START}\nstale\n{END}\n\nafter\n")
    results_dir = bench["base"] / "results"
    assert update_readme(readme, results_dir) is True
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "stale" not in text
    assert "| lower bound (supervised, labelled only) | 1 |" in text and "| mean-teacher | 1 |" in text
    doc = json.loads(next(results_dir.glob("*.json")).read_text())
    mt_row = next(line for line in text.splitlines() if line.startswith("| mean-teacher |")).split(" | ")
    head = next(line for line in text.splitlines() if line.startswith("| method |")).split(" | ")
    assert mt_row[head.index("s/step")] == f"{doc['entries']['mean-teacher']['seconds_per_step']['mean']:.2f}"
    assert "semiseg benchmark" in text
    assert update_readme(readme, results_dir) is False  # idempotent
    assert main(["--readme", str(readme), "--results", str(results_dir), "--check"]) == 0
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, results_dir)


def test_repo_readme_table_matches_committed_results():
    """The README's results table is what the script makes from benchmarks/results/ (never hand-edited)."""
    from semiseg.benchmark.readme_table import main

    root = Path(__file__).resolve().parents[1]
    assert main(["--readme", str(root / "README.md"), "--results", str(root / "benchmarks" / "results"), "--check"]) == 0, (
        "README results table is stale: run python -m semiseg.benchmark.readme_table")


def test_cli_parses_and_reports(bench, tmp_path):
    from semiseg.benchmark.cli import register_cli

    ap = argparse.ArgumentParser()
    ap.add_argument("--quiet", action="store_true")
    register_cli(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["benchmark", "x.yaml", "--only", "lower", "mean-teacher", "--seeds", "0", "2", "--device", "cpu"])
    assert a.only == ["lower", "mean-teacher"] and a.seeds == [0, 2] and a.device == "cpu"
    a = ap.parse_args(["--quiet", "report", str(bench["results"]), "--out", str(tmp_path / "r")])
    assert a.func(a) == 0 and (tmp_path / "r" / "index.html").is_file()


def test_unknown_method_param_is_an_error(bench):
    with pytest.raises(ConfigError, match="unknown params"):
        config_from_dict(raw_config(bench["data"], bench["base"], methods=[{"method": "mean-teacher", "params": {"ema_decy": 0.9}}]))


def test_selftrain_entry_runs_through_the_pipeline(bench):
    cfg = config_from_dict(raw_config(bench["data"], bench["base"], name="tiny_self", seeds=[0],
                                      methods=[{"method": "unfiltered", "params": {"k": 2, "rounds": 1}}]))
    doc = json.loads(run_benchmark(cfg, only=["unfiltered"], device="cpu", progress=False).read_text())
    run = next(r for r in doc["runs"] if r["entry"] == "unfiltered")
    assert run["train"]["steps"] == 3 and sorted(run["test"]["cases"]) == TEST
    assert run["train"]["models_trained"] == 3  # two fold models and the final one, each with its own time
    assert run["train"]["models_wall_time_s"] > 0
    seed_dir = bench["base"] / "work" / "regime" / "models" / "unfiltered" / "seed_0"
    assert (seed_dir / "cache").resolve() == (bench["base"] / "work" / "regime" / "cache").resolve()  # shared preprocessing
    assert any("uncertainty" in f for f in run["figures"])
    # a second self-training entry of the seed takes the round-0 fold models from the shared store: their time
    # stays with the entry that trained them
    cfg2 = config_from_dict(raw_config(bench["data"], bench["base"], name="tiny_self", seeds=[0],
                                       methods=[{"method": "unfiltered", "params": {"k": 2, "rounds": 1}},
                                                {"name": "unfiltered-again", "method": "unfiltered", "params": {"k": 2, "rounds": 1, "predict_step": 0.6}}]))
    doc = json.loads(run_benchmark(cfg2, only=["unfiltered-again"], device="cpu", progress=False).read_text())
    again = next(r for r in doc["runs"] if r["entry"] == "unfiltered-again")["train"]
    assert again["models_shared"] == 2 and again["models_trained"] == 1  # its own final model only


def test_readme_table_leaves_out_other_json(bench, tmp_path):
    from semiseg.benchmark.readme_table import END, START, update_readme

    results_dir = tmp_path / "results"
    results_dir.mkdir()
    shutil.copy(bench["results"], results_dir / "tiny.json")
    (results_dir / "other_tool.json").write_text('{"not": "a benchmark"}')
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    assert update_readme(readme, results_dir) and "tiny" in readme.read_text() and "other_tool" not in readme.read_text()


# -- paired comparison, portable paths, reports from a fresh clone ------------------------------------
def test_entries_are_paired_with_the_lower_bound_case_by_case(bench):
    from semiseg.benchmark.paired import format_diff
    from semiseg.benchmark.readme_table import table_for

    doc = json.loads(bench["results"].read_text())
    entries = doc["entries"]
    assert "paired_vs_lower" not in entries["lower"]
    mt = entries["mean-teacher"]["paired_vs_lower"]
    lo, me = entries["lower"]["per_seed"]["0"]["per_case_dice"], entries["mean-teacher"]["per_seed"]["0"]["per_case_dice"]
    diffs = [me[c] - lo[c] for c in TEST if me[c] is not None and lo[c] is not None]
    assert mt["n"] == len(diffs) == len(TEST) and mt["mean_diff"] == pytest.approx(np.mean(diffs))
    assert doc["supervised_gap"]["paired"] == entries["upper"]["paired_vs_lower"]  # is the supervised gap real?
    lines = table_for(doc, "x.json").splitlines()
    head = next(line for line in lines if line.startswith("| method |")).split(" | ")
    row = next(line for line in lines if line.startswith("| mean-teacher |")).split(" | ")
    assert row[head.index("Δ Dice vs lower [95% CI]")].strip("*") == format_diff(mt) and "p (Wilcoxon)" in head
    assert next(line for line in lines if line.startswith("| lower bound")).split(" | ")[head.index("p (Wilcoxon)")] == "—"


def test_results_written_before_the_paired_comparison_get_it_on_reading(bench, tmp_path):
    from semiseg.benchmark.results import load_results

    doc = json.loads(bench["results"].read_text())
    old = json.loads(json.dumps(doc))
    del old["supervised_gap"]["paired"]
    for e in old["entries"].values():
        e.pop("paired_vs_lower", None)
    (tmp_path / "old.json").write_text(json.dumps(old))
    back = load_results(tmp_path / "old.json")
    assert back["entries"] == doc["entries"] and back["supervised_gap"] == doc["supervised_gap"]


def test_results_name_paths_relative_to_the_checkout_and_the_data_root(bench, tmp_path, monkeypatch):
    """A results file names no directory of the machine that wrote it; reading it gives this machine's paths back."""
    from semiseg.benchmark import results
    from semiseg.benchmark.harness import prepare, restore_pieces, write_results
    from semiseg.report.html import write_report

    base = bench["base"]
    monkeypatch.setattr(results, "repo_root", lambda: base / "work")  # as if the work folder were the checkout ...
    monkeypatch.setenv("SEMISEG_DATA_ROOT", str(base))  # ... inside the data root: the deeper root names a path
    cfg = config_from_dict(raw_config(bench["data"], base, results_dir=str(tmp_path / "results")))
    path = write_results(cfg, prepare(cfg, progress=False))
    text = path.read_text()
    assert str(base) not in text
    doc = json.loads(text)
    run = doc["runs"][0]
    assert run["entry"] == "lower" and doc["benchmark"]["dataset"] == run["key"]["dataset"] == "data:raw"
    assert run["test"]["pred_dir"] == "./predictions/lower/seed_0/test" and run["train"]["model"].startswith("./regime/models/lower/")
    assert run["command"] == "semiseg benchmark data:tiny.yaml"  # a path inside a command line too
    piece = json.loads((base / "work" / "pieces" / "lower" / "seed_0.json").read_text())
    back = results.load_results(path)["runs"][0]
    assert back["test"] == piece["test"] and back["train"]["model"] == piece["train"]["model"] and back["key"]["dataset"] == str(bench["data"])
    # a fresh work folder restores every run: the keys match once the paths are resolved
    fresh = config_from_dict(raw_config(bench["data"], base, work_dir=str(tmp_path / "fresh"), results_dir=str(tmp_path / "results")))
    assert restore_pieces(fresh, prepare(fresh, progress=False)) == 3
    page = write_report([path], tmp_path / "report").read_text()  # the report finds the predictions again
    assert "not on disk" not in page and (tmp_path / "report" / "tiny_overlay_lower_best.png").is_file()


def _gone(doc: dict, where: Path, thumbnails: bool = True) -> dict:
    """The results as a fresh clone sees them: no run folder (predictions, images, figures) on disk."""
    for r in doc["runs"]:
        r["test"] = {**r["test"], "pred_dir": str(where / "pred"), "images_dir": str(where / "images"), "ref_dir": str(where / "ref")}
        r["figures"] = [str(where / "figures" / "quality.png")]
        if not thumbnails:  # results written before thumbnails were kept beside them
            r.pop("thumbnails", None)
    return doc


def test_report_from_a_fresh_clone_says_once_that_run_files_are_gone(bench, tmp_path):
    from semiseg.report.html import write_report

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(_gone(json.loads(bench["results"].read_text()), tmp_path / "gone", thumbnails=False)))
    page = write_report([path], tmp_path / "report").read_text()
    assert page.count("not on disk") == 1 and "6 best/worst-case overlay(s) and 3 method figure(s) left out" in page
    assert not list((tmp_path / "report").glob("*_overlay_*.png"))
    accuracy = page.split("<h3>Accuracy on the test cases</h3>")[1].split("</table>")[0]
    paired = page.split("<h3>Paired with the lower bound")[1].split("</table>")[0]
    assert accuracy.count("<tr") == paired.count("<tr") == 1 + 3 and "Δ Dice vs lower [95% CI]" in paired and "p (Wilcoxon)" in paired


def test_report_shows_the_thumbnails_kept_with_the_results(bench, tmp_path):
    from PIL import Image

    from semiseg.report.html import write_report
    from semiseg.benchmark.thumbnails import piece_thumbnails

    doc = json.loads(bench["results"].read_text())
    for r in doc["runs"]:  # what the harness keeps when a run is scored, before the run folder goes
        r["thumbnails"] = piece_thumbnails(r["test"], tmp_path / "thumbs", f"{r['entry']}_seed_{r['seed']}")
    thumb = Path(doc["runs"][0]["thumbnails"][0]["png"])
    img = np.asarray(Image.open(thumb).convert("RGB")).astype(int)
    assert thumb.stat().st_size < 20_000 and img.shape[0] == 160 and img.shape[1] == 3 * 160 + 2 * 2  # square voxels: 160 x 160 panels
    image, ref = img[:, :160], img[:, 162:322]
    assert (image.max(-1) == image.min(-1)).all() and (ref.max(-1) - ref.min(-1) > 30).sum() > 50  # grey image; coloured reference
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(_gone(doc, tmp_path / "gone")))
    page = write_report([path], tmp_path / "report").read_text()
    thumbs = page.split("<h3>Best and worst test case per entry</h3>")[1]
    assert thumbs.count("[thumbnail]</figcaption>") == 6 and thumbs.count('src="data:image/png;base64,') == 6
    assert "overlay(s)" not in page and page.count("not on disk") == 1  # only the method figures are gone


# -- scores after post-processing --------------------------------------------------------------------
def _write_label(arr: np.ndarray, path: Path) -> None:
    from semiseg.data.io import Geometry, write_segmentation

    geo = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), arr.shape)
    write_segmentation(arr.astype(np.uint8), geo, path)


def test_postprocessed_scores_remove_a_stray_blob(tmp_path):
    from semiseg.benchmark.postprocessed import KEY, score_piece

    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}))
    truth = np.zeros((10, 40, 40), np.uint8)
    truth[3:7, 10:20, 10:20] = 1
    pred = truth.copy()
    pred[3:5, 34:37, 34:37] = 1  # a small far-away false positive: HD95 blows up, Dice barely moves
    for d in ("pred", "ref"):
        (tmp_path / d).mkdir()
    _write_label(pred, tmp_path / "pred" / "c0.nii.gz")
    _write_label(truth, tmp_path / "ref" / "c0.nii.gz")
    piece = tmp_path / "seed_0.json"
    piece.write_text(json.dumps({"test": {"pred_dir": str(tmp_path / "pred"), "ref_dir": str(tmp_path / "ref")}}))
    steps = [{"step": "largest_component"}]
    assert score_piece(piece, steps, dataset) is True
    scored = json.loads(piece.read_text())[KEY]
    assert scored["steps"] == steps
    assert scored["foreground_mean"]["DSC"] == pytest.approx(1.0) and scored["foreground_mean"]["HD95"] == pytest.approx(0.0)
    raw_pred = tmp_path / "pred" / "c0.nii.gz"
    from semiseg.data.io import read_array

    assert np.array_equal(read_array(raw_pred)[0], pred)  # the raw prediction is untouched
    assert score_piece(piece, steps, dataset) is False  # current: nothing to do
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    with pytest.raises(ConfigError, match="postprocess"):
        config_from_dict(raw_config(dataset, tmp_path, postprocess=[{"step": "largest_component", "classes": ["spleen"]}]))


def test_benchmark_with_postprocess_scores_every_run(bench, tmp_path):
    from semiseg.benchmark.harness import prepare, write_results
    from semiseg.benchmark.readme_table import table_for
    from semiseg.report.html import write_report

    work = tmp_path / "work"
    shutil.copytree(bench["base"] / "work", work, symlinks=True)
    raw = raw_config(bench["data"], tmp_path, postprocess=[{"step": "largest_component"}])
    cfg = config_from_dict(raw)
    path = write_results(cfg, prepare(cfg, progress=False))
    doc = json.loads(path.read_text())
    assert doc["benchmark"]["postprocess"] == [{"step": "largest_component"}] and doc["complete"]
    for name, e in doc["entries"].items():
        fp = e["foreground_postprocessed"]
        assert fp["DSC"]["n"] == 1 and 0.0 <= fp["DSC"]["mean"] <= 1.0, name
    assert all(r["test_postprocessed"]["steps"] == [{"step": "largest_component"}] for r in doc["runs"])
    gap = doc["supervised_gap_postprocessed"]
    assert gap["paired"] == doc["entries"]["upper"]["paired_vs_lower_postprocessed"] and gap["paired"]["n"] == len(TEST)
    lo, up = (doc["entries"][n]["foreground_postprocessed"]["DSC"]["mean"] for n in ("lower", "upper"))
    assert gap["available"] and gap["of_means"] == pytest.approx(up - lo)
    mt = doc["entries"]["mean-teacher"]
    if abs(up - lo) > 1e-9:
        expected = (mt["foreground_postprocessed"]["DSC"]["mean"] - lo) / (up - lo)
        assert mt["gap_closure_postprocessed"]["of_means"] == pytest.approx(expected)
    table = table_for(doc, "x.json")
    assert "HD95, post-processed (mm)" in table and "largest_component" in table
    page = write_report([path], tmp_path / "report").read_text()
    post = page.split("<h3>After post-processing</h3>")[1].split("<h3>")[0]  # its own table, so no table is page-wide
    assert "largest_component" in post and post.count("<tr") == 1 + len(doc["entries"])
    assert all(t.count("<th>") <= 9 for t in page.split("<table>")[1:4])
    # a piece whose predictions are gone keeps its raw scores; its entry then has no post-processed ones
    cfg2 = config_from_dict({**raw, "postprocess": [{"step": "largest_component", "classes": ["organ"]}]})
    piece = json.loads((work / "pieces" / "mean-teacher" / "seed_0.json").read_text())
    shutil.rmtree(piece["test"]["pred_dir"])
    doc = json.loads(write_results(cfg2, prepare(cfg2, progress=False)).read_text())
    assert "foreground_postprocessed" not in doc["entries"]["mean-teacher"] and "foreground_postprocessed" in doc["entries"]["lower"]
    assert doc["entries"]["mean-teacher"]["foreground"]["DSC"]["n"] == 1


def test_resumed_training_reports_the_whole_time_and_this_sessions_step_time(bench, tmp_path):
    """An interrupted training resumed by the benchmark: train time spans both sessions, s/step is this session's."""
    from semiseg.benchmark.harness import _train, prepare, train_config
    from semiseg.engine.trainer import DataSpec, train

    work = tmp_path / "work"
    shutil.copytree(bench["base"] / "work", work, symlinks=True)
    cfg = config_from_dict(raw_config(bench["data"], tmp_path))
    layout = prepare(cfg, progress=False)
    entry = cfg.entry("lower")
    run = layout.run_for(entry)
    out = run.root / "models" / "lower" / "seed_0"
    shutil.rmtree(out)
    tcfg = train_config(cfg, entry, 0)
    spec = DataSpec(run.cache, run.training_cases("all", 5)[0])
    train(run.plan, tcfg, spec, out, device="cpu", progress=False, stop_after=2)  # the interrupted first session
    first = checkpoint_wall_time(out)
    _, info = _train(cfg, layout, entry, 0, "cpu", False)
    log = json.loads((out / "log.json").read_text())
    assert info["resumed_from_step"] == 2 and info["steps_measured"] == 1
    assert info["wall_time_s"] == pytest.approx(log["wall_time_s"]) == pytest.approx(first + log["wall_time_this_session_s"])
    assert info["seconds_per_step"] == pytest.approx(info["wall_time_this_session_s"] / 1)


def test_a_multi_model_run_resumed_between_models_is_timed_by_its_models_logs():
    """The benchmark's own measure of a self-training run covers only the session that finished it; its models'
    logs cover every session: the row's time and s/step take the larger, single models keep theirs."""
    from semiseg.benchmark.results import training_time

    resumed = {"wall_time_s": 508.0, "seconds_per_step": 508.0 / 3000, "steps": 3000, "models_wall_time_s": 4221.0}
    assert training_time(resumed) == pytest.approx((4221.0, 4221.0 / 3000))
    whole = {"wall_time_s": 5255.0, "seconds_per_step": 5255.0 / 3000, "steps": 3000, "models_wall_time_s": 5188.0}
    assert training_time(whole) == (5255.0, 5255.0 / 3000)  # one session: its measure also holds pseudo-labelling
    single = {"wall_time_s": 900.0, "seconds_per_step": 0.2, "steps": 3000}
    assert training_time(single) == (900.0, 0.2)
    # the entry's spread over seeds is built from it
    from semiseg.benchmark.results import aggregate_entry

    test = {"foreground_mean": {"DSC": 0.8}, "mean": {"organ": {"DSC": 0.8}}, "cases": {"c1": {"organ": {"DSC": 0.8}}}}
    pieces = [{"seed": s, "test": test, "predict": {"wall_time_s": 1.0}, "train": {**t, "peak_rss_mb": 1.0}}
              for s, t in enumerate((resumed, whole))]
    e = aggregate_entry(pieces)
    assert e["train_wall_time_s"]["min"] == 4221.0 and e["seconds_per_step"]["min"] == pytest.approx(4221.0 / 3000)


def checkpoint_wall_time(out: Path) -> float:
    from semiseg.networks.model_file import read_file

    return float(read_file(out / "checkpoint.pt")["wall_time_s"])


def test_committed_pieces_keep_their_keys_and_every_config_validates():
    """A piece restored from benchmarks/results/*.json matches only if its training key is rebuilt exactly:
    method params are keyed as written (never with a method's defaults filled in), TrainConfig fields added
    later are keyed only when set; and every method entry of every committed benchmark file passes its
    method's parameter declaration."""
    from types import SimpleNamespace

    from semiseg.benchmark.config import Budget, MethodSpec
    from semiseg.benchmark.harness import _train_key, train_config
    from semiseg.benchmark.runners import runner_for

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    # keyed num_workers before the key left it out (a closed ablation, never resumed): restores nothing already
    older_keys = {"chaos_mirror_ablation_cpu.json"}
    checked = 0
    # superseded files too: their keys are the same format, and they hold most of the committed pieces
    for f in sorted([*(root / "results").glob("*.json"), *(root / "results" / "superseded").glob("*_padded-fg-patches.json")]):
        doc = json.loads(f.read_text())
        if not isinstance(doc, dict) or "benchmark" not in doc or f.name in older_keys:
            continue
        cfg = SimpleNamespace(budget=Budget(**doc["benchmark"]["budget"]))
        for run in doc["runs"]:
            entry = MethodSpec(run["entry"], run["method"], run["params"])
            rebuilt = _train_key(train_config(cfg, entry, int(run["seed"])))
            assert rebuilt == run["key"]["train_config"], (f.name, run["entry"])
            checked += 1
    assert checked > 20
    params = SimpleNamespace(budget=Budget(iterations=10))
    for f in sorted(root.glob("*.yaml")):
        for m in yaml.safe_load(f.read_text()).get("methods") or []:
            if isinstance(m, dict) and m.get("params"):
                runner_for(m["method"]).check_params(m["method"], m["params"])
                spec = MethodSpec(m.get("name", m["method"]), m["method"], m["params"])
                assert _train_key(train_config(params, spec, 0))["method_params"] == m["params"]


def test_diagnostics_figure_needs_a_gradient_share_and_shows_it(tmp_path):
    """The report's diagnostics panel: drawn only when some entry logged grad_share; from a results document's curves."""
    from semiseg.report.html import plot_diagnostics

    steps = list(range(0, 300, 10))
    lower = {"entry": "lower", "seed": 0, "curve": {"step": steps, "loss": [1.0 / (1 + s) for s in steps]}}
    mt = {"entry": "mean-teacher", "seed": 0,
          "curve": {"step": steps, "loss": [1.0] * len(steps), "sup": [0.5] * len(steps),
                    "grad_share": [None if s % 50 else 0.01 for s in steps]}}
    doc = {"entries": {"lower": {}, "mean-teacher": {}}, "runs": [lower]}
    assert plot_diagnostics(doc, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    doc["runs"].append(mt)
    out = plot_diagnostics(doc, tmp_path / "d.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gap_closure_forest_plot_shows_each_methods_paired_closure(bench, report, tmp_path):
    """The report's forest plot: one row per method with a paired closure (bounds and unpaired entries left out), in
    the table's order, with the values the results hold; no plot without any, and the tiny benchmark's report has it."""
    from semiseg.report.html import closure_rows, plot_gap_closure

    def entry(closure: float | None, ci: list[float]) -> dict:
        return {"gap_closure": {"paired": {"n": 8, "closure": closure, "ci95": ci}}}

    doc = {"entries": {"lower": entry(0.0, [0.0, 0.0]), "upper": entry(1.0, [1.0, 1.0]), "cps": entry(0.27, [0.10, 0.41]),
                       "mt": entry(-2.9, [-4.7, -1.7]), "new": {"gap_closure": {"paired": {}}}}}
    assert closure_rows(doc) == [("cps", 8, 0.27, 0.10, 0.41), ("mt", 8, -2.9, -4.7, -1.7)]
    out = plot_gap_closure(doc, tmp_path / "gc.png")  # an interval beyond the axis is drawn to its edge
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_gap_closure({"entries": {"lower": {}, "new": {}}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert [r[0] for r in closure_rows(json.loads(bench["results"].read_text()))] == ["mean-teacher"]
    assert json.loads(bench["results"].read_text())["entries"]["mean-teacher"]["baseline"] == "lower"  # declared, recorded
    assert (report.parent / "tiny_gap_closure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_own_bound_forest_pairs_each_method_with_its_own_network(tmp_path):
    """Each method against the baseline it declares (the lower bound included); never against another network when
    that baseline has not run, nor for results without declared baselines; supervised runs, the bounds and unpaired
    entries are left out; no plot without any row."""
    from semiseg.report.html import own_bound_rows, plot_own_bound

    def paired(d: float, ci: list[float], baseline: str | None = None) -> dict:
        return {"n": 8, "mean_diff": d, "ci95": ci, **({"baseline": baseline} if baseline else {})}

    doc = {"entries": {
        "lower": {"method": "supervised"}, "plain": {"method": "supervised", "paired_vs_lower": paired(-0.1, [-0.2, 0.0])},
        "st": {"method": "uncertainty", "baseline": "plain", "paired_vs_lower": paired(-0.03, [-0.07, 0.01]),
               "paired_vs_baseline": paired(0.12, [0.03, 0.23], "plain")},
        "cps": {"method": "cps", "baseline": "lower", "paired_vs_lower": paired(0.026, [0.007, 0.051])},
        "dl": {"method": "dlunet", "baseline": "light", "paired_vs_lower": paired(-0.01, [-0.04, 0.02])},  # light: not run yet
        "old": {"method": "mt", "paired_vs_lower": paired(-0.01, [-0.04, 0.02])},  # results written before baselines were
        "new": {"method": "mpl", "baseline": "lower", "paired_vs_lower": {"n": 1, "mean_diff": 0.1, "ci95": None}}}}
    assert own_bound_rows(doc) == [("st", "plain", 8, 0.12, 0.03, 0.23), ("cps", "lower", 8, 0.026, 0.007, 0.051)]
    out = plot_own_bound(doc, tmp_path / "own.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_own_bound({"entries": {"lower": {}}}, tmp_path / "none.png") is None


def test_self_training_rounds_are_a_table_in_the_readme_and_the_report(bench, tmp_path):
    """Issue 16: pseudo-label Dice and the selection score's Spearman rho per round, from the quality files a
    self-training run leaves, as a table (not a JSON dump), sorted by entry, seed and round."""
    from semiseg.benchmark.readme_table import table_for
    from semiseg.benchmark.results import pseudo_label_rounds
    from semiseg.report.html import write_report

    doc = json.loads(bench["results"].read_text())
    run = next(r for r in doc["runs"] if r["entry"] == "mean-teacher")
    q = {"n": 4, "n_selected": 1, "mean_dice": 0.5, "mean_dice_selected": 0.9, "mean_dice_rejected": 0.3667,
         "spearman_rho": 0.8, "p_value": 0.0004, "per_case_dice": {"a": 0.9}}
    run["pseudo_label_quality"] = {"selftrain_uncertainty/round_10/quality.json": {**q, "n_selected": 3},
                                   "selftrain_uncertainty/round_1/quality.json": {**q, "n_selected": 2, "p_value": 0.2},
                                   "selftrain_uncertainty/round_0/quality.json": q,
                                   "selftrain_uncertainty/final/other.json": {"x": 1}}  # not a round's quality file
    rows = pseudo_label_rounds(doc["runs"])
    assert [(r["entry"], r["round"], r["n_selected"]) for r in rows] == [
        ("mean-teacher", "round_0", 1), ("mean-teacher", "round_1", 2), ("mean-teacher", "round_10", 3)]  # in round order
    lines = table_for(doc, "x.json").splitlines()
    assert "| mean-teacher | 0 | round_0 | 1/4 | 0.500 / 0.900 / 0.367 | 0.80 (<0.001) |" in lines
    assert "| mean-teacher | 0 | round_1 | 2/4 | 0.500 / 0.900 / 0.367 | 0.80 (0.200) |" in lines
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(doc))
    page = write_report([path], tmp_path / "report").read_text()
    section = page.split("<h3>Pseudo-label quality and uncertainty</h3>")[1]
    assert section.count("<td>round_") == 3 and "per_case_dice" not in section and "0.80 (&lt;0.001)" in section  # escaped
    # without quality files there is no table
    assert "Self-training rounds" not in table_for(json.loads(bench["results"].read_text()), "x.json")


def test_status_lists_finished_training_and_missing_runs_without_running_any(bench, tmp_path, capsys):
    """A work folder without pieces beside the committed results: seed 0 is finished (from the results file alone),
    the lower bound of seed 1 is part-trained (its checkpoint gives step and ETA), the rest has not started."""
    from semiseg.benchmark.cli import register_cli
    from semiseg.benchmark.harness import prepare, train_config
    from semiseg.benchmark.status import benchmark_status, format_status
    from semiseg.engine.trainer import DataSpec, train

    (tmp_path / "results").mkdir()
    shutil.copy(bench["results"], tmp_path / "results" / "tiny.json")
    shutil.copytree(bench["base"] / "work", tmp_path / "work", symlinks=True)  # its preprocessing cache
    shutil.rmtree(tmp_path / "work" / "pieces")
    raw = raw_config(bench["data"], tmp_path, seeds=[0, 1])
    cfg = config_from_dict(raw)
    layout = prepare(cfg, progress=False)
    entry = cfg.entry("lower")
    run = layout.run_for(entry)
    out = run.root / "models" / "lower" / "seed_1"
    train(run.plan, train_config(cfg, entry, 1), DataSpec(run.cache, run.training_cases("all", 5)[0]), out, device="cpu",
          progress=False, stop_after=2)
    rows = {(r.entry, r.seed): r for r in benchmark_status(cfg)}
    committed = {(r["entry"], r["seed"]): r["test"]["foreground_mean"]["DSC"] for r in json.loads(bench["results"].read_text())["runs"]}
    assert {k: r.dice for k, r in rows.items() if r.state == "finished"} == committed and len(committed) == 3
    lower = rows[("lower", 1)]
    assert (lower.state, lower.step, lower.steps) == ("training", 2, 3)
    assert lower.eta_s == pytest.approx(lower.elapsed_s / 2) and lower.elapsed_s == pytest.approx(checkpoint_wall_time(out))
    assert rows[("upper", 1)].state == rows[("mean-teacher", 1)].state == "not started"
    assert not (tmp_path / "work" / "pieces").exists()  # nothing was run or scored
    assert format_status(cfg, list(rows.values())).endswith("3 of 6 run(s) finished, 1 training, 2 other")
    # the command: --status prints the same table and trains nothing
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    ap = argparse.ArgumentParser()
    register_cli(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["benchmark", str(cfg_file), "--status", "--only", "lower"])
    assert a.func(a) == 0
    printed = capsys.readouterr().out
    assert "lower  seed 1  training, step 2/3" in printed and "upper" not in printed
    assert not (out / "model_final.pt").exists() and not (tmp_path / "work" / "pieces").exists()
