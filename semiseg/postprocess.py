"""Post-processing of label maps as composable steps that are data, not code.

A pipeline is a list of dicts such as ``{"step": "binary_closing", "classes": ["left_adrenal_gland"]}``
(JSON or YAML), resolved against the ``labels`` mapping of dataset.json (name -> int). Every step is a
small dataclass whose ``__call__(seg, spacing)`` returns a new array and never modifies its input.
Arrays are (z, y, x), z the axial axis; spacing is (z, y, x) in mm. Removed voxels become background
(label 0). Connected components are 3D, 26-connected (cc3d), and never cross class boundaries.

``flare22_seed_recipe`` is the post-processing of the FLARE22 uncertainty-guided self-learning paper
(section 2.3), in the paper's order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import cc3d
import numpy as np
from scipy import ndimage

Spacing = Sequence[float]

STEPS: dict[str, type["Step"]] = {}

FLARE22_ANCHORS = ("aorta", "inferior_vena_cava", "esophagus")


def _register(name: str):
    """Class decorator: make a step constructible from ``{"step": name, ...}``."""

    def wrap(cls: type[Step]) -> type[Step]:
        cls.name = name
        STEPS[name] = cls
        return cls

    return wrap


def _check_input(seg: np.ndarray, spacing: Spacing) -> tuple[float, float, float]:
    if not isinstance(seg, np.ndarray) or seg.ndim != 3:
        raise ValueError(f"segmentation must be a 3D (z, y, x) numpy array, got {getattr(seg, 'shape', type(seg))}")
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        raise ValueError(f"segmentation must have an integer dtype, got {seg.dtype}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"spacing must be three positive (z, y, x) values in mm, got {spacing}")
    return sp  # type: ignore[return-value]


def _components(seg: np.ndarray, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components of the chosen classes: (component map, voxel count per id, class per id); id 0 = none."""
    masked = np.where(np.isin(seg, list(ids)), seg, 0)
    cc = cc3d.connected_components(np.ascontiguousarray(masked), connectivity=26)
    n = int(cc.max())
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    klass = np.zeros(n + 1, dtype=np.int64)
    klass[cc.ravel()] = masked.ravel()
    return cc, counts, klass


