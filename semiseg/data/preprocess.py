"""Preprocessing shared by training (cached once) and prediction (on the fly): crop to non-zero,
normalise, resample to the plan's spacing; plus the inverse that puts a prediction back on the input grid.
"""
from __future__ import annotations

import json
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
from semiseg.data.folder_lock import FolderLock
from semiseg.data.io import Geometry, atomic_save_npy, atomic_write_json, remove_temporaries

Bbox = list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]]


def nonzero_bbox(image: np.ndarray) -> Bbox:
    """Bounding box of voxels that are non-zero in any channel (whole image if none)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return [[0, s] for s in mask.shape]
    bbox = []
    for ax in range(3):
        other = tuple(i for i in range(3) if i != ax)
        idx = np.where(mask.any(axis=other))[0]
        bbox.append([int(idx[0]), int(idx[-1]) + 1])
    return bbox


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, Bbox]:
    bbox = nonzero_bbox(image)
    sl = tuple(slice(a, b) for a, b in bbox)
    return image[(slice(None),) + sl], (label[sl] if label is not None else None), bbox


def normalize(image: np.ndarray, schemes: list[dict[str, Any]]) -> np.ndarray:
    """CT: clip to foreground 0.5/99.5 percentiles, then global foreground z-score; else per-case z-score."""
    # computed in place in ``out`` (same float32 operations as the plain expressions): a CT volume is
    # 0.5 GB per float32 copy, and prediction's peak RAM is set here
    out = np.empty_like(image, dtype=np.float32)
    for c, sch in enumerate(schemes):
        o = out[c]
        if sch["scheme"] == "ct":
            o[...] = image[c]
            np.clip(o, np.float32(sch["lower"]), np.float32(sch["upper"]), out=o)
            o -= np.float32(sch["mean"])
            o /= np.float32(max(sch["std"], 1e-8))
        elif sch["scheme"] == "zscore":
            o[...] = image[c]
            mean, std = o.mean(), max(float(o.std()), 1e-8)
            o -= mean
            o /= np.float32(std)
        elif sch["scheme"] == "none":
            o[...] = image[c]
        else:
            raise ValueError(f"unknown normalisation scheme '{sch['scheme']}' (ct, zscore, none)")
    return out


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: list[float]) -> list[int]:
    return [max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target)]


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
    """One case: crop, normalise, resample. Returns data, label and the properties to invert it."""
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN/Inf voxels")
    cropped, lab, bbox = crop_to_nonzero(image, label)
    data = normalize(cropped, plan.normalization)
    new_shape = resampled_shape(cropped.shape[1:], geometry.spacing_zyx, plan.target_spacing)
    data = resample_image(data, new_shape)
    if lab is not None:
        lab = resample_labels(lab, new_shape, sorted(plan.labels.values()))
    props = {"geometry": geometry.to_dict(), "bbox": bbox, "shape_after_crop": list(cropped.shape[1:]), "shape_after_resample": new_shape}
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


# -- the cache ---------------------------------------------------------------------------------
# RUN/cache/<case>.npy (C, z, y, x) float32, <case>_seg.npy (z, y, x) int16 (labelled cases only) and <case>.json,
# the properties, written last; "arrays" in it records each array's shape and dtype, checked whenever one is read.
DATA_DTYPE, SEG_DTYPE = "float32", "int16"


class CacheError(ValueError):
    """A cached array that does not match its properties (corrupt, truncated or from another preprocessing)."""


def _array_specs(props: dict[str, Any], with_label: bool) -> dict[str, dict[str, Any]]:
    """Expected shape and dtype of a case's arrays: as recorded, or (caches written before the record) the
    resampled shape with any channel count."""
    spatial = props.get("shape_after_resample")  # None: a hand-made entry; its shapes are not checked
    specs = {"data": {"shape": None if spatial is None else [None, *spatial], "dtype": DATA_DTYPE}}
    if with_label:
        specs["seg"] = {"shape": spatial, "dtype": SEG_DTYPE}
    recorded = props.get("arrays", {})
    return {k: recorded.get(k, v) for k, v in specs.items()}


def _array_path(cache: Path, case: str, which: str) -> Path:
    return cache / (f"{case}.npy" if which == "data" else f"{case}_seg.npy")


def array_problem(path: Path, spec: dict[str, Any]) -> str | None:
    """None if the .npy at ``path`` is whole and has the recorded shape and dtype, else what is wrong (reads the
    header only: cheap enough to run on every read)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offset = f.tell()
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, EOFError) as e:
        return f"has an unreadable header ({e})"
    want = spec["shape"]
    wrong_shape = want is not None and (len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape)))
    if wrong_shape or str(dtype) != spec["dtype"]:
        return f"holds {str(dtype)} {list(shape)}, its properties say {spec['dtype']} {want}"
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = os.path.getsize(path)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    return None


