"""Weak-to-strong consistency: the confidence threshold on known logits, pseudo-labels from the weak view alone
(strong views never leak into them), strong views that keep geometry, the feature-perturbed pass."""
from __future__ import annotations

import torch

from semiseg.data.strong_views import strong_view
from semiseg.methods import unimatch as um
from semiseg.networks import bottleneck_of, build_network
from semiseg.networks.dropout import feature_dropout
from test_methods import CTX, K, SHAPE, build, check_unlabelled_weight_ramp, make_batch


def test_confidence_threshold_on_known_logits():
    logits = torch.zeros(1, 3, 1, 1, 2)
    logits[0, 1, 0, 0, 0] = 10.0  # class 1, softmax ~0.9999: confident
    logits[0, 2, 0, 0, 1] = 1.0  # class 2, softmax ~0.58: not
    labels, ok = um.weak_pseudo_labels(logits, 0.95)
    assert labels.flatten().tolist() == [1, 2] and ok.flatten().tolist() == [True, False]
    assert um.weak_pseudo_labels(logits, 0.5)[1].flatten().tolist() == [True, True]


def test_pseudo_labels_come_from_the_weak_view_alone(monkeypatch):
    m = build("unimatch", {"threshold": 0.0})
    seen = {}
    real = um.weak_pseudo_labels

    def spy(logits, threshold):
        seen["logits"] = logits.detach().clone()
        return real(logits, threshold)

    monkeypatch.setattr(um, "weak_pseudo_labels", spy)
    from semiseg.data import strong_views

    monkeypatch.setattr(strong_views, "strong_view", lambda x: torch.full_like(x, 1e3))  # absurd strong views
    batch = make_batch()
    image, u = dict.__getitem__(batch, "image"), dict.__getitem__(batch, "u_image")
    with torch.no_grad():
        expected = m.net(torch.cat([image, u]))[2:]  # the weak pass, before the step changes the weights
    metrics = m.training_step(batch, CTX)
    assert torch.allclose(seen["logits"], expected, atol=1e-5)  # the strong views did not feed the pseudo-labels
    assert metrics["confident"] == 1.0 and metrics["unsup"] > 0  # threshold 0: every voxel counts


def test_strong_views_keep_geometry_and_are_a_function_of_the_seed():
    x = torch.randn(3, 1, *SHAPE)
    torch.manual_seed(5)
    a = strong_view(x)
    torch.manual_seed(5)
    b = strong_view(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    # intensity-only: a sample's voxel order is kept, so its rank correlation with the weak view stays high
    for i in range(3):
        r = torch.corrcoef(torch.stack([x[i].flatten().argsort().argsort().float(), a[i].flatten().argsort().argsort().float()]))[0, 1]
        assert r > 0.5


def test_feature_dropout_perturbs_only_inside_the_block():
    torch.manual_seed(0)
    from semiseg.config import NetworkConfig

    net = build_network(NetworkConfig(arch="res_unet", features=[4, 8, 16], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]), 1, K).eval()
    x = torch.randn(2, 1, *SHAPE)
    clean = net(x)
    with feature_dropout(bottleneck_of(net), 0.5):
        perturbed = net(x)
    assert not torch.allclose(clean, perturbed) and torch.equal(net(x), clean)  # hook gone after the block


def test_every_term_is_logged_and_weighted_as_unimatch():
    m = build("unimatch", {"threshold": 0.0, "u_weight": 2.0})
    out = m.training_step(make_batch(), CTX)
    expected = 2.0 * (0.25 * out["u_s1"] + 0.25 * out["u_s2"] + 0.5 * out["u_fp"])
    assert abs(out["unsup"] - expected) < 1e-5 and abs(out["loss"] - out["sup"] - out["unsup"]) < 1e-5


def test_the_unlabelled_weight_ramps_up_and_bad_params_are_refused():
    import pytest

    check_unlabelled_weight_ramp("unimatch", {"threshold": 0.0})
    for bad in ({"rampup": 1.5}, {"threshold": 1.2}, {"cutmix_ratio": -0.1}, {"u_weight": -1.0}, {"fp_dropout": 1.0}):
        with pytest.raises(ValueError):
            build("unimatch", bad)
