"""numpy ports of the prediction math of semiseg.data.preprocess, semiseg.inference.sliding_window and
semiseg.inference.restore (probability/logit mode), so that deployment needs no torch.

Why copies and not imports: those modules import torch at the top (their torch halves share the file),
and ``import torch`` alone costs ~220 MB of RSS. Each function here performs the same float32 operations
in the same order as its torch twin (tests/test_deploy.py checks them against each other), so labels of
the deploy path equal the torch predictor's on the same ONNX network.
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


# -- preprocessing (semiseg.data.preprocess) ------------------------------------------------------
def nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """Bounding box [[z0, z1], [y0, y1], [x0, x1]] of voxels non-zero in any channel (whole image if none)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for ax in range(3):
        idx = np.where(mask.any(axis=tuple(i for i in range(3) if i != ax)))[0]
        box.append([int(idx[0]), int(idx[-1]) + 1])
    return box


def normalize(image: np.ndarray, schemes: list[dict[str, Any]]) -> np.ndarray:
    """CT: clip to the plan's foreground percentiles, then its z-score; else per-case z-score (float32)."""
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


def linear_source(in_size: int, out_size: int, fused: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (idx0, idx1, lambda) of PyTorch's linear interpolation with align_corners=False.

    ``fused``: scale * (i + 0.5) - 0.5 rounded once, as F.interpolate's compiled kernel does (a fused
    multiply-add); unfused is semiseg.inference.restore.linear_source (the torch restorer's own numpy
    weights). They differ by an ulp at a few indices; each twin uses the one its torch original uses."""
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
    (z0, z1, zl), (y0, y1, yl), (x0, x1, xl) = (linear_source(int(i), o) for i, o in zip(image.shape[1:], new_shape))
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


def preprocess(image: np.ndarray, spacing_zyx: Sequence[float], plan: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop to non-zero, normalise, resample to the plan spacing (semiseg.data.preprocess.preprocess_array)."""
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN/Inf voxels")
    box = nonzero_bbox(image)
    cropped = image[(slice(None), *(slice(a, b) for a, b in box))]
    data = normalize(cropped, plan.normalization)
    new_shape = resampled_shape(cropped.shape[1:], spacing_zyx, plan.target_spacing)
    data = resize_linear(data, new_shape)
    return data, {"bbox": box, "shape_after_crop": list(cropped.shape[1:]), "shape_after_resample": new_shape,
                  "shape_zyx": list(image.shape[1:])}


# -- sliding window (semiseg.inference.sliding_window) -------------------------------------------------
def window_starts(image_size: int, tile: int, step: float) -> list[int]:
    """Start offsets along one axis (image_size >= tile), first at 0 and last flush with the end (nnU-Net)."""
    if not 0 < step <= 1:
        raise ValueError(f"sliding-window step must be in (0, 1], got {step}")
    if image_size < tile:
        raise ValueError(f"image axis {image_size} is smaller than the patch {tile}; pad first")
    n = int(math.ceil((image_size - tile) / (tile * step))) + 1
    if n == 1:
        return [0]
    actual = (image_size - tile) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


