"""Per-class segmentation metrics with the FLARE challenge's rules.

Metrics per class: DSC, IoU, NSD (normalised surface Dice at a per-class tolerance in mm), HD95 and
ASD (mm, DeepMind surface-distance algorithm, see ``surface.py``).

Rules, following JunMa11/FLARE's evaluation scripts:
- both masks empty: DSC = IoU = NSD = 1, HD95 = ASD = 0;
- exactly one mask empty: DSC = IoU = NSD = 0, HD95 = ASD = NaN (no finite distance exists; means
  over cases skip NaN, so read HD95/ASD together with DSC);
- NSD := 0 when DSC < ``nsd_zero_below_dsc`` (default 0.2 as our design asks; FLARE23's script uses
  0.1, FLARE22's applies none; pass None to disable). HD95/ASD are still reported;
- classes in ``slice_restricted`` (default aorta, IVC, esophagus) are scored only on the axial
  (z, array axis 0) slices where the reference has them, so a prediction that runs on beyond the
  annotated extent of a vessel is not penalised. We keep the reference's last slice; the FLARE scripts
  slice ``[z_lower:z_upper]`` and so drop it: ``exclusive_upper_slice=True`` reproduces that.

Class names match tolerances loosely (case, spaces, underscores and hyphens are ignored, and FLARE's
abbreviations RK, LK, IVC, RAG, LAG are known). A class with no known tolerance gets
``DEFAULT_TOLERANCE_MM`` = 2 mm, the strictest FLARE tolerance, so an unknown organ is not flattered.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from semiseg.evaluation.surface import (
    compute_average_surface_distance,
    compute_robust_hausdorff,
    compute_surface_dice_at_tolerance,
    compute_surface_distances,
)

METRIC_NAMES: tuple[str, ...] = ("DSC", "IoU", "NSD", "HD95", "ASD")
DEFAULT_TOLERANCE_MM = 2.0
DEFAULT_NSD_ZERO_BELOW_DSC = 0.2

# Canonical FLARE organ -> tolerance (mm), from the FLARE22 evaluation script.
FLARE_TOLERANCES_MM: dict[str, float] = {
    "liver": 5.0,
    "rightkidney": 3.0,
    "spleen": 3.0,
    "pancreas": 5.0,
    "aorta": 2.0,
    "inferiorvenacava": 2.0,
    "rightadrenalgland": 2.0,
    "leftadrenalgland": 2.0,
    "gallbladder": 2.0,
    "esophagus": 3.0,
    "stomach": 5.0,
    "duodenum": 7.0,
    "leftkidney": 3.0,
}
_ALIASES: dict[str, str] = {
    "rk": "rightkidney",
    "kidneyright": "rightkidney",
    "lk": "leftkidney",
    "kidneyleft": "leftkidney",
    "ivc": "inferiorvenacava",
    "postcava": "inferiorvenacava",
    "rag": "rightadrenalgland",
    "rightadrenal": "rightadrenalgland",
    "lag": "leftadrenalgland",
    "leftadrenal": "leftadrenalgland",
    "oesophagus": "esophagus",
}
SLICE_RESTRICTED_CLASSES: frozenset[str] = frozenset({"aorta", "inferiorvenacava", "esophagus"})


def canonical_name(name: str) -> str:
    """Loose key for a class name: lower case, only letters and digits, FLARE abbreviations expanded."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _ALIASES.get(key, key)


def tolerance_for(name: str, tolerances: Mapping[str, float] | None = None, default: float = DEFAULT_TOLERANCE_MM) -> float:
    """NSD tolerance (mm) of a class: user table first, then FLARE's, then ``default``."""
    key = canonical_name(name)
    for table in (tolerances or {}, FLARE_TOLERANCES_MM):
        for k, v in table.items():
            if canonical_name(k) == key:
                return float(v)
    return float(default)


def _restrict_to_reference_slices(pred: np.ndarray, ref: np.ndarray, exclusive_upper: bool) -> tuple[np.ndarray, np.ndarray]:
    z = np.flatnonzero(ref.any(axis=(1, 2)))
    zs = slice(int(z[0]), int(z[-1]) + (0 if exclusive_upper else 1))
    return pred[zs], ref[zs]


