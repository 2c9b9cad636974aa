"""Weak-to-strong consistency, UniMatch (Yang et al., CVPR 2023) on one network.

Why: a prediction on a weakly augmented view is a better target than one on a perturbed view, and asking
the network to reproduce it under strong perturbations (image level: two independent strong views, each
CutMix-ed with another unlabelled sample; feature level: channel dropout on the bottleneck of the weak
view's pass) teaches invariance where plain consistency sees little difference to learn. Only confident
voxels (max softmax >= ``threshold``) of the weak pseudo-labels count. The weak view alone makes the
pseudo-labels, without gradient; the strong views never feed into them.

Loss, as UniMatch's: sup + 0.25 L(strong 1) + 0.25 L(strong 2) + 0.5 L(feature-perturbed), each L a Dice + CE over
the confident voxels (its medical-image variant uses Dice over them), the unlabelled part scaled by
``u_weight``, ramped up over the first ``rampup`` of the run (0, UniMatch's own: full weight from step 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semiseg.data import strong_views
from semiseg.losses import dice_ce, masked_dice_ce
from semiseg.methods.base import Method, StepContext, register
from semiseg.methods.params import require_fractions
from semiseg.methods.rampup import sigmoid_rampup
from semiseg.networks import bottleneck_of, main_output
from semiseg.networks.dropout import feature_dropout

WEIGHTS = {"s1": 0.25, "s2": 0.25, "fp": 0.5}  # UniMatch's split of the unlabelled loss


def weak_pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard labels (B, 1, ...), confident mask (B, 1, ...)) of detached weak-view logits."""
    prob = torch.softmax(logits.detach().float(), 1)
    conf, labels = prob.max(1, keepdim=True)
    return labels, conf >= threshold


@dataclass(frozen=True)
class UniMatchParams:
    threshold: float = 0.95
    cutmix_ratio: float = 0.5
    fp_dropout: float = 0.5
    u_weight: float = 1.0
    rampup: float = 0.0

    def __post_init__(self) -> None:
        require_fractions(self, "unimatch", "threshold", "cutmix_ratio", "rampup")
        if self.u_weight < 0:
            raise ValueError(f"unimatch: u_weight must be >= 0, got {self.u_weight}")
        if not 0.0 <= self.fp_dropout < 1.0:
            raise ValueError(f"unimatch: fp_dropout must lie in [0, 1), got {self.fp_dropout}")


@register
class UniMatch(Method):
    """params (defaults): threshold 0.95 (UniMatch), cutmix_ratio 0.5 (box volume fraction), fp_dropout 0.5
    (bottleneck channel dropout of the feature-perturbed pass), u_weight 1.0, rampup 0.0 (sigmoid ramp-up of
    u_weight, as a fraction of the run: full weight from step 0 lets an untrained network's confident background
    teach itself away small organs, as on CHAOS-SSL)."""

    name = "unimatch"
    needs_unlabelled = True
    Params = UniMatchParams

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        self.net = self.make_net()
        self.optimizers["net"] = self.sgd(self.net)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label, u = batch["image"], batch["label"], batch["u_image"]
        n, nu = image.shape[0], u.shape[0]
        p = self.params
        with self.autocast(ctx.device):
            out = main_output(self.net(torch.cat([image, u])))
        out_l, out_w = out[:n], out[n:]
        y, ok = weak_pseudo_labels(out_w, p.threshold)  # the weak view alone; no gradient through them
        s1, (y1, ok1) = strong_views.mixed_strong_view(u, (y, ok), p.cutmix_ratio)
        s2, (y2, ok2) = strong_views.mixed_strong_view(u, (y, ok), p.cutmix_ratio)
        with self.autocast(ctx.device):
            out_s = main_output(self.net(torch.cat([s1, s2])))
            with feature_dropout(bottleneck_of(self.net), p.fp_dropout):
                out_fp = main_output(self.net(u))
        sup = dice_ce(out_l, label)
        terms = {"s1": masked_dice_ce(out_s[:nu], y1, ok1), "s2": masked_dice_ce(out_s[nu:], y2, ok2),
                 "fp": masked_dice_ce(out_fp, y, ok)}
        u_weight = p.u_weight * sigmoid_rampup(ctx.step, p.rampup * ctx.total_steps)
        unsup = u_weight * sum(WEIGHTS[k] * v for k, v in terms.items())
        diag = self.gradient_share(sup, unsup, self.net, ctx)
        loss = sup + unsup
        self.optimize(loss, "net")
        return {"loss": float(loss.detach()), "sup": float(sup.detach()), "unsup": float(unsup.detach()),
                "u_weight": u_weight, "confident": float(ok.float().mean()),
                **{f"u_{k}": float(v.detach()) for k, v in terms.items()}, **diag}

    def inference_network(self) -> nn.Module:
        return self.net