@lru_cache(maxsize=8)
def gaussian(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net v2's importance map: Gaussian (sigma = patch/8) centred on voxel patch // 2, max 1, no zeros."""
    g = np.ones(patch, np.float64)
    for ax, p in enumerate(patch):
        sigma = p * sigma_scale
        x = np.arange(p, dtype=np.float64) - p // 2
        shape = [1] * len(patch)
        shape[ax] = p
        g = g * np.exp(-(x**2) / (2 * sigma**2)).reshape(shape)
    g = g / g.max()
    g = np.maximum(g, g[g > 0].min())
    return g.astype(np.float32)


@dataclass
class Slab:
    """Finished z rows [z0, z1) of the unpadded volume: weighted-mean logits (K, dz, y, x) per network."""

    z0: int
    z1: int
    logits: list[np.ndarray]


def iter_slabs(nets: Sequence[Callable[[np.ndarray], np.ndarray]], data: np.ndarray, patch: Sequence[int],
               num_outputs: int, step: float = 0.5, batch: int = 2,
               on_batch: Callable[[int], None] | None = None) -> Iterator[Slab]:
    """Every network on each batch of windows (z-major), Gaussian-weighted; yields finished z-slabs so only
    about one patch depth of K-channel accumulators is ever alive (sliding_window.iter_slabs, no TTA).
    ``on_batch(n)`` is told after each batch how many windows it held (progress bars)."""
    patch = [int(p) for p in patch]
    pads = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2) for s, p in zip(data.shape[1:], patch)]
    x = np.pad(data, [(0, 0), *pads]) if any(a or b for a, b in pads) else data
    x = x.astype(np.float32, copy=False)
    shape = tuple(x.shape[1:])
    pz = patch[0]
    windows = list(itertools.product(*(window_starts(s, p, step) for s, p in zip(shape, patch))))
    weight = gaussian(tuple(patch))
    (za, zb), (ya, yb), (xa, xb) = pads
    crop_yx = (slice(ya, shape[1] - yb), slice(xa, shape[2] - xb))
    lo = 0
    accs = [np.zeros((num_outputs, 0, *shape[1:]), np.float32) for _ in nets]
    norm = np.zeros((0, *shape[1:]), np.float32)

    def emit(upto: int) -> Iterator[Slab]:
        nonlocal lo, accs, norm
        a, b = max(lo, za), min(upto, shape[0] - zb)
        if b > a:
            n = norm[a - lo : b - lo][(slice(None), *crop_yx)]
            yield Slab(a - za, b - za, [acc[:, a - lo : b - lo][(slice(None), slice(None), *crop_yx)] / n for acc in accs])
        accs = [acc[:, upto - lo :] for acc in accs]
        norm = norm[upto - lo :]
        lo = upto

    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        hi = max(w[0] for w in chunk) + pz
        have = lo + norm.shape[0]
        if hi > have:
            accs = [np.concatenate([acc, np.zeros((num_outputs, hi - have, *shape[1:]), np.float32)], 1) for acc in accs]
            norm = np.concatenate([norm, np.zeros((hi - have, *shape[1:]), np.float32)], 0)
        sls = [tuple(slice(s, s + p) for s, p in zip(w, patch)) for w in chunk]
        inp = np.stack([x[(slice(None), *sl)] for sl in sls])
        for net, acc in zip(nets, accs):
            out = np.asarray(net(inp), dtype=np.float32) * weight
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


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


# -- back to the input grid (semiseg.inference.restore.LabelRestorer, linear mode) -----------------------
class LabelRestorer:
    """Takes plan-spacing class scores (K, dz, y, x) slab by slab, in order, and writes labels on the input
    grid: trilinear (align_corners=False) resampling of the scores, argmax, paste into the crop box.

    An output voxel is a convex combination of the 8 plan voxels of one cell, and a convex combination of
    score vectors that share their argmax keeps it: so labels are copied where a cell's 8 labels agree and
    scores are interpolated only at label borders. Never holds K x the input volume."""

    def __init__(self, props: dict[str, Any], num_classes: int):
        self.k = num_classes
        self.in_shape = tuple(int(s) for s in props["shape_after_resample"])
        self.crop_shape = tuple(int(s) for s in props["shape_after_crop"])
        self.dtype = np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int16)
        self.out = np.zeros(tuple(int(s) for s in props["shape_zyx"]), self.dtype)
        self.box = tuple(slice(a, b) for a, b in props["bbox"])
        self.done = self.received = self.buf_lo = 0
        (self.z0, self.z1, self.zl), (self.y0, self.y1, self.yl), (self.x0, self.x1, self.xl) = (
            linear_source(i, o, fused=False) for i, o in zip(self.in_shape, self.crop_shape))
        self.buf = np.zeros((num_classes, 0, *self.in_shape[1:]), np.float32)  # plan rows [buf_lo, received)
        self.lab = np.zeros((0, *self.in_shape[1:]), self.dtype)

    def push(self, z0: int, z1: int, scores: np.ndarray) -> None:
        if z0 != self.received:
            raise ValueError(f"slabs must arrive in order: expected row {self.received}, got {z0}")
        self.received = z1
        self.buf = np.concatenate([self.buf, scores.astype(np.float32, copy=False)], 1)
        self.lab = np.concatenate([self.lab, scores.argmax(0).astype(self.dtype)], 0)
        self._write_rows()

    def finish(self) -> np.ndarray:
        if self.received != self.in_shape[0]:
            raise ValueError(f"prediction incomplete: {self.received} of {self.in_shape[0]} rows received")
        self.buf = self.lab = None  # type: ignore[assignment]
        return self.out

    def _write_rows(self) -> None:
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
            la, lb = self.lab[za], self.lab[zb]
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
        """Argmax of the trilinearly interpolated scores at the given (row, y, x) output voxels."""
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
