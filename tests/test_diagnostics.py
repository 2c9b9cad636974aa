"""The gradient-share diagnostic (||grad unsupervised|| / ||grad supervised||, every DIAGNOSTIC_EVERY steps) on
a known case, its absence of side effects, its presence in every consistency method's log, and curves and
results that keep keys first logged after step 0 (MPL's h, the diagnostic)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from semiseg.config import TrainConfig
from semiseg.engine.trainer import history_keys, plot_curve
from semiseg.methods import StepContext
from semiseg.methods.base import DIAGNOSTIC_EVERY, Method
from test_methods import build, make_batch


def ctx(step: int) -> StepContext:
    return StepContext(step=step, total_steps=1000, device=torch.device("cpu"))


def test_gradient_share_on_a_known_case_and_without_side_effects():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1)
    m = Method(lambda **k: lin, 2, {}, TrainConfig())
    x = torch.randn(8, 4)
    sup = lin(x).pow(2).mean()
    unsup = 3.0 * sup  # the same gradient direction, 3x the size
    assert m.gradient_share(sup, unsup, lin, ctx(0)) == {"grad_share": pytest.approx(3.0, rel=1e-5)}
    (sup + unsup).backward()  # the graph is still there and the gradient is the one the step would apply
    expected = torch.autograd.grad((4.0 * lin(x).pow(2).mean()), list(lin.parameters()))
    assert all(torch.allclose(p.grad, g) for p, g in zip(lin.parameters(), expected))
    assert m.gradient_share(lin(x).sum(), lin(x).sum(), lin, ctx(DIAGNOSTIC_EVERY + 1)) == {}  # not on this step
    assert m.gradient_share(lin(x).sum(), torch.zeros(()), lin, ctx(0)) == {}  # a term without gradient: nothing to say


@pytest.mark.parametrize("name, params", [("mean-teacher", {}), ("ua-mt", {"passes": 2, "dropout": 0.1}), ("cps", {}),
                                          ("mpl", {}), ("dlunet", {}), ("bcp", {"pretrain": 0.0}),
                                          ("unimatch", {"threshold": 0.0}), ("ad-mt", {"threshold": 0.0})])
def test_every_consistency_method_logs_its_gradient_share(name, params):
    m = build(name, params)
    first = m.training_step(make_batch(), ctx(0))
    assert "grad_share" in first and first["grad_share"] >= 0
    assert "grad_share" not in m.training_step(make_batch(1), ctx(1))


def test_inert_consistency_shows_as_a_tiny_share():
    """At the start of the ramp-up the weighted consistency gradient is a vanishing share of the supervised one."""
    m = build("mean-teacher", {"rampup": 1.0})
    assert m.training_step(make_batch(), ctx(0))["grad_share"] < 1e-2


def test_curves_keep_keys_first_logged_later(tmp_path):
    history = [{"step": s, "teacher_loss": 1.0 / (s + 1)} for s in range(10)]
    history += [{"step": s, "loss": 0.5, "h": 0.01 * s, **({"grad_share": 0.2} if s % 5 == 0 else {})} for s in range(10, 30)]
    assert history_keys(history) == ["teacher_loss", "loss", "h", "grad_share"]
    plot_curve(history, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
    from semiseg.benchmark.harness import downsample_history

    down = downsample_history(history, points=6)
    assert set(down) == {"step", "teacher_loss", "loss", "h", "grad_share"}
    assert down["h"][0] is None and down["h"][-1] is not None