def _drop(seg: np.ndarray, cc: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """Copy of ``seg`` with the components flagged in ``remove`` (indexed by component id) set to 0."""
    remove = remove.copy()
    remove[0] = False
    out = seg.copy()
    out[remove[cc]] = 0
    return out


@dataclass(kw_only=True)
class Step:
    """Base of all steps: holds the dataset labels and checks the class names a step refers to.

    ``strict=False`` drops names unknown to ``labels`` instead of raising, so one recipe can run on
    datasets that lack some of its classes; a step left with nothing to act on is a no-op.
    """

    name: ClassVar[str] = ""
    labels: Mapping[str, int]
    strict: InitVar[bool] = True

    def __post_init__(self, strict: bool) -> None:
        self.labels = dict(self.labels)
        self._resolve(strict)

    def _resolve(self, strict: bool) -> None:
        """Validate and filter the step's class-name fields (overridden by steps that name classes)."""

    def _known(self, names: Iterable[str] | None, strict: bool) -> tuple[str, ...] | None:
        """Names that exist in ``labels``; unknown ones raise when strict, else are dropped. None stays None."""
        if names is None:
            return None
        if isinstance(names, str):
            names = [names]
        names = tuple(names)
        unknown = [n for n in names if n not in self.labels]
        if unknown and strict:
            raise ValueError(f"{self.name}: label names {unknown} not in dataset labels {sorted(self.labels)}")
        background = [n for n in names if self.labels.get(n) == 0]
        if background:
            raise ValueError(f"{self.name}: {background} is the background label and cannot be a target class")
        return tuple(n for n in names if n in self.labels)

    def _ids(self, names: Sequence[str] | None) -> list[int]:
        """Label values of ``names``; None means every foreground class."""
        if names is None:
            return sorted(v for v in self.labels.values() if v != 0)
        return [self.labels[n] for n in names]

    @property
    def is_noop(self) -> bool:
        """True when name filtering (strict=False) left the step nothing to act on."""
        return False

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The step as configuration data (inverse of ``Step.from_dict``)."""
        out: dict[str, Any] = {"step": self.name}
        for f in dataclasses.fields(self):
            if f.name != "labels":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @staticmethod
    def from_dict(config: Mapping[str, Any], labels: Mapping[str, int], strict: bool = True) -> "Step":
        """Build a step from ``{"step": "<name>", ...params}``."""
        params = dict(config)
        name = params.pop("step", None)
        if name not in STEPS:
            raise ValueError(f"unknown post-processing step {name!r}; known steps: {sorted(STEPS)}")
        cls = STEPS[name]
        allowed = {f.name for f in dataclasses.fields(cls)} - {"labels"}
        extra = sorted(set(params) - allowed)
        if extra:
            raise ValueError(f"{name}: unknown parameters {extra}; allowed: {sorted(allowed)}")
        return cls(labels=labels, strict=strict, **params)


@_register("remove_small_components")
@dataclass(kw_only=True)
class RemoveSmallComponents(Step):
    """Remove components smaller than ``fraction`` x the smallest volume (mm^3) of that organ in training.

    ``min_volumes`` comes from ``min_class_volumes`` on the training labels; classes without an entry
    are left alone. A component is removed when its volume is strictly below the threshold.
    """

    min_volumes: dict[str, float]
    fraction: float = 0.5

    def _resolve(self, strict: bool) -> None:
        known = self._known(self.min_volumes, strict) or ()
        self.min_volumes = {n: float(self.min_volumes[n]) for n in known}
        if self.fraction < 0:
            raise ValueError(f"{self.name}: fraction must be >= 0, got {self.fraction}")

    @property
    def is_noop(self) -> bool:
        return not self.min_volumes

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        sp = _check_input(seg, spacing)
        if self.is_noop:
            return seg.copy()
        voxel_mm3 = sp[0] * sp[1] * sp[2]
        cc, counts, klass = _components(seg, self._ids(list(self.min_volumes)))
        threshold = np.zeros(klass.max(initial=0) + 1)
        for n, v in self.min_volumes.items():
            if self.labels[n] < threshold.size:
                threshold[self.labels[n]] = self.fraction * v
        return _drop(seg, cc, counts * voxel_mm3 < threshold[klass])


@_register("binary_closing")
@dataclass(kw_only=True)
class BinaryClosing(Step):
    """Binary closing of chosen classes (cube ``kernel`` in voxels) that only fills background voxels.

    Closing joins nearby fragments of small organs (adrenal glands) without ever overwriting another
    class. Each class is closed on the input; where two classes would fill the same background voxel,
    the class listed first wins. The image border does not erode the mask (closing is done with margin).
    """

    classes: tuple[str, ...]
    kernel: tuple[int, int, int] = (5, 5, 5)

    def _resolve(self, strict: bool) -> None:
        self.classes = self._known(self.classes, strict) or ()
        kernel = tuple(int(k) for k in self.kernel)
        if len(kernel) != 3 or min(kernel) < 1:
            raise ValueError(f"{self.name}: kernel must be three positive voxel sizes (z, y, x), got {self.kernel}")
        self.kernel = kernel  # type: ignore[assignment]

    @property
    def is_noop(self) -> bool:
        return not self.classes

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        _check_input(seg, spacing)
        out = seg.copy()
        for label in self._ids(self.classes):
            closed = _close(seg == label, self.kernel)
            out[closed & (out == 0)] = label
        return out


def _close(mask: np.ndarray, kernel: Sequence[int]) -> np.ndarray:
    """Closing computed on the mask's bounding box plus a kernel-sized zero margin (fast, no border effect)."""
    if not mask.any():
        return mask
    nz = np.nonzero(mask)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    region = tuple(slice(l, h) for l, h in zip(lo, hi))
    padded = np.pad(mask[region], [(k, k) for k in kernel])
    closed = ndimage.binary_closing(padded, structure=np.ones(tuple(kernel), bool))
    # Closing can only add voxels within the (kernel-margin) neighbourhood of the box; clip to the image.
    out = np.zeros_like(mask)
    src, dst = [], []
    for axis, k in enumerate(kernel):
        start, stop = lo[axis] - k, hi[axis] + k
        s0, s1 = max(start, 0), min(stop, mask.shape[axis])
        dst.append(slice(s0, s1))
        src.append(slice(s0 - start, s1 - start))
    out[tuple(dst)] = closed[tuple(src)]
    return out | mask


@_register("axial_range_mask")
@dataclass(kw_only=True)
class AxialRangeMask(Step):
    """Zero every axial slice outside the z range spanned by the anchor classes.

    Paper rule (FLARE22 self-learning, 2.3): slices above the first slice containing at least one of
    the anchors and below the last slice containing at least one of them are set to 0, i.e. keep
    z in [min z, max z] of the union of anchors, inclusive. No anchor present: nothing changes.
    """

    anchors: tuple[str, ...] = FLARE22_ANCHORS

    def _resolve(self, strict: bool) -> None:
        self.anchors = self._known(self.anchors, strict) or ()

    @property
    def is_noop(self) -> bool:
        return not self.anchors

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        _check_input(seg, spacing)
        out = seg.copy()
        if self.is_noop:
            return out
        present = np.flatnonzero(np.isin(seg, self._ids(self.anchors)).any(axis=(1, 2)))
        if present.size:
            out[: present[0]] = 0
            out[present[-1] + 1 :] = 0
        return out


@_register("relabel_enclosed")
@dataclass(kw_only=True)
class RelabelEnclosed(Step):
    """Relabel components of ``inner`` enclosed by ``outer`` in an axial slice as ``outer``.

    Fixes liver lesions predicted as gallbladder. Criterion: a 3D (26-connected) component of
    ``inner`` becomes ``outer`` if on at least one axial slice z where it has pixels, every one of
    those pixels lies in a hole of ``outer``'s 2D mask on z, i.e. in ``binary_fill_holes(outer_z)``
    minus ``outer_z``. Holes are found with 8-connected background, so the enclosing ring of
    ``outer`` must be 4-connected: a diagonal gap counts as open. A hole may also contain other
    classes; a component touching the image border in that slice is never enclosed there.
    """

    inner: str = "gallbladder"
    outer: str = "liver"

    def _resolve(self, strict: bool) -> None:
        names = self._known((self.inner, self.outer), strict) or ()
        self._active = len(names) == 2
        if self.inner == self.outer:
            raise ValueError(f"{self.name}: inner and outer must differ, both are {self.inner!r}")

    @property
    def is_noop(self) -> bool:
        return not self._active

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        _check_input(seg, spacing)
        if self.is_noop:
            return seg.copy()
        a, b = self.labels[self.inner], self.labels[self.outer]
        cc, _, _ = _components(seg, [a])
        enclosed_ids: set[int] = set()
        eight = np.ones((3, 3), bool)
        for z in np.flatnonzero((cc > 0).any(axis=(1, 2)) & (seg == b).any(axis=(1, 2))):
            outer_z = seg[z] == b
            hole = ndimage.binary_fill_holes(outer_z, structure=eight) & ~outer_z
            cc_z = cc[z]
            here = set(np.unique(cc_z[cc_z > 0]).tolist())
            leaking = set(np.unique(cc_z[(cc_z > 0) & ~hole]).tolist())
            enclosed_ids |= here - leaking
        out = seg.copy()
        if enclosed_ids:
            out[np.isin(cc, sorted(enclosed_ids))] = b
        return out


@_register("drop_small_relative")
@dataclass(kw_only=True)
class DropSmallRelative(Step):
    """Drop components smaller than ``fraction`` of their class's total segmented volume.

    ``classes=None`` means every foreground class. Removal is strict (``<``), so a class split into
    equal halves keeps both.
    """

    classes: tuple[str, ...] | None = None
    fraction: float = 0.1

    def _resolve(self, strict: bool) -> None:
        self.classes = self._known(self.classes, strict)
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"{self.name}: fraction must be in [0, 1], got {self.fraction}")

    @property
    def is_noop(self) -> bool:
        return self.classes == ()

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        _check_input(seg, spacing)
        if self.is_noop:
            return seg.copy()
        cc, counts, klass = _components(seg, self._ids(self.classes))
        totals = np.bincount(klass, weights=counts)
        return _drop(seg, cc, counts < self.fraction * totals[klass])


