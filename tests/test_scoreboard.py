"""`python -m semiseg.benchmark.scoreboard`: issue 16's criteria read off results files."""
from __future__ import annotations

from pathlib import Path

import pytest

from semiseg.benchmark.results import cpu_key, cpu_mismatch, load_results, same_cpu, seed_spread_comparison
from semiseg.benchmark.scoreboard import family, family_verdict, main, render, render_board, rows, side

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "la_ssl4_cpu.json"
BOARD = RESULTS.parent / "scoreboard.md"


def test_family_groups_settings_and_network_variants() -> None:
    assert family({"method": "cps", "params": {"cps_weight": 0.35}}) == "cps"
    assert family({"method": "cps", "params": {"adaptive_weight": True}}) == "cps-alw"
    assert family({"method": "uncertainty", "params": {"k": 4}}) == "uncertainty (paper rule)"
    assert family({"method": "uncertainty", "params": {"selection": {"top_fraction": 0.5}}}) == "uncertainty (relative rule)"
    assert family({"method": "mean-teacher", "params": {"network": {"dropout": 0.5}}}) == "mean-teacher"
    assert family({"method": "bcp", "params": {}}) is None
    assert (side([0.01, 0.2]), side([-0.1, 0.1]), side([-0.2, -0.01])) == ("above", "at", "below")


@pytest.mark.skipif(not RESULTS.exists(), reason="committed LA results absent")
def test_family_of_every_committed_la_row() -> None:
    fams = {r.name: r.family for r in rows(load_results(RESULTS))}
    assert fams["cps-alw-dropout"] == "cps-alw" and fams["cps-dropout"] == "cps"
    assert fams["ua-mt-scaled"] == "ua-mt" and fams["mean-teacher-dropout"] == "mean-teacher"
    assert fams["uncertainty-top50"] == "uncertainty (relative rule)" and fams["uncertainty"] == "uncertainty (paper rule)"
    assert fams["noisy-student"] == "noisy-student" and fams["dlunet"] == "dlunet" and fams["mpl-scaled"] == "mpl"
    assert fams["ad-mt-paper"] is None and fams["bcp"] is None


def _cmp(d: float, lo: float, hi: float, n: int = 6, **extra: object) -> dict:
    return {"n": n, "mean_diff": d, "ci95": [lo, hi], "wilcoxon_p": 0.1, **extra}


def _entry(method: str, seeds: int, baseline: str, own: dict, closure: float, ci: list, **params: object) -> dict:
    e = {"method": method, "params": params, "role": "method", "baseline": baseline, "seeds": list(range(seeds)),
         "per_seed": {str(s): {"per_case_dice": {"a": 0.7, "b": 0.7}} for s in range(seeds)},
         "foreground": {"DSC": {"mean": 0.7}, "HD95": {"mean": 12.0}}, "seconds_per_step": {"mean": 1.0},
         "peak_rss_mb": {"mean": 1024.0, "max": 2048.0}, "gap_closure": {"paired": {"closure": closure, "ci95": ci}}}
    e["paired_vs_lower" if baseline == "lower" else "paired_vs_baseline"] = own
    return e


def _doc() -> dict:
    return {"entries": {
        "lower": {"method": "supervised", "role": "lower"},
        "plain": {"method": "supervised", "role": "method"},
        # MT: the complete row is below its bound, the row above it has one seed: the family is below
        "mt-dropout": _entry("mean-teacher", 3, "lower", _cmp(-0.03, -0.06, -0.01), -0.3, [-0.6, -0.1]),
        "mt": _entry("mean-teacher", 1, "plain", _cmp(0.05, 0.01, 0.09, n=2, baseline="plain"), -0.9, [-1.2, -0.5]),
        # CPS: at its own bound on all seeds, judged against its declared baseline, not the lower bound
        "cps": _entry("cps", 3, "plain", _cmp(0.01, -0.01, 0.03, baseline="plain"), 0.3, [0.1, 0.5]),
        # CPS-ALW: every seed, but its baseline has one seed: 2 of its 6 pairs compared, so not complete
        "cps-alw": _entry("cps", 3, "plain", _cmp(0.02, 0.01, 0.04, n=2, baseline="plain"), 0.2, [0.0, 0.4],
                          adaptive_weight=True),
        # two other methods: the larger closure's CI includes 0, the smaller one's does not
        "noisy": _entry("ad-mt", 3, "plain", _cmp(0.2, 0.1, 0.3, baseline="plain"), 0.8, [-0.1, 1.5]),
        "other": _entry("bcp", 3, "plain", _cmp(0.2, 0.1, 0.3, baseline="plain"), 0.6, [0.2, 1.0]),
    }}


