"""The grid math of prediction, once, in numpy: preprocessing geometry (non-zero box, normalisation,
resampled shape, trilinear resize), sliding-window placement and Gaussian weights, the z-slab streaming
of window outputs, and the slab-wise restore of class scores to the input grid.

Why numpy and no torch: the torch predictor (semiseg.inference, semiseg.data.preprocess) and the
torch-free deployment (semiseg.deploy) both import this module, and ``import torch`` alone costs ~220 MB
of RSS. The slab streaming is written against :class:`ArrayOps` so torch tensors on a GPU and numpy
arrays run the same bookkeeping; the float32 operations and their order are PyTorch's, so labels of
both predictors agree (tests/test_deploy.py).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence

import numpy as np

# elements of float32 scratch per chunk (x4 bytes): bounds the working memory of resampling and restoring
CHUNK_ELEMENTS = 16 * 1024 * 1024

Bbox = list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]]


# -- preprocessing geometry -----------------------------------------------------------------------
def nonzero_bbox(image: np.ndarray) -> Bbox:
    """Bounding box of voxels that are non-zero in any channel (whole image if none)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for ax in range(3):
        idx = np.where(mask.any(axis=tuple(i for i in range(3) if i != ax)))[0]
        box.append([int(idx[0]), int(idx[-1]) + 1])
    return box


def normalize(image: np.ndarray, schemes: list[dict[str, Any]]) -> np.ndarray:
    """CT: clip to the plan's foreground 0.5/99.5 percentiles, then its foreground z-score; else per-case
    z-score (float32). Computed in place in the output: a CT volume is 0.5 GB per float32 copy, and
    prediction's peak RAM is set here."""
    out = np.empty_like(image, dtype=np.float32)
    for c, sch in enumerate(schemes):
        o = out[c]
        o[...] = image[c]
        if sch["scheme"] == "ct":
            np.clip(o, np.float32(sch["lower"]), np.float32(sch["upper"]), out=o)
            o -= np.float32(sch["mean"])
            o /= np.float32(max(sch["std"], 1e-8))
        elif sch["scheme"] == "zscore":
            mean, std = o.mean(), max(float(o.std()), 1e-8)
            o -= mean
            o /= np.float32(std)
        elif sch["scheme"] != "none":
            raise ValueError(f"unknown normalisation scheme '{sch['scheme']}' (ct, zscore, none)")
    return out


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    return [max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target)]


def linear_source(in_size: int, out_size: int, fused: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (idx0, idx1, lambda) of PyTorch's linear interpolation with align_corners=False.

    ``fused``: scale * (i + 0.5) - 0.5 rounded once, as F.interpolate's compiled kernel does (a fused
    multiply-add; :func:`resize_linear`); unfused, as the restorer's own weights always were. They differ
    by an ulp at a few indices."""
    if in_size == out_size:
        i = np.arange(out_size)
        return i, i, np.zeros(out_size, np.float32)
    scale = np.float32(in_size / out_size)
    if fused:
        src = (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    else:
        src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    idx0 = np.minimum(src.astype(np.int64), in_size - 1)
    lam = (src - idx0).astype(np.float32)
    return idx0, np.minimum(idx0 + 1, in_size - 1), lam


def resize_linear(image: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """(C, z, y, x) -> (C, *new_shape) float32: ``F.interpolate(mode="trilinear", align_corners=False)``.

    PyTorch's kernel nests the 1D interpolations x inside y inside z (w0*a + w1*b at each level), which
    is exactly x, then y, then z done separably; done here in output z chunks to bound the scratch."""
    new_shape = [int(s) for s in new_shape]
    if list(image.shape[1:]) == new_shape:
        return image.astype(np.float32, copy=False)
    c = image.shape[0]
    (z0, z1, zl), (y0, y1, yl), (x0, x1, xl) = (linear_source(int(i), o, fused=True)
                                                for i, o in zip(image.shape[1:], new_shape))
    wy0, wy1 = (1 - yl)[:, None], yl[:, None]
    wx0, wx1 = 1 - xl, xl
    out = np.empty((c, *new_shape), np.float32)
    per_row = c * max(new_shape[1], image.shape[2]) * max(new_shape[2], image.shape[3]) * (image.shape[1] / new_shape[0] + 2)
    rows = max(1, int(CHUNK_ELEMENTS // per_row))
    for a in range(0, new_shape[0], rows):
        o = slice(a, min(new_shape[0], a + rows))
        lo, hi = int(z0[o][0]), int(z1[o][-1]) + 1
        src = np.asarray(image[:, lo:hi], dtype=np.float32)
        t = _lerp(src[..., x0], src[..., x1], wx0, wx1)
        t = _lerp(t[:, :, y0], t[:, :, y1], wy0, wy1)
        out[:, o] = _lerp(t[:, z0[o] - lo], t[:, z1[o] - lo], (1 - zl[o])[:, None, None], zl[o][:, None, None])
    return out


def _lerp(a: np.ndarray, b: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """float32 ``fma(a, w0, b * w1)``: the rounding of PyTorch's vectorised CPU kernel (a * w0 is exact in
    float64, so one float64 add and one rounding give the fused result), so resampled voxels are bit-equal."""
    return (a.astype(np.float64) * w0 + b * w1).astype(np.float32)


def preprocess(image: np.ndarray, spacing_zyx: Sequence[float], plan: Any,
               resize: Callable[[np.ndarray, list[int]], np.ndarray] = resize_linear) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop to non-zero, normalise, resample to the plan spacing with ``resize``. Returns the data and the
    properties that invert it (bbox, shapes; ``geometry`` holds only the input shape: callers with a
    full :class:`~semiseg.data.io.Geometry` replace it)."""
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN/Inf voxels")
    box = nonzero_bbox(image)
    cropped = image[(slice(None), *(slice(a, b) for a, b in box))]
    data = normalize(cropped, plan.normalization)
    new_shape = resampled_shape(cropped.shape[1:], spacing_zyx, plan.target_spacing)
    data = resize(data, new_shape)
    return data, {"geometry": {"shape_zyx": list(image.shape[1:])}, "bbox": box,
                  "shape_after_crop": list(cropped.shape[1:]), "shape_after_resample": new_shape}


