"""Patch sampling: where foreground patches are centred, and that the old behaviour is kept by default."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiseg.config import Plan
from semiseg.data.sampling import CachedCase, PatchSampler

SHAPE, PATCH = (44, 70, 96), [40, 64, 64]  # an LA case at 1.25 mm and the LA-SSL-4 patch


class MemoryCase(CachedCase):
    def __init__(self, data: np.ndarray, seg: np.ndarray):
        locs = np.argwhere(seg == 1)
        super().__init__("m", Path("m.npy"), Path("m_seg.npy"), {"1": locs.tolist()})
        self._data, self._seg = data, seg

    def load(self):
        return self._data, self._seg


def case() -> MemoryCase:
    data = np.random.default_rng(0).normal(size=(1, *SHAPE)).astype(np.float32) + 5.0  # never 0 inside the volume
    seg = np.zeros(SHAPE, np.int16)
    seg[:6, :8, :10] = 1  # foreground in a corner: a patch centred on it leaves the volume
    return MemoryCase(data, seg)


@pytest.mark.parametrize("inside", [False, True])
def test_foreground_patches_stay_inside_the_volume_only_when_asked(inside):
    sampler = PatchSampler([case()], PATCH, 1.0, "none", fg_inside=inside)
    padded = fg = 0
    for i in range(40):
        s = sampler.sample(np.random.default_rng(i), force_fg=True)
        assert s["image"].shape == (1, *PATCH)
        padded += int((s["image"] == 0).any())  # zero padding (the data is never 0)
        fg += int((s["label"] == 1).any())
    assert fg == 40  # every forced patch holds foreground either way
    assert padded == 0 if inside else padded == 40


def test_random_patches_and_the_plan_default_are_unchanged():
    sampler = PatchSampler([case()], PATCH, 1.0, "none")
    assert sampler.fg_inside is False and Plan("x", "MRI", 1, {"background": 0, "a": 1}, [1.0] * 3, PATCH).foreground_inside is False
    s = sampler.sample(np.random.default_rng(0), force_fg=False)
    assert not (s["image"] == 0).any()  # random patches never left the volume


def test_foreground_inside_is_keyed_only_when_set():
    from semiseg.benchmark.harness import _plan_key

    plan = Plan("x", "MRI", 1, {"background": 0, "a": 1}, [1.0] * 3, PATCH)
    assert "foreground_inside" not in _plan_key(plan)  # pieces made before the field existed stay valid
    plan.foreground_inside = True
    assert _plan_key(plan)["foreground_inside"] is True


def test_label_resampling_is_keyed_only_when_not_linear():
    from semiseg.benchmark.harness import _plan_key

    plan = Plan("x", "MRI", 1, {"background": 0, "a": 1}, [1.0] * 3, PATCH)
    assert "label_resampling" not in _plan_key(plan)  # pieces made before the field existed stay valid
    plan.label_resampling = "nearest"
    assert _plan_key(plan)["label_resampling"] == "nearest"
