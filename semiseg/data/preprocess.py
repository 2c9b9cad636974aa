"""Preprocessing shared by training (cached once) and prediction (on the fly): crop to non-zero,
normalise, resample to the plan's spacing; plus the inverse that puts a prediction back on the input grid.
"""
from __future__ import annotations

import os
import signal
import sys
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from semiseg.config import Plan
from semiseg.data.cache import Cache, CacheError
from semiseg.data.folder_lock import FolderLock
from semiseg.data.io import Geometry, remove_temporaries
from semiseg.grid import Bbox, nonzero_bbox, normalize, preprocess, resampled_shape  # noqa: F401  (re-exported)


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, Bbox]:
    bbox = nonzero_bbox(image)
    sl = tuple(slice(a, b) for a, b in bbox)
    return image[(slice(None),) + sl], (label[sl] if label is not None else None), bbox


def resample_image(image: np.ndarray, new_shape: list[int]) -> np.ndarray:
    """(C, z, y, x) float -> new spatial shape, trilinear."""
    if list(image.shape[1:]) == list(new_shape):
        return image.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return F.interpolate(t, size=tuple(new_shape), mode="trilinear", align_corners=False)[0].numpy()


def resample_labels(label: np.ndarray, new_shape: list[int], classes: list[int] | None = None) -> np.ndarray:
    """Integer labels -> new shape by per-class linear interpolation and argmax (smoother than nearest);
    one class at a time so memory stays at two float volumes."""
    if list(label.shape) == list(new_shape):
        return label.copy()
    classes = classes if classes is not None else [int(c) for c in np.unique(label)]
    best = torch.full(tuple(new_shape), -1.0)
    out = torch.zeros(tuple(new_shape), dtype=torch.int16)
    lab = torch.from_numpy(label.astype(np.int16))
    for c in classes:
        m = F.interpolate((lab == c).float()[None, None], size=tuple(new_shape), mode="trilinear", align_corners=False)[0, 0]
        better = m > best
        best = torch.where(better, m, best)
        out[better] = c
    return out.numpy()


def resample_nearest(label: np.ndarray, new_shape: list[int]) -> np.ndarray:
    if list(label.shape) == list(new_shape):
        return label
    t = torch.from_numpy(label.astype(np.int16))[None, None].float()
    return F.interpolate(t, size=tuple(new_shape), mode="nearest-exact")[0, 0].numpy().astype(label.dtype)


def preprocess_array(image: np.ndarray, geometry: Geometry, plan: Plan, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One case: crop, normalise, resample (semiseg.grid.preprocess, torch's trilinear kernel). Returns data,
    label and the properties to invert it."""
    data, props = preprocess(image, geometry.spacing_zyx, plan, resize=resample_image)
    props["geometry"] = geometry.to_dict()
    lab = None
    if label is not None:
        cropped = label[tuple(slice(a, b) for a, b in props["bbox"])]
        if plan.label_resampling == "nearest":
            lab = resample_nearest(cropped.astype(np.int16), props["shape_after_resample"])
        else:
            lab = resample_labels(cropped, props["shape_after_resample"], sorted(plan.labels.values()))
    return data, lab, props


def class_locations(label: np.ndarray, classes: list[int], max_per_class: int = 10000, seed: int = 1234) -> dict[str, list[list[int]]]:
    """A sample of voxel coordinates per foreground class, for foreground oversampling."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[list[int]]] = {}
    for c in classes:
        if c == 0:
            continue
        idx = np.argwhere(label == c)
        if len(idx) > max_per_class:
            idx = idx[rng.choice(len(idx), max_per_class, replace=False)]
        out[str(c)] = idx.tolist()
    return out


def restore_to_input(seg_or_probs: np.ndarray, props: dict[str, Any], is_probabilities: bool) -> np.ndarray:
    """Invert preprocessing for a prediction at plan spacing: resample to the cropped shape (probabilities
    linearly, or labels nearest), paste into the bbox, and return a label map on the input grid."""
    crop_shape = props["shape_after_crop"]
    full_shape = props["geometry"]["shape_zyx"]
    if is_probabilities:
        probs = seg_or_probs
        if list(probs.shape[1:]) != list(crop_shape):
            t = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))[None]
            probs = F.interpolate(t, size=tuple(crop_shape), mode="trilinear", align_corners=False)[0].numpy()
        seg = probs.argmax(0).astype(np.int16)
    else:
        seg = resample_nearest(seg_or_probs.astype(np.int16), crop_shape)
    out = np.zeros(full_shape, dtype=np.int16)
    (z0, z1), (y0, y1), (x0, x1) = props["bbox"]
    out[z0:z1, y0:y1, x0:x1] = seg
    return out


