"""Paired comparison against the lower bound on (seed, test case) pairs: known shifts, ties, unmatched
pairs, reproducible bootstrap, and how the results aggregation fills it in per entry."""
from __future__ import annotations

import numpy as np
import pytest

from semiseg.benchmark.paired import format_diff, format_p, paired_comparison
from semiseg.benchmark.results import add_paired_vs_lower

CASES = [f"c{i}" for i in range(8)]
KEYS = [(str(s), c) for s in range(3) for c in CASES]  # 3 seeds x 8 cases = 24 pairs


def _baseline(seed: int = 1) -> dict[tuple[str, str], float]:
    rng = np.random.default_rng(seed)
    return {k: float(v) for k, v in zip(KEYS, rng.uniform(0.5, 0.9, len(KEYS)))}


def test_a_consistent_gain_beats_the_baseline():
    base = _baseline()
    rng = np.random.default_rng(2)
    method = {k: v + 0.05 + float(rng.normal(0, 0.01)) for k, v in base.items()}
    c = paired_comparison(method, base)
    diffs = np.array([method[k] - base[k] for k in KEYS])
    assert c["n"] == 24 and c["mean_diff"] == pytest.approx(diffs.mean())
    lo, hi = c["ci95"]
    assert 0 < lo < c["mean_diff"] < hi < 0.1
    assert c["wilcoxon_p"] < 0.05 and c["beats"] and c["verdict"] == "beats lower bound"
    down = paired_comparison(base, method)  # the same pairs the other way round
    assert down["verdict"] == "below lower bound" and not down["beats"] and down["ci95"][1] < 0


def test_identical_scores_have_no_difference_and_no_test():
    base = _baseline()
    c = paired_comparison(dict(base), base)
    assert c["n"] == 24 and c["mean_diff"] == 0 and c["ci95"] == [0.0, 0.0]
    assert c["wilcoxon_p"] is None and not c["beats"] and c["verdict"] == "not distinguishable"


def test_noise_around_zero_is_not_distinguishable():
    base = _baseline()
    method = {k: v + (0.02 if i % 2 else -0.02) for i, (k, v) in enumerate(base.items())}
    c = paired_comparison(method, base)
    assert c["ci95"][0] < 0 < c["ci95"][1] and c["wilcoxon_p"] > 0.5 and c["verdict"] == "not distinguishable"


def test_only_pairs_present_in_both_count():
    base = {("0", "a"): 0.5, ("0", "b"): 0.6, ("1", "a"): 0.7, ("1", "b"): None}
    method = {("0", "a"): 0.6, ("0", "b"): 0.9, ("1", "b"): 0.8, ("2", "a"): 0.1, ("0", "c"): float("nan")}
    c = paired_comparison(method, base)
    assert c["n"] == 2 and c["mean_diff"] == pytest.approx((0.1 + 0.3) / 2)  # ("1","b") has no baseline, ("2","a") no pair


def test_bootstrap_is_reproducible_and_seeded():
    base = _baseline()
    rng = np.random.default_rng(3)
    method = {k: v + float(rng.normal(0.01, 0.03)) for k, v in base.items()}
    a, b = paired_comparison(method, base), paired_comparison(dict(method), dict(base))
    assert a == b and a["bootstrap"] == {"resamples": 10000, "rng_seed": 0, "level": 0.95, "method": "percentile, pairs resampled"}
    other = paired_comparison(method, base, seed=1)
    assert other["ci95"] != a["ci95"] and other["ci95"] == pytest.approx(a["ci95"], abs=0.005)  # another stream, same CI within MC error


def test_under_two_pairs_there_is_no_interval_and_no_test():
    one = paired_comparison({("0", "a"): 0.9}, {("0", "a"): 0.1})
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.8) and one["ci95"] is None and one["wilcoxon_p"] is None
    assert one["verdict"] == "not distinguishable"
    none = paired_comparison({("0", "a"): 0.9}, {("1", "a"): 0.1})
    assert none["n"] == 0 and none["mean_diff"] is None and none["verdict"] == "not distinguishable"
    assert format_diff(none) == "n/a" and format_p(none) == "n/a" and format_diff(one) == "+0.800 (n=1)"


def test_table_formats():
    c = {"n": 24, "mean_diff": 0.0123, "ci95": [-0.004, 0.0271], "wilcoxon_p": 0.00004}
    assert format_diff(c) == "+0.012 [-0.004, +0.027]" and format_p(c) == "<0.001" and format_p({"wilcoxon_p": 0.0312}) == "0.031"


def _entry(per_seed: dict[str, dict[str, float]], pp: bool = False) -> dict:
    e = {"per_seed": {s: {"per_case_dice": cases} for s, cases in per_seed.items()}}
    if pp:
        e["per_seed_postprocessed"] = {s: {"per_case_dice": {c: v + 0.1 for c, v in cases.items()}} for s, cases in per_seed.items()}
    return e