def load_cached(cache: str | Path, case: str, with_label: bool, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """A cached case's image (and label), each checked against its properties first: a corrupt or truncated
    file is a CacheError naming it, not a cryptic mmap error or a silently wrong array."""
    cache = Path(cache)
    pj = cache / f"{case}.json"
    try:
        props = json.loads(pj.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{pj}: case '{case}' is not in the preprocessing cache") from None
    except ValueError as e:
        raise CacheError(f"{pj}: corrupt cache properties ({e}); delete it and run `semiseg preprocess` on the run folder again") from None
    out: dict[str, np.ndarray] = {}
    for which, spec in _array_specs(props, with_label).items():
        path = _array_path(cache, case, which)
        why = array_problem(path, spec)
        if why is not None:
            raise CacheError(f"{path}: cached array {why}; run `semiseg preprocess` on the run folder again "
                             "(it redoes damaged cases)")
        out[which] = np.load(path, mmap_mode="r" if mmap else None)
    return out["data"], out.get("seg")


def cached_foreground(cache: str | Path, case: str) -> bool:
    """Whether a cached labelled case has any foreground voxel (its class locations are not all empty)."""
    props = json.loads((Path(cache) / f"{case}.json").read_text())
    return any(len(v) for v in props.get("class_locations", {}).values())


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
    out = Path(out_dir)
    data = data.astype(DATA_DTYPE, copy=False)
    atomic_save_npy(out / f"{case}.npy", data)
    props["arrays"] = {"data": {"shape": list(data.shape), "dtype": DATA_DTYPE}}
    if lab is not None:
        lab = lab.astype(SEG_DTYPE)
        atomic_save_npy(out / f"{case}_seg.npy", lab)
        props["arrays"]["seg"] = {"shape": list(lab.shape), "dtype": SEG_DTYPE}
        props["class_locations"] = class_locations(lab, sorted(plan.labels.values()))
    props["labelled"] = lab is not None
    atomic_write_json(out / f"{case}.json", props)  # written last: marks the case complete
    return case


def preprocess_dataset(ds_root: str | Path, split: Any, plan: Plan, cases: dict[str, bool], out_dir: str | Path, workers: int = 1, progress: bool = True) -> None:
    """Preprocess ``cases`` (case -> with_label) into ``out_dir``; resumable: finished cases are skipped; one
    writer at a time (semiseg.data.folder_lock)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not _todo(ds_root, split, plan, cases, out):
        return  # nothing to write: no lock needed (readers side by side, e.g. benchmark --jobs children)
    with FolderLock(out, "preprocess"):
        remove_temporaries(out)  # left by a writer killed mid-file: under the lock, no other writer is live
        try:
            _preprocess_all(_todo(ds_root, split, plan, cases, out), out, workers, progress)  # again: another writer may have finished
        finally:
            remove_temporaries(out)  # interrupted: workers are stopped by now (pool.terminate joins them)


def _todo(ds_root: str | Path, split: Any, plan: Plan, cases: dict[str, bool], out: Path) -> list[tuple]:
    """The cases to (re)do: not cached yet, cached with the other label use, or cached arrays that do not match
    their properties (a corrupt or truncated file is redone, with a note)."""
    import dataclasses

    todo = []
    for case, with_label in cases.items():
        pj = out / f"{case}.json"
        try:
            props = json.loads(pj.read_text()) if pj.is_file() else None
        except ValueError:
            props = None
        if props is not None and props.get("labelled") == with_label:
            damaged = [(p, why) for which, spec in _array_specs(props, with_label).items()
                       if (why := array_problem(p := _array_path(out, case, which), spec)) is not None]
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
