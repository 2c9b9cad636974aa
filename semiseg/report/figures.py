"""Plots of evaluation results that compare models (``semiseg.evaluation.evaluate.evaluate_folders`` output)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from semiseg.atomic import save_png


def class_dice_bars_png(results: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grouped bars: per class, each model's mean Dice over the test cases, with every case as a dot, so a mean
    carried by one case shows (the demo has 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("class_dice_bars_png needs at least one result")
    names = list(results)
    classes = list(next(iter(results.values()))["mean"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(classes), 3.6))
    for j, name in enumerate(names):
        r = results[name]
        x = np.arange(len(classes)) + (j - (len(names) - 1) / 2) * width
        means = [r["mean"][c].get("DSC", np.nan) for c in classes]
        ax.bar(x, means, width, label=f"{name} (mean {r['foreground_mean'].get('DSC', np.nan):.3f})", color=f"C{j}", alpha=0.85)
        for xi, c in zip(x, classes):
            per_case = [case[c]["DSC"] for case in r["cases"].values() if c in case and case[c].get("DSC") is not None]
            ax.scatter([xi] * len(per_case), per_case, s=10, color="black", zorder=3)
    ax.set_xticks(np.arange(len(classes)), classes, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
