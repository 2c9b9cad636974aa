"""Tiny synthetic datasets in nnU-Net v2 raw layout, shared by the data/plan/preprocess/training tests.

Not a test module (no ``test_`` prefix); the test files import it as ``synthetic_data`` (pytest puts
``tests/`` on ``sys.path`` because the folder has no ``__init__.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def write_nifti(
    arr: np.ndarray,
    path: Path,
    spacing_xyz: tuple[float, ...] = (1.0, 1.0, 1.0),
    origin_xyz: tuple[float, ...] = (0.0, 0.0, 0.0),
    direction: tuple[float, ...] | None = None,
) -> Path:
    """Write a (z, y, x) array with the given SimpleITK (x, y, z) geometry (format from the suffix)."""
    img = sitk.GetImageFromArray(arr)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing_xyz)
        img.SetOrigin(origin_xyz)
        if direction is not None:
            img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return path


def rotation_z(deg: float) -> tuple[float, ...]:
    """A direction cosine matrix (row-major 3x3) rotated about z: an oblique acquisition."""
    a = np.deg2rad(deg)
    m = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return tuple(float(v) for v in m.ravel())


def ellipsoid(shape: tuple[int, int, int], center: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    d = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2
    return d <= 1.0


def synthetic_case(
    shape: tuple[int, int, int] = (12, 36, 36),
    seed: int = 0,
    ct: bool = False,
    border: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8): a noisy "body" box with a zero border (so crop_to_nonzero crops),
    an ellipsoidal organ (label 1) holding a small lesion (label 2); organ intensity differs from body."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    label = np.zeros(shape, np.uint8)
    c = (z / 2 + rng.uniform(-1, 1), y / 2 + rng.uniform(-2, 2), x / 2 + rng.uniform(-2, 2))
    organ = ellipsoid(shape, c, (max(2.0, z / 3.5), y / 4, x / 4))
    lesion = ellipsoid(shape, c, (max(1.0, z / 8), y / 10, x / 10))
    label[organ] = 1
    label[lesion & organ] = 2
    body = np.zeros(shape, bool)
    body[:, border : y - border, border : x - border] = True
    label[~body] = 0
    if ct:
        image = np.where(body, 0.0, -1000.0) + rng.normal(0, 10, shape)
        image[label == 1] += 100.0
        image[label == 2] += 160.0
        image = np.where(body, image, -1000.0)  # air is constant; CT background is not zero
    else:
        image = np.where(body, 100.0 + rng.normal(0, 10, shape), 0.0)
        image[label == 1] += 80.0
        image[label == 2] += 150.0
    return image.astype(np.float32), label


def make_dataset(
    root: Path,
    labelled: list[str],
    unlabelled: list[str] = (),
    test: list[str] = (),
    shape: tuple[int, int, int] = (12, 36, 36),
    spacing_xyz: tuple[float, ...] = (1.0, 1.0, 1.0),
    channel_name: str = "MRI",
    labels: dict[str, int] | None = None,
    split: dict[str, Any] | None = None,
    write_split: bool = True,
    file_ending: str = ".nii.gz",
) -> Path:
    """A raw dataset in ``root``: every case has an image and (as in /work/shared/data) a label file;
    the split file says which labels a run may read."""
    root = Path(root)
    labels = dict(LABELS if labels is None else labels)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    all_cases = list(dict.fromkeys([*labelled, *unlabelled, *test]))
    for i, case in enumerate(all_cases):
        img, lab = synthetic_case(shape, seed=i, ct=channel_name.upper() == "CT")
        write_nifti(img, root / "imagesTr" / f"{case}_0000{file_ending}", spacing_xyz)
        write_nifti(lab, root / "labelsTr" / f"{case}{file_ending}", spacing_xyz)
    meta = {"name": root.name, "channel_names": {"0": channel_name}, "labels": labels, "numTraining": len(all_cases), "file_ending": file_ending}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    if write_split:
        sp = split if split is not None else {"labelled": list(labelled), "unlabelled": list(unlabelled), "test": list(test)}
        (root / "splits_semisupervised.json").write_text(json.dumps(sp, indent=2))
    return root


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def tiny_overrides(patch: list[int] | None = None) -> dict[str, Any]:
    """Plan overrides for a 3-stage, [4, 8, 16]-feature U-Net on a small patch (fast on CPU)."""
    return {
        "patch_size": list(patch or [8, 32, 32]),
        "batch_size": 2,
        "network.features": [4, 8, 16],
        "network.kernels": [[3, 3, 3]] * 3,
        "network.strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    }