# -- the cache (its files and their checks are semiseg.data.cache's) -------------------------------
def _worker_init(parent: int) -> None:
    """Preprocessing workers stop with their parent, however it stops: the kernel sends SIGTERM when the parent
    dies (Linux), and SIGTERM (also pool.terminate()'s) exits through ``finally`` blocks, which delete the
    temporary file being written."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the death signal was armed
        sys.exit(128 + signal.SIGTERM)


def _preprocess_one(args: tuple[Any, ...]) -> str:
    ds_root, split, plan_dict, case, with_label, out_dir = args
    from semiseg.data.dataset import RawDataset

    ds = RawDataset.open(ds_root, split)
    plan = Plan.from_dict(plan_dict)
    image, label, geo = ds.load_case(case, with_label=with_label)
    for path, channel in zip(ds.image_paths(case), image):
        if not np.isfinite(channel).all():
            raise ValueError(f"{path}: image contains {int((~np.isfinite(channel)).sum())} NaN/Inf voxels")
    data, lab, props = preprocess_array(image, geo, plan, label)
    if lab is not None:
        props["class_locations"] = class_locations(lab, sorted(plan.labels.values()))
    props["labelled"] = lab is not None
    Cache(Path(out_dir)).write_case(case, data, lab, props)  # the properties last: they mark the case complete
    return case


def preprocess_dataset(ds_root: str | Path, split: Any, plan: Plan, cases: dict[str, bool], out_dir: str | Path, workers: int = 1, progress: bool = True) -> None:
    """Preprocess ``cases`` (case -> with_label) into ``out_dir``; resumable: finished cases are skipped; one
    writer at a time (semiseg.data.folder_lock): a second one waits for the first, then does what is left."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not _todo(ds_root, split, plan, cases, out):
        return  # nothing to write: no lock needed (readers side by side, e.g. benchmark --jobs children)
    with FolderLock(out, "preprocess", wait=True):
        remove_temporaries(out)  # left by a writer killed mid-file: under the lock, no other writer is live
        try:
            _preprocess_all(_todo(ds_root, split, plan, cases, out), out, workers, progress)  # again: another writer may have finished
        finally:
            remove_temporaries(out)  # interrupted: workers are stopped by now (pool.terminate joins them)


def _todo(ds_root: str | Path, split: Any, plan: Plan, cases: dict[str, bool], out: Path) -> list[tuple]:
    """The cases to (re)do: not cached yet, cached with the other label use, or cached arrays that do not match
    their properties (a corrupt or truncated file is redone, with a note)."""
    import dataclasses

    todo, cache = [], Cache(out)
    for case, with_label in cases.items():
        try:
            props = cache.props(case)
        except CacheError:
            props = None  # corrupt properties: the case is redone
        if props is not None and props.get("labelled") == with_label:
            damaged = cache.problems(case, props, with_label)
            if not damaged:
                continue
            print(f"{damaged[0][0]}: cached array {damaged[0][1]}; preprocessing '{case}' again", file=sys.stderr)
        todo.append((str(ds_root), split, dataclasses.asdict(plan), case, with_label, str(out)))
    return todo


def _preprocess_all(todo: list[tuple], out: Path, workers: int, progress: bool) -> None:
    if not todo:
        return
    bar = tqdm(total=len(todo), desc="preprocess", disable=not progress)
    if workers <= 1:
        for a in todo:
            _preprocess_one(a)
            bar.update()
    else:
        with get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            for _ in pool.imap_unordered(_preprocess_one, todo):
                bar.update()
    bar.close()
