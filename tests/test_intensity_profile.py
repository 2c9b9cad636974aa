"""semiseg.data.intensity_profile: the label-free check that flags a scan unlike the training images."""
from __future__ import annotations

import numpy as np
import pytest

from semiseg.data.intensity_profile import QUANTILES, check_intensities, quantile_profile

ZSCORE = [{"scheme": "zscore"}]


def _scan(rng: np.random.Generator, bright_fraction: float) -> np.ndarray:
    """Background, soft tissue, and a bright structure whose share of the volume sets the z-scored profile."""
    x = rng.normal(0.0, 5.0, (1, 12, 24, 24))
    x[:, :, 4:20, 4:20] += 100.0
    n = int(bright_fraction * x[0].size)
    x.reshape(-1)[:n] += 400.0
    return x.astype(np.float32)


def test_profile_is_of_the_normalised_image() -> None:
    rng = np.random.default_rng(0)
    img = _scan(rng, 0.05)
    prof = quantile_profile(img, ZSCORE)
    assert prof.shape == (1, len(QUANTILES))
    assert np.allclose(prof, quantile_profile(img * 3.0 + 50.0, ZSCORE), atol=1e-4)  # z-score: scale and offset free
    assert np.all(np.diff(prof[0]) >= 0)
    with pytest.raises(ValueError, match="one scheme per channel"):
        quantile_profile(img, ZSCORE * 2)


def test_a_scan_unlike_the_training_images_is_flagged_and_a_like_one_is_not() -> None:
    rng = np.random.default_rng(1)
    train = {f"t{i}": quantile_profile(_scan(rng, 0.03 + 0.005 * i), ZSCORE) for i in range(5)}
    cases = {"alike": quantile_profile(_scan(rng, 0.04), ZSCORE), "unlike": quantile_profile(_scan(rng, 0.25), ZSCORE)}
    qc = check_intensities(train, cases)
    assert qc.outliers == ["unlike"]
    assert qc.distances["alike"] < qc.threshold < qc.distances["unlike"]
    assert "unlike the training images" in qc.describe("unlike") and "unlike" not in qc.describe("alike")
    assert check_intensities(train, cases, factor=100.0).outliers == []


def test_bad_arguments_are_refused() -> None:
    p = np.zeros((1, len(QUANTILES)))
    with pytest.raises(ValueError, match="at least 2 training profiles"):
        check_intensities({"a": p}, {})
    with pytest.raises(ValueError, match="factor must be > 0"):
        check_intensities({"a": p, "b": p}, {}, factor=0)
    with pytest.raises(ValueError, match="profile of shape"):
        check_intensities({"a": p, "b": p}, {"c": np.zeros((2, len(QUANTILES)))})


def test_one_odd_training_scan_does_not_hide_a_test_scan_like_it() -> None:
    """The line is a percentile of the training distances: a single training outlier does not move it."""
    rng = np.random.default_rng(2)
    train = {f"t{i}": quantile_profile(_scan(rng, 0.03 + 0.002 * i), ZSCORE) for i in range(10)}
    train["odd"] = quantile_profile(_scan(rng, 0.3), ZSCORE)
    qc = check_intensities(train, {"unlike": quantile_profile(_scan(rng, 0.25), ZSCORE)})
    assert qc.outliers == ["unlike"]
