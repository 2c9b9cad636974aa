"""Plots and statistics that show whether uncertainty-guided selection keeps the good pseudo-labels.

The selection only helps if the ensemble-agreement score tracks the true quality of the pseudo-label;
``pseudo_label_quality`` measures that (Spearman rank correlation, and mean true Dice of kept versus
dropped cases) wherever ground truth exists for some unlabelled cases.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from semiseg.atomic import save_png  # noqa: E402
from semiseg.selftrain.uncertainty import SelectionConfig, select_cases, selection_cutoff  # noqa: E402

_KEEP, _DROP = "tab:green", "tab:red"


def _check_scores(scores: dict[str, float], what: str = "scores") -> None:
    if not scores:
        raise ValueError(f"{what} is empty: nothing to plot or compare")


def _threshold_label(cfg: SelectionConfig) -> str:
    if not cfg.enabled:
        return f"threshold {cfg.threshold:g} (unfiltered: all kept)"
    if cfg.top_fraction is not None:
        return f"top {cfg.top_fraction:.0%} kept"
    return f"threshold {cfg.threshold:g}"


def plot_uncertainty(scores: dict[str, float], cfg: SelectionConfig, out_png: str | Path) -> None:
    """Ranking plot (cases by descending score, kept ones green) beside a histogram of scores."""
    _check_scores(scores)
    kept = set(select_cases(scores, cfg))
    ranked = sorted(scores, key=lambda c: (-scores[c], c))
    values = np.array([scores[c] for c in ranked], dtype=float)
    colours = [_KEEP if c in kept else _DROP for c in ranked]

    fig, (ax_rank, ax_hist) = plt.subplots(1, 2, figsize=(11, 4))
    ax_rank.scatter(np.arange(1, len(ranked) + 1), values, c=colours, s=12)
    cut = selection_cutoff(scores, cfg)
    ax_rank.axhline(cut, color="k", ls="--", lw=1, label=_threshold_label(cfg))
    ax_rank.set(xlabel="case rank", ylabel="uncertainty score (pairwise Dice)", title=f"{len(kept)}/{len(ranked)} cases kept")
    ax_rank.legend(loc="lower left")
    ax_hist.hist(values, bins=min(30, max(5, len(values) // 5)), color="tab:blue", alpha=0.8)
    ax_hist.axvline(cut, color="k", ls="--", lw=1)
    ax_hist.set(xlabel="uncertainty score", ylabel="cases", title="score distribution")
    fig.tight_layout()
    save_png(fig, out_png, dpi=120)


def _paired(scores: dict[str, float], true_dice: dict[str, float]) -> list[str]:
    """Cases with both a score and a true Dice; a quality check needs at least three."""
    _check_scores(scores)
    _check_scores(true_dice, "true_dice")
    common = sorted(set(scores) & set(true_dice))
    if len(common) < 3:
        raise ValueError(f"need at least 3 cases with both a score and a true Dice, got {len(common)}")
    return common


def pseudo_label_quality(
    scores: dict[str, float], true_dice: dict[str, float], cfg: SelectionConfig | None = None
) -> dict[str, Any]:
    """Does the score rank pseudo-labels by true quality? Uses cases present in both dicts.

    Returns spearman_rho, p_value, n, n_selected, n_rejected, mean_dice_selected, mean_dice_rejected.
    Rho is NaN when either side is constant (rank correlation undefined); a group mean is NaN when the
    group is empty.
    """
    cfg = cfg or SelectionConfig()
    common = _paired(scores, true_dice)
    x = np.array([scores[c] for c in common], dtype=float)
    y = np.array([true_dice[c] for c in common], dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("scores and true_dice must be finite numbers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN, which we report
        res = spearmanr(x, y)
    kept = set(select_cases(scores, cfg))  # selection is over all scored cases, as in training
    sel = [true_dice[c] for c in common if c in kept]
    rej = [true_dice[c] for c in common if c not in kept]
    return {
        "spearman_rho": float(res.statistic),
        "p_value": float(res.pvalue),
        "n": len(common),
        "n_selected": len(sel),
        "n_rejected": len(rej),
        "mean_dice_selected": float(np.mean(sel)) if sel else float("nan"),
        "mean_dice_rejected": float(np.mean(rej)) if rej else float("nan"),
    }


def plot_quality_scatter(
    scores: dict[str, float], true_dice: dict[str, float], cfg: SelectionConfig, out_png: str | Path
) -> None:
    """Scatter of uncertainty score against true pseudo-label Dice, threshold line, rho in the title."""
    q = pseudo_label_quality(scores, true_dice, cfg)
    common = _paired(scores, true_dice)
    kept = set(select_cases(scores, cfg))  # selection is over all scored cases, as in training
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(
        [scores[c] for c in common],
        [true_dice[c] for c in common],
        c=[_KEEP if c in kept else _DROP for c in common],
        s=14,
    )
    ax.axvline(selection_cutoff(scores, cfg), color="k", ls="--", lw=1, label=_threshold_label(cfg))
    ax.set(
        xlabel="uncertainty score (pairwise Dice)",
        ylabel="true pseudo-label Dice",
        title=f"Spearman rho = {q['spearman_rho']:.3f} (p = {q['p_value']:.2g}, n = {q['n']})",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, out_png, dpi=120)
