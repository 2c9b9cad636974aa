"""Semi-supervised methods: one step each, plus the rule that makes each method what it is."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semiseg.config import NetworkConfig, TrainConfig
from semiseg.methods import METHODS, StepContext, get_method
from semiseg.methods.cps import CPS, AdaptiveWeight, cross_pseudo_loss
from semiseg.methods.mean_teacher import masked_consistency, mc_entropy, ua_threshold
from semiseg.methods.mpl import mpl_teacher_loss
from semiseg.networks import build_network

K = 3
SHAPE = (8, 16, 16)
ALLOWED = {"image", "label", "u_image"}


class StrictBatch(dict):
    """A batch that also holds the unlabelled cases' labels, and fails on any read of them."""

    def __getitem__(self, key):
        if key not in ALLOWED:
            raise AssertionError(f"method read batch['{key}']")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key not in ALLOWED:
            raise AssertionError(f"method read batch.get('{key}')")
        return super().get(key, default)

    def _no_iteration(self, *args):
        raise AssertionError("method iterated over the batch")

    __iter__ = items = values = keys = _no_iteration


def make_batch(seed: int = 0) -> StrictBatch:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, K, (2, 1, *SHAPE), generator=g)
    image = label.float() + 0.3 * torch.randn(2, 1, *SHAPE, generator=g)
    u_label = torch.randint(0, K, (2, 1, *SHAPE), generator=g)
    u_image = u_label.float() + 0.3 * torch.randn(2, 1, *SHAPE, generator=g)
    return StrictBatch(image=image, label=label, u_image=u_image, u_label=u_label)


def build(name: str, params: dict | None = None, **cfg):
    def make_net(**overrides):
        return build_network(NetworkConfig(features=[4, 8, 16]), 1, K, **overrides)

    torch.manual_seed(0)
    m = get_method(name)(make_net, K, params or {}, TrainConfig(**{"lr": 0.01, "weight_decay": 0.0, **cfg}))
    m.train()
    return m


def snapshot(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def changed(before: list[torch.Tensor], net: nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


CTX = StepContext(step=5, total_steps=100, device=torch.device("cpu"))


def check_unlabelled_weight_ramp(name: str, params: dict | None = None) -> dict[str, float]:
    """The ``rampup`` of a method that logs ``u_weight`` and ``unsup``: a sigmoid ramp over that fraction of the run,
    scaling the unlabelled loss alone, full weight after it. Returns the unramped step's metrics at step 10."""
    def step(extra: dict, at: int) -> dict[str, float]:
        m = build(name, {**(params or {}), **extra})
        torch.manual_seed(0)  # the same strong views and CutMix boxes for every call
        return m.training_step(make_batch(), StepContext(at, 100, torch.device("cpu")))

    flat, ramped = step({}, 10), step({"rampup": 0.5}, 10)  # step 10 of a 50-step ramp: weight exp(-5 * 0.8^2)
    assert flat["u_weight"] == 1.0 and abs(ramped["u_weight"] - math.exp(-5 * 0.8 ** 2)) < 1e-9
    assert abs(ramped["unsup"] - flat["unsup"] * ramped["u_weight"]) <= 1e-5 * abs(flat["unsup"])
    assert ramped["sup"] == flat["sup"]
    assert step({"rampup": 0.5}, 60)["u_weight"] == 1.0  # ramp over: full weight
    return flat


@pytest.mark.parametrize("name, params", [("mean-teacher", {}), ("ua-mt", {}), ("cps", {}), ("dlunet", {}), ("mpl", {}),
                                          ("bcp", {"pretrain": 0.0}), ("unimatch", {"threshold": 0.0}),
                                          ("ad-mt", {"threshold": 0.0})])
def test_one_step_finite_changes_weights_reads_no_unlabelled_labels(name, params):
    get_method("supervised")  # imports every method module
    assert name in METHODS
    m = build(name, params)
    nets = [mod for key, mod in m.named_children() if key in ("student", "net", "net1", "net2", "teacher", "teacher1")]
    assert nets
    before = [snapshot(n) for n in nets]
    metrics = m.training_step(make_batch(), CTX)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    for b, n in zip(before, nets):
        assert changed(b, n)
    assert isinstance(m.inference_network(), nn.Module)


def test_mean_teacher_teacher_moves_by_ema_only():
    m = build("mean-teacher")
    teacher_before = snapshot(m.teacher)
    m.training_step(make_batch(), CTX)
    alpha = min(1 - 1 / (CTX.step + 1), 0.99)  # step 5 -> 5/6
    for t0, t, s in zip(teacher_before, m.teacher.parameters(), m.student.parameters()):
        assert t.grad is None and not t.requires_grad
        torch.testing.assert_close(t.detach(), alpha * t0 + (1 - alpha) * s.detach())
    assert m.inference_network() is m.student


def test_inference_network_choice():
    m = build("mean-teacher", {"inference": "teacher"})
    assert m.inference_network() is m.teacher
    m = build("dlunet")
    assert m.inference_network() is m.net1
    assert m.net1.__class__.__name__ == "LightUNet" and m.net2.__class__.__name__ == "LightUNet"


def test_ua_threshold_formula():
    assert ua_threshold(0, 1000, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5.0)) * math.log(2))
    assert ua_threshold(1000, 1000, 2) == pytest.approx(math.log(2))
    assert ua_threshold(500, 1000, 3) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * math.log(3))


