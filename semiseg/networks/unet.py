"""nnU-Net-style 3D U-Net (MONAI DynUNet): instance norm, leaky ReLU, per-stage kernels and strides."""
from __future__ import annotations

import torch
from monai.networks.nets import DynUNet
from torch import nn

from semiseg.config import NetworkConfig
from semiseg.networks.dropout import BottleneckDropout, remove_dropout


def default_topology(n_stages: int) -> tuple[list[list[int]], list[list[int]]]:
    kernels = [[3, 3, 3]] * n_stages
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1)
    return kernels, strides


class UNet(nn.Module):
    """Thin wrapper so every network in semiseg follows the same output convention."""

    def __init__(self, cfg: NetworkConfig, in_channels: int, num_classes: int):
        super().__init__()
        kernels, strides = cfg.kernels, cfg.strides
        if not kernels:
            kernels, strides = default_topology(len(cfg.features))
        if not (len(kernels) == len(strides) == len(cfg.features)):
            raise ValueError("network.features, network.kernels and network.strides must have one entry per stage")
        self.deep_supervision = cfg.deep_supervision
        placement = "blocks" if cfg.dropout_at == "auto" else cfg.dropout_at
        if placement not in ("blocks", "bottleneck"):
            raise ValueError(f"network.dropout_at must be auto, blocks or bottleneck, got '{cfg.dropout_at}'")
        self.net = DynUNet(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=num_classes,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=list(cfg.features),
            dropout=cfg.dropout if cfg.dropout > 0 and placement == "blocks" else None,
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            deep_supervision=cfg.deep_supervision,
            deep_supr_num=max(1, min(2, len(cfg.features) - 2)),
            res_block=False,
        )
        # logits are never dropped: DynUNet puts its element-wise dropout in the 1x1 output convs too
        remove_dropout(self.net.output_block)
        if cfg.deep_supervision:
            remove_dropout(self.net.deep_supervision_heads)
        # SSL4MIS placement (UA-MT's V-Net): channel dropout on the bottleneck's output and on the head's input.
        # DynUNet nests its bottleneck inside skip layers, so hooks apply it.
        self.drop = (BottleneckDropout(cfg.dropout, self.net.bottleneck, self.net.output_block)
                     if cfg.dropout > 0 and placement == "bottleneck" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x)
        if self.deep_supervision and self.training:
            return list(torch.unbind(out, dim=1))
        return out
