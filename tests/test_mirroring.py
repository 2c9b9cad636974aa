"""Mirroring and lateralised labels: a left-right flip must not be used where it swaps a left and a right organ."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semiseg.benchmark.harness import _plan_key
from semiseg.config import Plan
from semiseg.data.augment import augment, build_augmentation
from semiseg.data.dataset import RawDataset
from semiseg.data.plan import fingerprint, is_lateralised, left_right_axis, make_plan, mirror_axes
from semiseg.inference import sliding_window
from semiseg.inference.sliding_window import tta_flips
from synthetic_data import make_dataset


@pytest.mark.parametrize("labels, expected", [
    ({"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3}, True),
    ({"background": 0, "Kidney L": 1, "Kidney R": 2}, True),
    ({"background": 0, "adrenal_gland_left": 1, "adrenal-gland right": 2}, True),
    ({"background": 0, "left_atrium": 1}, False),  # a lone sided label has no twin to turn into
    ({"background": 0, "kidney_l": 1, "adrenal_r": 2}, False),  # different organs
    ({"background": 0, "liver": 1, "spleen": 2}, False),
])
def test_is_lateralised(labels, expected):
    assert is_lateralised(labels) is expected


def test_left_right_axis_from_direction():
    assert left_right_axis((1, 0, 0, 0, -1, 0, 0, 0, 1)) == 2  # ChaosT2: index x runs right-to-left
    assert left_right_axis((-1, 0, 0, 0, -1, 0, 0, 0, 1)) == 2  # LeftAtrium (RAS-stored)
    # index z along the patient's left-right (a sagittal stack): the numpy axis is 0
    assert left_right_axis((0, 0, 1, 1, 0, 0, 0, 1, 0)) == 0
    assert left_right_axis((0, 0.99, 0.14, 0, -0.14, 0.99, 1, 0, 0)) == 1


def test_mirror_axes_drop_left_right_only_for_lateralised_labels():
    paired = {"background": 0, "left_kidney": 1, "right_kidney": 2}
    assert mirror_axes(paired, [2, 2, 1]) == [0, 1]  # the majority of cases decides
    assert mirror_axes(paired, [1]) == [0, 2]
    assert mirror_axes({"background": 0, "left_atrium": 1}, [2]) == [0, 1, 2]
    assert mirror_axes(paired, []) == [0, 1, 2]


def test_make_plan_sets_mirror_axes(tmp_path):
    sided = make_dataset(tmp_path / "Sided", ["a", "b"], shape=(8, 24, 24),
                         labels={"background": 0, "left_kidney": 1, "right_kidney": 2})
    ds = RawDataset.open(sided)
    fp = fingerprint(ds, progress=False)
    assert fp.left_right_axes == [2, 2]
    assert make_plan(ds, fp).mirror_axes == [0, 1]
    plain = RawDataset.open(make_dataset(tmp_path / "Plain", ["a", "b"], shape=(8, 24, 24)))
    assert make_plan(plain, fingerprint(plain, progress=False)).mirror_axes == [0, 1, 2]


@pytest.mark.parametrize("preset", ["mirror", "teacher"])
def test_augmentation_never_flips_an_excluded_axis(preset):
    """A ramp along x keeps its direction under every seed when x is excluded; y and x flips both occur otherwise."""
    z, y, x = np.meshgrid(np.arange(4), np.arange(8), np.arange(8), indexing="ij")
    image = (x + 100 * y).astype(np.float32)[None]  # x ramp in units, y ramp in hundreds
    label = (x >= 4).astype(np.int16)[None]
    kept = build_augmentation(preset, [4, 8, 8], mirror_axes=(0, 1))
    full = build_augmentation(preset, [4, 8, 8])
    flipped = {"x_kept": 0, "y_kept": 0, "x_full": 0}
    for seed in range(40):
        out = augment(kept, {"image": image, "label": label}, seed)
        lab = out["label"][0]
        flipped["x_kept"] += int(lab[:, :, 0].sum() > lab[:, :, -1].sum())  # the right half moved left
        flipped["y_kept"] += int(out["image"][0, :, 0].mean() > out["image"][0, :, -1].mean())
        lab_full = augment(full, {"image": image, "label": label}, seed)["label"][0]
        flipped["x_full"] += int(lab_full[:, :, 0].sum() > lab_full[:, :, -1].sum())
    assert flipped["x_kept"] == 0
    assert flipped["y_kept"] > 5 and flipped["x_full"] > 5


def test_tta_skips_excluded_axes():
    assert tta_flips("7", (0, 1)) == [(), (2,), (3,), (2, 3)]
    assert tta_flips("3", (0, 1)) == [(), (3,)]
    assert tta_flips("7") == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]

    def net(t: torch.Tensor) -> torch.Tensor:  # not flip-equivariant: a running sum along x
        return torch.cat([t.cumsum(-1), -t.cumsum(-1)], 1)

    def net_y(t: torch.Tensor) -> torch.Tensor:
        return torch.flip(net(torch.flip(t, (3,))), (3,))

    data = torch.rand(1, 6, 12, 12)
    got = sliding_window(net, data, (6, 8, 8), 2, tta="3", mirror_axes=(0, 1))
    want = (sliding_window(net, data, (6, 8, 8), 2) + sliding_window(net_y, data, (6, 8, 8), 2)) / 2
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, sliding_window(net, data, (6, 8, 8), 2, tta="3"))


def test_benchmark_key_omits_default_mirror_axes():
    plan = Plan(dataset_name="x", modality="MRI", num_input_channels=1, labels={"background": 0, "a": 1},
                target_spacing=[1.0, 1.0, 1.0], patch_size=[8, 8, 8])
    assert "mirror_axes" not in _plan_key(plan)  # pieces from before the field keep their key
    plan.mirror_axes = [0, 1]
    assert _plan_key(plan)["mirror_axes"] == [0, 1]
