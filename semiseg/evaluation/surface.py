"""Surface distances the way the DeepMind ``surface-distance`` package measures them.

FLARE's NSD comes from that package, so we reproduce its algorithm rather than use a voxel-border
approximation: every 2x2x2 neighbourhood ("corner" between voxels) gets an 8-bit code, a border corner
is one whose code is neither 0 nor 255, and its surface area ("surfel" area) is the sum of the lengths
of its marching-cubes triangle normals after scaling by the voxel spacing. Distances are from each
border corner of one mask to the nearest border corner of the other (exact Euclidean distance
transform with ``sampling=spacing``). All area-weighted statistics use those surfel areas.

Arrays are (z, y, x) and spacing is (z, y, x) mm; any consistent axis order works, as long as the
mask axes and the spacing agree. The marching-cubes normals table is taken from MONAI (an installed
dependency, itself a copy of DeepMind's table), so the areas are the reference ones bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import ndimage

# Weight of each voxel of a 2x2x2 neighbourhood in its code; must match the normals table's order.
_CODE_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint8)
_ALL_INSIDE = 255


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each border surfel to the other surface, sorted ascending, with areas (mm^2)."""

    distances_gt_to_pred: np.ndarray
    distances_pred_to_gt: np.ndarray
    surfel_areas_gt: np.ndarray
    surfel_areas_pred: np.ndarray


@lru_cache(maxsize=1)
def _normals_table() -> np.ndarray:
    """(256, 4, 3) marching-cubes normals in index units; the length of a normal is a triangle's area."""
    from monai.metrics.utils import _get_neighbour_code_to_normals_table

    return np.asarray(_get_neighbour_code_to_normals_table(), dtype=np.float64)


@lru_cache(maxsize=64)
def _area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    s0, s1, s2 = spacing
    # A normal n = a x b of triangle edges scales componentwise by (s1*s2, s0*s2, s0*s1).
    scale = np.array([s1 * s2, s0 * s2, s0 * s1], dtype=np.float64)
    table = np.linalg.norm(_normals_table() * scale, axis=-1).sum(axis=-1)
    table.setflags(write=False)
    return table


def neighbour_code_to_surface_area(spacing: Sequence[float]) -> np.ndarray:
    """Surface area (mm^2) of each of the 256 neighbourhood codes for this voxel spacing."""
    return _area_table(_check_spacing(spacing))


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive finite numbers (z, y, x) in mm, got {tuple(spacing)}")
    return sp  # type: ignore[return-value]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of a 3D mask, or None when the mask is empty."""
    box = []
    for axis in range(mask.ndim):
        proj = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if proj.size == 0:
            return None
        box.append(slice(int(proj[0]), int(proj[-1]) + 1))
    return tuple(box)


def _neighbour_codes(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Code of every voxel corner in the box, including the corners one past its high end."""
    crop = np.zeros(tuple(s.stop - s.start + 1 for s in box), dtype=np.uint8)
    crop[:-1, :-1, :-1] = mask[box]
    # An even kernel is anchored at index 1: code[i] looks at voxels i-1 and i, cval 0 outside.
    return ndimage.correlate(crop, _CODE_KERNEL, mode="constant", cval=0)


def _sorted(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((areas, distances))  # by distance, ties by area, as the reference sorts
    return distances[order], areas[order]


def compute_surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Surfel distances and areas of two 3D binary masks; distances are inf where the other mask is empty."""
    gt, pred = np.asarray(mask_gt).astype(bool), np.asarray(mask_pred).astype(bool)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise ValueError(f"need two 3D masks of the same shape, got {gt.shape} and {pred.shape}")
    areas_table = neighbour_code_to_surface_area(spacing)
    sp = _check_spacing(spacing)
    box = _bounding_box(gt | pred)
    if box is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    code_gt, code_pred = _neighbour_codes(gt, box), _neighbour_codes(pred, box)
    border_gt = (code_gt != 0) & (code_gt != _ALL_INSIDE)
    border_pred = (code_pred != 0) & (code_pred != _ALL_INSIDE)

    def distance_to(border: np.ndarray) -> np.ndarray:
        if not border.any():
            return np.full(border.shape, np.inf)
        return ndimage.distance_transform_edt(~border, sampling=sp)

    d_gt_to_pred, a_gt = _sorted(distance_to(border_pred)[border_gt], areas_table[code_gt[border_gt]])
    d_pred_to_gt, a_pred = _sorted(distance_to(border_gt)[border_pred], areas_table[code_pred[border_pred]])
    return SurfaceDistances(d_gt_to_pred, d_pred_to_gt, a_gt, a_pred)


def compute_surface_dice_at_tolerance(sd: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface Dice: area of both surfaces within ``tolerance_mm`` of the other / total area.

    NaN when both surfaces are empty (the caller decides what that means).
    """
    total = sd.surfel_areas_gt.sum() + sd.surfel_areas_pred.sum()
    if total == 0:
        return float("nan")
    close = (
        sd.surfel_areas_gt[sd.distances_gt_to_pred <= tolerance_mm].sum()
        + sd.surfel_areas_pred[sd.distances_pred_to_gt <= tolerance_mm].sum()
    )
    return float(close / total)


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if distances.size == 0:
        return float("inf")
    cumulative = np.cumsum(areas) / areas.sum()
    idx = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(idx, distances.size - 1)])


def compute_robust_hausdorff(sd: SurfaceDistances, percent: float = 95.0) -> float:
    """Area-weighted ``percent``-th percentile Hausdorff distance (mm), max of both directions."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    return max(
        _directed_percentile(sd.distances_gt_to_pred, sd.surfel_areas_gt, percent),
        _directed_percentile(sd.distances_pred_to_gt, sd.surfel_areas_pred, percent),
    )


def compute_average_surface_distance(sd: SurfaceDistances) -> tuple[float, float]:
    """Area-weighted mean distance (mm) gt->pred and pred->gt; NaN for a direction with no surface."""

    def directed(d: np.ndarray, a: np.ndarray) -> float:
        return float((d * a).sum() / a.sum()) if a.size and a.sum() > 0 else float("nan")

    return (
        directed(sd.distances_gt_to_pred, sd.surfel_areas_gt),
        directed(sd.distances_pred_to_gt, sd.surfel_areas_pred),
    )


def surface_area(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Total marching-cubes surface area (mm^2) of a 3D binary mask."""
    return float(compute_surface_distances(mask, mask, spacing).surfel_areas_gt.sum())
