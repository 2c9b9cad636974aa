"""AD-MT, alternate diverse teaching (Zhao et al., ECCV 2024): one student, two EMA teachers updated in turns.

Why: a single EMA teacher drifts with its student and confirms its mistakes. AD-MT keeps two teachers and
updates only one at a time, switching after a random number of steps (random periodic alternation, RPA), so
the teachers are snapshots of different stretches of training and disagree where the student is unsure.
Where they agree (and are confident) the student learns their label; where they conflict, the
conflict-combating module (CCM) picks, per voxel, the teacher with the lower entropy ("confidence", the
paper's entropy-based choice) or the teacher updated last ("latest", an option of the authors' code), and
that region's voxels get ``conflict_weight`` in the one unlabelled loss. The student sees a strong view of the unlabelled batch, CutMix-ed
with another sample; both teachers label the weak view (targets mixed with the same box).
The defaults keep the unlabelled loss at full weight from step 0 with Dice + CE; the authors' LA configuration
(``cfgs/config_3d_la_aut.yml``) ramps a weight of 2 up over 40% of the run (sigmoid) with CE alone on voxels above
0.8: ``{u_weight: 2.0, rampup: 0.4, u_loss: ce, threshold: 0.8}``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from semiseg.data.strong_views import mixed_strong_view
from semiseg.losses import dice_ce, masked_ce, masked_dice_ce
from semiseg.methods.base import Method, StepContext, register
from semiseg.methods.ema import ema_update
from semiseg.methods.params import require_fractions
from semiseg.methods.rampup import sigmoid_rampup
from semiseg.networks import main_output

ConflictMode = Literal["confidence", "latest"]
CONFLICT_MODES = get_args(ConflictMode)
UnlabelledLoss = Literal["dice_ce", "ce"]
UNLABELLED_LOSSES = {"dice_ce": masked_dice_ce, "ce": masked_ce}


def alternation(total_steps: int, period: int, seed: int) -> np.ndarray:
    """Which teacher (0 or 1) is EMA-updated at each step: turns of random length in [1, period], starting with
    teacher 0; a pure function of (total_steps, period, seed), so resuming needs no state."""
    if period < 1:
        raise ValueError(f"ad-mt: alternate_period must be >= 1, got {period}")
    rng = np.random.default_rng([seed, period])
    out = np.empty(total_steps, dtype=np.int8)
    step, who = 0, 0
    while step < total_steps:
        n = int(rng.integers(1, period + 1))
        out[step:step + n] = who
        step, who = step + n, 1 - who
    return out


def teacher_targets(logits1: torch.Tensor, logits2: torch.Tensor, mode: str, latest: int) -> tuple[torch.Tensor, ...]:
    """(labels, confidence, conflict) (each (B, 1, ...)) from two teachers' detached logits: their common label where
    they agree; where they conflict, the lower-entropy teacher's ("confidence") or the last-updated one's ("latest")."""
    p1, p2 = torch.softmax(logits1.detach().float(), 1), torch.softmax(logits2.detach().float(), 1)
    c1, y1 = p1.max(1, keepdim=True)
    c2, y2 = p2.max(1, keepdim=True)
    conflict = y1 != y2
    if mode == "confidence":  # per voxel the lower-entropy teacher, everywhere (its label, where they agree, is the same)
        ent = lambda p: -(p * torch.log(p + 1e-8)).sum(1, keepdim=True)  # noqa: E731
        take2 = ent(p2) < ent(p1)
    elif mode == "latest":  # in conflicts only, as the authors' code
        take2 = torch.full_like(conflict, latest == 1) & conflict
    else:
        raise ValueError(f"ad-mt: conflict_mode must be one of {', '.join(CONFLICT_MODES)}, got '{mode}'")
    return torch.where(take2, y2, y1), torch.where(take2, c2, c1), conflict


@dataclass(frozen=True)
class ADMTParams:
    alternate_period: int = 24
    ema_decay: float = 0.99
    threshold: float = 0.95
    conflict_mode: ConflictMode = "confidence"
    conflict_weight: float = 1.0
    cutmix_ratio: float = 0.5
    u_weight: float = 1.0
    rampup: float = 0.0
    u_loss: UnlabelledLoss = "dice_ce"
    inference: Literal["student", "teacher1", "teacher2"] = "student"

    def __post_init__(self) -> None:
        require_fractions(self, "ad-mt", "threshold", "rampup", "cutmix_ratio", "ema_decay")
        if self.u_weight < 0 or self.conflict_weight < 0:
            raise ValueError(f"ad-mt: u_weight and conflict_weight must be >= 0, got {self.u_weight} and {self.conflict_weight}")


@register
class ADMT(Method):
    """params (defaults): alternate_period 24 (longest turn of a teacher, in steps; the authors' code), ema_decay
    0.99, threshold 0.95, conflict_mode "confidence" | "latest", conflict_weight 1.0, cutmix_ratio 0.5, u_weight 1.0,
    rampup 0.0 (sigmoid ramp-up of u_weight, as a fraction of the run), u_loss "dice_ce" | "ce" (the unlabelled
    loss on the confident voxels), inference "student" | "teacher1" | "teacher2"."""

    name = "ad-mt"
    needs_unlabelled = True
    Params = ADMTParams

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        self.student = self.make_net()
        self.teacher1, self.teacher2 = copy.deepcopy(self.student), copy.deepcopy(self.student)
        for q in [*self.teacher1.parameters(), *self.teacher2.parameters()]:
            q.requires_grad_(False)
        self.optimizers["student"] = self.sgd(self.student)
        self._schedule: np.ndarray | None = None

    def active_teacher(self, ctx: StepContext) -> int:
        if self._schedule is None or len(self._schedule) != ctx.total_steps:
            self._schedule = alternation(ctx.total_steps, int(self.params.alternate_period), int(self.cfg.seed))
        return int(self._schedule[ctx.step])

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label, u = batch["image"], batch["label"], batch["u_image"]
        n, p = image.shape[0], self.params
        active = self.active_teacher(ctx)
        latest = self.active_teacher(StepContext(max(0, ctx.step - 1), ctx.total_steps, ctx.device))
        with torch.no_grad(), self.autocast(ctx.device):
            t1, t2 = main_output(self.teacher1(u)), main_output(self.teacher2(u))
        y, conf, conflict = teacher_targets(t1, t2, p.conflict_mode, latest)
        x_u, (y, conf, conflict) = mixed_strong_view(u, (y, conf, conflict), p.cutmix_ratio)
        ok = conf >= p.threshold
        with self.autocast(ctx.device):
            out = main_output(self.student(torch.cat([image, x_u])))
        sup = dice_ce(out[:n], label)
        # one loss over the confident voxels, conflicting ones weighted conflict_weight (the authors' per-voxel sum)
        weight = (ok & ~conflict).float() + p.conflict_weight * (ok & conflict).float()
        u_weight = p.u_weight * sigmoid_rampup(ctx.step, p.rampup * ctx.total_steps)
        unsup = u_weight * UNLABELLED_LOSSES[p.u_loss](out[n:], y, weight)
        diag = self.gradient_share(sup, unsup, self.student, ctx)
        loss = sup + unsup
        self.optimize(loss, "student")
        ema_update(self.teacher1 if active == 0 else self.teacher2, self.student, p.ema_decay, ctx.step)
        return {"loss": float(loss.detach()), "sup": float(sup.detach()), "unsup": float(unsup.detach()),
                "conflict": float(conflict.float().mean()), "confident": float(ok.float().mean()), "active": float(active), "u_weight": u_weight, **diag}

    def inference_network(self) -> nn.Module:
        return {"student": self.student, "teacher1": self.teacher1, "teacher2": self.teacher2}[self.params.inference]
