"""Sliding-window inference over a preprocessed (C, z, y, x) volume, nnU-Net style, streamed in z-slabs.

Windows are placed like nnU-Net's ``compute_steps_for_sliding_window`` (``step`` is the stride as a
fraction of the patch: 0.5 = half overlap, 0.9 = the FLARE22 papers' fast setting), weighted by
nnU-Net's Gaussian (sigma = patch/8, centre patch // 2) so window borders count less, and run ``batch`` windows at a time (batch >= 2
keeps CPU 3D convolutions off PyTorch's slow path).

Devices: windows are cut from the CPU volume and moved to ``device`` a batch at a time; accumulators
sit on ``device`` too, and each finished slab is moved back to the CPU.

Memory: windows are visited in z-major order, so once every window starting at or before a z row is
done, all voxels above the next row's start are final. :func:`iter_slabs` keeps accumulators only for
the z range still open (about one patch deep) and hands each finished slab to the caller, who can turn
it into labels at once; no (K, full volume) tensor exists unless the caller builds one
(:func:`sliding_window` does, for callers that want the whole logit volume).
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from semiseg import grid
from semiseg.config import ALL_AXES
from semiseg.grid import ArrayOps, Slab, patch_pads, stream_slabs, window_starts  # noqa: F401  (Slab: re-exported)
from semiseg.networks import main_output

Net = nn.Module | Callable[[torch.Tensor], torch.Tensor]

# TTA: the flip sets nnU-Net uses (axes of the spatial dims of a (B, C, z, y, x) tensor)
TTA_AXES: dict[str, list[tuple[int, ...]]] = {
    "none": [()],
    "3": [(), (4,), (3,)],  # identity + the two in-plane flips
    "7": [()] + [c for r in (1, 2, 3) for c in itertools.combinations((2, 3, 4), r)],
}


def tta_flips(tta: str, mirror_axes: Sequence[int] = ALL_AXES) -> list[tuple[int, ...]]:
    """The TTA flip set, less flips of axes the plan does not mirror (trained without them, the net would see
    a left kidney where its label says right)."""
    allowed = {a + 2 for a in mirror_axes}
    return [f for f in TTA_AXES[tta] if set(f) <= allowed]


def _gaussian(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """nnU-Net v2's importance map as a tensor (:func:`semiseg.grid.gaussian`)."""
    return torch.from_numpy(grid.gaussian(patch, sigma_scale))


def importance_map(patch: Sequence[int], gaussian: bool) -> torch.Tensor:
    return _gaussian(tuple(int(p) for p in patch)) if gaussian else torch.ones(tuple(int(p) for p in patch))


def pad_to_patch(data: np.ndarray | torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad spatial dims up to the patch size (centred); returns the padded tensor and the pads.
    No copy is made when the volume already covers the patch."""
    t = torch.as_tensor(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
    pads = patch_pads(t.shape[1:], patch)
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        t = torch.nn.functional.pad(t, flat)
    return t, pads


def torch_ops(device: torch.device) -> ArrayOps:
    """Slab streaming with accumulators on ``device`` (slab-sized, so small on a GPU too) and finished
    slabs back on the CPU."""
    return ArrayOps(lambda shape: torch.zeros(shape, device=device), lambda xs, axis: torch.cat(xs, axis),
                    lambda xs: torch.stack(xs).to(device), lambda t: t.cpu())


def _forward(net: Net, xb: torch.Tensor, flips: list[tuple[int, ...]], device: torch.device,
             autocast_dtype: torch.dtype | None, prepare: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """Mean over the TTA flips of one network's logits for a batch of windows, float32 on ``device``."""
    out: torch.Tensor | None = None
    for axes in flips:
        xi = torch.flip(xb, axes) if axes else xb
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
        out = yi if out is None else out.add_(yi)
    assert out is not None
    return out.div_(len(flips)) if len(flips) > 1 else out


def iter_slabs(
    nets: Sequence[Net],
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
    mirror_axes: Sequence[int] = ALL_AXES,
) -> Iterator[Slab]:
    """Run every network on each batch of windows and yield finished z-slabs in order.

    Live memory is the input plus ``len(nets) x K x (about one patch depth) x y x x`` float32, whatever the
    volume's depth. All networks see each window batch once, so an ensemble needs one pass over the data."""
    if tta not in TTA_AXES:
        raise ValueError(f"unknown TTA '{tta}' (choose {list(TTA_AXES)})")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if len(patch) != 3:
        raise ValueError(f"patch must have 3 dims (z, y, x), got {list(patch)}")
    device = torch.device(device)
    x, pads = pad_to_patch(data, patch)
    if x.ndim != 4:
        raise ValueError(f"expected a (C, z, y, x) volume, got shape {tuple(x.shape)}")
    weight = importance_map(patch, gaussian).to(device)
    flips = tta_flips(tta, mirror_axes)

    def forward(k: int, inp: torch.Tensor) -> torch.Tensor:
        return _forward(nets[k], inp, flips, device, autocast_dtype, prepare)

    with torch.inference_mode():
        yield from stream_slabs(forward, len(nets), x.float(), pads, patch, num_outputs, step, batch, weight,
                                torch_ops(device))


def sliding_window(
    net: Net,
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
    mirror_axes: Sequence[int] = ALL_AXES,
) -> torch.Tensor:
    """Weighted mean of the network's raw outputs over all windows: (num_outputs, z, y, x) float32 on CPU.

    Holds the whole logit volume; prediction of label maps streams slabs instead (:func:`iter_slabs`).
    ``prepare`` converts an input batch before the forward pass (e.g. to an mkldnn tensor) and must give
    back something the net accepts; the output is converted back to a dense CPU tensor."""
    shape = tuple(data.shape[1:])
    out = torch.empty((num_outputs, *shape), dtype=torch.float32)
    for slab in iter_slabs([net], data, patch, num_outputs, step, gaussian, tta, batch, device, autocast_dtype, prepare,
                           mirror_axes):
        out[:, slab.z0 : slab.z1] = slab.logits[0]
    return out
