"""`python -m semiseg.benchmark.explain`: per-case deltas against the bounds and curve means by thirds."""
from __future__ import annotations

from pathlib import Path

import pytest

from semiseg.benchmark.explain import cpu_line, curve_thirds, explain, main

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "la_ssl4_cpu.json"


def test_curve_thirds_means_each_third_and_skips_unlogged_values() -> None:
    curve = {"step": [0, 500, 1000, 1500, 2000, 2500, 3000],
             "loss": [6.0, 4.0, 3.0, 1.0, 0.5, 0.25, 0.75],
             "h": [None, None, None, None, 2.0, None, 4.0]}
    t = curve_thirds(curve, 3000)
    assert t["loss"] == pytest.approx([5.0, 2.0, 0.5])  # the last third includes the final step
    assert t["h"][0] is None and t["h"][1] is None and t["h"][2] == pytest.approx(3.0)
    assert "step" not in t


def _doc() -> dict:
    def seed(cases: dict) -> dict:
        return {"per_case_dice": cases}
    return {
        "benchmark": {"budget": {"iterations": 300}},
        "entries": {
            "lower": {"method": "supervised", "per_seed": {"0": seed({"a": 0.5, "b": 0.9})}},
            "plain": {"method": "supervised", "per_seed": {"0": seed({"a": 0.4, "b": 0.7})}},
            "m": {"method": "mpl", "foreground": {"DSC": {"mean": 0.75}}, "per_seed": {"0": seed({"a": 0.6, "b": 0.9})},
                  "paired_vs_baseline": {"baseline": "plain", "mean_diff": 0.2, "ci95": [0.1, 0.3], "wilcoxon_p": 0.5}},
        },
        "runs": [{"entry": "m", "seed": 0, "curve": {"step": [0, 100, 200, 300], "grad_share": [0.0, 0.1, 0.2, 0.4]},
                  "pseudo_label_quality": {"st/round_0/quality.json": {
                      "n": 8, "n_selected": 3, "mean_dice": 0.7, "mean_dice_selected": 0.8, "mean_dice_rejected": 0.64,
                      "spearman_rho": -0.5, "p_value": 0.2}}}],
    }


def test_explain_pairs_each_case_with_the_lower_bound_and_the_own_baseline() -> None:
    text = explain(_doc(), "m")
    assert "| a | 0.600 | 0.500 | +0.100 | 0.400 | +0.200 |" in text
    assert "| b | 0.900 | 0.900 | +0.000 | 0.700 | +0.200 |" in text
    assert "vs plain (its own network's supervised run): +0.200 [+0.100, +0.300]" in text
    assert "- grad_share: 0 / 0.1 / 0.3" in text
    assert "- round_0: 3 of 8 kept; Dice 0.700 (kept 0.800, left 0.640); Spearman rho of the selection score with it -0.50" in text


def test_explain_pairs_against_another_entry_by_seed_and_case() -> None:
    text = explain(_doc(), "m", against=["plain"])
    assert "- vs plain (paired over seeds 0, 2 pairs): +0.200 [+0.200, +0.200], Wilcoxon p" in text
    assert text.count("| plain | Δ") == 1  # the own baseline named again is one column, not two
    with pytest.raises(ValueError, match="'nope' has no finished run"):
        explain(_doc(), "m", against=["nope"])
    with pytest.raises(ValueError, match="names 'm' itself"):
        explain(_doc(), "m", against=["m"])
    doc = _doc()
    doc["entries"]["later"] = {"method": "cps", "per_seed": {"1": {"per_case_dice": {"a": 0.1, "b": 0.2}}}}
    assert "- vs later: no finished seed in common among 0" in explain(doc, "m", against=["later"])


def test_explain_refuses_an_unknown_entry_or_seed_by_name() -> None:
    with pytest.raises(ValueError, match="'x' has no finished run.*lower, plain, m"):
        explain(_doc(), "x")
    with pytest.raises(ValueError, match="no finished seed 3"):
        explain(_doc(), "m", [3])


@pytest.mark.skipif(not RESULTS.exists(), reason="committed LA results absent")
def test_explain_reads_a_committed_results_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(RESULTS), "upper", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# upper (supervised)") and "| la_040 |" in out and "| lower | Δ |" in out
    with pytest.raises(SystemExit) as e:
        main([str(RESULTS), "no-such-entry"])
    assert e.value.code == 2
    assert "no-such-entry" in capsys.readouterr().err


def test_each_seed_says_which_cpu_its_runs_trained_on() -> None:
    doc = _doc()
    doc["runs"][0]["machine"] = {"cpu_model": "Intel Xeon", "cpu_native_bf16": True}
    doc["runs"] += [{"entry": "lower", "seed": 0, "machine": {"cpu_model": "AMD EPYC", "cpu_native_bf16": False}},
                    {"entry": "plain", "seed": 0, "machine": {}}]
    line = "CPU: m Intel Xeon; lower AMD EPYC, no native bf16; plain not recorded (fp32 differs across CPUs)"
    assert cpu_line(doc, ["m", "lower", "plain"], 0) == line and line in explain(doc, "m")
    doc["runs"][1]["machine"] = doc["runs"][2]["machine"] = {"cpu_model": "Intel Xeon"}
    assert cpu_line(doc, ["m", "lower", "plain"], 0) == "CPU: all Intel Xeon"
    assert cpu_line(doc, ["m"], 1) is None                       # no run of that seed
