"""Put a prediction made at plan spacing back on the input grid, slab by slab, without ever holding a
(K, full input volume) float array: the torch side of :class:`semiseg.grid.LabelRestorer`.

``restore_to_input`` (semiseg.data.preprocess) resamples all K probability channels at the input's
resolution at once: 14 classes x 512 x 512 x 500 x 4 bytes = 7 GB for a CT. The restorer computes the
same labels from z-slabs as the sliding window finishes them (the numpy core does the linear mode);
this class adds tensors in and the argmax mode, which keeps only plan-spacing labels (uint8) and
resamples them by nearest neighbour with PyTorch's own ``nearest-exact`` index vectors.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semiseg import grid
from semiseg.grid import label_dtype, linear_source  # noqa: F401  (re-exported)


def nearest_source(in_size: int, out_size: int) -> np.ndarray:
    """Per output index, the source index of PyTorch's ``nearest-exact`` mode (taken from PyTorch itself)."""
    if in_size == out_size:
        return np.arange(out_size)
    t = torch.arange(in_size, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=out_size, mode="nearest-exact")[0, 0].long().numpy()


class LabelRestorer(grid.LabelRestorer):
    """Collects slabs of plan-spacing predictions and writes labels on the input grid.

    ``push(z0, z1, pred)`` takes rows [z0, z1) of the plan-spacing volume in order: class scores
    (K, dz, y, x: probabilities or logits) in ``linear`` mode, labels (dz, y, x) or scores in ``argmax`` mode
    (nearest neighbour). ``finish()`` returns the full input-shaped label map (zero outside the crop box)."""

    def __init__(self, props: dict[str, Any], num_classes: int, mode: str, out: np.ndarray | None = None):
        if mode == "probabilities":  # the class-score kind does not matter to the restorer
            mode = "linear"
        if mode not in ("linear", "argmax"):
            raise ValueError(f"mode must be 'linear' (probabilities or logits) or 'argmax', got '{mode}'")
        super().__init__(props, num_classes, out)
        self.mode = mode
        if mode == "argmax":
            self.labels = np.zeros(self.in_shape, self.dtype)

    def push(self, z0: int, z1: int, pred: torch.Tensor) -> None:  # type: ignore[override]
        if self.mode == "linear":
            super().push(z0, z1, pred.float().numpy())
            return
        self._accept(z0, z1)
        self.labels[z0:z1] = (pred if pred.ndim == 3 else pred.argmax(0)).numpy().astype(self.dtype, copy=False)

    def finish(self) -> np.ndarray:
        if self.mode == "linear":
            return super().finish()
        self._check_complete()
        idx = [nearest_source(i, o) for i, o in zip(self.in_shape, self.crop_shape)]
        zs = self.box[0].start
        rows = max(1, grid.CHUNK_ELEMENTS // max(1, int(np.prod(self.crop_shape[1:]))))
        for a in range(0, self.crop_shape[0], rows):
            b = min(self.crop_shape[0], a + rows)
            self.out[zs + a : zs + b, self.box[1], self.box[2]] = self.labels[np.ix_(idx[0][a:b], idx[1], idx[2])]
        return self.out


def restore_labels(pred: torch.Tensor | np.ndarray, props: dict[str, Any], num_classes: int, mode: str) -> np.ndarray:
    """Whole-volume convenience: class scores (K, z, y, x) or labels (z, y, x) at plan spacing -> input grid."""
    t = torch.as_tensor(np.ascontiguousarray(pred)) if isinstance(pred, np.ndarray) else pred
    r = LabelRestorer(props, num_classes, mode)
    r.push(0, int(t.shape[-3]), t)
    return r.finish()