# -- sliding window --------------------------------------------------------------------------------
def window_starts(image_size: int, tile: int, step: float) -> list[int]:
    """Start offsets along one axis (image_size >= tile), first at 0 and last flush with the end, like
    nnU-Net's ``compute_steps_for_sliding_window``."""
    if not 0 < step <= 1:
        raise ValueError(f"sliding-window step must be in (0, 1], got {step}")
    if image_size < tile:
        raise ValueError(f"image axis {image_size} is smaller than the patch {tile}; pad first")
    n = int(math.ceil((image_size - tile) / (tile * step))) + 1
    if n == 1:
        return [0]
    actual = (image_size - tile) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def patch_pads(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial axis that brings ``shape`` up to the patch, centred."""
    return [(max(0, int(p) - int(s)) // 2, max(0, int(p) - int(s)) - max(0, int(p) - int(s)) // 2)
            for s, p in zip(shape, patch)]


@lru_cache(maxsize=8)
def gaussian(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net v2's importance map: a Gaussian (sigma = patch * sigma_scale) centred on voxel patch // 2,
    maximum 1. nnU-Net builds it by Gaussian-filtering a delta (scipy, truncated at 4 sigma: never inside
    the patch at sigma = patch/8), which is this product of sampled 1D Gaussians; the same centre keeps
    our labels equal to nnU-Net's (a centre at (p - 1)/2 changes the weights by up to 15 % for p = 20)."""
    g = np.ones(patch, np.float64)
    for ax, p in enumerate(patch):
        sigma = p * sigma_scale
        x = np.arange(p, dtype=np.float64) - p // 2
        shape = [1] * len(patch)
        shape[ax] = p
        g = g * np.exp(-(x**2) / (2 * sigma**2)).reshape(shape)
    g = g / g.max()
    g = np.maximum(g, g[g > 0].min())  # no zero weights (nnU-Net does the same)
    return g.astype(np.float32)


@dataclass
class Slab:
    """Finished z rows ``[z0, z1)`` of the unpadded volume: one (K, z1 - z0, y, x) float32 array (numpy,
    or a CPU tensor from the torch predictor) of Gaussian-weighted mean logits per network."""

    z0: int
    z1: int
    logits: list[Any]


@dataclass(frozen=True)
class ArrayOps:
    """The four array operations slab streaming needs, for numpy or for torch on a device."""

    zeros: Callable[[tuple[int, ...]], Any]  # float32 zeros where the accumulators live
    cat: Callable[[list[Any], int], Any]  # concatenate along an axis
    stack: Callable[[list[Any]], Any]  # window crops -> one batch where the networks run
    host: Callable[[Any], Any]  # a finished slab -> the CPU


NUMPY_OPS = ArrayOps(lambda shape: np.zeros(shape, np.float32), lambda xs, axis: np.concatenate(xs, axis), np.stack,
                     lambda a: a)


def stream_slabs(forward: Callable[[int, Any], Any], n_nets: int, x: Any, pads: Sequence[tuple[int, int]],
                 patch: Sequence[int], num_outputs: int, step: float, batch: int, weight: Any, ops: ArrayOps,
                 on_batch: Callable[[int], None] | None = None) -> Iterator[Slab]:
    """Run ``forward(i, windows)`` (network i on a batch of windows of the padded float32 (C, z, y, x)
    volume ``x``) for every network on each batch, z-major, weight the outputs, and yield finished z-slabs.

    Once every window starting at or before a z row is done, all voxels above the next row's start are
    final: accumulators are kept only for the z range still open (about one patch deep), so live memory
    is ``n_nets x K x (about one patch depth) x y x x`` whatever the depth. ``on_batch(n)`` is told after
    each batch how many windows it held (progress bars)."""
    patch = [int(p) for p in patch]
    shape = tuple(int(s) for s in x.shape[1:])
    pz = patch[0]
    windows = list(itertools.product(*(window_starts(s, p, step) for s, p in zip(shape, patch))))
    (za, zb), (ya, yb), (xa, xb) = pads
    crop_yx = (slice(ya, shape[1] - yb), slice(xa, shape[2] - xb))
    lo = 0  # first z row still held in the accumulators (padded coordinates)
    accs = [ops.zeros((num_outputs, 0, *shape[1:])) for _ in range(n_nets)]
    norm = ops.zeros((0, *shape[1:]))

    def emit(upto: int) -> Iterator[Slab]:
        nonlocal lo, accs, norm
        a, b = max(lo, za), min(upto, shape[0] - zb)  # drop padded rows
        if b > a:
            n = norm[a - lo : b - lo][(slice(None), *crop_yx)]
            yield Slab(a - za, b - za, [ops.host(acc[:, a - lo : b - lo][(slice(None), slice(None), *crop_yx)] / n)
                                        for acc in accs])
        accs = [acc[:, upto - lo :] for acc in accs]
        norm = norm[upto - lo :]
        lo = upto

    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        hi = max(w[0] for w in chunk) + pz
        have = lo + norm.shape[0]
        if hi > have:  # extend the open z range
            accs = [ops.cat([acc, ops.zeros((num_outputs, hi - have, *shape[1:]))], 1) for acc in accs]
            norm = ops.cat([norm, ops.zeros((hi - have, *shape[1:]))], 0)
        sls = [tuple(slice(s, s + p) for s, p in zip(w, patch)) for w in chunk]
        inp = ops.stack([x[(slice(None), *sl)] for sl in sls])
        for k, acc in enumerate(accs):
            out = forward(k, inp) * weight
            for j, w in enumerate(chunk):
                z = w[0] - lo
                acc[:, z : z + pz, sls[j][1], sls[j][2]] += out[j]
        for j, w in enumerate(chunk):
            z = w[0] - lo
            norm[z : z + pz, sls[j][1], sls[j][2]] += weight
        if on_batch is not None:
            on_batch(len(chunk))
        nxt = windows[i + batch][0] if i + batch < len(windows) else shape[0]
        if nxt > lo:
            yield from emit(nxt)


def iter_slabs(nets: Sequence[Callable[[np.ndarray], np.ndarray]], data: np.ndarray, patch: Sequence[int],
               num_outputs: int, step: float = 0.5, batch: int = 2,
               on_batch: Callable[[int], None] | None = None) -> Iterator[Slab]:
    """numpy networks (float32 windows -> logits) over a (C, z, y, x) volume, Gaussian-weighted, no TTA."""
    pads = patch_pads(data.shape[1:], patch)
    x = np.pad(data, [(0, 0), *pads]) if any(a or b for a, b in pads) else data
    weight = gaussian(tuple(int(p) for p in patch))
    yield from stream_slabs(lambda k, inp: np.asarray(nets[k](inp), dtype=np.float32), len(nets),
                            x.astype(np.float32, copy=False), pads, patch, num_outputs, step, batch, weight, NUMPY_OPS,
                            on_batch)


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


# -- back to the input grid ----------------------------------------------------------------------------
def label_dtype(num_classes: int) -> np.dtype:
    """Smallest integer type for label maps: uint8 up to 256 classes."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int16)


class LabelRestorer:
    """Takes plan-spacing class scores (K, dz, y, x: probabilities or logits) slab by slab, in order, and
    writes labels on the input grid: trilinear (align_corners=False) resampling of the scores, argmax,
    paste into the crop box; ``finish()`` returns the input-shaped label map (zero outside the box).

    An output voxel is a convex combination of the 8 plan voxels of one cell, and a convex combination of
    score vectors that share their argmax keeps it: so labels are copied where a cell's 8 labels agree and
    scores are interpolated only at label borders. Never holds K x the input volume (14 classes x 512 x
    512 x 500 x 4 bytes = 7 GB for a CT), only a few output rows at a time."""

    def __init__(self, props: dict[str, Any], num_classes: int, out: np.ndarray | None = None):
        self.k = num_classes
        self.in_shape = tuple(int(s) for s in props["shape_after_resample"])
        self.crop_shape = tuple(int(s) for s in props["shape_after_crop"])
        full = tuple(int(s) for s in props["geometry"]["shape_zyx"])
        self.dtype = label_dtype(num_classes)
        self.out = np.zeros(full, self.dtype) if out is None else out
        if self.out.shape != full:
            raise ValueError(f"output array shape {self.out.shape} is not the input's {full}")
        self.box = tuple(slice(a, b) for a, b in props["bbox"])
        self.done = 0  # output z rows written so far
        self.received = 0  # plan-spacing rows received so far
        (self.z0, self.z1, self.zl), (self.y0, self.y1, self.yl), (self.x0, self.x1, self.xl) = (
            linear_source(i, o) for i, o in zip(self.in_shape, self.crop_shape))
        # plan-resolution rows [buf_lo, received): scores (K, n, y, x) and their argmax (n, y, x)
        self.buf = np.zeros((num_classes, 0, *self.in_shape[1:]), np.float32)
        self.lab = np.zeros((0, *self.in_shape[1:]), self.dtype)
        self.buf_lo = 0

    def _accept(self, z0: int, z1: int) -> None:
        if z0 != self.received:
            raise ValueError(f"slabs must arrive in order: expected row {self.received}, got {z0}")
        self.received = z1

    def _check_complete(self) -> None:
        if self.received != self.in_shape[0]:
            raise ValueError(f"prediction incomplete: {self.received} of {self.in_shape[0]} rows received")

    def push(self, z0: int, z1: int, scores: np.ndarray) -> None:
        self._accept(z0, z1)
        self.buf = np.concatenate([self.buf, scores.astype(np.float32, copy=False)], 1)
        self.lab = np.concatenate([self.lab, scores.argmax(0).astype(self.dtype)], 0)
        self._write_probability_rows()

    def finish(self) -> np.ndarray:
        self._check_complete()
        self.buf = self.lab = None  # type: ignore[assignment]
        return self.out

    def _write_probability_rows(self) -> None:
        """Output rows whose two source rows have arrived: labels copied where a cell's 8 corners agree,
        the remaining (border) voxels interpolated from the 8 corners."""
        n_out = self.crop_shape[0]
        ready = n_out if self.received == self.in_shape[0] else int(np.searchsorted(self.z1, self.received, side="left"))
        yo, xo = self.crop_shape[1:]
        rows = max(1, CHUNK_ELEMENTS // max(1, (self.k + 2) * yo * xo))
        yn = np.minimum(np.arange(self.in_shape[1]) + 1, self.in_shape[1] - 1)
        xn = np.minimum(np.arange(self.in_shape[2]) + 1, self.in_shape[2] - 1)
        zs = self.box[0].start
        while self.done < ready:
            o = np.arange(self.done, min(ready, self.done + rows))
            za, zb = self.z0[o] - self.buf_lo, self.z1[o] - self.buf_lo
            la, lb = self.lab[za], self.lab[zb]  # (n, y, x) labels of the two source rows
            uniform = la == lb
            for plane in (la, lb):
                uniform &= plane[:, :, xn] == la
                uniform &= plane[:, yn, :] == la
                uniform &= plane[:, yn][:, :, xn] == la
            r = np.arange(len(o))
            seg = la[np.ix_(r, self.y0, self.x0)]
            border = np.nonzero(~uniform[np.ix_(r, self.y0, self.x0)])
            if border[0].size:
                seg[border] = self._interpolate_argmax(za, zb, o, border)
            self.out[zs + o[0] : zs + o[-1] + 1, self.box[1], self.box[2]] = seg
            self.done = int(o[-1]) + 1
        if self.done < n_out:  # drop plan rows no remaining output row needs
            keep_from = min(int(self.z0[self.done]), self.received)
            if keep_from > self.buf_lo:
                self.buf = np.ascontiguousarray(self.buf[:, keep_from - self.buf_lo :])
                self.lab = np.ascontiguousarray(self.lab[keep_from - self.buf_lo :])
                self.buf_lo = keep_from

    def _interpolate_argmax(self, za: np.ndarray, zb: np.ndarray, o: np.ndarray, border: tuple[np.ndarray, ...]) -> np.ndarray:
        """Argmax of the trilinearly interpolated class scores at the given (row, y, x) output voxels."""
        r, oy, ox = border
        ny, nx = self.in_shape[1:]
        flat = self.buf.reshape(self.k, -1)
        lz, ly, lx = self.zl[o][r], self.yl[oy], self.xl[ox]
        acc = np.zeros((self.k, r.size), np.float32)
        for zi, wz in ((za[r], 1 - lz), (zb[r], lz)):
            for yi, wy in ((self.y0[oy], 1 - ly), (self.y1[oy], ly)):
                base = (zi * ny + yi) * nx
                wzy = wz * wy
                for xi, wx in ((self.x0[ox], 1 - lx), (self.x1[ox], lx)):
                    acc += np.take(flat, base + xi, axis=1) * (wzy * wx)
        return acc.argmax(0).astype(self.dtype)
