"""Losses, written once and shared by every method.

- :func:`dice_ce` nnU-Net's Dice + cross-entropy (batch Dice, background excluded from Dice),
  with optional deep supervision (list of outputs, weights halving per level).
- ``semiseg.losses.lovasz``: multi-class Lovasz-Softmax.
- ``semiseg.losses.robust``: DLUNet's noise-robust Dice and Taylor cross-entropy.
- :func:`soft_dice` differentiable soft Dice over probabilities (used by consistency methods).
- :func:`masked_dice_ce` Dice + CE on a region of the voxels only (BCP's mixed images: labels in one region,
  pseudo-labels in the other, each region its own weight); :func:`masked_ce` its CE alone (confident
  pseudo-labels, as FixMatch-style code with ``ignore_index``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, include_background: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean over classes of batch soft Dice; probs and onehot are (B, K, ...)."""
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0,) + tuple(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, ...) or (B, ...) integer labels -> (B, K, ...) float one-hot."""
    if label.ndim >= 2 and label.shape[1] == 1:
        label = label[:, 0]
    return F.one_hot(label.long(), num_classes).movedim(-1, 1).float()


def _dice_ce_single(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    target = label[:, 0].long() if label.ndim == logits.ndim else label.long()
    ce = F.cross_entropy(logits.float(), target)
    dice = soft_dice(torch.softmax(logits.float(), 1), one_hot(target, logits.shape[1]))
    return ce + dice


def dice_ce(output: torch.Tensor | Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
    """Dice + CE; with a deep-supervision list, labels are nearest-downsampled per level."""
    if isinstance(output, torch.Tensor):
        return _dice_ce_single(output, label)
    weights = [1.0 / (2**i) for i in range(len(output))]
    total = sum(weights)
    loss = output[0].new_zeros(())
    for w, out in zip(weights, output):
        lab = label if out.shape[2:] == label.shape[2:] else F.interpolate(label.float(), size=out.shape[2:], mode="nearest").long()
        loss = loss + (w / total) * _dice_ce_single(out, lab)
    return loss


def _target_and_weights(logits: torch.Tensor, label: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    target = label[:, 0].long() if label.ndim == logits.ndim else label.long()
    return target, region.to(logits.device).float().expand(target.shape[0], 1, *target.shape[1:])


def masked_ce(logits: torch.Tensor, label: torch.Tensor, region: torch.Tensor, eps: float = 1e-16) -> torch.Tensor:
    """CE as the weighted mean over the voxels where ``region`` (bool, or voxel weights >= 0, broadcastable to
    (B, 1, Z, Y, X)) holds: the pseudo-label loss of FixMatch-style code (``ignore_index`` on unconfident voxels)."""
    target, w = _target_and_weights(logits, label, region)
    return (F.cross_entropy(logits.float(), target, reduction="none") * w[:, 0]).sum() / (w.sum() + eps)


def masked_dice_ce(logits: torch.Tensor, label: torch.Tensor, region: torch.Tensor, eps: float = 1e-16) -> torch.Tensor:
    """Dice + CE over the voxels where ``region`` holds: :func:`masked_ce` plus soft Dice (background excluded) of
    the probabilities and one-hot target weighted alike."""
    target, w = _target_and_weights(logits, label, region)
    dice = soft_dice(torch.softmax(logits.float(), 1) * w, one_hot(target, logits.shape[1]) * w)
    return masked_ce(logits, label, region, eps) + dice
