"""BCP's operations: the box moves images and (pseudo-)labels together, each direction's pseudo-labelled region
gets u_weight and the labelled one weight 1, pseudo-labels come from the teacher on the unmixed unlabelled
images, the pre-training phase is labelled-only copy-paste, and phase 2 starts from the pre-trained student."""
from __future__ import annotations

import pytest
import torch

from semiseg.losses import dice_ce, masked_dice_ce
from semiseg.methods import StepContext
from semiseg.methods.bcp import largest_component_per_class
from test_methods import K, SHAPE, build, make_batch


def ctx(step: int, total: int = 100) -> StepContext:
    return StepContext(step=step, total_steps=total, device=torch.device("cpu"))


def test_masked_dice_ce_is_dice_ce_on_the_whole_patch_and_ignores_the_rest():
    g = torch.Generator().manual_seed(0)
    logits, label = torch.randn(2, K, *SHAPE, generator=g), torch.randint(0, K, (2, 1, *SHAPE), generator=g)
    everywhere = torch.ones(SHAPE, dtype=torch.bool)
    assert torch.allclose(masked_dice_ce(logits, label, everywhere), dice_ce(logits, label), atol=1e-5)
    half = torch.zeros(SHAPE, dtype=torch.bool)
    half[:, :8] = True
    other = logits.clone()
    other[..., :, 8:, :] = torch.randn(other[..., :, 8:, :].shape, generator=g)  # change only outside the region
    assert torch.allclose(masked_dice_ce(logits, label, half), masked_dice_ce(other, label, half))


def test_largest_component_keeps_one_blob_per_class():
    lab = torch.zeros(1, 1, *SHAPE, dtype=torch.long)
    lab[0, 0, 1:5, 1:6, 1:6] = 1  # big blob of class 1
    lab[0, 0, 6, 12, 12] = 1  # stray voxel of class 1
    lab[0, 0, 6, 1, 12] = 2  # lone class-2 voxel: its largest component, kept
    out = largest_component_per_class(lab, K)
    assert out[0, 0, 6, 12, 12] == 0 and out[0, 0, 2, 2, 2] == 1 and out[0, 0, 6, 1, 12] == 2
    assert int((out == 1).sum()) == 4 * 5 * 5


def test_pretraining_is_labelled_copy_paste_and_leaves_the_teacher_alone():
    m = build("bcp", {"pretrain": 0.5})
    teacher = [q.clone() for q in m.teacher.parameters()]
    metrics = m.training_step(make_batch(), ctx(10))  # the StrictBatch fails on any read of unlabelled labels
    assert metrics["pretrain"] == 1.0 and "unsup" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(teacher, m.teacher.parameters()))


def test_phase_two_starts_from_the_pretrained_student_and_weights_the_directions():
    m = build("bcp", {"pretrain": 0.5, "largest_component": False})
    m.student.eval()  # deterministic for the check below
    with torch.no_grad():
        for q in m.teacher.parameters():
            q.add_(1.0)  # a teacher unlike the student: phase 2 must overwrite it
    seen = {}
    real = m.pseudo_labels

    def spy(u, c):
        seen.setdefault("inputs", []).append(u.clone())
        assert all(torch.equal(a, b) for a, b in zip(m.teacher.state_dict().values(), m.student.state_dict().values()))
        return real(u, c)

    m.pseudo_labels = spy
    batch = make_batch()
    metrics = m.training_step(batch, ctx(50))
    u = dict.__getitem__(batch, "u_image")
    assert torch.equal(seen["inputs"][0], u[:1]) and torch.equal(seen["inputs"][1], u[1:2])  # unmixed unlabelled images
    assert {"sup", "unsup", "pseudo_fg", "grad_share"} <= set(metrics)


def test_the_box_moves_images_and_labels_together_and_u_weight_scales_the_pseudo_region(monkeypatch):
    from semiseg.methods import bcp as mod

    box = torch.zeros(SHAPE, dtype=torch.bool)
    box[2:6, 4:12, 4:12] = True
    for w in (0.5, 0.0):
        m = build("bcp", {"pretrain": 0.0, "u_weight": w, "largest_component": False})
        monkeypatch.setattr(m, "box", lambda x: box)
        captured = {}
        m.student.register_forward_pre_hook(lambda mod, a: captured.__setitem__("x", a[0].detach().clone()))
        batch = make_batch()
        metrics = m.training_step(batch, ctx(0))
        img, u = dict.__getitem__(batch, "image"), dict.__getitem__(batch, "u_image")
        x_in, x_out = captured["x"][0], captured["x"][1]
        assert torch.equal(x_in[:, box], u[0][:, box]) and torch.equal(x_in[:, ~box], img[0][:, ~box])  # a around u1's crop
        assert torch.equal(x_out[:, box], img[1][:, box]) and torch.equal(x_out[:, ~box], u[1][:, ~box])  # u2 around b's crop
        if w == 0.0:
            assert metrics["unsup"] == 0.0 and metrics["loss"] == pytest.approx(metrics["sup"])
        else:
            assert metrics["unsup"] > 0


def test_targets_follow_the_images_labels_where_labelled_content_shows(monkeypatch):
    """With u_weight 0 the loss is the labelled regions' alone: its value must equal masked Dice+CE of the student's
    output against the labels of a outside the box and of b inside it (and change if those labels change)."""
    box = torch.zeros(SHAPE, dtype=torch.bool)
    box[2:6, 4:12, 4:12] = True
    m = build("bcp", {"pretrain": 0.0, "u_weight": 0.0, "largest_component": False})
    monkeypatch.setattr(m, "box", lambda x: box)
    seen = {}
    m.student.register_forward_hook(lambda mod, a, out: seen.__setitem__("out", out.detach().clone()))
    batch = make_batch()
    label = dict.__getitem__(batch, "label")
    metrics = m.training_step(batch, ctx(0))
    o = seen["out"]
    expected = masked_dice_ce(o[:1], label[:1], ~box) + masked_dice_ce(o[1:], label[1:2], box)
    assert metrics["sup"] == pytest.approx(float(expected), rel=1e-5)
    swapped = masked_dice_ce(o[:1], label[1:2], ~box) + masked_dice_ce(o[1:], label[:1], box)
    assert metrics["sup"] != pytest.approx(float(swapped), rel=1e-3)


def test_bcp_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="pretrain must be a fraction"):
        build("bcp", {"pretrain": 1.0})
    m = build("bcp", {"pretrain": 0.0})
    batch = make_batch()
    one = {"image": dict.__getitem__(batch, "image")[:1], "label": dict.__getitem__(batch, "label")[:1],
           "u_image": dict.__getitem__(batch, "u_image")}
    with pytest.raises(ValueError, match="labelled batch of at least 2"):
        m.training_step(one, ctx(0))
