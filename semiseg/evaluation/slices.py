"""Which axial slice of a case to show and how bright: the one choice that overlays (semiseg.report) and
the thumbnails kept with benchmark results (semiseg.benchmark.thumbnails) both make."""
from __future__ import annotations

import numpy as np


def best_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    """The axial (z) slice with the most foreground in reference and prediction together."""
    fg = (ref > 0).sum((1, 2)) + (pred > 0).sum((1, 2))
    return int(np.argmax(fg))


def window_intensity(img: np.ndarray) -> np.ndarray:
    """Intensities scaled to [0, 1] between the 0.5th and 99.5th percentile: outliers do not wash out the slice."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
