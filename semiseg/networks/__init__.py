"""Network factory: one entry point that turns a NetworkConfig into a module.

Convention every method relies on: in eval mode a network returns logits (B, K, Z, Y, X); in train
mode with deep supervision it returns a list whose first element is the full-resolution logits.
Use :func:`main_output` to get the full-resolution logits in both cases.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
from torch import nn

from semiseg.config import NetworkConfig


def main_output(out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        return out[0]
    return out


def build_network(cfg: NetworkConfig, in_channels: int, num_classes: int, **overrides: Any) -> nn.Module:
    """Build the network named by ``cfg.arch`` (overrides replace NetworkConfig fields)."""
    cfg = dataclasses.replace(cfg, **overrides)
    if cfg.arch not in ("unet", "res_unet") and cfg.dropout_at not in ("auto", "bottleneck"):
        raise ValueError(f"network.dropout_at '{cfg.dropout_at}' is for arch unet and res_unet only; {cfg.arch} drops at its bottleneck (auto)")
    if cfg.arch == "unet":
        from semiseg.networks.unet import UNet

        return UNet(cfg, in_channels, num_classes)
    if cfg.arch == "res_unet":
        from semiseg.networks.res_unet import ResUNet

        return ResUNet(cfg, in_channels, num_classes)
    if cfg.arch == "vnet":
        from semiseg.networks.vnet import VNet

        return VNet(cfg, in_channels, num_classes)
    if cfg.arch in ("light_unet", "light_res_unet"):
        from semiseg.networks.light_unet import LightUNet

        return LightUNet(cfg, in_channels, num_classes, strided_first=cfg.arch == "light_res_unet")
    raise ValueError(f"unknown network arch '{cfg.arch}' (choose unet, res_unet, vnet, light_unet, light_res_unet)")


VNET_DIVISOR = 16  # the SSL4MIS V-Net halves every axis four times
AXES = "zyx"


def check_patch(cfg: NetworkConfig, patch: Sequence[int], source: str = "plan") -> None:
    """Refuse a patch the network cannot pool and unpool back to its size (DynUNet and MONAI's UNet crash on
    a skip of another size at the first training step): every axis must be a multiple of the product of the
    strides along it. Checked by ``plan`` and before training; the message names the axis and the strides.
    (Stage counts that disagree are the network's own error, when it is built.)"""
    if len(patch) != 3 or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in patch):
        raise ValueError(f"{source}: patch_size must be three positive integers (z, y, x), got {list(patch)}")
    if cfg.arch == "vnet":
        per_axis = [[2] * 4] * 3
        what = "the V-Net's four 2x poolings"
    else:
        strides = cfg.strides
        if not strides:
            from semiseg.networks.unet import default_topology

            strides = default_topology(len(cfg.features))[1]
        if any(len(s) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in s) for s in strides):
            raise ValueError(f"{source}: network.strides must be (z, y, x) triples of positive integers, got {strides}")
        per_axis = [[s[a] for s in strides] for a in range(3)]
        what = "network.strides"
    for axis, (size, along) in enumerate(zip(patch, per_axis)):
        divisor = math.prod(along)
        if size % divisor:
            fit = max(divisor, size // divisor * divisor)
            raise ValueError(f"{source}: patch_size {list(patch)} cannot be pooled by the network: axis {AXES[axis]} ({size}) "
                             f"is not a multiple of {divisor}, the product of {what} along it {along}; use {fit} "
                             f"(or strides that divide {size})")


def bottleneck_of(net: nn.Module) -> nn.Module:
    """The module whose output is a network's deepest features (for feature perturbation and MC dropout)."""
    from semiseg.networks.light_unet import LightUNet
    from semiseg.networks.res_unet import ResUNet, bottom_unit
    from semiseg.networks.unet import UNet
    from semiseg.networks.vnet import VNet

    if isinstance(net, UNet):
        return net.net.bottleneck
    if isinstance(net, ResUNet):
        return bottom_unit(net.net.model)
    if isinstance(net, VNet):
        return net.bottleneck
    if isinstance(net, LightUNet):
        return net.encoder[-1]
    raise ValueError(f"no known bottleneck in a {type(net).__name__}")
