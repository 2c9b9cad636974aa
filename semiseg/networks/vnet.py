"""V-Net as used by the UA-MT / CPS left-atrium works (SSL4MIS ``VNet``), with residual stages.

MONAI's ``VNet`` is the original Milletari design (5x5x5 convs, ELU, a fixed 16 base filters and
``in_channels`` dividing 16), so it does not match the SSL4MIS network these methods were tuned on.
Layout: stages of 1, 2, 3, 3 conv layers (3x3x3, batch norm, ReLU) with a residual add, strided 2x2x2
convs down, a 3-conv bottleneck, transposed 2x2x2 convs up whose output is *added* to the skip,
decoder stages of 3, 3, 2, 1 layers, then a 1x1x1 head. Widths are ``n * 2**i`` with
``n = cfg.features[0]`` (16 in SSL4MIS). ``cfg.dropout > 0`` adds channel dropout after the
bottleneck and before the head, active in train mode only, which is what UA-MT's Monte-Carlo
dropout samples. Spatial sizes must be divisible by 16.
"""
from __future__ import annotations

import torch
from torch import nn

from semiseg.config import NetworkConfig

ENCODER_DEPTHS = (1, 2, 3, 3)
BOTTLENECK_DEPTH = 3
DECODER_DEPTHS = (3, 3, 2, 1)


def _conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm3d(channels), nn.ReLU(inplace=True))


class ResidualStage(nn.Module):
    """``depth`` 3x3x3 conv-BN(-ReLU) layers; the input (projected by a 1x1x1 conv when the width
    changes) is added before the last ReLU, the residual learning V-Net credits for convergence."""

    def __init__(self, depth: int, in_channels: int, out_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1), nn.BatchNorm3d(out_channels)]
            if i < depth - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class VNet(nn.Module):
    """SSL4MIS-style V-Net returning logits (B, K, Z, Y, X); no deep supervision."""

    def __init__(self, cfg: NetworkConfig, in_channels: int, num_classes: int):
        super().__init__()
        if cfg.deep_supervision:
            raise ValueError("VNet has no deep supervision; set network.deep_supervision to false")
        base = cfg.features[0] if cfg.features else 16
        widths = [base * 2**i for i in range(len(ENCODER_DEPTHS) + 1)]  # n, 2n, 4n, 8n, 16n
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = in_channels
        for i, depth in enumerate(ENCODER_DEPTHS):
            self.encoder.append(ResidualStage(depth, prev, widths[i]))
            self.down.append(_conv_bn_relu(nn.Conv3d(widths[i], widths[i + 1], 2, stride=2), widths[i + 1]))
            prev = widths[i + 1]
        self.bottleneck = ResidualStage(BOTTLENECK_DEPTH, widths[-1], widths[-1])
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i, depth in zip(reversed(range(len(DECODER_DEPTHS))), DECODER_DEPTHS):
            self.up.append(_conv_bn_relu(nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2), widths[i]))
            self.decoder.append(ResidualStage(depth, widths[i], widths[i]))
        self.dropout = nn.Dropout3d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"VNet needs spatial sizes divisible by 16, got {tuple(x.shape[2:])}")
        skips = []
        for stage, down in zip(self.encoder, self.down):
            x = stage(x)
            skips.append(x)
            x = down(x)
        x = self.dropout(self.bottleneck(x))
        for up, stage, skip in zip(self.up, self.decoder, reversed(skips)):
            x = stage(up(x) + skip)
        return self.head(self.dropout(x))
