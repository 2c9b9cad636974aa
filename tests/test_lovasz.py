"""Lovasz-Softmax: tight on one-hot predictions (= 1 - IoU), hand-computed soft cases, gradients."""
from __future__ import annotations

import pytest
import torch

from semiseg.losses.lovasz import lovasz_grad, lovasz_softmax


def _probs(p1: list[float]) -> torch.Tensor:
    """Two-class probabilities (1, 2, 1, 1, N) from the foreground probabilities."""
    fg = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([1 - fg, fg]).reshape(1, 2, 1, 1, -1)


def _labels(values: list[int]) -> torch.Tensor:
    return torch.tensor(values).reshape(1, 1, 1, 1, -1)


def test_lovasz_grad_hand_computed():
    # gt sorted [1,0,1,0]: |gt|=2, intersection [1,1,0,0], union [2,3,3,4]
    # jaccard loss [1/2, 2/3, 1, 1] -> differences [1/2, 1/6, 1/3, 0]
    grad = lovasz_grad(torch.tensor([1, 0, 1, 0]))
    assert torch.allclose(grad, torch.tensor([0.5, 1 / 6, 1 / 3, 0.0]))
    # per-column on (N, K) input equals column-wise 1-D call
    cols = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]])
    both = lovasz_grad(cols)
    assert torch.allclose(both[:, 0], grad)
    assert torch.allclose(both[:, 1], lovasz_grad(cols[:, 1]))


def test_perfect_prediction_is_zero():
    labels = _labels([1, 1, 0, 0])
    assert lovasz_softmax(_probs([1.0, 1.0, 0.0, 0.0]), labels).item() == 0.0


def test_one_hot_prediction_equals_jaccard_loss():
    # gt class 1 = {v0, v1}; predicted class 1 = {v0}
    # class 1: IoU = |{v0}| / |{v0, v1}| = 1/2 -> 1/2; class 0: gt {v2,v3}, pred {v1,v2,v3}: IoU 2/3 -> 1/3
    probs, labels = _probs([1.0, 0.0, 0.0, 0.0]), _labels([1, 1, 0, 0])
    assert lovasz_softmax(probs, labels, classes=[1]).item() == pytest.approx(0.5)
    assert lovasz_softmax(probs, labels, classes=[0]).item() == pytest.approx(1 / 3)
    assert lovasz_softmax(probs, labels).item() == pytest.approx((0.5 + 1 / 3) / 2)


def test_soft_prediction_hand_computed():
    # labels [1, 0], p1 = [0.8, 0.3]; class 1 errors |fg - p1| = [0.2, 0.3]
    # sorted desc: v1 (err 0.3, gt 0) then v0 (err 0.2, gt 1); |gt| = 1
    # jaccard loss after {v1}: 1 - 1/2 = 1/2, after {v1, v0}: 1 - 0/2 = 1 -> grad [1/2, 1/2]
    # loss_1 = 0.3 * 0.5 + 0.2 * 0.5 = 0.25
    # class 0: fg [0, 1], p0 [0.2, 0.7], errors [0.2, 0.3]; sorted v1 (gt 1), v0 (gt 0)
    # jaccard loss after {v1}: 1 - 0/1 = 1, after {v1, v0}: 1 -> grad [1, 0] -> loss_0 = 0.3
    probs, labels = _probs([0.8, 0.3]), _labels([1, 0])
    assert lovasz_softmax(probs, labels, classes=[1]).item() == pytest.approx(0.25)
    assert lovasz_softmax(probs, labels, classes=[0]).item() == pytest.approx(0.3)
    assert lovasz_softmax(probs, labels).item() == pytest.approx((0.25 + 0.3) / 2)


def test_present_vs_all_and_ignore_index():
    # third class never in labels: its Jaccard loss is 1 as soon as any error, so its Lovasz loss is
    # the largest error, max p2 = 0.3; "present" skips it, "all" averages it in.
    probs = torch.tensor([[0.6, 0.3], [0.1, 0.6], [0.3, 0.1]], dtype=torch.float64).reshape(1, 3, 1, 1, 2)
    labels = _labels([0, 1])
    present = lovasz_softmax(probs, labels).item()
    # class 0: fg [1, 0], errors [0.4, 0.3]; sorted gt [1, 0]: jaccard loss [1, 1] -> grad [1, 0] -> 0.4
    # class 1: fg [0, 1], errors [0.1, 0.4]; sorted gt [1, 0]: likewise -> 0.4
    assert present == pytest.approx((0.4 + 0.4) / 2)
    assert lovasz_softmax(probs, labels, classes="all").item() == pytest.approx((0.4 + 0.4 + 0.3) / 3)
    # appending a voxel marked ignore changes nothing
    probs_x = torch.cat([probs, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 3, 1, 1, 1)], dim=-1)
    labels_x = torch.cat([labels, torch.full((1, 1, 1, 1, 1), 255)], dim=-1)
    assert lovasz_softmax(probs_x, labels_x, ignore_index=255).item() == pytest.approx(present)
    # labels without the channel axis are accepted
    assert lovasz_softmax(probs, labels[:, 0]).item() == pytest.approx(present)
    with pytest.raises(ValueError):
        lovasz_softmax(probs, labels, classes="some")


def test_batch_is_flattened_and_gradient_flows():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 2, 3, 4))
    probs = torch.softmax(logits, 1)
    loss = lovasz_softmax(probs, labels)
    # per_image=False: the batch is one big image, so concatenating along x gives the same loss
    joined = lovasz_softmax(torch.cat([probs[:1], probs[1:]], dim=-1), torch.cat([labels[:1], labels[1:]], dim=-1))
    assert loss.item() == pytest.approx(joined.item())
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _lovasz_by_definition(errors: list[float], gt: list[int]) -> float:
    """Lovasz extension straight from its definition: sum_i e_(i) * (Delta(top i) - Delta(top i-1))."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    fg = {i for i, g in enumerate(gt) if g}

    def jaccard_loss(wrong: set[int]) -> float:
        union = fg | wrong
        return 1.0 - len(fg - wrong) / len(union) if union else 0.0

    total, prev = 0.0, 0.0
    for n, i in enumerate(order, start=1):
        cur = jaccard_loss(set(order[:n]))
        total += errors[i] * (cur - prev)
        prev = cur
    return total


def test_matches_definition_on_random_input():
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(2, 3, 1, 2, 5, dtype=torch.float64), 1)
    labels = torch.randint(0, 3, (2, 1, 1, 2, 5))
    flat_p = probs.movedim(1, -1).reshape(-1, 3)
    flat_l = labels.reshape(-1)
    for c in range(3):
        fg = (flat_l == c).long()
        errors = (fg - flat_p[:, c]).abs().tolist()
        expected = _lovasz_by_definition(errors, fg.tolist())
        assert lovasz_softmax(probs, labels, classes=[c]).item() == pytest.approx(expected)
