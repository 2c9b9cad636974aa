"""Label-free check that a case's intensities look like the training images'.

A model trained on a handful of scans fails on a scan whose intensities lie outside theirs (an MR protocol or
scanner the training set never showed), and from the prediction alone a user cannot tell such a failure from
a bug. Here each image, normalised the way the plan normalises it, becomes its quantile profile (the 1st to
99th percentiles); a case's distance is the mean absolute difference between its profile and the median
profile of the training images. A case is flagged when its distance exceeds ``factor`` times the 90th
percentile of the training images' own distances (a percentile, not the largest: one odd training scan would
otherwise hide every test scan like it). Only images are read, never labels, so unlabelled and test cases can
be checked. Measured (benchmarks/results/intensity_check.md): it flags CHAOS's chaos_016 (missed by every model,
the 14-label bound included) and LA's la_040 (the 4-label lower bound 0.13 Dice, the 40-label bound 0.90), and
not la_041 (lower bound 0.25): a flag explains a failure; no flag proves nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from semiseg.data.dataset import RawDataset
from semiseg.data.io import read_array
from semiseg.grid import normalize

QUANTILES = np.linspace(0.01, 0.99, 99)


def quantile_profile(image: np.ndarray, schemes: list[dict[str, Any]]) -> np.ndarray:
    """(C, 99) percentiles of the image (C, z, y, x) after the plan's normalisation ``schemes``."""
    if image.ndim != 4 or image.shape[0] != len(schemes):
        raise ValueError(f"quantile_profile: need a (C, z, y, x) image with one scheme per channel, got shape "
                         f"{image.shape} and {len(schemes)} schemes")
    norm = normalize(image, schemes)
    return np.stack([np.quantile(c, QUANTILES) for c in norm]).astype(np.float64)


@dataclass(frozen=True)
class IntensityCheck:
    """Distances of the checked cases and the training images to the training images' median profile."""

    distances: dict[str, float]  # checked case -> distance
    training: dict[str, float]  # training case -> distance
    factor: float
    p90: float  # 90th percentile of the training distances

    @property
    def threshold(self) -> float:
        return self.factor * self.p90

    @property
    def outliers(self) -> list[str]:
        return sorted(c for c, d in self.distances.items() if d > self.threshold)

    def describe(self, case: str) -> str:
        d = self.distances[case]
        return (f"{case}: intensity profile distance {d:.3f} to the training images' median (the {len(self.training)} "
                f"training images: 90th percentile {self.p90:.3f}, largest {max(self.training.values()):.3f})"
                + (" - unlike the training images: a model trained on them may fail here" if d > self.threshold else ""))


def check_intensities(training: Mapping[str, np.ndarray], cases: Mapping[str, np.ndarray],
                      factor: float = 1.5) -> IntensityCheck:
    """``training`` and ``cases``: case -> quantile profile (:func:`quantile_profile`)."""
    if len(training) < 2:
        raise ValueError(f"check_intensities: need at least 2 training profiles, got {len(training)}")
    if factor <= 0:
        raise ValueError(f"check_intensities: factor must be > 0, got {factor}")
    ref = np.median(np.stack(list(training.values())), axis=0)

    def dist(p: np.ndarray) -> float:
        if p.shape != ref.shape:
            raise ValueError(f"check_intensities: profile of shape {p.shape}, the training profiles' is {ref.shape}")
        return float(np.abs(p - ref).mean())

    train_d = {c: dist(p) for c, p in training.items()}
    return IntensityCheck({c: dist(p) for c, p in cases.items()}, train_d, factor,
                          float(np.percentile(list(train_d.values()), 90)))


def check_dataset(ds: RawDataset, schemes: list[dict[str, Any]], factor: float = 1.5) -> IntensityCheck:
    """A dataset's test images against its labelled and unlabelled images (all of them images only)."""

    def profile(case: str) -> np.ndarray:
        return quantile_profile(np.stack([read_array(p)[0].astype(np.float32) for p in ds.image_paths(case)]), schemes)

    return check_intensities({c: profile(c) for c in [*ds.labelled, *ds.unlabelled]}, {c: profile(c) for c in ds.test},
                             factor)
