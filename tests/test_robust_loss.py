"""DLUNet robust loss: NRD and Taylor CE checked against hand arithmetic on 2 classes x 4 voxels."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg.losses import one_hot
from semiseg.losses.robust import noise_robust_dice, robust_loss, taylor_ce

# foreground probability per voxel and the label; background probability is 1 - p
P1 = [0.9, 0.6, 0.2, 0.05]
LABEL = [1, 1, 0, 0]


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    fg = torch.tensor(P1, dtype=torch.float64)
    probs = torch.stack([1 - fg, fg]).reshape(1, 2, 1, 2, 2)
    return probs, torch.tensor(LABEL).reshape(1, 1, 1, 2, 2)


def test_nrd_hand_computed():
    probs, label = _case()
    onehot = one_hot(label, 2).double()
    # foreground: |p - y| = [0.1, 0.4, 0.2, 0.05]; sum p^2 + sum y^2 = 0.81+0.36+0.04+0.0025 + 2 = 3.2125
    denom1 = 3.2125
    assert noise_robust_dice(probs, onehot, gamma=2.0, eps=0.0).item() == pytest.approx((0.01 + 0.16 + 0.04 + 0.0025) / denom1)
    assert noise_robust_dice(probs, onehot, gamma=1.0, eps=0.0).item() == pytest.approx((0.1 + 0.4 + 0.2 + 0.05) / denom1)
    numer15 = 0.1**1.5 + 0.4**1.5 + 0.2**1.5 + 0.05**1.5
    assert noise_robust_dice(probs, onehot, eps=0.0).item() == pytest.approx(numer15 / denom1)  # paper gamma 1.5
    # background: same |p - y|; p0 = [0.1, 0.4, 0.8, 0.95] -> 0.01+0.16+0.64+0.9025 + 2 = 3.7125
    with_bg = noise_robust_dice(probs, onehot, gamma=2.0, eps=0.0, include_background=True).item()
    assert with_bg == pytest.approx((0.2125 / denom1 + 0.2125 / 3.7125) / 2)
    with pytest.raises(ValueError):
        noise_robust_dice(probs, onehot, gamma=3.0)


def test_nrd_perfect_prediction_is_zero_with_finite_gradient():
    label = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 1, 2, 2)
    onehot = one_hot(label, 2)
    probs = onehot.clone().requires_grad_(True)
    assert noise_robust_dice(probs, onehot, gamma=2.0).item() == 0.0
    loss = noise_robust_dice(probs, onehot)  # |p - y|^1.5 at p = y must not give NaN gradients
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(probs.grad).all()


def test_taylor_ce_hand_computed():
    probs, label = _case()
    # p_t = [0.9, 0.6, 0.8, 0.95] -> q = 1 - p_t = [0.1, 0.4, 0.2, 0.05]
    # order 1: mean q = 0.75 / 4; order 2 adds q^2/2 = [0.005, 0.08, 0.02, 0.00125]
    assert taylor_ce(probs, label, order=1).item() == pytest.approx(0.75 / 4)
    assert taylor_ce(probs, label).item() == pytest.approx((0.105 + 0.48 + 0.22 + 0.05125) / 4)  # paper order 2
    assert taylor_ce(probs, label[:, 0], order=1).item() == pytest.approx(0.75 / 4)
    with pytest.raises(ValueError):
        taylor_ce(probs, label, order=0)


def test_taylor_ce_order_one_is_mean_one_minus_pt():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3, 4)
    target = torch.randint(0, 3, (2, 2, 3, 4))
    probs = torch.softmax(logits, 1)
    p_t = probs.gather(1, target.unsqueeze(1))
    assert taylor_ce(probs, target, order=1).item() == pytest.approx((1 - p_t).mean().item(), rel=1e-6)


def test_taylor_ce_approaches_cross_entropy():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 2, 3, 4))
    logits = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64) * 0.5 + 2.0 * one_hot(target, 3).double()
    probs = torch.softmax(logits, 1)
    assert probs.gather(1, target.unsqueeze(1)).min() > 0.3  # keeps the series remainder < 1e-6
    ce = F.cross_entropy(logits, target).item()
    assert abs(taylor_ce(probs, target, order=50).item() - ce) < 1e-3
    assert abs(taylor_ce(probs, target, order=2).item() - ce) > 1e-3  # a low order is genuinely different


def test_robust_loss_is_nrd_plus_tce():
    probs, label = _case()
    logits = probs.log()  # softmax(log p) = p
    numer15 = 0.1**1.5 + 0.4**1.5 + 0.2**1.5 + 0.05**1.5
    expected = numer15 / (3.2125 + 1e-5) + (0.105 + 0.48 + 0.22 + 0.05125) / 4
    assert robust_loss(logits, label).item() == pytest.approx(expected, rel=1e-5)
    logits = logits.float().requires_grad_(True)
    robust_loss(logits, label[:, 0]).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert not math.isnan(robust_loss(torch.zeros(1, 2, 1, 2, 2), label).item())