class DisagreeingNet(nn.Module):
    """Two classes; voxels with x < 4 always say class 0 with certainty, the others flip class on every call."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 0] = 10.0
        logits[:, 1] = -10.0
        if self.calls % 2 == 1:
            logits[..., 4:] = torch.tensor([-10.0, 10.0]).view(1, 2, 1, 1, 1)
        self.calls += 1
        return logits


def test_mc_entropy_marks_disagreeing_voxels():
    x = torch.zeros(1, 1, 2, 2, 8)
    entropy, mean = mc_entropy(DisagreeingNet(), x, passes=8, noise_std=0.0)
    assert entropy.shape == (1, 1, 2, 2, 8) and mean.shape == (1, 2, 2, 2, 8)
    torch.testing.assert_close(mean[:, :, ..., 4:], torch.full((1, 2, 2, 2, 4), 0.5))
    assert float(entropy[..., :4].abs().max()) < 1e-4  # certain
    torch.testing.assert_close(entropy[..., 4:], torch.full((1, 1, 2, 2, 4), math.log(2)), atol=1e-5, rtol=0)
    mask = entropy < ua_threshold(0, 100, 2)
    assert bool(mask[..., :4].all()) and not bool(mask[..., 4:].any())
    dist = torch.zeros(1, 2, 2, 2, 8)
    dist[..., 4:] = 7.0  # large disagreement only where the teacher is uncertain
    dist[..., :4] = 1.0
    assert float(masked_consistency(dist, mask)) == pytest.approx(1.0)


def test_ua_mt_consistency_ignores_uncertain_voxels_until_ramp_ends():
    m = build("ua-mt", {"noise_std": 0.0})
    m.num_classes = 2
    x = torch.zeros(1, 1, 2, 2, 8)
    student = torch.zeros(1, 2, 2, 2, 8)
    student[:, 1, ..., 4:] = math.log(3.0)  # softmax (0.25, 0.75) where the teacher is uncertain
    # first teacher pass (consistency target) says class 0 everywhere: dist 0.25 per class where certain,
    # (0.75)^2 = 0.5625 per class where uncertain
    m.teacher = DisagreeingNet()
    loss, info = m.consistency_loss(x, student, StepContext(0, 100, torch.device("cpu")))
    assert float(loss) == pytest.approx(0.25, abs=1e-6)
    assert info["certain"] == pytest.approx(0.5)
    m.teacher = DisagreeingNet()
    loss, info = m.consistency_loss(x, student, StepContext(100, 100, torch.device("cpu")))
    assert info["certain"] == pytest.approx(1.0)  # threshold ln 2 admits every voxel
    assert float(loss) == pytest.approx(0.5 * 0.25 + 0.5 * 0.5625, abs=1e-6)


def test_cross_pseudo_loss_hand_computed():
    # one sample, two classes, two voxels; logits (1, 2, 1, 1, 2)
    a = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]]).T.reshape(1, 2, 1, 1, 2).contiguous()
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 1, 2).contiguous()
    # argmax a = [1, 0], argmax b = [0, 1]; a's probs (0.25, 0.75), (0.75, 0.25)
    # CE(a, [0, 1]) = -ln 0.25 both voxels; CE(b, [1, 0]) = mean(ln(1 + e), ln(1 + e^2))
    expected = math.log(4.0) + 0.5 * (math.log(1 + math.e) + math.log(1 + math.e**2))
    a.requires_grad_(True)
    loss = cross_pseudo_loss(a, b)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert float(cross_pseudo_loss(a, b, with_dice=True).detach()) > expected


def test_adaptive_weight_rule():
    alw = AdaptiveWeight(initial=0.0)
    alw.observe(0.2)
    alw.observe(0.4)
    assert alw.value == 0.0  # the current epoch's Dice applies only from the next epoch
    alw.end_epoch()
    assert alw.value == pytest.approx(0.3)
    alw.observe(0.9)
    state = alw.state()
    other = AdaptiveWeight()
    other.load(state)
    other.end_epoch()
    assert other.value == pytest.approx(0.9)
    alw.end_epoch()
    alw.end_epoch()  # an epoch without observations keeps the last value
    assert alw.value == pytest.approx(0.9)


def test_cps_adaptive_weight_scales_unlabelled_term():
    m = build("cps", {"adaptive_weight": True, "cps_on_labelled": False})
    assert isinstance(m, CPS)
    ctx = StepContext(50, 100, torch.device("cpu"))
    r0 = m.training_step(make_batch(), ctx)
    assert r0["alw"] == 0.0 and r0["loss"] == pytest.approx(r0["sup"], rel=1e-6)  # first epoch: no CPS on u
    r1 = m.training_step(make_batch(1), ctx)
    m.on_epoch_end(ctx)
    assert m.alw.value == pytest.approx(0.5 * (r0["sup_dice"] + r1["sup_dice"]))
    assert m.extra_state()["alw"]["value"] == pytest.approx(m.alw.value)
    r2 = m.training_step(make_batch(2), ctx)
    assert r2["alw"] == pytest.approx(m.alw.value) and r2["alw"] > 0
    assert r2["loss"] == pytest.approx(r2["sup"] + r2["cps_w"] * r2["alw"] * r2["cps_u"], rel=1e-5)
    m2 = build("cps", {"adaptive_weight": False})
    assert m2.training_step(make_batch(), ctx)["alw"] == 1.0


def test_mpl_feedback_gradient_scales_with_h():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    grads = {}
    for h in (0.0, 1.0, 2.0):
        x = logits.clone().requires_grad_(True)
        mpl_teacher_loss(x, h).backward()
        grads[h] = x.grad
    assert float(grads[0.0].abs().max()) == 0.0
    assert float(grads[1.0].abs().max()) > 0
    torch.testing.assert_close(grads[2.0], 2 * grads[1.0])
    # h > 0 reinforces the pseudo-label: a gradient step raises its logit
    x = logits.clone().requires_grad_(True)
    mpl_teacher_loss(x, 1.0).backward()
    y = logits.argmax(1, keepdim=True)
    assert float((-x.grad).gather(1, y).mean()) > 0


def test_mpl_teacher_learns_from_student_change_only():
    m = build("mpl", {"sup_weight": 0.0})
    t0 = snapshot(m.teacher)
    r = m.training_step(make_batch(), CTX)
    assert r["h"] != 0.0 and r["h"] == pytest.approx(r["student_old"] - r["student_new"])
    assert changed(t0, m.teacher)  # moved by the feedback term alone
    # a student that cannot move gives h = 0 and, without a supervised term, no teacher update
    m = build("mpl", {"sup_weight": 0.0})
    for g in m.optimizers["student"].param_groups:
        g["lr"] = 0.0
    t0, s0 = snapshot(m.teacher), snapshot(m.student)
    r = m.training_step(make_batch(), CTX)
    assert r["h"] == 0.0
    assert not changed(s0, m.student) and not changed(t0, m.teacher)


def test_mpl_student_labelled_step_comes_after_the_feedback():
    plain, sup = build("mpl"), build("mpl", {"student_sup_weight": 1.0})
    r0, r1 = plain.training_step(make_batch(), CTX), sup.training_step(make_batch(), CTX)
    assert "student_sup" not in r0 and r1["student_sup"] > 0
    # the feedback (and so the teacher) is the same: the labelled step happens after h is measured
    assert r1["h"] == r0["h"] and r1["student_new"] == r0["student_new"]
    assert not changed(snapshot(plain.teacher), sup.teacher)
    assert changed(snapshot(plain.student), sup.student)  # ...but the student took the extra step


def test_mpl_finetune_steps_train_student_only():
    m = build("mpl", {"finetune_steps": 10})
    t0, s0 = snapshot(m.teacher), snapshot(m.student)
    r = m.training_step(make_batch(), StepContext(95, 100, torch.device("cpu")))
    assert "student_sup" in r
    assert changed(s0, m.student) and not changed(t0, m.teacher)


def test_mpl_warmup_steps_train_teacher_only_on_labels():
    m = build("mpl", {"warmup_steps": 10})
    t0, s0 = snapshot(m.teacher), snapshot(m.student)
    batch = make_batch()
    r = m.training_step({"image": batch["image"], "label": batch["label"]}, StepContext(3, 100, torch.device("cpu")))
    assert "h" not in r and r["teacher_sup"] > 0  # no student step, no unlabelled batch needed
    assert changed(t0, m.teacher) and not changed(s0, m.student)
    r = m.training_step(make_batch(), StepContext(10, 100, torch.device("cpu")))
    assert "h" in r and changed(s0, m.student)


def test_mpl_student_gets_labelled_gradient_at_every_step():
    """With student_sup_weight the kept network learns from labels in warm-up, feedback and fine-tune phases alike."""
    m = build("mpl", {"warmup_steps": 10, "finetune_steps": 10, "student_sup_weight": 1.0})
    batch = make_batch()
    for step in (3, 50, 95):  # warm-up, feedback, fine-tune
        s0 = snapshot(m.student)
        r = m.training_step(batch, StepContext(step, 100, torch.device("cpu")))
        assert r["student_sup"] > 0 and changed(s0, m.student), step


def test_mpl_finetune_restarts_the_student_lr():
    m = build("mpl", {"finetune_steps": 20, "finetune_lr_restart": True})
    base = 0.01
    assert m.learning_rate("student", base, 80, 100) == pytest.approx(base)  # the fine-tune's first step: full LR again
    assert m.learning_rate("student", base, 90, 100) == pytest.approx(base * 0.5**0.9)
    assert m.learning_rate("teacher", base, 80, 100) == pytest.approx(base * 0.2**0.9)  # the teacher keeps the run's poly
    assert m.learning_rate("student", base, 50, 100) == pytest.approx(base * 0.5**0.9)
    plain = build("mpl", {"finetune_steps": 20})  # off by default: the run's poly tail
    assert plain.learning_rate("student", base, 80, 100) == pytest.approx(base * 0.2**0.9)


def test_mpl_h_baseline_subtracts_the_moving_average_and_resumes():
    m = build("mpl", {"h_baseline_decay": 0.5})
    r = m.training_step(make_batch(), CTX)
    assert r["h"] == pytest.approx(r["h_raw"] - 0.5 * r["h_raw"])  # baseline after one step: 0.5 h
    assert m.extra_state()["h_baseline"] == pytest.approx(0.5 * r["h_raw"])
    other = build("mpl", {"h_baseline_decay": 0.5})
    other.load_extra_state(m.extra_state())
    assert other.h_baseline == m.h_baseline
    with pytest.raises(ValueError, match="h_baseline_decay"):
        build("mpl", {"h_baseline_decay": 1.0})


class SignNet(nn.Module):
    """Two-class 'network' whose argmax is 1 exactly where the input is positive."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.w * x, self.w * x], 1)


