"""Overlay thumbnails: an axial slice of the image with the reference and one or more predictions side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from semiseg.evaluation.slices import best_slice, window_intensity
from semiseg.atomic import save_png


def overlay_png(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, labels: Mapping[str, int], path: str | Path,
                title: str = "", spacing_zyx: tuple[float, ...] = (1.0, 1.0, 1.0)) -> int:
    """Write a PNG (image | reference | prediction) at the most informative axial slice; returns that slice."""
    return overlay_panels_png(image, {"reference": ref, "prediction": pred}, labels, path, title, spacing_zyx)


def overlay_panels_png(image: np.ndarray, panels: Mapping[str, np.ndarray], labels: Mapping[str, int], path: str | Path,
                       title: str = "", spacing_zyx: tuple[float, ...] = (1.0, 1.0, 1.0)) -> int:
    """The image, then each label map of ``panels`` over it, all at one axial slice (the one with the most
    foreground in the first two maps: reference and first prediction), so models compare on the same anatomy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    maps = list(panels.values())
    if not maps:
        raise ValueError("overlay_panels_png needs at least one label map")
    z = best_slice(maps[0], maps[1] if len(maps) > 1 else maps[0])
    img = window_intensity(image[z].astype(np.float32))
    n = max(max(labels.values()), 1)
    cmap = ListedColormap(plt.get_cmap("tab10")(np.arange(n) % 10))
    aspect = spacing_zyx[1] / spacing_zyx[2]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3 * (1 + len(maps)), 3.4))
    for ax, (name, seg) in zip(axes, (("image", None), *panels.items())):
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
    save_png(fig, path)
    return z
