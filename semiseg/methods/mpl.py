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
from typing import Any, Literal

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
    mpl_loss: Literal["ce", "dice_ce"] = "ce"
    feedback_sign: Literal[1, -1] = 1
    warmup_steps: int = 0
    finetune_steps: int = 0
    finetune_lr_restart: bool = False
    student_sup_weight: float = 0.0
    h_baseline_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.finetune_steps < 0:
            raise ValueError(f"mpl: warmup_steps and finetune_steps must be >= 0, got {self.warmup_steps}, {self.finetune_steps}")
        if self.temperature <= 0:
            raise ValueError(f"mpl: temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.h_baseline_decay < 1.0:
            raise ValueError(f"mpl: h_baseline_decay must be in [0, 1), got {self.h_baseline_decay}")


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
      separate supervised run); finetune_lr_restart False (True: the fine-tune gets its own poly LR from
      the base LR instead of the whole run's tail, e.g. 0.24x base falling to 0 over the last 20% of a run;
      off by default so that results keyed before it existed keep their meaning); student_sup_weight 0.0 (> 0: the student
      trains on labelled batches with this weight at every step, warm-up included, as the FLARE22 paper's
      text has it use "the pseudo labels and labeled images"; after a feedback step the labelled step
      comes after h is measured, so the feedback still scores the pseudo-labels alone. 0 is Alg. 1: a weak
      teacher's near-background argmax can then collapse the student, as on CHAOS-SSL CPU);
      h_baseline_decay 0.0 (> 0: the feedback uses h minus a moving average of h with this decay, the
      reference implementation's ``moving_dot_product``, so the teacher is rewarded for pseudo-labels
      better than usual rather than for the student's ordinary progress).
    The UDA term of Pham et al.'s teacher is omitted.
    """

    name = "mpl"
    needs_unlabelled = True
    Params = MPLParams

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        self.teacher = self.make_net()
        self.student = self.make_net()
        self.optimizers["teacher"] = self.sgd(self.teacher)
        self.optimizers["student"] = self.sgd(self.student)
        self.h_baseline = 0.0

    def in_finetune(self, step: int, total: int) -> bool:
        return step >= total - self.params.finetune_steps

    def learning_rate(self, optimizer: str, base: float, step: int, total: int) -> float:
        p = self.params
        if optimizer == "student" and p.finetune_lr_restart and p.finetune_steps and self.in_finetune(step, total):
            start = total - p.finetune_steps
            return super().learning_rate(optimizer, base, step - start, p.finetune_steps)
        return super().learning_rate(optimizer, base, step, total)

    def extra_state(self) -> dict[str, Any]:
        return {"h_baseline": self.h_baseline}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.h_baseline = float(state.get("h_baseline", 0.0))

    def _student_labelled_step(self, image: torch.Tensor, label: torch.Tensor, ctx: StepContext) -> float:
        with self.autocast(ctx.device):
            s_sup = dice_ce(self.student(image), label)
        self.optimize(self.params.student_sup_weight * s_sup, "student")
        return float(s_sup.detach())

    def _student_labelled_loss(self, image: torch.Tensor, label: torch.Tensor, ctx: StepContext) -> float:
        with torch.no_grad(), self.autocast(ctx.device):
            return float(dice_ce(self.student(image), label))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label = batch["image"], batch["label"]
        p = self.params
        if self.in_finetune(ctx.step, ctx.total_steps):
            with self.autocast(ctx.device):
                loss = dice_ce(self.student(image), label)
            self.optimize(loss, "student")
            return {"loss": float(loss.detach()), "student_sup": float(loss.detach())}
        if ctx.step < p.warmup_steps:
            with self.autocast(ctx.device):
                t_sup = dice_ce(self.teacher(image), label)
            self.optimize(t_sup, "teacher")
            out = {"teacher_loss": float(t_sup.detach()), "teacher_sup": float(t_sup.detach())}
            if p.student_sup_weight > 0:  # the kept network learns from labels while the teacher warms up
                out["student_sup"] = self._student_labelled_step(image, label, ctx)
            return out
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
        h_raw = p.feedback_sign * (old - new)
        if p.h_baseline_decay > 0:
            self.h_baseline = p.h_baseline_decay * self.h_baseline + (1 - p.h_baseline_decay) * h_raw
        h = h_raw - self.h_baseline if p.h_baseline_decay > 0 else h_raw
        # 3. teacher: supervised + student feedback
        t_sup = dice_ce(t_l, label)
        t_mpl = mpl_teacher_loss(t_u_logits, h, p.mpl_loss)
        t_loss = p.sup_weight * t_sup + p.mpl_weight * t_mpl
        diag = self.gradient_share(p.sup_weight * t_sup, p.mpl_weight * t_mpl, self.teacher, ctx)  # feedback vs labels
        self.optimize(t_loss, "teacher")
        out = {"loss": float(s_loss.detach()), "teacher_loss": float(t_loss.detach()), "teacher_sup": float(t_sup.detach()),
               "h": h, "h_raw": h_raw, "student_old": old, "student_new": new, **diag}
        if p.student_sup_weight > 0:  # 4. the student's labelled step, after the feedback was measured
            out["student_sup"] = self._student_labelled_step(image, label, ctx)
        return out

    def inference_network(self) -> nn.Module:
        return self.student
