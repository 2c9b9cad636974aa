"""AD-MT's operations: the random periodic alternation of the two teachers, only the active one moving, and the
conflict-combating rule on known logits (agreement kept, conflicts resolved by entropy or by the latest teacher)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semiseg.methods import StepContext
from semiseg.methods.admt import alternation, teacher_targets
from test_methods import build, check_unlabelled_weight_ramp, make_batch


def test_alternation_takes_turns_of_random_length_within_the_period():
    sched = alternation(2000, 24, seed=3)
    assert sched[0] == 0 and set(np.unique(sched)) == {0, 1}
    switches = np.flatnonzero(np.diff(sched)) + 1
    turns = np.diff(np.concatenate([[0], switches, [len(sched)]]))
    assert turns[:-1].min() >= 1 and turns.max() <= 24 and len(set(turns.tolist())) > 5  # random lengths, never longer
    assert np.array_equal(sched, alternation(2000, 24, seed=3)) and not np.array_equal(sched, alternation(2000, 24, seed=4))
    assert np.array_equal(alternation(10, 1, 0), np.array([0, 1] * 5))  # period 1: strict alternation
    with pytest.raises(ValueError, match="alternate_period"):
        alternation(10, 0, 0)


def test_conflicts_are_resolved_by_entropy_or_by_the_latest_teacher():
    # voxel 0: both say class 1; voxel 1: teacher 1 says 0 (unsure), teacher 2 says 2 (sure)
    l1 = torch.tensor([[0.0, 3.0, 0.0], [0.6, 0.5, 0.0]]).T.reshape(1, 3, 1, 1, 2)
    l2 = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 6.0]]).T.reshape(1, 3, 1, 1, 2)
    y, conf, conflict = teacher_targets(l1, l2, "confidence", latest=0)
    assert y.flatten().tolist() == [1, 2] and conflict.flatten().tolist() == [False, True]
    assert conf.flatten()[1] == pytest.approx(torch.softmax(torch.tensor([0.0, 0.0, 6.0]), 0)[2].item())
    assert teacher_targets(l1, l2, "latest", latest=0)[0].flatten().tolist() == [1, 0]  # teacher 1 was updated last
    assert teacher_targets(l1, l2, "latest", latest=1)[0].flatten().tolist() == [1, 2]


def test_only_the_active_teacher_moves():
    m = build("ad-mt", {"threshold": 0.0, "alternate_period": 1})  # period 1: teacher 1 on even steps, teacher 2 on odd
    for step, moving, still in ((4, "teacher1", "teacher2"), (5, "teacher2", "teacher1")):
        before = {k: [q.clone() for q in getattr(m, k).parameters()] for k in ("teacher1", "teacher2")}
        out = m.training_step(make_batch(step), StepContext(step, 100, torch.device("cpu")))
        assert out["active"] == (0.0 if moving == "teacher1" else 1.0)
        assert any(not torch.equal(a, b) for a, b in zip(before[moving], getattr(m, moving).parameters()))
        assert all(torch.equal(a, b) for a, b in zip(before[still], getattr(m, still).parameters()))


def test_conflict_weight_scales_the_conflicting_region_only():
    losses = {}
    for w in (0.0, 1.0):
        m = build("ad-mt", {"threshold": 0.0, "conflict_weight": w})
        with torch.no_grad():
            for q in m.teacher2.parameters():
                q.mul_(-1.0)  # teachers that disagree somewhere
        torch.manual_seed(0)
        losses[w] = m.training_step(make_batch(), StepContext(3, 100, torch.device("cpu")))
    assert losses[0.0]["conflict"] > 0 and losses[0.0]["conflict"] == losses[1.0]["conflict"]
    assert losses[1.0]["unsup"] > losses[0.0]["unsup"]


def test_the_unlabelled_weight_ramps_up_and_the_loss_can_be_ce_alone():
    from semiseg.losses import masked_ce, masked_dice_ce

    flat = check_unlabelled_weight_ramp("ad-mt", {"threshold": 0.0})
    m = build("ad-mt", {"threshold": 0.0, "u_loss": "ce"})
    torch.manual_seed(0)
    ce = m.training_step(make_batch(), StepContext(10, 100, torch.device("cpu")))
    assert ce["sup"] == flat["sup"] and 0 < ce["unsup"] < flat["unsup"]  # the same targets, the Dice term dropped
    logits, label = torch.randn(2, 3, 2, 4, 4), torch.randint(0, 3, (2, 1, 2, 4, 4))
    region = torch.rand(2, 1, 2, 4, 4) > 0.5
    full = torch.nn.functional.cross_entropy(logits, label[:, 0], reduction="none")[region[:, 0]].mean()
    assert float(masked_ce(logits, label, region)) == pytest.approx(float(full), rel=1e-6)
    assert float(masked_dice_ce(logits, label, region)) > float(masked_ce(logits, label, region))
    for bad in ({"rampup": 1.5}, {"threshold": -0.1}, {"u_weight": -1.0}, {"u_loss": "dice"}):
        with pytest.raises(ValueError):
            build("ad-mt", bad)
