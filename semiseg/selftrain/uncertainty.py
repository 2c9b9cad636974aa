"""Uncertainty-guided pseudo-label selection (Alves & de Wilde, FLARE22 self-learning, eq. 1).

For one unlabelled case, the k fold models' hard masks give a matrix of pairwise Dice with shape
(n_classes, n_pairs): one row per organ, one column per model pair (i < j, lexicographic order, so
k = 5 gives the pairs (0,1), (0,2), (0,3), (0,4), (1,2), ... (3,4)). Both masks empty counts as 1,
one empty as 0. A case's score reduces that matrix over pairs, then over classes; the paper keeps a
case when min over organs of the mean over pairs >= 0.9. Reductions and threshold are configuration;
``top_fraction`` replaces the absolute threshold by a relative rule (keep the most confident share of
cases), for budgets where no case reaches 0.9 but the score still ranks cases by true quality.

Memory: masks are re-coded once to compact uint8 class indices (0 = not a scored class), and counts
come from chunked ``np.bincount`` rather than k * C boolean volumes, so the extra memory is k uint8
volumes plus one bounded chunk of temporaries.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from semiseg.data.io import atomic_write_text

Reduction = Literal["mean", "min"]
_REDUCTIONS = ("mean", "min")
_CHUNK = 1 << 22  # voxels per bincount chunk; bounds the intp temporaries bincount makes (~32 MB)


@dataclass
class SelectionConfig:
    """How to turn a pairwise-Dice matrix into a keep/drop decision; defaults are the paper's."""

    threshold: float = 0.9
    pair_reduction: Reduction = "mean"
    class_reduction: Reduction = "min"
    enabled: bool = True  # False = "unfiltered": every case is selected
    top_fraction: float | None = None  # keep the ceil(f * n) best-scored cases instead of score >= threshold

    def __post_init__(self) -> None:
        if self.top_fraction is not None and (
            not isinstance(self.top_fraction, (int, float)) or not 0.0 < float(self.top_fraction) <= 1.0
        ):
            raise ValueError(f"SelectionConfig.top_fraction must be a number in (0, 1] or None, got {self.top_fraction!r}")
        for name in ("pair_reduction", "class_reduction"):
            if getattr(self, name) not in _REDUCTIONS:
                raise ValueError(f"SelectionConfig.{name} must be one of {_REDUCTIONS}, got {getattr(self, name)!r}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"SelectionConfig.threshold must be a number in [0, 1], got {self.threshold!r}")


def _validate_class_ids(class_ids: Sequence[int]) -> list[int]:
    ids = [int(c) for c in class_ids]
    if not ids:
        raise ValueError("class_ids is empty: need at least one class to score")
    if len(set(ids)) != len(ids):
        raise ValueError(f"class_ids contains duplicates: {ids}")
    if min(ids) < 1:
        raise ValueError(f"class_ids must be positive foreground labels (0 is background), got {ids}")
    if len(ids) > 255:
        raise ValueError(f"at most 255 classes fit the uint8 compact coding, got {len(ids)}")
    return ids


def _dice(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """Per-class Dice from counts; both empty -> 1 (agreement on absence), one empty -> 0."""
    denom = size_a + size_b
    out = np.ones(inter.shape, dtype=np.float64)
    nz = denom > 0
    out[nz] = 2.0 * inter[nz] / denom[nz]
    return out


class PairwiseDiceAccumulator:
    """Build the pairwise-Dice matrix one fold prediction at a time.

    Pairs need every earlier mask, so the accumulator keeps each added mask as a flat uint8 array of
    compact class indices: memory = k masks of uint8 (one byte per voxel per model), whatever the
    input dtype. Per-class voxel counts are computed once per mask; each new mask adds its pairs
    with all earlier ones.
    """

    def __init__(self, class_ids: Sequence[int]) -> None:
        self.class_ids = _validate_class_ids(class_ids)
        self._n = len(self.class_ids)
        self._shape: tuple[int, ...] | None = None
        self._masks: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self._pair_dice: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._masks)

    def _compact(self, mask: np.ndarray) -> np.ndarray:
        """Re-code labels to 0..C (C = number of classes) as uint8; unscored labels become 0."""
        if mask.dtype == bool or not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"masks must be integer label maps, got dtype {mask.dtype}")
        if mask.size == 0:
            raise ValueError("mask is empty (zero voxels)")
        lo, hi = int(mask.min()), int(mask.max())
        if lo < 0:
            raise ValueError(f"mask contains negative label {lo}")
        top = max(self.class_ids) + 1  # every label >= top is unscored; one LUT slot covers them all
        lut = np.zeros(top + 1, dtype=np.uint8)
        lut[self.class_ids] = np.arange(1, self._n + 1, dtype=np.uint8)
        flat = mask.reshape(-1)
        return lut[np.minimum(flat, top) if hi > top else flat]

    def _counts(self, values: np.ndarray) -> np.ndarray:
        """Per-class voxel counts (index 0 = background dropped), chunked to bound memory."""
        total = np.zeros(self._n + 1, dtype=np.int64)
        for s in range(0, values.size, _CHUNK):
            total += np.bincount(values[s : s + _CHUNK], minlength=self._n + 1)
        return total[1:]

    def _intersections(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        total = np.zeros(self._n + 1, dtype=np.int64)
        for s in range(0, a.size, _CHUNK):
            ca, cb = a[s : s + _CHUNK], b[s : s + _CHUNK]
            total += np.bincount(ca[ca == cb], minlength=self._n + 1)
        return total[1:]

    def add(self, mask: np.ndarray) -> None:
        """Add the next model's hard mask (integer labels, same shape as the earlier ones)."""
        mask = np.asarray(mask)
        if self._shape is None:
            self._shape = mask.shape
        elif mask.shape != self._shape:
            raise ValueError(f"mask {len(self._masks)} has shape {mask.shape}, expected {self._shape} like mask 0")
        new = self._compact(mask)
        new_size = self._counts(new)
        j = len(self._masks)
        for i, (old, old_size) in enumerate(zip(self._masks, self._sizes)):
            self._pair_dice[(i, j)] = _dice(self._intersections(old, new), old_size, new_size)
        self._masks.append(new)
        self._sizes.append(new_size)

    def matrix(self) -> np.ndarray:
        """(n_classes, n_pairs) float64 matrix, pairs i < j in lexicographic order."""
        k = len(self._masks)
        if k < 2:
            raise ValueError(f"need at least 2 masks for pairwise Dice, got {k}")
        pairs = list(combinations(range(k), 2))
        return np.stack([self._pair_dice[p] for p in pairs], axis=1)


def pairwise_dice_matrix(masks: Sequence[np.ndarray], class_ids: Sequence[int]) -> np.ndarray:
    """(n_classes, n_pairs) pairwise Dice of k hard masks; see the module docstring for the rules."""
    acc = PairwiseDiceAccumulator(class_ids)
    for m in masks:
        acc.add(m)
    return acc.matrix()


def _reduce(x: np.ndarray, how: Reduction, axis: int) -> np.ndarray:
    return x.mean(axis=axis) if how == "mean" else x.min(axis=axis)


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"uncertainty matrix must be 2D (n_classes, n_pairs) and non-empty, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("uncertainty matrix contains NaN or infinite values")
    return m


def per_class_agreement(matrix: np.ndarray, cfg: SelectionConfig) -> np.ndarray:
    """Per-class agreement: the configured reduction over model pairs (paper: mean, eq. 1)."""
    return _reduce(_check_matrix(matrix), cfg.pair_reduction, axis=1)


def uncertainty_score(matrix: np.ndarray, cfg: SelectionConfig) -> float:
    """Case score = class_reduction over classes of pair_reduction over pairs (high = confident)."""
    return float(_reduce(per_class_agreement(matrix, cfg), cfg.class_reduction, axis=0))


def select_cases(scores: dict[str, float], cfg: SelectionConfig) -> list[str]:
    """Case ids with score >= threshold, or the ``top_fraction`` best-scored (ties broken by case id),
    or all of them when ``cfg.enabled`` is False; sorted by id."""
    for case, s in scores.items():
        if not isinstance(s, (int, float, np.floating, np.integer)) or not math.isfinite(float(s)):
            raise ValueError(f"score of case {case!r} is not a finite number: {s!r}")
    if not cfg.enabled:
        return sorted(scores)
    if cfg.top_fraction is not None:
        ranked = sorted(scores, key=lambda c: (-float(scores[c]), c))
        return sorted(ranked[: math.ceil(float(cfg.top_fraction) * len(ranked) - 1e-9)])
    return sorted(c for c, s in scores.items() if float(s) >= cfg.threshold)


def selection_cutoff(scores: dict[str, float], cfg: SelectionConfig) -> float:
    """The score line that separates kept from dropped cases: the threshold, or for ``top_fraction``
    the lowest kept score (the threshold when nothing is kept); for plots."""
    if cfg.top_fraction is None or not cfg.enabled:
        return float(cfg.threshold)
    kept = select_cases(scores, cfg)
    return min((float(scores[c]) for c in kept), default=float(cfg.threshold))


def write_uncertainty_csv(
    path: str | Path, matrices: dict[str, np.ndarray], class_names: Sequence[str], cfg: SelectionConfig
) -> None:
    """One row per case (sorted): case, score, selected, mean pairwise Dice per class; atomic write.

    Per-class columns are always the mean over pairs (eq. 1), whatever ``cfg.pair_reduction`` is, so
    the table reads the same across configurations; ``score`` follows ``cfg``.
    """
    names = list(class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class_names contains duplicates: {names}")
    if any(n in ("case", "score", "selected") for n in names):
        raise ValueError(f"class_names must not reuse the column names case/score/selected: {names}")
    scores: dict[str, float] = {}
    per_class: dict[str, np.ndarray] = {}
    for case, m in matrices.items():
        m = _check_matrix(m)
        if m.shape[0] != len(names):
            raise ValueError(f"case {case!r}: matrix has {m.shape[0]} classes but {len(names)} class_names were given")
        scores[case] = uncertainty_score(m, cfg)
        per_class[case] = m.mean(axis=1)
    selected = set(select_cases(scores, cfg))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "score", "selected", *names])
    for case in sorted(matrices):
        writer.writerow([case, repr(scores[case]), int(case in selected), *(repr(float(v)) for v in per_class[case])])
    atomic_write_text(path, buf.getvalue())


def read_uncertainty_csv(path: str | Path) -> dict[str, float]:
    """{case: score} from a file written by ``write_uncertainty_csv``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: uncertainty CSV not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"case", "score"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: not an uncertainty CSV (need 'case' and 'score' columns, got {reader.fieldnames})")
        out: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            if row["case"] in out:
                raise ValueError(f"{path}, line {line}: duplicate case {row['case']!r}")
            try:
                out[row["case"]] = float(row["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: score {row['score']!r} is not a number") from None
    return out
