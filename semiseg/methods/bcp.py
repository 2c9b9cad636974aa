"""BCP, bidirectional copy-paste (Bai et al., CVPR 2023), on a mean teacher.

Why it works where plain consistency is weak on few labels: the labelled and unlabelled images are
mixed in both directions with one box, so the network learns the pseudo-labelled content *in the
context of* labelled content and vice versa, and the empirical distributions of labelled and
unlabelled data are pulled together. Phase 1 (the first ``pretrain`` fraction of the steps) trains the
student on labelled pairs copy-pasted into each other; phase 2 copies the student into the EMA teacher,
whose pseudo-labels (largest component per class, as the paper's LA code) supervise

    x_in  = labelled a outside the box, unlabelled u1 inside  ->  labels of a outside, pseudo-labels of u1 inside
    x_out = unlabelled u2 outside the box, labelled b inside  ->  pseudo-labels of u2 outside, labels of b inside

with the pseudo-labelled voxels weighted ``u_weight`` (the paper's alpha, 0.5). a, b (u1, u2) are the two
halves of the labelled (unlabelled) batch, as in the paper's code; the box has sides 2/3 of the patch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from semiseg.data.cutmix import box_mask, cutmix
from semiseg.losses import dice_ce, masked_dice_ce
from semiseg.methods.base import Method, StepContext, register
from semiseg.methods.ema import ema_update
from semiseg.networks import main_output


def largest_component_per_class(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, Z, Y, X) label maps with every foreground class cut to its largest 26-connected component."""
    from semiseg.postprocess import LargestComponent

    step = LargestComponent(labels={"background": 0, **{f"class_{k}": k for k in range(1, num_classes)}})
    out = np.stack([step(m[0], (1.0, 1.0, 1.0))[None] for m in labels.cpu().numpy().astype(np.int16)])
    return torch.from_numpy(out).to(labels.device, labels.dtype)


@dataclass(frozen=True)
class BCPParams:
    pretrain: float = 0.12
    u_weight: float = 0.5
    box_ratio: float = 8 / 27
    ema_decay: float = 0.99
    largest_component: bool = True
    inference: Literal["student", "teacher"] = "student"

    def __post_init__(self) -> None:
        if not 0.0 <= self.pretrain < 1.0:
            raise ValueError(f"bcp: pretrain must be a fraction in [0, 1), got {self.pretrain}")
        if not 0.0 < self.box_ratio < 1.0:
            raise ValueError(f"bcp: box_ratio must lie in (0, 1), got {self.box_ratio}")


@register
class BCP(Method):
    """params (defaults): pretrain 0.12 (fraction of the steps spent on labelled copy-paste; the paper's LA run:
    2000 of 17000 iterations), u_weight 0.5, box_ratio 8/27 (box volume fraction: sides 2/3 of the patch),
    ema_decay 0.99, largest_component True (pseudo-labels cut to each class's largest component),
    inference "student" | "teacher". Needs labelled and unlabelled batches of at least 2 (two halves each)."""

    name = "bcp"
    needs_unlabelled = True
    Params = BCPParams

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        self.student = self.make_net()
        self.teacher = copy.deepcopy(self.student)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.optimizers["student"] = self.sgd(self.student)

    def pretrain_steps(self, ctx: StepContext) -> int:
        return int(round(self.params.pretrain * ctx.total_steps))

    def box(self, x: torch.Tensor) -> torch.Tensor:
        return box_mask(x.shape[2:], self.params.box_ratio, device=x.device)

    @torch.no_grad()
    def pseudo_labels(self, u: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The teacher's hard labels of unmixed unlabelled images (never the mixed ones)."""
        with self.autocast(ctx.device):
            labels = main_output(self.teacher(u)).argmax(1, keepdim=True)
        return largest_component_per_class(labels, self.num_classes) if self.params.largest_component else labels

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label = batch["image"], batch["label"]
        h = image.shape[0] // 2
        if h < 1:
            raise ValueError("bcp needs a labelled batch of at least 2 (it pastes one half into the other)")
        a, b, la, lb = image[:h], image[h:2 * h], label[:h], label[h:2 * h]
        start = self.pretrain_steps(ctx)
        if ctx.step < start:  # phase 1: labelled copy-paste (b inside the box, a outside)
            box = self.box(image)
            with self.autocast(ctx.device):
                out = self.student(cutmix(b, a, box))
            loss = dice_ce(out, cutmix(lb, la, box))
            self.optimize(loss, "student")
            return {"loss": float(loss.detach()), "pretrain": 1.0}
        if ctx.step == start:  # phase 2 starts from the pre-trained student in both roles
            self.teacher.load_state_dict(self.student.state_dict())
        u = batch["u_image"]
        hu = u.shape[0] // 2
        if hu < h:
            raise ValueError(f"bcp needs an unlabelled batch of at least the labelled one ({2 * h}), got {u.shape[0]}")
        u1, u2 = u[:h], u[hu:hu + h]
        p1, p2 = self.pseudo_labels(u1, ctx), self.pseudo_labels(u2, ctx)
        box = self.box(image)
        x_in, y_in = cutmix(u1, a, box), cutmix(p1, la, box)  # labelled a around an unlabelled crop
        x_out, y_out = cutmix(b, u2, box), cutmix(lb, p2, box)  # unlabelled u2 around a labelled crop
        with self.autocast(ctx.device):
            out = main_output(self.student(torch.cat([x_in, x_out])))
        o_in, o_out = out[:h], out[h:]
        sup = masked_dice_ce(o_in, y_in, ~box) + masked_dice_ce(o_out, y_out, box)  # where the labels show
        unsup = self.params.u_weight * (masked_dice_ce(o_in, y_in, box) + masked_dice_ce(o_out, y_out, ~box))
        diag = self.gradient_share(sup, unsup, self.student, ctx)
        loss = sup + unsup
        self.optimize(loss, "student")
        ema_update(self.teacher, self.student, self.params.ema_decay, ctx.step - start)
        fg = float((torch.cat([p1, p2]) > 0).float().mean())
        return {"loss": float(loss.detach()), "sup": float(sup.detach()), "unsup": float(unsup.detach()), "pseudo_fg": fg, **diag}

    def inference_network(self) -> nn.Module:
        return self.student if self.params.inference == "student" else self.teacher
