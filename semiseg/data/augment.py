"""Augmentation presets (MONAI dictionary transforms), applied per sample on (C, z, y, x) arrays.

- ``teacher``: the noisy-student paper's Table 4 (nnU-Net's default set).
- ``student``: its Table 5 (stronger noise, brightness, contrast, blur, gamma).
- ``mirror``: flips only; ``none``: identity.
Rotations are in-plane only when the patch is anisotropic (nnU-Net's "dummy 2D" rule).
"""
from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
)

from semiseg.config import ALL_AXES

PRESETS: dict[str, dict[str, Any]] = {
    "teacher": dict(noise=(0.1, 0.1), blur=(0.2, (0.5, 1.0)), bright=(0.15, 0.25), contrast=(0.15, (0.75, 1.25)), lowres=(0.25, (0.5, 1.0)), gamma=(0.1, (0.7, 1.5))),
    "student": dict(noise=(0.15, 0.1), blur=(0.2, (0.5, 1.5)), bright=(0.15, 0.3), contrast=(0.15, (0.65, 1.5)), lowres=(0.25, (0.5, 1.0)), gamma=(0.15, (0.7, 1.5))),
}


AUGMENTATIONS: tuple[str, ...] = ("none", "mirror", *PRESETS)  # every preset name build_augmentation accepts


class RandContrastd(RandomizableTransform, MapTransform):
    """nnU-Net contrast: scale around the mean by a factor, then clip to the original range."""

    def __init__(self, keys: Any, prob: float, factor_range: tuple[float, float]):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.factor_range = factor_range
        self.factor = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.factor = float(self.R.uniform(*self.factor_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for k in self.key_iterator(d):
            x = d[k]
            lo, hi = x.min(), x.max()
            m = x.mean()
            d[k] = ((x - m) * self.factor + m).clip(lo, hi)
        return d


def build_augmentation(preset: str, patch_size: list[int], with_label: bool = True,
                       mirror_axes: Sequence[int] = ALL_AXES) -> Compose:
    """``mirror_axes``: the spatial (z, y, x) axes that may be flipped (the plan's; not the left-right axis
    when labels are lateralised)."""
    keys = ["image", "label"] if with_label else ["image"]
    if preset == "none":
        return Compose([])
    flips = [RandFlipd(keys, prob=0.5, spatial_axis=ax) for ax in mirror_axes]
    if preset == "mirror":
        return Compose(flips)
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset '{preset}' (choose {list(AUGMENTATIONS)})")
    p = PRESETS[preset]
    rot = math.radians(30)
    anisotropic = max(patch_size) / min(patch_size) > 3
    rotate_range = (rot, 0.0, 0.0) if anisotropic else (rot, rot, rot)  # (around z, y, x)
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    t: list[Any] = [
        RandAffined(keys, prob=0.2, rotate_range=rotate_range, scale_range=(0.4, 0.4, 0.4) if not anisotropic else (0.0, 0.4, 0.4),
                    mode=modes, padding_mode="zeros"),
        RandGaussianNoised("image", prob=p["noise"][0], std=math.sqrt(p["noise"][1]), sample_std=True),
        RandGaussianSmoothd("image", prob=p["blur"][0], sigma_x=p["blur"][1], sigma_y=p["blur"][1], sigma_z=p["blur"][1]),
        RandScaleIntensityd("image", prob=p["bright"][0], factors=p["bright"][1]),
        RandContrastd("image", prob=p["contrast"][0], factor_range=p["contrast"][1]),
        RandSimulateLowResolutiond("image", prob=p["lowres"][0], zoom_range=p["lowres"][1]),
        RandAdjustContrastd("image", prob=p["gamma"][0], gamma=p["gamma"][1]),
        *flips,
    ]
    return Compose(t)


def augment(transform: Compose, sample: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Apply with a per-call seed so that a batch is a pure function of (run seed, step)."""
    transform.set_random_state(seed=seed)
    out = transform(sample)
    return {k: np.asarray(v) for k, v in out.items()}
