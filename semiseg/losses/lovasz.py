"""Multi-class Lovasz-Softmax loss (Berman et al., CVPR 2018), batch-flattened (``per_image=False``).

The Lovasz extension of the Jaccard loss is a convex, piecewise-linear surrogate that is *tight*:
on one-hot predictions it equals 1 - IoU of each class exactly, so it optimises the overlap metric
directly and, in the LA report, sharpens boundaries (lower ASD / 95HD). All classes are handled in
one vectorised sort instead of a Python loop over classes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

ClassChoice = Literal["present", "all"] | Sequence[int]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension w.r.t. errors sorted in decreasing order.

    ``gt_sorted`` is (N,) or (N, K) of 0/1 ground truth ordered by decreasing error (along dim 0);
    entry i is Jaccard loss of the i+1 largest errors minus that of the i largest.
    """
    gt_sorted = gt_sorted if gt_sorted.is_floating_point() else gt_sorted.float()
    gts = gt_sorted.sum(0)
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.shape[0] > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
    return jaccard


def _flatten(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, ...) probs and (B, [1,] ...) labels -> (N, K) probs and (N,) labels of valid voxels."""
    if labels.ndim == probs.ndim:
        labels = labels[:, 0]
    if labels.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match probs {tuple(probs.shape)}")
    flat_probs = probs.movedim(1, -1).reshape(-1, probs.shape[1])
    flat_labels = labels.reshape(-1).long()
    if ignore_index is not None:
        keep = flat_labels != ignore_index
        flat_probs, flat_labels = flat_probs[keep], flat_labels[keep]
    return flat_probs, flat_labels


def lovasz_softmax(
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: ClassChoice = "present",
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Mean over classes of the Lovasz extension of the Jaccard loss, over all voxels of the batch.

    ``probs`` are softmax probabilities (B, K, ...); ``labels`` integers (B, 1, ...) or (B, ...).
    ``classes``: "present" averages only classes occurring in ``labels`` (the paper's default, so an
    absent class cannot dominate), "all" every class, or an explicit list of class indices.
    """
    flat_probs, flat_labels = _flatten(probs, labels, ignore_index)
    if flat_probs.dtype in (torch.float16, torch.bfloat16):  # AMP: cumulative sums need float32
        flat_probs = flat_probs.float()
    num_classes = flat_probs.shape[1]
    if isinstance(classes, str) and classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present', 'all' or a list of indices, got '{classes}'")
    class_idx = list(range(num_classes)) if isinstance(classes, str) else [int(c) for c in classes]
    if flat_probs.shape[0] == 0 or not class_idx:
        return probs.sum() * 0.0
    idx = torch.as_tensor(class_idx, device=flat_probs.device)
    fg = (flat_labels[:, None] == idx[None, :]).to(flat_probs.dtype)  # (N, C)
    errors = (fg - flat_probs[:, idx]).abs()
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    fg_sorted = torch.gather(fg, 0, perm)
    per_class = (errors_sorted * lovasz_grad(fg_sorted)).sum(0)  # (C,)
    if isinstance(classes, str) and classes == "present":
        present = fg.sum(0) > 0
        if not bool(present.any()):
            return probs.sum() * 0.0
        per_class = per_class[present]
    return per_class.mean()
