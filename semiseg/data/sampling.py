"""Patch sampling from the preprocessing cache, and training batches as a pure function of the step.

A batch for step ``s`` depends only on (seed, s): training can resume exactly and data loading can run
in worker processes without shared random state. Streams:

- labelled: patches with labels, a fraction centred on foreground (nnU-Net's oversampling);
- unlabelled: image-only patches (``u_image``); their labels are never loaded (the cache holds none);
- pseudo: patches from a pseudo-label cache mixed into the labelled batch at a fixed ratio
  (noisy student: 1 labelled : 3 pseudo-labelled).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from semiseg.config import ALL_AXES
from semiseg.data.augment import augment, build_augmentation
from semiseg.data.cache import Cache


@dataclass
class CachedCase:
    name: str
    data_path: Path
    seg_path: Path | None
    locations: dict[str, list[list[int]]] = field(default_factory=dict)

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Memory-mapped arrays, checked against the case's properties (a damaged file is named)."""
        return Cache(self.data_path.parent).load(self.name, labelled=self.seg_path is not None)


def open_cases(cache_dir: str | Path, cases: list[str], with_labels: bool) -> list[CachedCase]:
    """Index cached cases; ``with_labels=False`` never touches label files."""
    out = []
    cache = Cache(Path(cache_dir))
    for c in cases:
        props = cache.props(c)
        if props is None:
            raise FileNotFoundError(f"{cache.props_path(c)}: case '{c}' is not in the preprocessing cache")
        if with_labels and not props.get("labelled"):
            raise ValueError(f"{cache.props_path(c)}: case '{c}' was cached without labels but is used as labelled")
        seg = cache.seg_path(c) if with_labels else None
        out.append(CachedCase(c, cache.data_path(c), seg, props.get("class_locations", {}) if with_labels else {}))
    if not out:
        raise ValueError(f"{cache.root}: no cases to sample from")
    return out


def crop_patch(data: np.ndarray, seg: np.ndarray | None, patch: list[int], center: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Patch of size ``patch`` centred at ``center`` with zero padding outside the volume."""
    shape = np.asarray(data.shape[1:])
    start = np.asarray(center) - np.asarray(patch) // 2
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(patch), shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    pad = [(int(a - s), int(s + p - b)) for a, b, s, p in zip(lo, hi, start, patch)]
    img = np.pad(np.asarray(data[(slice(None),) + sl], dtype=np.float32), [(0, 0)] + pad)
    lab = np.pad(np.asarray(seg[sl], dtype=np.int16), pad)[None] if seg is not None else None
    return img, lab


class PatchSampler:
    def __init__(self, cases: list[CachedCase], patch: list[int], fg_fraction: float, preset: str,
                 mirror_axes: Sequence[int] = ALL_AXES, fg_inside: bool = False):
        self.cases = cases
        self.patch = list(patch)
        self.fg_fraction = fg_fraction
        self.fg_inside = fg_inside  # Plan.foreground_inside
        self.with_labels = cases[0].seg_path is not None
        self.transform = build_augmentation(preset, self.patch, with_label=self.with_labels, mirror_axes=mirror_axes)

    def sample(self, rng: np.random.Generator, force_fg: bool) -> dict[str, np.ndarray]:
        case = self.cases[int(rng.integers(len(self.cases)))]
        data, seg = case.load()
        shape = np.asarray(data.shape[1:])
        classes = [k for k, v in case.locations.items() if v]
        half = np.asarray(self.patch) // 2
        low = np.minimum(half, shape // 2)  # the centres whose patch stays inside (an axis under a patch: its middle)
        high = np.maximum(shape - (np.asarray(self.patch) - half), low)
        if force_fg and classes:
            locs = case.locations[classes[int(rng.integers(len(classes)))]]
            center = np.asarray(locs[int(rng.integers(len(locs)))])
            if self.fg_inside:
                center = np.clip(center, low, high)
        else:
            center = np.array([rng.integers(a, b + 1) for a, b in zip(low, high)])
        img, lab = crop_patch(data, seg, self.patch, center)
        sample = {"image": img} if lab is None else {"image": img, "label": lab}
        return augment(self.transform, sample, int(rng.integers(2**31 - 1)))


class TrainingBatches(torch.utils.data.Dataset):
    """Map-style dataset: item ``s`` is the batch of step ``s`` (use with ``batch_size=None``)."""

    def __init__(
        self,
        labelled: PatchSampler,
        batch_size: int,
        seed: int,
        unlabelled: PatchSampler | None = None,
        unlabelled_batch_size: int = 0,
        pseudo: PatchSampler | None = None,
        pseudo_per_labelled: int = 3,
        length: int = 10**9,
    ):
        self.labelled, self.unlabelled, self.pseudo = labelled, unlabelled, pseudo
        self.batch_size, self.unlabelled_batch_size = batch_size, unlabelled_batch_size
        self.pseudo_per_labelled = pseudo_per_labelled
        self.seed, self.length = seed, length

    def composition(self) -> tuple[int, int]:
        """(labelled, pseudo-labelled) samples per batch: 1:3 gives 1 and 3 for a batch of 4."""
        if self.pseudo is None:
            return self.batch_size, 0
        n_l = max(1, round(self.batch_size / (1 + self.pseudo_per_labelled)))
        return n_l, self.batch_size - n_l

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(step)])
        n_l, n_p = self.composition()
        n_fg = max(1, round(self.batch_size * self.labelled.fg_fraction)) if self.labelled.fg_fraction > 0 else 0
        samples = [self.labelled.sample(rng, force_fg=i >= self.batch_size - n_fg) for i in range(n_l)]
        if self.pseudo is not None:
            samples += [self.pseudo.sample(rng, force_fg=rng.random() < self.pseudo.fg_fraction) for _ in range(n_p)]
        batch = {
            "image": torch.from_numpy(np.stack([s["image"] for s in samples])).float(),
            "label": torch.from_numpy(np.stack([s["label"] for s in samples])).long(),
            "is_pseudo": torch.tensor([False] * n_l + [True] * n_p),
        }
        if self.unlabelled is not None and self.unlabelled_batch_size > 0:
            u = [self.unlabelled.sample(rng, force_fg=False) for _ in range(self.unlabelled_batch_size)]
            batch["u_image"] = torch.from_numpy(np.stack([s["image"] for s in u])).float()
        return batch