def binary_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float,
    nsd_zero_below_dsc: float | None = DEFAULT_NSD_ZERO_BELOW_DSC,
    restrict_to_reference_slices: bool = False,
    exclusive_upper_slice: bool = False,
) -> dict[str, float]:
    """DSC, IoU, NSD, HD95 and ASD of one pair of binary (z, y, x) masks, with the FLARE rules."""
    pred, ref = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"need two 3D masks of the same shape, got pred {pred.shape} and ref {ref.shape}")
    if restrict_to_reference_slices and ref.any():
        pred, ref = _restrict_to_reference_slices(pred, ref, exclusive_upper_slice)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return {"DSC": 1.0, "IoU": 1.0, "NSD": 1.0, "HD95": 0.0, "ASD": 0.0}
    if n_pred == 0 or n_ref == 0:
        return {"DSC": 0.0, "IoU": 0.0, "NSD": 0.0, "HD95": math.nan, "ASD": math.nan}
    inter = int(np.logical_and(pred, ref).sum())
    dsc = 2.0 * inter / (n_pred + n_ref)
    sd = compute_surface_distances(ref, pred, spacing)
    nsd = compute_surface_dice_at_tolerance(sd, tolerance_mm)
    if nsd_zero_below_dsc is not None and dsc < nsd_zero_below_dsc:
        nsd = 0.0
    asd_ref_to_pred, asd_pred_to_ref = compute_average_surface_distance(sd)
    return {
        "DSC": dsc,
        "IoU": inter / (n_pred + n_ref - inter),
        "NSD": nsd,
        "HD95": compute_robust_hausdorff(sd, 95.0),
        "ASD": (asd_ref_to_pred + asd_pred_to_ref) / 2.0,  # symmetric: mean of the two directions
    }


def foreground_labels(labels: Mapping[str, int]) -> dict[str, int]:
    """The labels to score (all but value 0), checked to be distinct integers."""
    out: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"label '{name}' must map to one integer value, got {value!r} (region labels are not supported)")
        if int(value) != 0:
            out[str(name)] = int(value)
    if len(set(out.values())) != len(out):
        raise ValueError(f"label values must be distinct, got {dict(labels)}")
    return out


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[str, int],
    tolerances: Mapping[str, float] | None = None,
    *,
    default_tolerance: float = DEFAULT_TOLERANCE_MM,
    nsd_zero_below_dsc: float | None = DEFAULT_NSD_ZERO_BELOW_DSC,
    slice_restricted: Iterable[str] = SLICE_RESTRICTED_CLASSES,
    exclusive_upper_slice: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics of every foreground class of two integer (z, y, x) label maps: class -> metric -> value."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    restricted = {canonical_name(n) for n in slice_restricted}
    return {
        name: binary_metrics(
            pred == value,
            ref == value,
            spacing,
            tolerance_for(name, tolerances, default_tolerance),
            nsd_zero_below_dsc=nsd_zero_below_dsc,
            restrict_to_reference_slices=canonical_name(name) in restricted,
            exclusive_upper_slice=exclusive_upper_slice,
        )
        for name, value in foreground_labels(labels).items()
    }


def summarize(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(mean per class, mean over classes of those means); NaN values are skipped, NaN if none remain."""
    classes: dict[str, dict[str, list[float]]] = {}
    for case in per_case.values():
        for cls, metrics in case.items():
            for m, v in metrics.items():
                classes.setdefault(cls, {}).setdefault(m, []).append(v)
    mean = {cls: {m: _nanmean(vs) for m, vs in ms.items()} for cls, ms in classes.items()}
    metric_names = [m for m in METRIC_NAMES if any(m in ms for ms in mean.values())]
    foreground = {m: _nanmean([ms[m] for ms in mean.values() if m in ms]) for m in metric_names}
    return mean, foreground


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


class FlareMetric:
    """MONAI-style accumulator: call per case, ``aggregate()`` for per-class means, ``reset()`` to clear."""

    def __init__(self, labels: Mapping[str, int], tolerances: Mapping[str, float] | None = None, **options: object) -> None:
        self.labels = dict(labels)
        self.tolerances = dict(tolerances or {})
        self.options = options
        self._cases: dict[str, dict[str, dict[str, float]]] = {}

    def __call__(self, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], case: str | None = None) -> dict[str, dict[str, float]]:
        result = evaluate_case(pred, ref, spacing, self.labels, self.tolerances, **self.options)  # type: ignore[arg-type]
        self._cases[case if case is not None else str(len(self._cases))] = result
        return result

    def aggregate(self) -> dict[str, dict[str, float]]:
        return summarize(self._cases)[0]

    def reset(self) -> None:
        self._cases.clear()
