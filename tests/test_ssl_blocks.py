"""Shared semi-supervised building blocks: EMA, ramp-ups, CutMix."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semiseg.data.cutmix import box_mask, cutmix
from semiseg.methods.ema import ema_update
from semiseg.methods.rampup import cosine_rampdown, linear_rampup, sigmoid_rampup


def _pair() -> tuple[nn.Module, nn.Module]:
    teacher, student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([1.0, 2.0]))
        teacher.bias.copy_(torch.tensor([0.0, 0.0]))
        student.weight.copy_(torch.tensor([3.0, -2.0]))
        student.bias.copy_(torch.tensor([1.0, 10.0]))
        student.running_mean.copy_(torch.tensor([5.0, 6.0]))
    return teacher, student


def test_ema_fixed_decay_formula_and_buffers_copied():
    teacher, student = _pair()
    alpha = ema_update(teacher, student, decay=0.9)
    assert alpha == pytest.approx(0.9)
    # 0.9 * [1, 2] + 0.1 * [3, -2] = [1.2, 1.6]; 0.9 * 0 + 0.1 * [1, 10] = [0.1, 1.0]
    torch.testing.assert_close(teacher.weight.data, torch.tensor([1.2, 1.6]))
    torch.testing.assert_close(teacher.bias.data, torch.tensor([0.1, 1.0]))
    torch.testing.assert_close(teacher.running_mean, torch.tensor([5.0, 6.0]))
    torch.testing.assert_close(student.weight.data, torch.tensor([3.0, -2.0]))  # student untouched


def test_ema_step_warmup_alpha():
    teacher, student = _pair()
    # step 0: alpha = min(1 - 1/1, 0.99) = 0 -> teacher becomes the student
    assert ema_update(teacher, student, 0.99, step=0) == 0.0
    torch.testing.assert_close(teacher.weight.data, torch.tensor([3.0, -2.0]))
    teacher, student = _pair()
    # step 3: alpha = min(0.75, 0.99) = 0.75 -> 0.75 * [1, 2] + 0.25 * [3, -2] = [1.5, 1.0]
    assert ema_update(teacher, student, 0.99, step=3) == pytest.approx(0.75)
    torch.testing.assert_close(teacher.weight.data, torch.tensor([1.5, 1.0]))
    teacher, student = _pair()
    # step 1000: 1 - 1/1001 > 0.9 -> decay caps alpha
    assert ema_update(teacher, student, 0.9, step=1000) == pytest.approx(0.9)


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5.0 * 0.25))
    assert sigmoid_rampup(100, 100) == pytest.approx(1.0)
    assert sigmoid_rampup(250, 100) == pytest.approx(1.0)
    assert sigmoid_rampup(5, 0) == 1.0


def test_linear_rampup_and_cosine_rampdown_values():
    assert linear_rampup(0, 40) == 0.0
    assert linear_rampup(10, 40) == pytest.approx(0.25)
    assert linear_rampup(40, 40) == 1.0 and linear_rampup(80, 40) == 1.0
    assert cosine_rampdown(0, 10) == pytest.approx(1.0)
    assert cosine_rampdown(5, 10) == pytest.approx(0.5)
    assert cosine_rampdown(10, 10) == pytest.approx(0.0)


def test_box_mask_volume_fraction_and_box_shape():
    g = torch.Generator().manual_seed(0)
    for ratio, expected_box in [(0.125, (8, 16, 16)), (1.0, (16, 32, 32)), (0.0, (0, 0, 0))]:
        m = box_mask((16, 32, 32), ratio, generator=g)
        assert m.shape == (16, 32, 32) and m.dtype == torch.bool
        assert float(m.float().mean()) == pytest.approx(ratio)
        if ratio > 0:
            nz = m.nonzero()
            extent = tuple(int(v) for v in (nz.max(0).values - nz.min(0).values + 1))
            assert extent == expected_box  # one solid box
    with pytest.raises(ValueError):
        box_mask((4, 4, 4), 1.5)


def test_box_mask_position_varies_with_generator():
    a = box_mask((16, 32, 32), 0.125, generator=torch.Generator().manual_seed(1))
    b = box_mask((16, 32, 32), 0.125, generator=torch.Generator().manual_seed(2))
    c = box_mask((16, 32, 32), 0.125, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_cutmix_keeps_image_label_alignment():
    g = torch.Generator().manual_seed(0)
    label_a = torch.randint(0, 4, (2, 1, 16, 32, 32), generator=g)
    label_b = torch.randint(0, 4, (2, 1, 16, 32, 32), generator=g)
    image_a, image_b = label_a.float(), label_b.float()  # voxel value == its label
    mask = box_mask((16, 32, 32), 0.3, generator=g)
    mixed_image = cutmix(image_a, image_b, mask)
    mixed_label = cutmix(label_a, label_b, mask)
    assert mixed_label.dtype == label_a.dtype
    assert torch.equal(mixed_image, mixed_label.float())
    # inside the box from a, outside from b
    assert torch.equal(mixed_label[..., mask], label_a[..., mask])
    assert torch.equal(mixed_label[..., ~mask], label_b[..., ~mask])
