"""Checks on the real development data (/work/shared/data, found relative to the repository); skipped
cleanly where the data is absent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiseg.data.dataset import LabelAccessError, RawDataset
from semiseg.data.plan import fingerprint, make_plan
from semiseg.data.validate import validate_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAOS = DATA / "ChaosT2"
LA = DATA / "LeftAtrium"


def need(root: Path) -> Path:
    if not (root / "dataset.json").is_file():
        pytest.skip(f"{root} not present")
    return root


@pytest.fixture(scope="module")
def chaos() -> RawDataset:
    return RawDataset.open(need(CHAOS))


def test_chaos_split_counts(chaos):
    assert (len(chaos.labelled), len(chaos.unlabelled), len(chaos.test)) == (4, 10, 6)
    assert not set(chaos.labelled) & set(chaos.unlabelled) and not set(chaos.test) & (set(chaos.labelled) | set(chaos.unlabelled))
    assert chaos.labels == {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
    assert chaos.num_channels == 1 and chaos.modality == "MRI"
    for case in chaos.labelled + chaos.unlabelled + chaos.test:
        assert chaos.image_paths(case)[0].is_file()


def test_chaos_refuses_unlabelled_and_test_labels(chaos):
    assert chaos.label_path(chaos.labelled[0]).is_file()
    for case in (chaos.unlabelled[0], chaos.test[0]):
        assert chaos.reference_label_path(case).is_file()  # the label exists on disk...
        with pytest.raises(LabelAccessError):
            chaos.label_path(case)  # ...but a run may not read it


def test_chaos_validates_clean(chaos):
    assert validate_dataset(chaos, progress=False) == []


def test_chaos_plan_is_sane(chaos):
    fp = fingerprint(chaos, samples_per_case=2000, progress=False)
    assert fp.spacings.shape == (4, 3)
    assert np.all(fp.spacings[:, 0] > 3 * fp.spacings[:, 1])  # ~7.7 mm slices, ~1.25 mm in-plane
    plan = make_plan(chaos, fp)
    z, y, x = plan.target_spacing
    assert z > 3 * y and y == pytest.approx(x) and 1.0 < y < 2.0 and 5.0 < z < 10.0
    assert plan.normalization == [{"scheme": "zscore"}]
    assert plan.num_classes == 5
    assert np.prod(plan.patch_size) <= 128**3
    assert all(p <= m for p, m in zip(plan.patch_size, plan.median_shape))
    assert plan.network.strides[1][0] == 1 and plan.network.kernels[0][0] == 1  # in-plane first stage
    total = np.prod(np.asarray(plan.network.strides), axis=0)
    assert all(p % t == 0 for p, t in zip(plan.patch_size, total))


def test_left_atrium_split_counts():
    la = RawDataset.open(need(LA))
    assert (len(la.labelled), len(la.unlabelled), len(la.test)) == (16, 32, 0)
    assert la.num_channels == 1
