"""Plain supervised training (the lower and upper bounds of every comparison, and the fold models)."""
from __future__ import annotations

import torch
from torch import nn

from semiseg.losses import dice_ce
from semiseg.methods.base import Method, StepContext, register


@register
class Supervised(Method):
    """Dice + CE on labelled (and pseudo-labelled) patches.

    params: only every method's network {} (NetworkConfig fields replacing the plan's, e.g. {arch: light_res_unet}
    or {dropout: 0.5, dropout_at: bottleneck}): the supervised baseline of a method that trains another network or
    regularisation, so that "method - baseline" measures the unlabelled data, not the architecture."""

    name = "supervised"

    def __init__(self, make_net, num_classes, params, train_cfg):
        super().__init__(make_net, num_classes, params, train_cfg)
        self.net = self.make_net()
        self.optimizers["net"] = self.sgd(self.net)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        with self.autocast(ctx.device):
            out = self.net(batch["image"])
        loss = dice_ce(out, batch["label"])
        self.optimize(loss, "net")
        return {"loss": float(loss.detach())}

    def inference_network(self) -> nn.Module:
        return self.net
