"""3D CutMix (Yun et al. 2019) for segmentation: one box mask mixes images and (pseudo-)labels alike.

Applying the same mask to an image pair and to its label pair keeps every voxel's label with its
intensity, which is what makes CutMix usable for dense targets (CPS, DLUNet eq. 4).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def box_mask(
    shape_zyx: Sequence[int],
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask (Z, Y, X), True inside one random box whose volume is ~``ratio`` of the patch.

    Each side is round(dim * ratio^(1/3)) (the box has the patch's aspect), so the covered fraction
    is exact when those products are integers; the position is uniform over valid corners.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"CutMix ratio must lie in [0, 1], got {ratio}")
    side = ratio ** (1.0 / 3.0)
    mask = torch.zeros(tuple(shape_zyx), dtype=torch.bool, device=device)
    slices = []
    for dim in shape_zyx:
        size = int(round(dim * side))
        start = int(torch.randint(0, dim - size + 1, (1,), generator=generator).item())
        slices.append(slice(start, start + size))
    mask[tuple(slices)] = True
    return mask


def cutmix(images_a: torch.Tensor, images_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``a`` inside the mask, ``b`` outside; (B, C, Z, Y, X) tensors of any dtype (labels stay ints).

    ``mask`` is (Z, Y, X) (one box for the batch) or broadcastable to the inputs, e.g. (B, 1, Z, Y, X).
    """
    return torch.where(mask.to(torch.bool), images_a, images_b)