def test_aggregation_pairs_every_entry_with_the_lower_bound():
    low = {"0": {"a": 0.5, "b": 0.6}, "1": {"a": 0.55, "b": 0.65}}
    entries = {
        "lower": _entry(low, pp=True),
        "upper": _entry({s: {c: v + 0.2 for c, v in cases.items()} for s, cases in low.items()}, pp=True),
        "m": _entry({"0": {"a": 0.6, "b": 0.7}}),  # one seed only: paired on that seed's cases
    }
    upper = add_paired_vs_lower(entries)
    assert "paired_vs_lower" not in entries["lower"]
    assert entries["upper"]["paired_vs_lower"] is upper and upper["n"] == 4 and upper["mean_diff"] == pytest.approx(0.2)
    assert entries["m"]["paired_vs_lower"]["n"] == 2 and entries["m"]["paired_vs_lower"]["mean_diff"] == pytest.approx(0.1)
    add_paired_vs_lower(entries, "_postprocessed")
    assert entries["upper"]["paired_vs_lower_postprocessed"]["mean_diff"] == pytest.approx(0.2)
    assert "paired_vs_lower_postprocessed" not in entries["m"]  # it has no post-processed scores
    no_lower = {"upper": _entry(low)}
    assert add_paired_vs_lower(no_lower) is None and no_lower["upper"]["paired_vs_lower"] is None


def test_seeds_and_cases_ci_holds_both_spreads():
    """Two pipelines with their own seeds on the same cases: a constant offset gives a point interval; seed-to-seed
    spread on one side widens the interval beyond what resampling the cases of the seed means alone gives."""
    from semiseg.benchmark.paired import bootstrap_ci, seeds_and_cases_ci

    cases = np.linspace(0.3, 0.9, 8)
    b = np.tile(cases, (3, 1))
    lo, hi = seeds_and_cases_ci(b - 0.05, b)
    assert lo == pytest.approx(-0.05) and hi == pytest.approx(-0.05)
    noisy = b - 0.05 + np.array([[-0.06], [0.0], [0.06]])  # seeds differ by a whole-run offset
    both = seeds_and_cases_ci(noisy, b)
    cases_only = bootstrap_ci(noisy.mean(0) - b.mean(0))
    assert both[0] < cases_only[0] - 0.01 and both[1] > cases_only[1] + 0.01 and both[0] < -0.05 < both[1]
    assert seeds_and_cases_ci(b[:, :1], b[:, :1]) is None
    with pytest.raises(ValueError, match="same cases"):
        seeds_and_cases_ci(b, b[:, :5])


def test_paired_gap_closure_recovers_a_known_fraction_and_brackets_it():
    from semiseg.benchmark.paired import format_closure, paired_gap_closure

    rng = np.random.default_rng(3)
    low = _baseline()
    gap = {k: float(v) for k, v in zip(KEYS, rng.uniform(0.05, 0.15, len(KEYS)))}
    up = {k: low[k] + gap[k] for k in KEYS}
    half = {k: low[k] + 0.5 * gap[k] for k in KEYS}  # closes exactly half of every pair's gap
    c = paired_gap_closure(half, low, up)
    assert c["n"] == 24 and c["closure"] == pytest.approx(0.5) and c["ci95"] == pytest.approx([0.5, 0.5])
    noisy = {k: v + float(e) for (k, v), e in zip(half.items(), rng.normal(0, 0.03, len(KEYS)))}
    c = paired_gap_closure(noisy, low, up)
    assert c["ci95"][0] < c["closure"] < c["ci95"][1] and c["ci95"][1] - c["ci95"][0] > 0.1
    assert paired_gap_closure(noisy, low, up) == c  # seeded
    assert paired_gap_closure(half, low, low)["closure"] is None  # no gap, no closure
    one = paired_gap_closure({KEYS[0]: half[KEYS[0]]}, low, up)
    assert one["n"] == 1 and one["closure"] == pytest.approx(0.5) and one["ci95"] is None
    assert format_closure({"closure": 0.9008, "ci95": [0.7059, 1.1208]}) == "0.90 [0.71, 1.12]" and format_closure(None) == "n/a"


def test_gap_closure_of_every_method_is_paired_on_the_pairs_it_shares_with_both_bounds():
    from semiseg.benchmark.results import add_paired_gap_closure, with_paired

    low = {"0": {"a": 0.5, "b": 0.6}, "1": {"a": 0.55, "b": 0.65}}
    lift = lambda d, x: {s: {c: v + x for c, v in cases.items()} for s, cases in d.items()}  # noqa: E731
    entries = {"lower": _entry(low), "upper": _entry(lift(low, 0.2)), "m": _entry(lift({"0": low["0"]}, 0.15))}
    for e in entries.values():
        e["gap_closure"] = {"of_means": None}
    add_paired_gap_closure(entries)
    assert entries["m"]["gap_closure"]["paired"]["n"] == 2 and entries["m"]["gap_closure"]["paired"]["closure"] == pytest.approx(0.75)
    assert "paired" not in entries["lower"]["gap_closure"] and "paired" not in entries["upper"]["gap_closure"]
    del entries["m"]["gap_closure"]["paired"]  # a file written before the field existed gets it on load
    doc = with_paired({"entries": entries})
    assert doc["entries"]["m"]["gap_closure"]["paired"]["closure"] == pytest.approx(0.75)