def test_dlunet_mixes_images_and_pseudo_labels_with_the_same_box():
    m = build("dlunet", {"cutmix_ratio": 0.3})
    m.num_classes = 2
    m.net1, m.net2 = SignNet(), SignNet()
    m.optimizers = {"net1": m.sgd(m.net1), "net2": m.sgd(m.net2)}
    seen = []
    m.seg_loss = lambda out, label, ctx: seen.append((out, label)) or out.sum() * 0.0 + 1.0
    batch = make_batch()
    batch = StrictBatch(image=batch["image"], label=(batch["label"] > 0).long(), u_image=torch.randn(2, 1, *SHAPE))
    m.training_step(batch, CTX)
    (_, _), (_, _), (u1, y2_mix), (u2, y1_mix) = seen  # sup1, sup2, then the unlabelled pair terms
    x_mix = u1[:, 1:]  # SignNet's class-1 logit is its input
    assert torch.equal(y2_mix, (x_mix > 0).long()) and torch.equal(y1_mix, y2_mix)
    u = batch["u_image"]
    from_first = (x_mix == u).float().mean()
    from_partner = (x_mix == u.roll(1, 0)).float().mean()
    assert 0.2 < float(from_first) < 0.4 and float(from_first + from_partner) == pytest.approx(1.0)


