"""Cross Pseudo Supervision (Chen et al. 2021) with adaptive loss weight, and DLUNet on top of it.

Two differently initialised networks supervise each other with their argmax pseudo-labels. The
left-atrium CPS/MT paper (sec. VIII, eq. 4) scales the unlabelled CPS term by the mean supervised
Dice of the previous epoch ("adaptive loss weight", ALW), so inaccurate networks teach each other
less. DLUNet (FLARE22) trains two light U-Nets this way on CutMix-ed unlabelled pairs with a
noise-robust loss, and keeps one of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.data.cutmix import box_mask, cutmix
from semiseg.losses import dice_ce, one_hot, soft_dice
from semiseg.methods.base import Method, StepContext, register
from semiseg.methods.mean_teacher import Output, split_output, supervised_loss
from semiseg.methods.params import require_fractions
from semiseg.methods.rampup import sigmoid_rampup
from semiseg.networks import main_output


def cross_pseudo_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, with_dice: bool = False) -> torch.Tensor:
    """CE(a, argmax b) + CE(b, argmax a) (CPS eq. 2), optionally + soft Dice on the same targets.

    Pseudo-labels are hard and carry no gradient, so each network only learns from the other.
    """
    y_a = logits_a.detach().argmax(1)
    y_b = logits_b.detach().argmax(1)
    loss = F.cross_entropy(logits_a.float(), y_b) + F.cross_entropy(logits_b.float(), y_a)
    if with_dice:
        k = logits_a.shape[1]
        loss = loss + soft_dice(torch.softmax(logits_a.float(), 1), one_hot(y_b.unsqueeze(1), k))
        loss = loss + soft_dice(torch.softmax(logits_b.float(), 1), one_hot(y_a.unsqueeze(1), k))
    return loss


def reinitialise(net: nn.Module, scheme: str) -> nn.Module:
    """Re-draw conv weights with ``kaiming`` (He normal, leaky 0.01) or ``xavier`` (normal) init, biases 0:
    CPS needs two differently initialised networks; ``default`` keeps the network's own init."""
    if scheme == "default":
        return net
    for m in net.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0.01)
            elif scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                raise ValueError(f"unknown init '{scheme}' (choose kaiming, xavier, default)")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def supervised_dice(out: Output, label: torch.Tensor) -> float:
    """Soft foreground Dice (1 - the Dice part of the supervised loss): the ALW statistic."""
    logits = main_output(out).detach().float()
    return float(1.0 - soft_dice(torch.softmax(logits, 1), one_hot(label, logits.shape[1])))


class AdaptiveWeight:
    """ALW (CPS/MT left-atrium paper, eq. 4): the unlabelled CPS weight is multiplied by the mean
    supervised Dice over the previous epoch's steps. Before the first epoch ends there is no such
    Dice; ``initial`` (0 by default: the networks are not yet trusted) stands in for it."""

    def __init__(self, initial: float = 0.0):
        self.value = float(initial)
        self.total = 0.0
        self.count = 0

    def observe(self, dice: float) -> None:
        self.total += dice
        self.count += 1

    def end_epoch(self) -> None:
        if self.count:
            self.value = self.total / self.count
        self.total, self.count = 0.0, 0

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "total": self.total, "count": self.count}

    def load(self, state: dict[str, Any]) -> None:
        self.value, self.total, self.count = float(state["value"]), float(state["total"]), int(state["count"])


@dataclass(frozen=True)
class CPSParams:
    cps_weight: float = 0.1
    rampup: float = 1.0
    cps_dice: bool = False
    cps_on_labelled: bool = True
    adaptive_weight: bool = False
    alw_initial: float = 0.0
    init: list[Literal["kaiming", "xavier", "default"]] = field(default_factory=lambda: ["kaiming", "xavier"])
    sup_loss: Literal["dice_ce", "dice_ce_lovasz"] = "dice_ce"
    inference: Literal[1, 2] = 1

    def __post_init__(self) -> None:
        if len(self.init) != 2:
            raise ValueError(f"cps: init names one scheme per network (2), got {list(self.init)}")


@dataclass(frozen=True)
class DLUNetParams(CPSParams):
    cps_weight: float = 1.0
    cps_on_labelled: bool = False
    cutmix_ratio: float = 0.5
    robust_after: float = 0.0
    light_arch: Literal["light_unet", "light_res_unet", "plan"] = "light_unet"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_fractions(self, "dlunet", "robust_after")


