"""Where dropout may act in a segmentation network, written once for the U-Nets.

Two rules: logits are never dropped (a dropped head turns the supervised loss itself into noise: UA-MT's
student on DynUNet's every-conv dropout trained on corrupted logits), and UA-MT's placement (its V-Net:
channel dropout after the bottleneck and before the last stage) is available on any U-Net through hooks.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def remove_dropout(module: nn.Module) -> None:
    """Replace every dropout layer inside ``module`` (e.g. an output block) by an identity."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.dropout._DropoutNd):
            setattr(module, name, nn.Identity())
        else:
            remove_dropout(child)


class BottleneckDropout(nn.Module):
    """Channel dropout on one module's output (the bottleneck) and on another's input (the last stage).

    The hooks are bound methods of this module, so a deepcopy of the network (a mean teacher) gets hooks
    bound to its own copy and its own train/eval mode."""

    def __init__(self, p: float, output_of: nn.Module, input_of: nn.Module):
        super().__init__()
        self.drop = nn.Dropout3d(p)
        output_of.register_forward_hook(self._drop_output)
        input_of.register_forward_pre_hook(self._drop_input)

    def _drop_output(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self.drop(out)

    def _drop_input(self, module: nn.Module, args: tuple) -> tuple:
        return (self.drop(args[0]), *args[1:])


@contextmanager
def feature_dropout(module: nn.Module, p: float):
    """Within the block, channel dropout (always on) on ``module``'s output: UniMatch's feature-perturbed pass on the
    bottleneck (see ``semiseg.networks.bottleneck_of``). The hook is removed on leaving."""
    handle = module.register_forward_hook(lambda m, a, out: torch.nn.functional.dropout3d(out, p, training=True))
    try:
        yield
    finally:
        handle.remove()