@_register("largest_component")
@dataclass(kw_only=True)
class LargestComponent(Step):
    """Keep only the largest component of each chosen class (``None`` = every foreground class).

    Ties go to the component found first in (z, y, x) raster order.
    """

    classes: tuple[str, ...] | None = None

    def _resolve(self, strict: bool) -> None:
        self.classes = self._known(self.classes, strict)

    @property
    def is_noop(self) -> bool:
        return self.classes == ()

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        _check_input(seg, spacing)
        if self.is_noop:
            return seg.copy()
        cc, counts, klass = _components(seg, self._ids(self.classes))
        keep = np.zeros(counts.size, bool)
        for label in np.unique(klass[1:]):
            ids = np.flatnonzero(klass == label)  # label > 0, so never the background id 0
            keep[ids[np.argmax(counts[ids])]] = True
        return _drop(seg, cc, ~keep)


@dataclass
class Pipeline:
    """Steps applied in order; built from configuration data with ``from_config``."""

    steps: list[Step] = field(default_factory=list)

    def __call__(self, seg: np.ndarray, spacing: Spacing) -> np.ndarray:
        _check_input(seg, spacing)
        out = seg.copy()
        for step in self.steps:
            out = step(out, spacing)
        return out

    @classmethod
    def from_config(
        cls, config: Sequence[Mapping[str, Any]], labels: Mapping[str, int], strict: bool = True
    ) -> "Pipeline":
        """Build from a list of step dicts; with ``strict=False`` steps left with no classes are skipped."""
        if isinstance(config, Mapping) or isinstance(config, str):
            raise ValueError("post-processing config must be a list of step dicts")
        steps = [Step.from_dict(c, labels, strict) for c in config]
        return cls([s for s in steps if not s.is_noop])

    def to_config(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]


