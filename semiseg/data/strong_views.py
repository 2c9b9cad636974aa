"""Strong views of a batch, made on the device from the weak one (weak-to-strong consistency, UniMatch family).

Intensity perturbations only, per sample: the geometry of a strong view must stay that of its weak view so
that the weak view's pseudo-labels are its targets voxel for voxel (geometric mixing is CutMix's job,
applied by the method to images and pseudo-labels alike). Draws come from torch's global RNG, which the
engine seeds with (seed, rank, step), so a view is a function of the step like every batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from semiseg.data.cutmix import box_mask, cutmix

# (probability, range) per perturbation: brightness and contrast factors, gamma, noise std (in units of the
# sample's std), blur sigma in voxels; UniMatch's colour jitter and blur, in 3D grey levels
STRONG = {"brightness": (0.8, (0.75, 1.25)), "contrast": (0.8, (0.75, 1.25)), "gamma": (0.5, (0.7, 1.5)),
          "noise": (0.5, (0.0, 0.1)), "blur": (0.2, (0.5, 1.0))}


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one (C, Z, Y, X) sample."""
    radius = max(1, int(round(2 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    out = x.unsqueeze(0)
    c = x.shape[0]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape).expand(c, 1, *shape[2:]), groups=c)
    return out[0]


def strong_view(x: torch.Tensor) -> torch.Tensor:
    """A strongly perturbed copy of a (B, C, Z, Y, X) batch: each sample gets its own random perturbations."""
    b, dev = x.shape[0], x.device
    out = x.clone()
    dims = tuple(range(1, x.ndim))

    def chosen(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        p, (lo, hi) = STRONG[name]
        return torch.rand(b, device=dev) < p, _uniform(b, lo, hi, dev)

    view = (b,) + (1,) * (x.ndim - 1)
    on, f = chosen("brightness")
    out = torch.where(on.view(view), out * f.view(view), out)
    on, f = chosen("contrast")
    mean = out.mean(dims, keepdim=True)
    out = torch.where(on.view(view), (out - mean) * f.view(view) + mean, out)
    on, g = chosen("gamma")
    lo, hi = out.amin(dims, keepdim=True), out.amax(dims, keepdim=True)
    unit = (out - lo) / (hi - lo + 1e-8)
    out = torch.where(on.view(view), unit.clamp(0, 1) ** g.view(view) * (hi - lo) + lo, out)
    on, s = chosen("noise")
    std = out.std(dims, keepdim=True)
    out = torch.where(on.view(view), out + torch.randn_like(out) * s.view(view) * std, out)
    on, sig = chosen("blur")
    for i in torch.nonzero(on).flatten().tolist():
        out[i] = _blur(out[i], float(sig[i]))
    return out


def mixed_strong_view(u: torch.Tensor, targets: Sequence[torch.Tensor], ratio: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A strong view of ``u`` with one box pasted from the next sample's strong view (CutMix), and the weak view's
    targets (pseudo-labels, confidence masks, ...) mixed with the same box, so each voxel keeps its target."""
    partner = torch.roll(torch.arange(u.shape[0], device=u.device), -1)
    box = box_mask(u.shape[2:], ratio, device=u.device)
    s = strong_view(u)
    return cutmix(s[partner], s, box), [cutmix(t[partner], t, box) for t in targets]
