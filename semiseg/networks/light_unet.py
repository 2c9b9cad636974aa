"""DLUNet's light U-Net: the nnU-Net U-Net with depthwise separable convs and residual connections.

DLUNet (FLARE22, sec. 2.2) keeps nnU-Net's topology (per-stage kernels/strides, instance norm,
leaky ReLU, transposed-conv upsampling, concatenated skips, two conv layers per stage) and changes
two things: every conv becomes depthwise (k x k x k, groups = C) + pointwise (1x1x1), which cuts
parameters ~k^3-fold, and every conv layer, encoder and decoder alike, gets a residual shortcut
(identity, or a strided 1x1x1 conv + norm where width or resolution changes).
``cfg.dropout > 0`` adds channel dropout on the bottleneck features (train mode only).

``strided_first`` (arch ``light_res_unet``) lays the stages out as the CPU-tier ``res_unet`` does: every
stage's first conv strides by the next stage's stride, the last stage by 1, and a transposed conv brings
the finest decoder output back to full resolution before the head. Depthwise 3D convs are slow on CPU
(measured: slower than a full conv of the same width), so at full resolution they cost DLUNet ~60x a
supervised res_unet step; off full resolution the light net keeps its parameter count and gets cheap.
On CPU the depthwise convs also run in fp32 and channels-last (:func:`depthwise_conv`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.config import NetworkConfig
from semiseg.networks.unet import default_topology

NEGATIVE_SLOPE = 0.01  # nnU-Net's leaky ReLU


def depthwise_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply a depthwise conv; on CPU in fp32 and channels-last, outside autocast.

    oneDNN's depthwise 3D kernels on CPU are fast only in that form: one layer (2x32x20x32x32, fwd + bwd, one
    thread) takes 22 ms there against 53 ms channels-first fp32 and 59 ms under bf16 autocast, and the whole
    light U-Net step (LA plan, batch 2) drops from 0.28 to 0.15 s. The pointwise conv after it runs under
    autocast as before, so only the cheap depthwise part keeps fp32 precision. Other devices, and ONNX export
    (which has no memory formats), take the plain conv.
    """
    if x.device.type != "cpu" or torch.onnx.is_in_onnx_export():
        return conv(x)
    with torch.autocast("cpu", enabled=False):  # in the weights' dtype: fp32 under autocast, else what the model was cast to
        return conv(x.to(conv.weight.dtype).contiguous(memory_format=torch.channels_last_3d))


class ResidualSeparableConv(nn.Module):
    """act(norm(pointwise(depthwise(x))) + shortcut(x)): one light conv layer with its residual."""

    def __init__(self, in_channels: int, out_channels: int, kernel: list[int], stride: list[int]):
        super().__init__()
        padding = [k // 2 for k in kernel]
        self.depthwise = nn.Conv3d(in_channels, in_channels, kernel, stride=stride, padding=padding, groups=in_channels, bias=False)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1)
        self.norm = nn.InstanceNorm3d(out_channels, affine=True)
        if in_channels == out_channels and all(s == 1 for s in stride):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False), nn.InstanceNorm3d(out_channels, affine=True)
            )
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.pointwise(depthwise_conv(self.depthwise, x))) + self.shortcut(x))


def light_stage(in_channels: int, out_channels: int, kernel: list[int], stride: list[int]) -> nn.Sequential:
    """nnU-Net's two conv layers per stage (the first one strided), in their light residual form."""
    return nn.Sequential(
        ResidualSeparableConv(in_channels, out_channels, kernel, stride),
        ResidualSeparableConv(out_channels, out_channels, kernel, [1, 1, 1]),
    )


class LightUNet(nn.Module):
    """Light U-Net returning logits (B, K, Z, Y, X); with deep supervision in train mode, a list
    (full resolution first, then coarser heads resized to full size, as :class:`UNet` does)."""

    def __init__(self, cfg: NetworkConfig, in_channels: int, num_classes: int, strided_first: bool = False):
        super().__init__()
        features = list(cfg.features)
        kernels, strides = cfg.kernels, cfg.strides
        default_kernels, default_strides = default_topology(len(features))
        kernels, strides = kernels or default_kernels, strides or default_strides
        if not (len(kernels) == len(strides) == len(features)):
            raise ValueError("network.features, network.kernels and network.strides must have one entry per stage")
        stage_strides = [list(s) for s in strides[1:]] + [[1, 1, 1]] if strided_first else [list(s) for s in strides]
        self.strides = stage_strides
        self.encoder = nn.ModuleList()
        prev = in_channels
        for width, kernel, stride in zip(features, kernels, stage_strides):
            self.encoder.append(light_stage(prev, width, kernel, stride))
            prev = width
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(features) - 1)):
            stride = stage_strides[level + 1]
            self.up.append(nn.ConvTranspose3d(features[level + 1], features[level], stride, stride=stride, bias=False))
            self.decoder.append(light_stage(2 * features[level], features[level], kernels[level], [1, 1, 1]))
        self.dropout = nn.Dropout3d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        first = stage_strides[0]
        self.final_up: nn.Module = nn.Identity() if not strided_first else nn.Sequential(
            nn.ConvTranspose3d(features[0], features[0], first, stride=first, bias=False),
            nn.InstanceNorm3d(features[0], affine=True), nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True))
        self.head = nn.Conv3d(features[0], num_classes, 1)
        self.deep_supervision = cfg.deep_supervision
        num_aux = max(1, min(2, len(features) - 2)) if cfg.deep_supervision else 0  # as UNet
        # aux heads on the decoder outputs just above full resolution, finest first
        self.aux_heads = nn.ModuleList(nn.Conv3d(features[level], num_classes, 1) for level in range(1, num_aux + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = x.shape[2:]
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        decoded: dict[int, torch.Tensor] = {}
        for up, stage in zip(self.up, self.decoder):
            skip = skips.pop()
            x = stage(torch.cat([up(x), skip], dim=1))
            decoded[len(skips)] = x
        out = self.head(self.final_up(x))
        if not (self.deep_supervision and self.training):
            return out
        aux = [F.interpolate(head(decoded[level]), size=size) for level, head in enumerate(self.aux_heads, start=1)]
        return [out, *aux]
