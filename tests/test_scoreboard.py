"""`python -m semiseg.benchmark.scoreboard`: issue 16's criteria read off results files."""
from __future__ import annotations

from pathlib import Path

import pytest

from semiseg.benchmark.scoreboard import family, family_verdict, main, render, render_board, rows, verdict

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "la_ssl4_cpu.json"


def test_family_groups_settings_and_network_variants() -> None:
    assert family({"method": "cps", "params": {"cps_weight": 0.35}}) == "cps"
    assert family({"method": "cps", "params": {"adaptive_weight": True}}) == "cps-alw"
    assert family({"method": "uncertainty", "params": {"k": 4}}) == "uncertainty (paper rule)"
    assert family({"method": "uncertainty", "params": {"selection": {"top_fraction": 0.5}}}) == "uncertainty (relative rule)"
    assert family({"method": "mean-teacher", "params": {"network": {"dropout": 0.5}}}) == "mean-teacher"
    assert family({"method": "bcp", "params": {}}) is None
    assert (verdict([0.01, 0.2]), verdict([-0.1, 0.1]), verdict([-0.2, -0.01])) == ("above", "at", "below")


def _cmp(d: float, lo: float, hi: float, **extra: object) -> dict:
    return {"n": 24, "mean_diff": d, "ci95": [lo, hi], "wilcoxon_p": 0.1, **extra}


def _entry(method: str, seeds: int, baseline: str, own: dict, closure: float, ci: list, **params: object) -> dict:
    e = {"method": method, "params": params, "role": "method", "baseline": baseline, "seeds": list(range(seeds)),
         "foreground": {"DSC": {"mean": 0.7}, "HD95": {"mean": 12.0}}, "seconds_per_step": {"mean": 1.0},
         "peak_rss_mb": {"mean": 2048.0}, "gap_closure": {"paired": {"closure": closure, "ci95": ci}}}
    e["paired_vs_lower" if baseline == "lower" else "paired_vs_baseline"] = own
    return e


def _doc() -> dict:
    return {"entries": {
        "lower": {"method": "supervised", "role": "lower"},
        "plain": {"method": "supervised", "role": "method"},
        # MT: the complete row is below its bound, the row above it has one seed: the family is below
        "mt-dropout": _entry("mean-teacher", 3, "lower", _cmp(-0.03, -0.06, -0.01), -0.3, [-0.6, -0.1]),
        "mt": _entry("mean-teacher", 1, "plain", _cmp(0.05, 0.01, 0.09, baseline="plain"), -0.9, [-1.2, -0.5]),
        # CPS: at its own bound on all seeds, judged against its declared baseline, not the lower bound
        "cps": _entry("cps", 3, "plain", _cmp(0.01, -0.01, 0.03, baseline="plain"), 0.3, [0.1, 0.5]),
        # another method closes most of the gap
        "other": _entry("ad-mt", 3, "plain", _cmp(0.2, 0.1, 0.3, baseline="plain"), 0.9, [0.7, 1.1]),
    }}


def test_scoreboard_judges_each_family_on_its_complete_rows() -> None:
    board = rows(_doc())
    assert [r.name for r in board] == ["mt-dropout", "mt", "cps", "other"]  # bounds and supervised rows left out
    by = {r.name: r for r in board}
    assert by["cps"].own_bound == "plain" and by["cps"].verdict == "at" and by["cps"].peak_gb == pytest.approx(2.0)
    assert family_verdict([by["mt-dropout"], by["mt"]], 3) == "below"   # the 1-seed row does not count
    assert family_verdict([by["mt-dropout"], by["mt"]], 1) == "at or above"
    assert family_verdict([], 3) == "open"
    text, met = render_board("b", board, 3)
    assert not met
    assert "| mean-teacher | below | mt-dropout | 3/3 | 0.700 | lower | -0.030 [-0.060, -0.010] | below |" in text
    assert "| cps | at or above | cps | 3/3 |" in text and "| ua-mt | open | (not run) | 0/3 |" in text
    assert "largest gap closure (any method, 3 seeds): other 0.90 [0.70, 1.10]; bar ≥ 0.5 with a CI excluding 0: **met**" in text
    assert "largest gap closure (seed methods, 3 seeds): cps 0.30 [0.10, 0.50]; bar ≥ 0.5 with a CI excluding 0: **not met**" in text
    assert "every seed method at or above its own bound: **no**" in text


def test_a_row_without_a_declared_baseline_is_not_judged() -> None:
    doc = _doc()
    del doc["entries"]["cps"]["baseline"]   # results written before baselines were recorded
    cps = next(r for r in rows(doc) if r.name == "cps")
    assert cps.own is None and cps.verdict is None and family_verdict([cps], 3) == "open"


def test_scoreboard_cli_writes_its_file_and_names_a_missing_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "none.json")])
    assert e.value.code == 2 and "none.json: no such results file" in capsys.readouterr().err
    if not RESULTS.exists():
        pytest.skip("committed LA results absent")
    out = tmp_path / "board.md"
    assert main([str(RESULTS), "--seeds", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## la_ssl4_cpu" in text and "--seeds 1`" in text and "| ua-mt |" in text


BOARD = RESULTS.parent / "scoreboard.md"


@pytest.mark.skipif(not BOARD.exists(), reason="no committed scoreboard")
def test_committed_scoreboard_matches_the_committed_results() -> None:
    """Regenerate with the command in its header after every benchmark run."""
    command = BOARD.read_text().split("python -m semiseg.benchmark.scoreboard ", 1)[1].split("`", 1)[0].split()
    paths = [RESULTS.parents[2] / a for a in command if a.endswith(".json")]
    seeds = int(command[command.index("--seeds") + 1]) if "--seeds" in command else None
    assert render(paths, seeds)[0] == BOARD.read_text()
