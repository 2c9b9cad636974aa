"""Fingerprint a dataset and derive a plan the way nnU-Net does (spacing, patch, topology, normalisation).

The plan is data (plan.json): every field can be edited or overridden without touching code.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from semiseg.config import ALL_AXES, NetworkConfig, Plan
from semiseg.data.dataset import RawDataset
from semiseg.data.preprocess import crop_to_nonzero

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net: a spacing axis this much coarser than the others is "anisotropic"


@dataclass
class Fingerprint:
    spacings: np.ndarray  # (N, 3) zyx mm
    shapes_after_crop: np.ndarray  # (N, 3)
    foreground_intensities: list[np.ndarray]  # per channel, a sample of foreground voxels
    left_right_axes: list[int] = field(default_factory=list)  # per case: the (z, y, x) axis along the patient's left-right

    def intensity_stats(self, channel: int) -> dict[str, float]:
        v = self.foreground_intensities[channel]
        if v.size == 0:
            return {"mean": 0.0, "std": 1.0, "lower": 0.0, "upper": 0.0}
        return {
            "mean": float(v.mean()),
            "std": float(v.std()),
            "lower": float(np.percentile(v, 0.5)),
            "upper": float(np.percentile(v, 99.5)),
        }


def fingerprint(ds: RawDataset, samples_per_case: int = 10000, seed: int = 1234, progress: bool = True) -> Fingerprint:
    """Spacing, cropped shape and foreground intensities of the labelled cases (never unlabelled labels)."""
    rng = np.random.default_rng(seed)
    spacings, shapes, lr_axes = [], [], []
    fg: list[list[np.ndarray]] = [[] for _ in range(ds.num_channels)]
    if not ds.labelled:
        raise ValueError(f"{ds.split_source}: no labelled cases to plan from")
    any_foreground = False
    for case in tqdm(ds.labelled, desc="fingerprint", disable=not progress):
        image, label, geo = ds.load_case(case, with_label=True)
        assert label is not None
        any_foreground = any_foreground or bool(label.any())
        image, label, _ = crop_to_nonzero(image, label)
        spacings.append(geo.spacing_zyx)
        lr_axes.append(left_right_axis(geo.direction))
        shapes.append(image.shape[1:])
        mask = label > 0
        for c in range(ds.num_channels):
            vals = image[c][mask]
            if vals.size:
                fg[c].append(rng.choice(vals, min(samples_per_case, vals.size), replace=False))
    if not any_foreground:
        raise ValueError(f"{ds.label_path(ds.labelled[0]).parent}: every labelled mask is empty (all {len(ds.labelled)} label "
                         f"files, e.g. {ds.label_path(ds.labelled[0]).name}, hold background only): there is nothing to learn")
    return Fingerprint(
        np.asarray(spacings, float),
        np.asarray(shapes, int),
        [np.concatenate(v) if v else np.zeros(0) for v in fg],
        lr_axes,
    )


_SIDE_WORDS = {"left", "right", "l", "r", "lt", "rt"}


def is_lateralised(labels: dict[str, int]) -> bool:
    """True if two labels are one organ's left and right ("left_kidney"/"right_kidney", "Kidney L"/"Kidney R"):
    a left-right flip would turn one into the other. A lone sided label ("left_atrium") has no twin to become."""
    seen: dict[tuple[str, ...], set[str]] = {}
    for name in labels:
        words = [w for w in re.split(r"[^a-z]+", name.lower()) if w]
        sides = {w[0] for w in words if w in _SIDE_WORDS}  # "l"/"r"
        if len(sides) == 1:
            seen.setdefault(tuple(w for w in words if w not in _SIDE_WORDS), set()).update(sides)
    return any(len(s) == 2 for s in seen.values())


def left_right_axis(direction: tuple[float, ...] | list[float]) -> int:
    """The array axis (0 = z, 1 = y, 2 = x) running along the patient's left-right.

    SimpleITK's direction matrix (row-major, columns = index axes x, y, z) maps to LPS patient space,
    whose first coordinate is right-to-left; the index axis with the largest component there is it."""
    d = np.asarray(direction, float).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(d[0])))


def mirror_axes(labels: dict[str, int], left_right_axes: list[int]) -> list[int]:
    """All three axes, less the left-right one when labels are lateralised: a flip would turn a left kidney
    into a right one while keeping its label (nnU-Net mirrors every axis, and its trainers without
    mirroring exist for such data)."""
    if not is_lateralised(labels) or not left_right_axes:
        return list(ALL_AXES)
    lr = Counter(left_right_axes).most_common(1)[0][0]
    return [a for a in ALL_AXES if a != lr]


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """Median spacing; for anisotropic data the coarse axis takes its 10th percentile (nnU-Net's rule)."""
    target = np.median(spacings, 0)
    target_shape = np.median(shapes, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * min(target[others])
    aniso_voxels = target_shape[worst] * ANISOTROPY_THRESHOLD < min(target_shape[others])
    if aniso_spacing and aniso_voxels:
        t = np.percentile(spacings[:, worst], 10)
        if t < max(target[others]):
            t = max(max(target[others]), t) + 1e-5
        target[worst] = t
    return [float(x) for x in target]


def topology(patch: list[int], spacing: list[float], max_stages: int = 6, min_feature_size: int = 4) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Kernels and strides per stage, nnU-Net style: pool an axis while it stays >= min size and is not
    much coarser than the finest axis; 1-wide kernels along axes that are still too coarse.
    Returns kernels, strides and the patch rounded to be divisible by the total stride."""
    spacing_cur = list(spacing)
    size_cur = list(patch)
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1, 1, 1]]
    for _ in range(max_stages - 1):
        min_sp = min(spacing_cur)
        kernels.append([3 if s / min_sp < 2 else 1 for s in spacing_cur])
        stride = [2 if (size_cur[i] >= 2 * min_feature_size and spacing_cur[i] / min_sp < 2) else 1 for i in range(3)]
        if all(s == 1 for s in stride):
            break
        strides.append(stride)
        spacing_cur = [sp * st for sp, st in zip(spacing_cur, stride)]
        size_cur = [sz // st for sz, st in zip(size_cur, stride)]
    min_sp = min(spacing_cur)
    kernels.append([3 if s / min_sp < 2 else 1 for s in spacing_cur])
    kernels = kernels[: len(strides)]
    total = [int(np.prod([s[i] for s in strides])) for i in range(3)]
    rounded = [max(t, (p // t) * t) for p, t in zip(patch, total)]
    return kernels, strides, rounded


def patch_size(median_shape: list[int], spacing: list[float], max_voxels: int) -> list[int]:
    """Start from the median shape (capped to a roughly isotropic mm box) and shrink the longest axis
    (in mm) until the patch fits the voxel budget."""
    median = np.asarray(median_shape, float)
    sp = np.asarray(spacing, float)
    # initial: isotropic in mm with the budget's volume, capped by the median shape
    side_mm = (max_voxels * np.prod(sp)) ** (1 / 3)
    patch = np.minimum(np.maximum(np.round(side_mm / sp), 8), median)
    while np.prod(patch) > max_voxels and (patch > 8).any():
        mm = patch * sp
        ax = int(np.argmax(np.where(patch > 8, mm, -1)))
        patch[ax] = max(8, math.floor(patch[ax] * 0.9))
    # grow axes that are below the median while budget allows (keeps the patch using the budget)
    grown = True
    while grown:
        grown = False
        for ax in np.argsort(patch * sp):
            trial = patch.copy()
            trial[ax] = min(median[ax], math.ceil(trial[ax] * 1.1))
            if trial[ax] > patch[ax] and np.prod(trial) <= max_voxels:
                patch, grown = trial, True
    return [int(x) for x in patch]


def make_plan(
    ds: RawDataset,
    fp: Fingerprint,
    spacing: list[float] | None = None,
    max_patch_voxels: int = 128 * 128 * 128,
    base_features: int = 32,
    max_features: int = 320,
    batch_size: int = 2,
    deep_supervision: bool = False,
) -> Plan:
    """Derive a plan; pass ``spacing`` to override the target spacing (patch and topology follow it)."""
    tspacing = list(spacing) if spacing is not None else target_spacing(fp.spacings, fp.shapes_after_crop)
    scale = fp.spacings / np.asarray(tspacing)
    median_shape = [int(x) for x in np.round(np.median(fp.shapes_after_crop * scale, 0))]
    patch = patch_size(median_shape, tspacing, max_patch_voxels)
    kernels, strides, patch = topology(patch, tspacing)
    features = [min(max_features, base_features * 2**i) for i in range(len(strides))]
    is_ct = ds.modality.strip().upper() == "CT"
    norm: list[dict[str, Any]] = []
    for c in range(ds.num_channels):
        name = str(ds.meta["channel_names"][str(c)])
        if name.strip().upper() == "CT":
            norm.append({"scheme": "ct", **fp.intensity_stats(c)})
        else:
            norm.append({"scheme": "zscore"})
    return Plan(
        dataset_name=ds.name,
        modality="CT" if is_ct else ds.modality,
        num_input_channels=ds.num_channels,
        labels=ds.labels,
        target_spacing=[round(s, 5) for s in tspacing],
        patch_size=patch,
        batch_size=batch_size,
        normalization=norm,
        network=NetworkConfig(arch="unet", features=features, kernels=kernels, strides=strides, deep_supervision=deep_supervision),
        median_shape=median_shape,
        foreground_inside=True,  # as nnU-Net samples; the dataclass default stays False for plans saved before stop 26
        mirror_axes=mirror_axes(ds.labels, fp.left_right_axes),
    )