def test_scoreboard_judges_each_family_on_its_complete_rows() -> None:
    board = rows(_doc())
    assert [r.name for r in board] == ["mt-dropout", "mt", "cps", "cps-alw", "noisy", "other"]  # no bounds, no supervised
    by = {r.name: r for r in board}
    assert by["cps"].own_bound == "plain" and by["cps"].side == "at" and by["cps"].peak_gib == pytest.approx(2.0)
    assert family_verdict([by["mt-dropout"], by["mt"]], 3) == "below"   # the 1-seed row does not count
    assert not by["cps-alw"].complete(3) and family_verdict([by["cps-alw"]], 3) == "open"
    assert family_verdict([], 3) == "open"
    text, met = render_board("b", board, 3)
    assert not met
    assert "| mean-teacher | below | mt-dropout | 3/3 | yes | 0.700 | lower | -0.030 [-0.060, -0.010] (6/6) | below |" in text
    assert "| cps | passes (cps at) | cps | 3/3 | yes |" in text and "| ua-mt | open | (not run) | 0/3 | no |" in text
    assert "| cps-alw | open | cps-alw | 3/3 | no | 0.700 | plain | +0.020 [+0.010, +0.040] (2/6) |" in text
    assert ("gap closure (any method, 3 seeds): largest noisy 0.80 [-0.10, 1.50]; bar ≥ 0.5 with a CI excluding 0: "
            "**met** by other 0.60 [0.20, 1.00]") in text
    assert "gap closure (seed methods, 3 seeds): largest cps 0.30 [0.10, 0.50]; bar ≥ 0.5 with a CI excluding 0: **not met**" in text
    assert "every seed method at or above its own bound: **no**" in text


def test_a_closure_that_rounds_to_the_bar_but_falls_short_says_so() -> None:
    doc = _doc()
    doc["entries"]["cps"]["gap_closure"]["paired"] = {"closure": 0.4975, "ci95": [0.25, 0.70]}
    text, _ = render_board("b", rows(doc), 3)
    assert ("largest cps 0.50 [0.25, 0.70] (point estimate 0.497, under the bar); bar ≥ 0.5 with a CI excluding 0: "
            "**not met**") in text
    doc["entries"]["cps"]["gap_closure"]["paired"] = {"closure": 0.5, "ci95": [0.25, 0.70]}
    text, _ = render_board("b", rows(doc), 3)
    assert "under the bar" not in text
    assert "(seed methods, 3 seeds): largest cps 0.50 [0.25, 0.70]; bar ≥ 0.5 with a CI excluding 0: **met** by cps" in text


def test_a_family_passes_on_one_complete_setting_and_says_what_else_fell_below() -> None:
    doc = _doc()
    doc["entries"]["mt"] = _entry("mean-teacher", 3, "plain", _cmp(0.01, -0.02, 0.04, baseline="plain"), -0.9, [-1.2, -0.5])
    by = {r.name: r for r in rows(doc)}
    assert family_verdict([by["mt-dropout"], by["mt"]], 3) == "passes (mt at; 1 of 2 complete rows below)"


def test_both_criteria_met() -> None:
    doc = {"entries": {n: _entry(f, 3, "lower", _cmp(0.01, -0.01, 0.03), 0.6, [0.1, 1.0], **p) for n, f, p in (
        ("mt", "mean-teacher", {}), ("ua", "ua-mt", {}), ("cps", "cps", {}), ("alw", "cps", {"adaptive_weight": True}),
        ("dl", "dlunet", {}), ("mpl", "mpl", {}), ("u", "uncertainty", {}),
        ("u50", "uncertainty", {"selection": {"top_fraction": 0.5}}), ("ns", "noisy-student", {}))}}
    text, met = render_board("b", rows(doc), 3)
    assert met and "every seed method at or above its own bound: **yes**" in text
    doc["entries"]["ua"]["gap_closure"]["paired"]["ci95"] = [-0.1, 1.0]   # closure bars are per row: another still meets it
    assert render_board("b", rows(doc), 3)[1]
    for e in doc["entries"].values():
        e["gap_closure"]["paired"]["ci95"] = [-0.1, 1.0]
    assert not render_board("b", rows(doc), 3)[1]


def test_a_row_without_a_declared_baseline_is_not_judged() -> None:
    doc = _doc()
    del doc["entries"]["cps"]["baseline"]   # results written before baselines were recorded
    cps = next(r for r in rows(doc) if r.name == "cps")
    assert cps.own is None and cps.side is None and not cps.complete(3) and family_verdict([cps], 3) == "open"