@register
class CPS(Method):
    """Two networks, each: dice_ce on labels + lambda * ramp * cross pseudo-label CE from the other.

    params (defaults):
      cps_weight 0.1 (lambda) with rampup 1.0 (sigmoid ramp-up over the whole run, as a fraction of
      training): the 3D left-atrium CPS code lineage (SSL4MIS) uses these; 1.5 (Chen et al.'s 2D VOC
      value) ramped over 10% made both networks agree on all-background within 25 steps on ChaosT2,
      where argmax pseudo-labels of untrained networks are background almost everywhere;
      cps_dice False (add soft Dice to the pseudo-label CE); cps_on_labelled True (CPS also
      on labelled images, as Chen et al.); adaptive_weight False (ALW); alw_initial 0.0 (ALW factor
      during the first epoch); init ["kaiming", "xavier"] (init of net1, net2; "default" keeps the
      network's own); sup_loss "dice_ce" | "dice_ce_lovasz"; inference 1 | 2 (kept network).
    With ALW: loss = L_s + lambda * ramp * (L_cps(labelled) + Dice_prev * L_cps(unlabelled)).
    """

    name = "cps"
    needs_unlabelled = True
    Params = CPSParams

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        init1, init2 = self.params.init
        self.net1 = reinitialise(self.make_net(), init1)
        self.net2 = reinitialise(self.make_net(), init2)
        self.optimizers["net1"] = self.sgd(self.net1)
        self.optimizers["net2"] = self.sgd(self.net2)
        self.alw = AdaptiveWeight(self.params.alw_initial)

    def cps_weight(self, ctx: StepContext) -> float:
        return self.params.cps_weight * sigmoid_rampup(ctx.step, self.params.rampup * ctx.total_steps)

    def unlabelled_factor(self) -> float:
        return self.alw.value if self.params.adaptive_weight else 1.0

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label, u_image = batch["image"], batch["label"], batch["u_image"]
        n = image.shape[0]
        x = torch.cat([image, u_image])
        with self.autocast(ctx.device):
            out1, out2 = self.net1(x), self.net2(x)
        (l1, u1), (l2, u2) = split_output(out1, n), split_output(out2, n)
        kind = self.params.sup_loss
        sup = supervised_loss(l1, label, kind) + supervised_loss(l2, label, kind)
        with_dice = self.params.cps_dice
        cps_u = cross_pseudo_loss(main_output(u1), main_output(u2), with_dice)
        cps_l = cross_pseudo_loss(main_output(l1), main_output(l2), with_dice) if self.params.cps_on_labelled else sup.new_zeros(())
        return self.combine_and_step(sup, cps_l, cps_u, l1, l2, label, ctx)

    def combine_and_step(self, sup: torch.Tensor, cps_l: torch.Tensor, cps_u: torch.Tensor, l1: Output, l2: Output,
                         label: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        """Shared by CPS and DLUNet: weight the cross terms (ramp-up x ALW), step both nets, log."""
        w, factor = self.cps_weight(ctx), self.unlabelled_factor()
        loss = sup + w * (cps_l + factor * cps_u)
        diag = self.gradient_share(sup, w * (cps_l + factor * cps_u), self.net1, ctx)
        self.optimize(loss, "net1", "net2")
        dice = 0.5 * (supervised_dice(l1, label) + supervised_dice(l2, label))
        self.alw.observe(dice)
        return {"loss": float(loss.detach()), "sup": float(sup.detach()), "cps_u": float(cps_u.detach()),
                "cps_w": w, "alw": factor, "sup_dice": dice, **diag}

    def on_epoch_end(self, ctx: StepContext) -> None:
        self.alw.end_epoch()

    def extra_state(self) -> dict[str, Any]:
        return {"alw": self.alw.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "alw" in state:
            self.alw.load(state["alw"])

    def inference_network(self) -> nn.Module:
        return self.net1 if self.params.inference == 1 else self.net2


@register
class DLUNet(CPS):
    """DLUNet: CPS between two light U-Nets on CutMix-ed unlabelled pairs, with the robust loss.

    Pseudo-labels come from each net on the unmixed unlabelled images (no gradient); sample i is mixed
    with sample i+1 of the unlabelled batch (a batch of 1 mixes with itself: no mixing) and both
    pseudo-label maps with the same box (eq. 4); each net then learns the other's mixed map (eq. 5).
    Loss: DLUNet's table 2 trains with NRD + TCE throughout; ``robust_after`` (fraction of training,
    default 0.0 = the paper) allows a dice_ce warm-up before switching. Only net 1 is kept.

    params: as cps, with defaults cps_weight 1.0, cps_on_labelled False (eq. 5 is unlabelled only),
    cutmix_ratio 0.5 (box volume fraction), robust_after 0.0, init ["kaiming", "xavier"], light_arch "light_unet"
    ("light_res_unet": the light net laid out as the CPU-tier res_unet, off full resolution, ~10x cheaper on CPU;
    "plan": the plan's network, so DLUNet's training is measured apart from its light nets' capacity).
    """

    name = "dlunet"
    Params = DLUNetParams
    own_network_fields = ("arch",)

    def network_overrides(self) -> dict[str, Any]:
        """Both nets (and so the kept one) are the light U-Net, or the plan's with ``light_arch: plan``: CPS.__init__
        builds them with these fields."""
        return {} if self.params.light_arch == "plan" else {"arch": self.params.light_arch}

    def seg_loss(self, out: Output, label: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if ctx.progress < self.params.robust_after:
            return dice_ce(out, label)
        from semiseg.losses.robust import robust_loss

        return robust_loss(main_output(out), label)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        image, label, u_image = batch["image"], batch["label"], batch["u_image"]
        n = image.shape[0]
        with torch.no_grad(), self.autocast(ctx.device):
            y1 = main_output(self.net1(u_image)).argmax(1, keepdim=True)
            y2 = main_output(self.net2(u_image)).argmax(1, keepdim=True)
        mask = box_mask(u_image.shape[2:], self.params.cutmix_ratio, device=u_image.device)
        partner = torch.roll(torch.arange(u_image.shape[0], device=u_image.device), -1)
        x_mix = cutmix(u_image, u_image[partner], mask)
        y1_mix, y2_mix = cutmix(y1, y1[partner], mask), cutmix(y2, y2[partner], mask)
        x = torch.cat([image, x_mix])
        with self.autocast(ctx.device):
            out1, out2 = self.net1(x), self.net2(x)
        (l1, u1), (l2, u2) = split_output(out1, n), split_output(out2, n)
        sup = self.seg_loss(l1, label, ctx) + self.seg_loss(l2, label, ctx)
        cps_u = self.seg_loss(u1, y2_mix, ctx) + self.seg_loss(u2, y1_mix, ctx)
        cps_l = cross_pseudo_loss(main_output(l1), main_output(l2), self.params.cps_dice) if self.params.cps_on_labelled else sup.new_zeros(())
        return self.combine_and_step(sup, cps_l, cps_u, l1, l2, label, ctx)
