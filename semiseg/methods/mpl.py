"""Meta Pseudo Labels (Pham et al. 2021), first-order form, as in the FLARE22 3D U-Net paper (Alg. 1).

The teacher labels unlabelled patches; the student takes one SGD step on those pseudo-labels; the
teacher is then rewarded by how much that step helped the student on labelled data:

    h = L_s(labelled, before) - L_s(labelled, after)      (> 0: the pseudo-labels helped)
    teacher loss = L_sup(teacher, labelled) + h * CE(teacher logits on u, its hard pseudo-label)

h is Pham et al.'s first-order approximation of eta_S * grad L_l(theta'_S) . grad CE(y_hat, S(x_u)).
Sign: Alg. 1 line 10 of the FLARE22 paper prints (L_new - L_old), copied from a PyTorch port; with
it a helpful pseudo-label would be *un*learned. We follow Pham et al.'s derivation (old - new);
``feedback_sign`` -1 reproduces the printed form. Both losses on labelled data are computed the same
way (a no-grad student forward before and after the step), so h = 0 exactly when the student does
not move. No model is copied per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.losses import dice_ce, soft_dice
from semiseg.methods.base import Method, StepContext, register
from semiseg.methods.mean_teacher import split_output
from semiseg.networks import main_output


def soft_dice_ce(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Dice + CE against soft targets (B, K, ...): the student's loss on soft pseudo-labels."""
    logits = logits.float()
    return F.cross_entropy(logits, target_probs) + soft_dice(torch.softmax(logits, 1), target_probs)


def mpl_teacher_loss(teacher_u_logits: torch.Tensor, h: float, kind: str = "ce") -> torch.Tensor:
    """h * L(teacher logits, own hard pseudo-label): the student-feedback term of the teacher.

    Its gradient is h * grad log-likelihood of the pseudo-labels: reinforce them when the student's
    labelled loss fell (h > 0), push away from them when it rose. ``kind`` "dice_ce" uses the
    FLARE22 paper's segmentation loss instead of Pham et al.'s CE.
    """
    y_hat = teacher_u_logits.detach().argmax(1)
    if kind == "ce":
        return h * F.cross_entropy(teacher_u_logits.float(), y_hat)
    if kind == "dice_ce":
        return h * dice_ce(teacher_u_logits, y_hat.unsqueeze(1))
    raise ValueError(f"unknown mpl_loss '{kind}' (choose ce, dice_ce)")


@dataclass(frozen=True)
class MPLParams:
    pseudo: Literal["hard", "soft"] = "hard"
    temperature: float = 1.0
    sup_weight: float = 1.0
    mpl_weight: float = 1.0
    mpl_loss: str = "ce"
    feedback_sign: int = 1
    warmup_steps: int = 0
    finetune_steps: int = 0
    student_sup_weight: float = 0.0


@register
class MetaPseudoLabels(Method):
    """Teacher + student U-Nets; the student is kept.

    params (defaults):
      pseudo "hard" | "soft" (student's targets: teacher argmax, or teacher softmax / temperature);
      temperature 1.0 (soft only); sup_weight 1.0 (teacher's supervised term); mpl_weight 1.0
      (student-feedback term); mpl_loss "ce" | "dice_ce"; feedback_sign 1 (h = old - new; -1 = as the
      FLARE22 paper prints it); warmup_steps 0 (the first N steps train only the teacher, on labelled
      data: the FLARE22 paper first trains the teacher on the labelled cases, so the student does not
      start from an untrained teacher's all-background argmax); finetune_steps 0 (the last N steps
      train the student on labelled data only, Pham et al.'s final fine-tuning; 0 leaves it to a
      separate supervised run); student_sup_weight 0.0 (> 0: after each feedback step the student also
      takes a step on the labelled batch with this weight, as the FLARE22 paper's text has the student
      use "the pseudo labels and labeled images"; the step comes after h is measured, so the feedback
      still scores the pseudo-labels alone. 0 is Alg. 1: a weak teacher's near-background argmax can
      then collapse the student, as on CHAOS-SSL CPU).
    The UDA term of Pham et al.'s teacher is omitted.
    """

    name = "mpl"
    needs_unlabelled = True
    Params = MPLParams

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        self.teacher = make_net()
        self.student = make_net()
        self.optimizers["teacher"] = self.sgd(self.teacher)
        self.optimizers["student"] = self.sgd(self.student)

    def _student_labelled_loss(self, image: torch.Tensor, label: torch.Tensor, ctx: StepContext) -> float:
        with torch.no_grad(), self.autocast(ctx.device):
            return float(dice_ce(self.student(image), label))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label = batch["image"], batch["label"]
        p = self.params
        if ctx.step >= ctx.total_steps - p.finetune_steps:
            with self.autocast(ctx.device):
                loss = dice_ce(self.student(image), label)
            self.optimize(loss, "student")
            return {"loss": float(loss.detach()), "student_sup": float(loss.detach())}
        if ctx.step < p.warmup_steps:
            with self.autocast(ctx.device):
                t_sup = dice_ce(self.teacher(image), label)
            self.optimize(t_sup, "teacher")
            return {"teacher_loss": float(t_sup.detach()), "teacher_sup": float(t_sup.detach())}
        u_image = batch["u_image"]
        n = image.shape[0]
        # 1. teacher on labelled + unlabelled; its pseudo-labels carry no gradient to the student
        with self.autocast(ctx.device):
            t_out = self.teacher(torch.cat([image, u_image]))
        t_l, t_u = split_output(t_out, n)
        t_u_logits = main_output(t_u)
        # 2. one student step on the pseudo-labels, its labelled loss measured before and after
        old = self._student_labelled_loss(image, label, ctx)
        with self.autocast(ctx.device):
            s_u = self.student(u_image)
        if p.pseudo == "hard":
            s_loss = dice_ce(s_u, t_u_logits.detach().argmax(1, keepdim=True))
        else:
            target = torch.softmax(t_u_logits.detach().float() / p.temperature, 1)
            s_loss = soft_dice_ce(main_output(s_u), target)
        self.optimize(s_loss, "student")
        new = self._student_labelled_loss(image, label, ctx)
        h = p.feedback_sign * (old - new)
        # 3. teacher: supervised + student feedback
        t_sup = dice_ce(t_l, label)
        t_mpl = mpl_teacher_loss(t_u_logits, h, p.mpl_loss)
        t_loss = p.sup_weight * t_sup + p.mpl_weight * t_mpl
        diag = self.gradient_share(p.sup_weight * t_sup, p.mpl_weight * t_mpl, self.teacher, ctx)  # feedback vs labels
        self.optimize(t_loss, "teacher")
        out = {"loss": float(s_loss.detach()), "teacher_loss": float(t_loss.detach()), "teacher_sup": float(t_sup.detach()),
               "h": h, "student_old": old, "student_new": new, **diag}
        if p.student_sup_weight > 0:  # 4. optional labelled step of the student, after the feedback was measured
            with self.autocast(ctx.device):
                s_sup = dice_ce(self.student(image), label)
            self.optimize(p.student_sup_weight * s_sup, "student")
            out["student_sup"] = float(s_sup.detach())
        return out

    def inference_network(self) -> nn.Module:
        return self.student