def test_scoreboard_cli_writes_its_file_and_names_a_missing_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "none.json")])
    assert e.value.code == 2 and "none.json: no such results file" in capsys.readouterr().err
    if not RESULTS.exists():
        pytest.skip("committed LA results absent")
    out = tmp_path / "board.md"
    assert main([str(RESULTS), "--seeds", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## la_ssl4_cpu" in text and "--seeds 1`" in text and "| cps-alw | passes (cps-alw-dropout at) |" in text


@pytest.mark.skipif(not BOARD.exists(), reason="no committed scoreboard")
def test_committed_scoreboard_matches_the_committed_results() -> None:
    """Regenerate with the command in its header after every benchmark run."""
    command = BOARD.read_text().split("python -m semiseg.benchmark.scoreboard ", 1)[1].split("`", 1)[0].split()
    paths = [RESULTS.parents[2] / a for a in command if a.endswith(".json")]
    seeds = int(command[command.index("--seeds") + 1]) if "--seeds" in command else None
    assert render(paths, seeds) == BOARD.read_text()


def _seeded(dice: dict[int, list[float]]) -> dict:
    return {"per_seed": {str(s): {"per_case_dice": {f"c{i}": v for i, v in enumerate(vs)}} for s, vs in dice.items()}}


def test_seed_spread_puts_seed_to_seed_noise_in_the_interval() -> None:
    """A method 0.02 over its bound on every case of every seed: the pairs-only CI is [0.02, 0.02]; resampling seeds
    too, a bound whose seeds differ by 0.1 swamps it, while a bound with no seed spread does not."""
    spread_bound = _seeded({0: [0.6, 0.7, 0.8], 1: [0.7, 0.8, 0.9], 2: [0.5, 0.6, 0.7]})
    method = _seeded({s: [v + 0.02 for v in p["per_case_dice"].values()] for s, p in
                      ((int(k), v) for k, v in spread_bound["per_seed"].items())})
    c = seed_spread_comparison(method, spread_bound)
    assert c is not None and (c["seeds"], c["cases"], c["n"]) == (3, 3, 9) and c["mean_diff"] == pytest.approx(0.02)
    assert c["ci95"][0] < 0 < c["ci95"][1]
    flat_bound = _seeded({s: [0.6, 0.7, 0.8] for s in range(3)})
    flat_method = _seeded({s: [0.62, 0.72, 0.82] for s in range(3)})
    flat = seed_spread_comparison(flat_method, flat_bound)
    assert flat is not None and flat["ci95"][0] == pytest.approx(0.02) and flat["ci95"][1] == pytest.approx(0.02)
    assert seed_spread_comparison(_seeded({0: [0.7, 0.8]}), _seeded({0: [0.6, 0.7], 1: [0.6, 0.7]})) is None  # 1 seed
    assert seed_spread_comparison(_seeded({0: [0.7], 1: [0.7]}), _seeded({0: [0.6], 1: [0.6]})) is None      # 1 case


def test_the_board_shows_the_seed_spread_beside_the_verdict() -> None:
    doc = _doc()
    doc["entries"]["lower"].update(_seeded({0: [0.6, 0.7], 1: [0.7, 0.8], 2: [0.5, 0.6]}))
    doc["entries"]["mt-dropout"].update(_seeded({0: [0.57, 0.67], 1: [0.67, 0.77], 2: [0.47, 0.57]}))
    row = next(r for r in rows(doc) if r.name == "mt-dropout")
    assert row.side == "below" and row.spread is not None and row.spread["ci95"][1] > 0   # below on pairs, not on seeds
    text, _ = render_board("b", rows(doc), 3)
    assert "| -0.030 [-0.060, -0.010] (6/6) | below | -0.030 [" in text
    assert "| cps | passes (cps at) | cps | 3/3 | yes | 0.700 | plain | +0.010 [-0.010, +0.030] (6/6) | at | n/a |" in text


def _run(entry: str, seed: int, model: str | None, bf16: bool | None) -> dict:
    return {"entry": entry, "seed": seed, "machine": {"cpu_model": model, "cpu_native_bf16": bf16}}


def test_same_cpu_counts_only_what_was_recorded() -> None:
    assert cpu_key({"machine": None}) == (None, None) and cpu_key({"machine": {"cpu_model": ""}}) == (None, None)
    epyc, xeon = ("AMD EPYC", True), ("Intel Xeon", True)
    assert same_cpu(epyc, epyc) is True and same_cpu(epyc, xeon) is False
    assert same_cpu(epyc, ("AMD EPYC", False)) is False            # one model name, two generations
    assert same_cpu(epyc, ("AMD EPYC", None)) is None               # flag not recorded: not known
    assert same_cpu(xeon, ("AMD EPYC", None)) is False              # other model whatever the flag
    assert same_cpu(epyc, (None, None)) is None


def test_the_board_counts_seeds_trained_on_another_cpu_than_the_bound() -> None:
    doc = _doc()
    doc["runs"] = [_run("lower", s, "AMD EPYC", True) for s in range(3)] + [
        _run("mt-dropout", 0, "AMD EPYC", True), _run("mt-dropout", 1, "Intel Xeon", True),
        _run("mt-dropout", 2, "AMD EPYC", None),   # not known: left out of the count
        _run("mt-dropout", 3, "Intel Xeon", True),   # a seed the bound has no run of: not compared
        _run("plain", 0, None, None), _run("cps", 0, "AMD EPYC", True)]
    assert cpu_mismatch(doc["runs"], "mt-dropout", "lower") == (1, 2)
    assert cpu_mismatch(doc["runs"], "cps", "plain") == (0, 0)     # the bound's CPU not recorded
    by = {r.name: r for r in rows(doc)}
    assert by["mt-dropout"].other_cpu == (1, 2) and by["cps"].other_cpu == (0, 0)
    text, _ = render_board("b", rows(doc), 3)
    assert "| below | n/a | 1/2 | -0.30 [-0.60, -0.10] |" in text   # mt-dropout: verdict, seeds resampled, other CPU
    assert "| at | n/a | n/a | 0.30 [0.10, 0.50] |" in text          # cps: nothing known
