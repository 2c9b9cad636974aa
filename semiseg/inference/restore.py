"""Put a prediction made at plan spacing back on the input grid, slab by slab, without ever holding a
(K, full input volume) float array.

``restore_to_input`` (semiseg.data.preprocess) resamples all K probability channels at the input's
resolution at once: 14 classes x 512 x 512 x 500 x 4 bytes = 7 GB for a CT. :class:`LabelRestorer`
computes the same labels from z-slabs as the sliding window finishes them, a few output rows at a time,
straight into the uint8 output. Each output voxel is a convex combination of the 8 plan voxels of one
cell (PyTorch's ``align_corners=False`` source indices and weights), and a convex combination of
score vectors (probabilities or logits) with the same argmax keeps that argmax: so labels are copied wherever a cell's 8
labels agree and probabilities are interpolated only at the few voxels along label borders. Argmax mode keeps only plan-spacing labels (uint8)
and resamples them by nearest neighbour with precomputed index vectors.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# elements of float32 scratch per in-plane resize chunk (x4 bytes): bounds the restorer's working memory
CHUNK_ELEMENTS = 16 * 1024 * 1024


def label_dtype(num_classes: int) -> np.dtype:
    """Smallest integer type for label maps: uint8 up to 256 classes."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int16)


def linear_source(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (idx0, idx1, lambda) of PyTorch's linear interpolation with align_corners=False."""
    if in_size == out_size:
        i = np.arange(out_size)
        return i, i, np.zeros(out_size, np.float32)
    scale = np.float32(in_size / out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    idx0 = np.minimum(src.astype(np.int64), in_size - 1)
    lam = (src - idx0).astype(np.float32)
    idx1 = np.minimum(idx0 + 1, in_size - 1)
    return idx0, idx1, lam


def nearest_source(in_size: int, out_size: int) -> np.ndarray:
    """Per output index, the source index of PyTorch's ``nearest-exact`` mode (taken from PyTorch itself)."""
    if in_size == out_size:
        return np.arange(out_size)
    t = torch.arange(in_size, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=out_size, mode="nearest-exact")[0, 0].long().numpy()


class LabelRestorer:
    """Collects slabs of plan-spacing predictions and writes labels on the input grid.

    ``push(z0, z1, pred)`` takes rows [z0, z1) of the plan-spacing volume in order: class scores
    (K, dz, y, x: probabilities or logits) in ``linear`` mode, labels (dz, y, x) or scores in ``argmax`` mode
    (nearest neighbour). ``finish()`` returns the
    full input-shaped label map (zero outside the crop box)."""

    def __init__(self, props: dict[str, Any], num_classes: int, mode: str, out: np.ndarray | None = None):
        if mode == "probabilities":  # the class-score kind does not matter to the restorer
            mode = "linear"
        if mode not in ("linear", "argmax"):
            raise ValueError(f"mode must be 'linear' (probabilities or logits) or 'argmax', got '{mode}'")
        self.mode = mode
        self.k = num_classes
        self.in_shape = tuple(int(s) for s in props["shape_after_resample"])
        self.crop_shape = tuple(int(s) for s in props["shape_after_crop"])
        full = tuple(int(s) for s in props["geometry"]["shape_zyx"])
        self.dtype = label_dtype(num_classes)
        self.out = np.zeros(full, self.dtype) if out is None else out
        if self.out.shape != full:
            raise ValueError(f"output array shape {self.out.shape} is not the input's {full}")
        (z0, z1), (y0, y1), (x0, x1) = props["bbox"]
        self.box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        self.done = 0  # output z rows written so far
        self.received = 0  # plan-spacing rows received so far
        if mode == "argmax":
            self.labels = np.zeros(self.in_shape, self.dtype)
        else:
            self.z0_idx, self.z1_idx, self.z_lam = linear_source(self.in_shape[0], self.crop_shape[0])
            self.y0_idx, self.y1_idx, self.y_lam = linear_source(self.in_shape[1], self.crop_shape[1])
            self.x0_idx, self.x1_idx, self.x_lam = linear_source(self.in_shape[2], self.crop_shape[2])
            # plan-resolution rows [buf_lo, received): probabilities (K, n, y, x) and their argmax (n, y, x)
            self.buf = np.zeros((num_classes, 0, *self.in_shape[1:]), np.float32)
            self.lab = np.zeros((0, *self.in_shape[1:]), self.dtype)
            self.buf_lo = 0

    # -- input ----------------------------------------------------------------------------------
    def push(self, z0: int, z1: int, pred: torch.Tensor) -> None:
        if z0 != self.received:
            raise ValueError(f"slabs must arrive in order: expected row {self.received}, got {z0}")
        self.received = z1
        if self.mode == "argmax":
            self.labels[z0:z1] = (pred if pred.ndim == 3 else pred.argmax(0)).numpy().astype(self.dtype, copy=False)
            return
        probs = pred.float().numpy()
        self.buf = np.concatenate([self.buf, probs], 1)
        self.lab = np.concatenate([self.lab, probs.argmax(0).astype(self.dtype)], 0)
        self._write_probability_rows()

    def finish(self) -> np.ndarray:
        if self.received != self.in_shape[0]:
            raise ValueError(f"prediction incomplete: {self.received} of {self.in_shape[0]} rows received")
        if self.mode == "argmax":
            self._write_nearest()
        else:
            self.buf = self.lab = None  # type: ignore[assignment]
        return self.out

    # -- probabilities: trilinear only where the labels of the 8 source voxels differ ------------------
    def _write_probability_rows(self) -> None:
        """Output rows whose two source rows have arrived. An output voxel interpolates the 8 plan voxels
        of one cell; a convex combination of probability vectors that share their argmax has that argmax,
        so where the cell's labels agree the label is copied and only the remaining (border) voxels are
        interpolated, from the 8 corners, with PyTorch's align_corners=False weights."""
        n_out = self.crop_shape[0]
        ready = n_out if self.received == self.in_shape[0] else int(np.searchsorted(self.z1_idx, self.received, side="left"))
        yo, xo = self.crop_shape[1:]
        rows = max(1, CHUNK_ELEMENTS // max(1, (self.k + 2) * yo * xo))
        yn = np.minimum(np.arange(self.in_shape[1]) + 1, self.in_shape[1] - 1)
        xn = np.minimum(np.arange(self.in_shape[2]) + 1, self.in_shape[2] - 1)
        zs = self.box[0].start
        while self.done < ready:
            o = np.arange(self.done, min(ready, self.done + rows))
            za, zb = self.z0_idx[o] - self.buf_lo, self.z1_idx[o] - self.buf_lo
            la, lb = self.lab[za], self.lab[zb]  # (n, y, x) labels of the two source rows
            uniform = la == lb
            for plane in (la, lb):
                uniform &= plane[:, :, xn] == la
                uniform &= plane[:, yn, :] == la
                uniform &= plane[:, yn][:, :, xn] == la
            r = np.arange(len(o))
            seg = la[np.ix_(r, self.y0_idx, self.x0_idx)]
            border = np.nonzero(~uniform[np.ix_(r, self.y0_idx, self.x0_idx)])
            if border[0].size:
                seg[border] = self._interpolate_argmax(za, zb, o, border)
            self.out[zs + o[0] : zs + o[-1] + 1, self.box[1], self.box[2]] = seg
            self.done = int(o[-1]) + 1
        if self.done < n_out:  # drop plan rows no remaining output row needs
            keep_from = min(int(self.z0_idx[self.done]), self.received)
            if keep_from > self.buf_lo:
                self.buf = np.ascontiguousarray(self.buf[:, keep_from - self.buf_lo :])
                self.lab = np.ascontiguousarray(self.lab[keep_from - self.buf_lo :])
                self.buf_lo = keep_from

    def _interpolate_argmax(self, za: np.ndarray, zb: np.ndarray, o: np.ndarray, border: tuple[np.ndarray, ...]) -> np.ndarray:
        """Argmax of the trilinearly interpolated class scores at the given (row, y, x) output voxels."""
        r, oy, ox = border
        ny, nx = self.in_shape[1:]
        flat = self.buf.reshape(self.k, -1)
        lz = self.z_lam[o][r]
        ly, lx = self.y_lam[oy], self.x_lam[ox]
        acc = np.zeros((self.k, r.size), np.float32)
        for zi, wz in ((za[r], 1 - lz), (zb[r], lz)):
            for yi, wy in ((self.y0_idx[oy], 1 - ly), (self.y1_idx[oy], ly)):
                base = (zi * ny + yi) * nx
                wzy = wz * wy
                for xi, wx in ((self.x0_idx[ox], 1 - lx), (self.x1_idx[ox], lx)):
                    acc += np.take(flat, base + xi, axis=1) * (wzy * wx)
        return acc.argmax(0).astype(self.dtype)

    # -- argmax: nearest neighbour with index vectors ---------------------------------------------
    def _write_nearest(self) -> None:
        idx = [nearest_source(i, o) for i, o in zip(self.in_shape, self.crop_shape)]
        zs = self.box[0].start
        rows = max(1, CHUNK_ELEMENTS // max(1, int(np.prod(self.crop_shape[1:]))))
        for a in range(0, self.crop_shape[0], rows):
            b = min(self.crop_shape[0], a + rows)
            self.out[zs + a : zs + b, self.box[1], self.box[2]] = self.labels[np.ix_(idx[0][a:b], idx[1], idx[2])]


def restore_labels(pred: torch.Tensor | np.ndarray, props: dict[str, Any], num_classes: int, mode: str) -> np.ndarray:
    """Whole-volume convenience: class scores (K, z, y, x) or labels (z, y, x) at plan spacing -> input grid."""
    t = torch.as_tensor(np.ascontiguousarray(pred)) if isinstance(pred, np.ndarray) else pred
    r = LabelRestorer(props, num_classes, mode)
    r.push(0, int(t.shape[-3]), t)
    return r.finish()

