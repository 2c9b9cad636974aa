"""Mean Teacher (Tarvainen & Valpola 2017) and its uncertainty-aware variant UA-MT (Yu et al. 2019).

The student learns from labels and from agreeing with an EMA teacher that sees a noisy copy of the
same images; UA-MT only asks for agreement where the teacher is certain (low MC-dropout entropy).
This module also holds the small pieces the other semi-supervised methods share
(:func:`supervised_loss`, :func:`split_output`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from semiseg.losses import dice_ce
from semiseg.methods.base import Method, StepContext, register
from semiseg.methods.ema import ema_update
from semiseg.methods.rampup import sigmoid_rampup
from semiseg.networks import main_output

Output = torch.Tensor | list[torch.Tensor]


# -- pieces shared by the semi-supervised methods ---------------------------------------------------
def split_output(out: Output, n: int) -> tuple[Output, Output]:
    """Split a network output on a concatenated (labelled, unlabelled) batch at sample ``n``.

    Works for a logits tensor and for a deep-supervision list alike.
    """
    if isinstance(out, (list, tuple)):
        return [o[:n] for o in out], [o[n:] for o in out]
    return out[:n], out[n:]


def supervised_loss(out: Output, label: torch.Tensor, kind: str = "dice_ce") -> torch.Tensor:
    """``dice_ce`` (nnU-Net) or ``dice_ce_lovasz`` (+ Lovasz-Softmax on the full-resolution output,
    the CPS/MT left-atrium paper's boundary novelty)."""
    loss = dice_ce(out, label)
    if kind == "dice_ce":
        return loss
    if kind == "dice_ce_lovasz":
        from semiseg.losses.lovasz import lovasz_softmax

        return loss + lovasz_softmax(torch.softmax(main_output(out).float(), 1), label)
    raise ValueError(f"unknown sup_loss '{kind}' (choose dice_ce, dice_ce_lovasz)")


def input_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    """x + clamp(N(0, 1) * std, -2 std, 2 std): the teacher's input perturbation in UA-MT."""
    if std <= 0:
        return x
    return x + torch.clamp(torch.randn_like(x) * std, -2 * std, 2 * std)


def consistency_map(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Voxel- and class-wise consistency (B, K, ...): squared softmax difference, or the terms of
    KL(teacher || student). The teacher side carries no gradient."""
    s = student_logits.float()
    t = teacher_logits.detach().float()
    if kind == "mse":
        return (torch.softmax(s, 1) - torch.softmax(t, 1)) ** 2
    if kind == "kl":
        p_t = torch.softmax(t, 1)
        return p_t * (torch.log_softmax(t, 1) - torch.log_softmax(s, 1))
    raise ValueError(f"unknown consistency '{kind}' (choose mse, kl)")


# -- UA-MT's uncertainty ----------------------------------------------------------------------------
@torch.no_grad()
def mc_entropy(
    net: Callable[[torch.Tensor], Output], x: torch.Tensor, passes: int = 8, noise_std: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive entropy (B, 1, ...) and mean softmax (B, K, ...) over ``passes`` stochastic passes.

    Each pass adds fresh clamped Gaussian input noise; dropout is stochastic when ``net`` is in train
    mode (call it that way, as UA-MT does). u = -sum_c mu_c log(mu_c + 1e-6), mu = mean of softmaxes.
    """
    mean = None
    for _ in range(passes):
        p = torch.softmax(main_output(net(input_noise(x, noise_std))).float(), 1)
        mean = p if mean is None else mean + p
    assert mean is not None, "passes must be >= 1"
    mean = mean / passes
    entropy = -(mean * torch.log(mean + 1e-6)).sum(1, keepdim=True)
    return entropy, mean


def ua_threshold(step: float, rampup_length: float, num_classes: int) -> float:
    """UA-MT's entropy threshold (0.75 + 0.25 * sigmoid_rampup(step, length)) * ln K: starts strict,
    ends at the maximum entropy ln K (then every voxel counts)."""
    return (0.75 + 0.25 * sigmoid_rampup(step, rampup_length)) * math.log(num_classes)


def masked_consistency(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(mask * dist) / (K * sum(mask) + 1e-16): mean over classes and certain voxels (UA-MT code)."""
    mask = mask.to(dist.dtype)
    return (mask * dist).sum() / (dist.shape[1] * mask.sum() + 1e-16)


# -- the methods --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanTeacherParams:
    ema_decay: float = 0.99
    consistency: float = 0.1
    consistency_type: Literal["mse", "kl"] = "mse"
    rampup: float = 1.0
    noise_std: float = 0.1
    dropout: float = 0.0
    dropout_at: Literal["auto", "blocks", "bottleneck"] = "auto"
    sup_loss: Literal["dice_ce", "dice_ce_lovasz"] = "dice_ce"
    inference: Literal["student", "teacher"] = "student"


@dataclass(frozen=True)
class UAMTParams(MeanTeacherParams):
    dropout: float = 0.5
    passes: int = 8
    threshold_rampup: float = 1.0


@register
class MeanTeacher(Method):
    """Student trained on labels + a ramped consistency to an EMA teacher; the teacher gets no gradient.

    params (defaults):
      ema_decay 0.99; consistency 0.1 (max weight); consistency_type "mse" | "kl";
      rampup 1.0 (sigmoid ramp-up length as a fraction of training, UA-MT code ramps over the run);
      noise_std 0.1 (teacher input noise, clamped at +-2 std); dropout 0.0 (both networks); dropout_at
      "auto" (NetworkConfig.dropout_at: "bottleneck" puts a U-Net's dropout where UA-MT's V-Net has it);
      sup_loss "dice_ce" | "dice_ce_lovasz"; inference "student" | "teacher".
    Consistency is taken on the labelled and unlabelled images together (Yu et al.'s code).
    """

    name = "mean-teacher"
    needs_unlabelled = True
    Params = MeanTeacherParams
    own_network_fields = ("dropout", "dropout_at")

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        self.student = self.make_net()
        self.teacher = copy.deepcopy(self.student)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.optimizers["student"] = self.sgd(self.student)

    def network_overrides(self) -> dict[str, Any]:
        """Student and teacher carry the method's dropout, so the kept network's recorded config does too."""
        return {"dropout": self.params.dropout, "dropout_at": self.params.dropout_at}

    def consistency_weight(self, ctx: StepContext) -> float:
        return self.params.consistency * sigmoid_rampup(ctx.step, self.params.rampup * ctx.total_steps)

    def consistency_loss(self, x: torch.Tensor, student_logits: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean consistency to one noisy teacher pass; UA-MT overrides this with its masked version."""
        with torch.no_grad(), self.autocast(ctx.device):
            teacher_logits = main_output(self.teacher(input_noise(x, self.params.noise_std)))
        dist = consistency_map(student_logits, teacher_logits, self.params.consistency_type)
        return dist.sum(1).mean() if self.params.consistency_type == "kl" else dist.mean(), {}

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label, u_image = batch["image"], batch["label"], batch["u_image"]
        x = torch.cat([image, u_image])
        with self.autocast(ctx.device):
            out = self.student(x)
        out_l, _ = split_output(out, image.shape[0])
        sup = supervised_loss(out_l, label, self.params.sup_loss)
        cons, info = self.consistency_loss(x, main_output(out), ctx)
        w = self.consistency_weight(ctx)
        loss = sup + w * cons
        diag = self.gradient_share(sup, w * cons, self.student, ctx)
        self.optimize(loss, "student")
        ema_update(self.teacher, self.student, self.params.ema_decay, ctx.step)
        return {"loss": float(loss.detach()), "sup": float(sup.detach()), "cons": float(cons.detach()), "cons_w": w, **info, **diag}

    def inference_network(self) -> nn.Module:
        return self.student if self.params.inference == "student" else self.teacher


@register
class UAMT(MeanTeacher):
    """UA-MT: consistency only on voxels whose teacher MC entropy is below a ramped threshold.

    params: as mean-teacher, with defaults passes 8 (T), dropout 0.5 (UA-MT's V-Net; with arch
    "unet" DynUNet drops after every conv unless dropout_at is "bottleneck", so consider less),
    threshold_rampup 1.0 (fraction of training over which the threshold rises from 0.75 ln K to ln K).
    """

    name = "ua-mt"
    Params = UAMTParams

    def consistency_loss(self, x: torch.Tensor, student_logits: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        p = self.params
        with torch.no_grad(), self.autocast(ctx.device):
            teacher_logits = main_output(self.teacher(input_noise(x, p.noise_std)))
            entropy, _ = mc_entropy(self.teacher, x, p.passes, p.noise_std)
        threshold = ua_threshold(ctx.step, p.threshold_rampup * ctx.total_steps, self.num_classes)
        mask = entropy < threshold
        dist = consistency_map(student_logits, teacher_logits, p.consistency_type)
        return masked_consistency(dist, mask), {"certain": float(mask.float().mean()), "threshold": threshold}
