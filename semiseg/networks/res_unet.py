"""The CPU-tier U-Net: MONAI's ``UNet`` with a strided first stage and residual units.

Why beside the nnU-Net-style DynUNet: its first conv already halves the resolution, so no stage runs
at full resolution except the input conv and the last transposed conv. On 2 CPU cores that makes a
step ~6x cheaper than DynUNet at equal widths (benchmarks/results/step_bench_cpu.md) at the same
Dice on LA (issue 15's plain-loop measurement). Chosen in the plan (``network.arch: res_unet``).

Mapping from our NetworkConfig convention (one entry per stage, the first stage's stride [1, 1, 1]):
``features[i]`` is made by a unit of stride ``strides[i + 1]`` and the last (bottom) unit has stride
1, so the total downsampling per axis equals the DynUNet plan's. Kernels are 3 in every unit
(``network.kernels`` is not used). Nothing in the top stage (the transposed conv to K channels and the
residual unit whose skip adds it to the head) is dropped, so logits never are. No deep supervision.
"""
from __future__ import annotations

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

from semiseg.config import NetworkConfig
from semiseg.networks.dropout import BottleneckDropout, remove_dropout
from semiseg.networks.unet import default_topology

NUM_RES_UNITS = 1


def bottom_unit(model: nn.Sequential) -> nn.Module:
    """The innermost (bottleneck) unit of a MONAI UNet: Sequential(down, SkipConnection(inner), up) nests."""
    node: nn.Module = model
    while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        node = node[1].submodule
    return node


class ResUNet(nn.Module):
    def __init__(self, cfg: NetworkConfig, in_channels: int, num_classes: int):
        super().__init__()
        if cfg.deep_supervision:
            raise ValueError("network.arch res_unet has no deep supervision; set network.deep_supervision to false")
        strides = cfg.strides or default_topology(len(cfg.features))[1]
        if len(strides) != len(cfg.features) or len(cfg.features) < 2:
            raise ValueError("network.features and network.strides must have one entry per stage (at least 2 stages)")
        placement = "blocks" if cfg.dropout_at == "auto" else cfg.dropout_at
        if placement not in ("blocks", "bottleneck"):
            raise ValueError(f"network.dropout_at must be auto, blocks or bottleneck, got '{cfg.dropout_at}'")
        self.net = UNet(
            spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=tuple(cfg.features),
            strides=tuple(tuple(int(v) for v in s) for s in strides[1:]), num_res_units=NUM_RES_UNITS, norm="instance",
            dropout=cfg.dropout if cfg.dropout > 0 and placement == "blocks" else 0.0,
        )
        # The top stage (transposed conv to K channels, then a residual unit whose skip adds that conv's output to
        # the head's) carries its values straight into the logits, so no dropout may act inside it.
        top = self.net.model[-1]
        remove_dropout(top)
        # UA-MT's placement: channel dropout on the bottleneck's output and on the top stage's input features
        self.drop = (BottleneckDropout(cfg.dropout, bottom_unit(self.net.model), top)
                     if cfg.dropout > 0 and placement == "bottleneck" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