def test_dlunet_robust_after_trains_dice_ce_first_then_nrd_tce():
    """The warm-up that scales DLUNet's loss to a short budget: dice_ce before ``robust_after``, the paper's loss after."""
    from semiseg.losses import dice_ce
    from semiseg.losses.robust import robust_loss

    m = build("dlunet", {"robust_after": 0.4})
    g = torch.Generator().manual_seed(0)
    logits, label = torch.randn(2, K, *SHAPE, generator=g), torch.randint(0, K, (2, 1, *SHAPE), generator=g)

    def at(step: int) -> StepContext:
        return StepContext(step=step, total_steps=100, device=torch.device("cpu"))

    assert m.seg_loss(logits, label, at(39)).item() == pytest.approx(dice_ce(logits, label).item())
    assert m.seg_loss(logits, label, at(40)).item() == pytest.approx(robust_loss(logits, label).item())
    assert build("dlunet").seg_loss(logits, label, at(0)).item() == pytest.approx(robust_loss(logits, label).item())  # the paper
    with pytest.raises(ValueError, match="robust_after"):
        build("dlunet", {"robust_after": 1.5})


@pytest.mark.parametrize("method, params, named", [
    ("mpl", {"mpl_loss": "dce"}, "mpl_loss"), ("mpl", {"feedback_sign": 0}, "feedback_sign"),
    ("mpl", {"temperature": 0.0}, "temperature"), ("mean-teacher", {"consistency_type": "l2"}, "consistency_type"),
    ("mean-teacher", {"dropout_at": "bogus"}, "dropout_at"), ("ua-mt", {"sup_loss": "dice"}, "sup_loss"),
    ("cps", {"init": ["kaiming"]}, "init"), ("cps", {"init": ["he", "xavier"]}, "init"),
])
def test_a_choice_param_outside_its_choices_is_refused_when_the_method_is_built(method, params, named):
    """Refused up front by name, not after a warm-up when the branch that reads it first runs."""
    with pytest.raises(ValueError, match=named):
        build(method, params)


