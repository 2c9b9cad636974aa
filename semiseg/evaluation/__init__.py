"""Evaluation: FLARE-exact DSC / NSD / HD95 / ASD / IoU per class, for arrays and for folders."""
from __future__ import annotations

from semiseg.evaluation.evaluate import evaluate_folders, format_summary
from semiseg.evaluation.metrics import METRIC_NAMES, FlareMetric, binary_metrics, evaluate_case, tolerance_for
from semiseg.evaluation.surface import (
    compute_average_surface_distance,
    compute_robust_hausdorff,
    compute_surface_dice_at_tolerance,
    compute_surface_distances,
)

__all__ = [
    "METRIC_NAMES",
    "FlareMetric",
    "binary_metrics",
    "compute_average_surface_distance",
    "compute_robust_hausdorff",
    "compute_surface_dice_at_tolerance",
    "compute_surface_distances",
    "evaluate_case",
    "evaluate_folders",
    "format_summary",
    "tolerance_for",
]