def min_class_volumes(
    cases: Iterable[tuple[np.ndarray, Spacing]], labels: Mapping[str, int]
) -> dict[str, float]:
    """Smallest whole-organ volume (mm^3) per class over training label maps, to save with a model.

    A class's volume in a case is all its voxels times the voxel volume; cases where the class is
    absent do not count, and a class absent from every case is left out of the result.
    """
    names = {v: n for n, v in labels.items() if v != 0}
    best: dict[str, float] = {}
    for i, (seg, spacing) in enumerate(cases):
        sp = _check_input(seg, spacing)
        values, counts = np.unique(seg, return_counts=True)
        unknown = [int(v) for v in values if v != 0 and int(v) not in names]
        if unknown:
            raise ValueError(f"training label map {i} has values {unknown} not in labels {dict(labels)}")
        for v, c in zip(values.tolist(), counts.tolist()):
            if v != 0:
                vol = c * sp[0] * sp[1] * sp[2]
                best[names[v]] = min(best.get(names[v], vol), vol)
    return best


def flare22_seed_recipe(
    labels: Mapping[str, int],
    min_volumes: Mapping[str, float],
    strict: bool = True,
    adrenals: Sequence[str] = ("right_adrenal_gland", "left_adrenal_gland"),
    anchors: Sequence[str] = FLARE22_ANCHORS,
    inner: str = "gallbladder",
    outer: str = "liver",
) -> Pipeline:
    """The FLARE22 self-learning paper's post-processing (section 2.3), in the paper's order."""
    return Pipeline.from_config(
        [
            {"step": "remove_small_components", "min_volumes": dict(min_volumes), "fraction": 0.5},
            {"step": "binary_closing", "classes": list(adrenals), "kernel": [5, 5, 5]},
            {"step": "axial_range_mask", "anchors": list(anchors)},
            {"step": "relabel_enclosed", "inner": inner, "outer": outer},
            {"step": "drop_small_relative", "classes": None, "fraction": 0.1},
        ],
        labels,
        strict,
    )
