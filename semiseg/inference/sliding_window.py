"""Sliding-window inference over a preprocessed (C, z, y, x) volume, nnU-Net style.

Windows are placed like nnU-Net's ``compute_steps_for_sliding_window`` (``step`` is the stride as a
fraction of the patch: 0.5 = half overlap, 0.9 = the FLARE22 papers' fast setting), weighted by a
Gaussian (sigma = patch/8) so window borders count less, and run ``batch`` windows at a time (batch >= 2
keeps CPU 3D convolutions off PyTorch's slow path). Outputs are accumulated in place, never stacked.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from semiseg.networks import main_output

# TTA: the flip sets nnU-Net uses (axes of the spatial dims of a (B, C, z, y, x) tensor)
TTA_AXES: dict[str, list[tuple[int, ...]]] = {
    "none": [()],
    "3": [(), (4,), (3,)],  # identity + the two in-plane flips
    "7": [()] + [c for r in (1, 2, 3) for c in itertools.combinations((2, 3, 4), r)],
}


def window_starts(image_size: int, tile: int, step: float) -> list[int]:
    """Start offsets along one axis (image_size >= tile), first at 0 and last flush with the end."""
    if not 0 < step <= 1:
        raise ValueError(f"sliding-window step must be in (0, 1], got {step}")
    if image_size < tile:
        raise ValueError(f"image axis {image_size} is smaller than the patch {tile}; pad first")
    target = tile * step
    n = int(math.ceil((image_size - tile) / target)) + 1
    if n == 1:
        return [0]
    actual = (image_size - tile) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


@lru_cache(maxsize=8)
def _gaussian(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(p, dtype=torch.float64) for p in patch], indexing="ij")
    g = torch.ones(patch, dtype=torch.float64)
    for ax, p in enumerate(patch):
        sigma = p * sigma_scale
        g = g * torch.exp(-((grids[ax] - (p - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.max()
    g = torch.clamp(g, min=float(g[g > 0].min()))  # no zero weights (nnU-Net does the same)
    return g.float()


def importance_map(patch: Sequence[int], gaussian: bool) -> torch.Tensor:
    return _gaussian(tuple(int(p) for p in patch)) if gaussian else torch.ones(tuple(int(p) for p in patch))


def pad_to_patch(data: np.ndarray | torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad spatial dims up to the patch size (centred); returns the padded tensor and the pads."""
    t = torch.as_tensor(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
    pads = []
    for s, p in zip(t.shape[1:], patch):
        extra = max(0, p - s)
        pads.append((extra // 2, extra - extra // 2))
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        t = torch.nn.functional.pad(t, flat)
    return t, pads


def sliding_window(
    net: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    data: np.ndarray | torch.Tensor,
    patch: Sequence[int],
    num_outputs: int,
    step: float = 0.5,
    gaussian: bool = True,
    tta: str = "none",
    batch: int = 2,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Weighted mean of the network's raw outputs over all windows: (num_outputs, z, y, x) float32 on CPU.

    ``prepare`` converts an input batch before the forward pass (e.g. to an mkldnn tensor) and must give
    back something the net accepts; the output is converted back to a dense CPU tensor."""
    if tta not in TTA_AXES:
        raise ValueError(f"unknown TTA '{tta}' (choose {list(TTA_AXES)})")
    device = torch.device(device)
    x, pads = pad_to_patch(data, patch)
    x = x.float()
    shape = x.shape[1:]
    starts = [window_starts(s, p, step) for s, p in zip(shape, patch)]
    windows = list(itertools.product(*starts))
    weight = importance_map(patch, gaussian)
    acc = torch.zeros((num_outputs, *shape), dtype=torch.float32)
    norm = torch.zeros(shape, dtype=torch.float32)
    flips = TTA_AXES[tta]
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            chunk = windows[i : i + batch]
            sls = [tuple(slice(s, s + p) for s, p in zip(w, patch)) for w in chunk]
            inp = torch.stack([x[(slice(None),) + sl] for sl in sls]).to(device)
            out = None
            for axes in flips:
                xi = torch.flip(inp, axes) if axes else inp
                if prepare is not None:
                    xi = prepare(xi)
                if autocast_dtype is not None:
                    with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                        yi = main_output(net(xi))
                else:
                    yi = main_output(net(xi))
                if yi.is_mkldnn:
                    yi = yi.to_dense()
                yi = yi.float()
                yi = torch.flip(yi, axes) if axes else yi
                out = yi if out is None else out + yi
            assert out is not None
            out = (out / len(flips)).cpu() * weight
            for j, sl in enumerate(sls):
                acc[(slice(None),) + sl] += out[j]
                norm[sl] += weight
    acc /= norm
    # crop the padding away
    crop = tuple(slice(a, s - b) for (a, b), s in zip(pads, shape))
    return acc[(slice(None),) + crop]