def test_ua_mt_records_its_dropout_as_the_kept_networks_config():
    """The kept network's NetworkConfig (saved with the model) names the dropout it trained with."""
    m = build("ua-mt", {"dropout": 0.5, "dropout_at": "bottleneck"})
    assert m.inference_network_overrides == {"dropout": 0.5, "dropout_at": "bottleneck"}
    assert any(isinstance(x, (nn.Dropout, nn.Dropout3d)) for x in m.inference_network().modules())


@pytest.mark.parametrize("method,nets", [("cps", ["net1", "net2"]), ("bcp", ["student"]), ("mpl", ["teacher", "student"]),
                                         ("ad-mt", ["student"]), ("unimatch", ["net"]), ("supervised", ["net"])])
def test_every_method_trains_the_network_its_params_name(method, nets):
    """params.network (NetworkConfig fields) reaches every network a method builds and the kept one's recorded
    config, so a method can train the bounds' dropout network by data (issue 16: MT's and CPS's reference code
    trains its V-Net with dropout)."""
    drop = {"dropout": 0.5, "dropout_at": "bottleneck"}
    m = build(method, {"network": drop})
    assert m.inference_network_overrides == drop
    for name in nets:
        assert getattr(m, name).drop is not None, f"{method}.{name} was built without the dropout it was given"
    plain = build(method)
    assert all(getattr(plain, name).drop is None for name in nets) and plain.inference_network_overrides == {}


def test_params_network_is_refused_where_it_names_an_unknown_field_or_one_the_method_owns():
    with pytest.raises(ValueError, match=r"params.network must map NetworkConfig fields.*\['dropuot'\]"):
        build("cps", {"network": {"dropuot": 0.5}})
    with pytest.raises(ValueError, match=r"mean-teacher.*\['dropout'\].*own params"):
        build("mean-teacher", {"network": {"dropout": 0.5}})
    with pytest.raises(ValueError, match=r"dlunet.*\['arch'\]"):
        build("dlunet", {"network": {"arch": "res_unet"}})
