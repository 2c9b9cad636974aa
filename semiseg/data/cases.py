"""Finding the cases of an input folder (nnU-Net's ``{case}_{XXXX}{ending}`` naming), torch-free: shared
by the torch predictor and the deployment predictor (semiseg.deploy), which must not import torch."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from semiseg.data.io import Geometry, ImageError, read_array

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd")


def _split_ending(name: str) -> tuple[str, str] | None:
    for e in IMAGE_ENDINGS:
        if name.endswith(e):
            return name[: -len(e)], e
    return None


def discover_cases(path: str | Path, num_channels: int = 1) -> dict[str, tuple[list[Path], str]]:
    """case -> (channel files, file ending). Files named ``{case}_{XXXX}{ending}`` are grouped by case
    (nnU-Net's convention); with one channel, any other image file is a case of its own."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: input not found")
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    groups: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    pat = re.compile(r"^(.*)_(\d{4})$")
    for f in files:
        split = _split_ending(f.name)
        if split is None:
            if p.is_file():
                raise ImageError(f"{f}: not an image file (expected one of {IMAGE_ENDINGS})")
            continue
        stem, ending = split
        m = pat.match(stem)
        case, ch = (m.group(1), int(m.group(2))) if m else (stem, 0)
        if not m and num_channels != 1:
            raise ImageError(f"{f}: multi-channel models need files named CASE_XXXX{ending}")
        groups.setdefault(case, {})[ch] = f
        endings[case] = ending
    out = {}
    for case, chans in groups.items():
        extra = sorted(c for c in chans if c >= num_channels)
        if extra:  # a file the model does not take would be ignored silently
            raise ImageError(f"{chans[extra[0]]}: channel {extra[0]} file, but the model takes {num_channels} channel(s) "
                             f"({', '.join(f'{case}_{c:04d}' for c in range(num_channels))}); remove it from the input, "
                             f"or use a model trained on {max(extra) + 1} channels")
        missing = [c for c in range(num_channels) if c not in chans]
        if missing:
            raise ImageError(f"{p}: case '{case}' lacks channel file(s) {missing} (expected {case}_{missing[0]:04d}{endings[case]})")
        out[case] = ([chans[c] for c in range(num_channels)], endings[case])
    if not out:
        raise FileNotFoundError(f"{p}: no image files ({', '.join(IMAGE_ENDINGS)})")
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), checked: 0 <= i < n (shards 0/4 .. 3/4 together cover every case once)."""
    m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard expects i/n with whole numbers, e.g. 0/4, got '{text}'")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: needs n >= 1 and 0 <= i < n (e.g. 0/4 .. 3/4)")
    return index, count


def shard_of(cases: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` of ``count`` of the sorted case names: contiguous blocks whose sizes differ by at
    most one. The same names give the same split on every machine, so the ``count`` shards partition
    the cases: every case in exactly one shard, whoever runs which shard, in any order."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: needs count >= 1 and 0 <= index < count")
    ordered = sorted(cases)
    return ordered[len(ordered) * index // count: len(ordered) * (index + 1) // count]


def read_channels(paths: Sequence[Path], num_channels: int, native_dtype: bool = False) -> tuple[np.ndarray, Geometry]:
    """Channel files -> (C, z, y, x), filled in place (no stacked copy); errors name the file.

    float32 by default; with ``native_dtype`` an integer image (CT is int16) keeps its type when it has
    one channel, halving the largest array (normalisation makes the float32 copy anyway)."""
    if len(paths) != num_channels:
        raise ImageError(f"{paths[0]}: the model needs {num_channels} channel(s), found {len(paths)} file(s)")
    image: np.ndarray | None = None
    geo: Geometry | None = None
    for c, p in enumerate(paths):
        arr, g = read_array(p)
        if geo is None:
            geo = g
            keep = native_dtype and len(paths) == 1 and np.issubdtype(arr.dtype, np.integer)
            image = arr[None] if keep else np.empty((len(paths), *arr.shape), np.float32)
        elif (diff := geo.matches(g)) is not None:
            raise ImageError(f"{p}: channel geometry differs from channel 0: {diff}")
        assert image is not None
        if image.dtype == np.float32:
            image[c] = arr
            bad = int(np.count_nonzero(~np.isfinite(image[c])))
            if bad:
                raise ImageError(f"{p}: image contains {bad} NaN/Inf voxels")
        del arr
    assert image is not None and geo is not None
    return image, geo
