"""Paired comparison of an entry with a baseline on the same (seed, test case) pairs.

Means over three seeds cannot tell a method from the lower bound when the supervised gap is a few
hundredths of Dice; pairing each test case of each seed with the baseline's score on that same case and
seed removes the case-to-case spread, which is most of the variance. Reported: the number of pairs,
the mean difference, a 95% percentile-bootstrap CI of it (pairs resampled, fixed RNG seed so a results
file is reproducible) and the two-sided Wilcoxon signed-rank p. Pairs from one case across seeds are
not independent, so the CI is somewhat optimistic; the verdict needs the whole CI on one side of 0.
Torch-free: numpy and scipy only.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Hashable, Mapping

import numpy as np

RESAMPLES = 10_000
RNG_SEED = 0
LEVEL = 0.95
ZERO = 1e-12  # |difference| below this is float noise of the Dice computation, not a difference


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))


def pair_up(values: Mapping[Hashable, float | None], baseline: Mapping[Hashable, float | None]) -> np.ndarray:
    """``values - baseline`` over the keys both have with a finite value (unmatched keys are dropped, not imputed)."""
    keys = [k for k in values if k in baseline and _finite(values[k]) and _finite(baseline[k])]
    return np.array([float(values[k]) - float(baseline[k]) for k in keys], dtype=np.float64)


def bootstrap_ci(diffs: np.ndarray, resamples: int = RESAMPLES, seed: int = RNG_SEED, level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile-bootstrap CI of the mean of ``diffs`` (pairs resampled with replacement); None under 2 pairs,
    where a resample can only repeat the one value."""
    n = len(diffs)
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = diffs[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def seeds_and_cases_ci(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = RNG_SEED,
                       level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile-bootstrap CI of ``mean(a) - mean(b)`` for two pipelines run with their own seeds on the same cases,
    ``a`` (seeds_a, cases) and ``b`` (seeds_b, cases): the cases are resampled together (paired) and each side's seeds
    on their own, so seed-to-seed spread is in the interval, not only case-to-case. None under 2 cases."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (seeds, cases) arrays over the same cases, got shapes {a.shape} and {b.shape}")
    n = a.shape[1]
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, n, size=(resamples, n))
    seeds_a = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
    seeds_b = rng.integers(0, b.shape[0], size=(resamples, b.shape[0]))
    mean_a = a[seeds_a[:, :, None], cases[:, None, :]].mean(axis=(1, 2))
    mean_b = b[seeds_b[:, :, None], cases[:, None, :]].mean(axis=(1, 2))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(mean_a - mean_b, [tail, 100 - tail])
    return float(lo), float(hi)


def seeds_and_cases_comparison(values: Mapping[tuple[Hashable, Hashable], float | None],
                               baseline: Mapping[tuple[Hashable, Hashable], float | None]) -> dict[str, Any] | None:
    """Mean difference and :func:`seeds_and_cases_ci` of two (seed, case)-keyed Dice maps, over the seeds both have and
    the cases every one of those seeds scored finitely on both sides; None under 2 such seeds or 2 such cases."""
    seeds = sorted({s for s, _ in values} & {s for s, _ in baseline}, key=str)
    if len(seeds) < 2:
        return None
    cases = sorted({c for _, c in values if all(_finite(values.get((s, c))) and _finite(baseline.get((s, c))) for s in seeds)},
                   key=str)
    if len(cases) < 2:
        return None
    a = np.array([[float(values[(s, c)]) for c in cases] for s in seeds])  # type: ignore[arg-type]
    b = np.array([[float(baseline[(s, c)]) for c in cases] for s in seeds])  # type: ignore[arg-type]
    ci = seeds_and_cases_ci(a, b)
    return {"seeds": len(seeds), "cases": len(cases), "n": int(a.size), "mean_diff": float(a.mean() - b.mean()),
            "ci95": list(ci) if ci is not None else None}


