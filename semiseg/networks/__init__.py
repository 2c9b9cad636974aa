"""Network factory: one entry point that turns a NetworkConfig into a module.

Convention every method relies on: in eval mode a network returns logits (B, K, Z, Y, X); in train
mode with deep supervision it returns a list whose first element is the full-resolution logits.
Use :func:`main_output` to get the full-resolution logits in both cases.
"""
from __future__ import annotations

import dataclasses
from typing import Any

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
