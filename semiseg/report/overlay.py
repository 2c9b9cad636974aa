"""Overlay thumbnails: an axial slice of the image with the reference and the prediction side by side."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from semiseg.evaluation.slices import best_slice, window_intensity


def overlay_png(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, labels: Mapping[str, int], path: str | Path,
                title: str = "", spacing_zyx: tuple[float, ...] = (1.0, 1.0, 1.0)) -> int:
    """Write a PNG (image | reference | prediction) at the most informative axial slice; returns that slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    z = best_slice(ref, pred)
    img = window_intensity(image[z].astype(np.float32))
    n = max(max(labels.values()), 1)
    cmap = ListedColormap(plt.get_cmap("tab10")(np.arange(n) % 10))
    aspect = spacing_zyx[1] / spacing_zyx[2]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for ax, (name, seg) in zip(axes, (("image", None), ("reference", ref), ("prediction", pred))):
        ax.imshow(img, cmap="gray", aspect=aspect)
        if seg is not None:
            m = np.ma.masked_where(seg[z] == 0, seg[z] - 1)
            ax.imshow(m, cmap=cmap, vmin=0, vmax=n - 1, alpha=0.45, aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    names = [k for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if v > 0]
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(labels[k] - 1)) for k in names]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 7), fontsize=7, frameon=False)
    fig.suptitle(f"{title}  (axial slice {z})", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return z