def paired_gap_closure(values: Mapping[Hashable, float | None], lower: Mapping[Hashable, float | None],
                       upper: Mapping[Hashable, float | None], resamples: int = RESAMPLES, seed: int = RNG_SEED,
                       level: float = LEVEL) -> dict[str, Any]:
    """Gap closure ``mean(values - lower) / mean(upper - lower)`` over the (seed, case) pairs all three have, with a
    percentile-bootstrap CI that resamples those pairs jointly (numerator and denominator move together).

    Why: a closure of 0.90 from three seeds reads as a fact; its CI says how far the bar it is held to (issue 17's
    0.9, issue 16's 0.5) really is. The CI is None under 2 pairs, the closure None when the gap is ~0."""
    keys = [k for k in values if k in lower and k in upper and all(_finite(m[k]) for m in (values, lower, upper))]
    num = np.array([float(values[k]) - float(lower[k]) for k in keys], dtype=np.float64)
    den = np.array([float(upper[k]) - float(lower[k]) for k in keys], dtype=np.float64)
    out: dict[str, Any] = {"n": len(keys), "closure": None, "ci95": None,
                           "bootstrap": {"resamples": resamples, "rng_seed": seed, "level": level, "method": "percentile, pairs resampled"}}
    if not keys or abs(den.mean()) < ZERO:
        return out
    out["closure"] = float(num.mean() / den.mean())
    if len(keys) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(keys), size=(resamples, len(keys)))
        d = den[idx].mean(axis=1)
        ratios = num[idx].mean(axis=1)[np.abs(d) >= ZERO] / d[np.abs(d) >= ZERO]
        if len(ratios):
            tail = 100 * (1 - level) / 2
            lo, hi = np.percentile(ratios, [tail, 100 - tail])
            out["ci95"] = [float(lo), float(hi)]
    return out


def format_closure(c: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``0.90 [0.58, 1.21]`` (gap closure [95% CI]) for tables; ``n/a`` without one."""
    if not c or c.get("closure") is None:
        return "n/a"
    ci = c.get("ci95")
    return f"{c['closure']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def wilcoxon_p(diffs: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p; None under 2 pairs or when every difference is zero (no test to make)."""
    d = np.where(np.abs(diffs) < ZERO, 0.0, diffs)
    if len(d) < 2 or not np.any(d):
        return None
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():  # small samples: scipy warns about its normal approximation, the p stands
        warnings.simplefilter("ignore")
        try:
            p = float(wilcoxon(d).pvalue)
        except ValueError:
            return None
    return p if math.isfinite(p) else None


def verdict(ci: tuple[float, float] | None, baseline_name: str) -> str:
    """Above or below the baseline only when the whole CI is on that side of zero."""
    if ci is not None and ci[0] > 0:
        return f"beats {baseline_name}"
    if ci is not None and ci[1] < 0:
        return f"below {baseline_name}"
    return "not distinguishable"


def paired_comparison(values: Mapping[Hashable, float | None], baseline: Mapping[Hashable, float | None],
                      baseline_name: str = "lower bound", resamples: int = RESAMPLES, seed: int = RNG_SEED) -> dict[str, Any]:
    """n pairs, mean difference, bootstrap CI, Wilcoxon p and verdict of ``values`` against ``baseline`` (same keys)."""
    diffs = pair_up(values, baseline)
    ci = bootstrap_ci(diffs, resamples, seed)
    text = verdict(ci, baseline_name)
    return {
        "n": int(len(diffs)),
        "mean_diff": float(diffs.mean()) if len(diffs) else None,
        "ci95": list(ci) if ci is not None else None,
        "wilcoxon_p": wilcoxon_p(diffs),
        "beats": text.startswith("beats"),
        "verdict": text,
        "bootstrap": {"resamples": resamples, "rng_seed": seed, "level": LEVEL, "method": "percentile, pairs resampled"},
    }


def format_diff(c: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``+0.012 [-0.004, +0.027]`` (mean difference [95% CI]) for tables; the CI is left out under 2 pairs."""
    if not c or c.get("mean_diff") is None:
        return "n/a"
    ci = c.get("ci95")
    return f"{c['mean_diff']:+.{digits}f}" + (f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if ci else f" (n={c['n']})")


def format_p(c: Mapping[str, Any] | None) -> str:
    """The Wilcoxon p of a paired comparison for tables (:func:`format_p_value`)."""
    return format_p_value((c or {}).get("wilcoxon_p"))


def format_p_value(p: float | None) -> str:
    """A p-value for tables: three decimals, ``<0.001`` below that, ``n/a`` when no test was possible."""
    return "n/a" if p is None or math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def format_number(v: float | None, digits: int = 3) -> str:
    """A table cell: ``digits`` decimals, ``n/a`` for a missing or NaN value."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
