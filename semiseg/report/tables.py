"""Metric tables from an evaluation result (``semiseg.evaluation.evaluate.evaluate_folders``)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

DEFAULT_COLUMNS = ("DSC", "NSD", "HD95", "ASD")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def metrics_markdown(result: Mapping[str, Any], metrics: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Per-class mean table plus the foreground mean, as Markdown."""
    mean = result["mean"]
    lines = ["| class | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for cls, vals in mean.items():
        lines.append(f"| {cls} | " + " | ".join(_fmt(vals.get(m)) for m in metrics) + " |")
    fg = result.get("foreground_mean", {})
    lines.append("| **mean (foreground)** | " + " | ".join(_fmt(fg.get(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def per_case_markdown(result: Mapping[str, Any], metric: str = "DSC") -> str:
    cases = result["cases"]
    classes = list(next(iter(cases.values())).keys()) if cases else []
    lines = ["| case | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for case, per in cases.items():
        lines.append(f"| {case} | " + " | ".join(_fmt(per[c].get(metric)) for c in classes) + " |")
    return "\n".join(lines) + "\n"
