"""Image I/O with SimpleITK; images are written atomically (the helpers live in semiseg.atomic).

Arrays are (z, y, x) (or (C, z, y, x)); spacing/origin are reported in that array order too, while the
SimpleITK image keeps its own (x, y, z) geometry, which we carry untouched to write predictions back.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

# the atomic writers are semiseg.atomic's; re-exported for the many callers that write images and JSON together
from semiseg.atomic import (  # noqa: F401
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    is_temporary,
    make_folder,
    remove_temporaries,
    replacing,
)


class ImageError(ValueError):
    """A specific problem with one file; the message names the file."""


@dataclass
class Geometry:
    """Physical placement of a 3D image, in SimpleITK's (x, y, z) conventions."""

    spacing_xyz: tuple[float, ...]
    origin_xyz: tuple[float, ...]
    direction: tuple[float, ...]
    shape_zyx: tuple[int, ...]

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing_xyz))

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacing_xyz": list(self.spacing_xyz),
            "origin_xyz": list(self.origin_xyz),
            "direction": list(self.direction),
            "shape_zyx": list(self.shape_zyx),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        return cls(tuple(d["spacing_xyz"]), tuple(d["origin_xyz"]), tuple(d["direction"]), tuple(d["shape_zyx"]))

    @classmethod
    def of(cls, img: sitk.Image) -> "Geometry":
        return cls(img.GetSpacing(), img.GetOrigin(), img.GetDirection(), tuple(reversed(img.GetSize())))

    def matches(self, other: "Geometry", tol: float = 1e-3) -> str | None:
        """None if the same grid, else a sentence saying what differs."""
        if self.shape_zyx != other.shape_zyx:
            return f"shape {self.shape_zyx} vs {other.shape_zyx}"
        for name in ("spacing_xyz", "origin_xyz", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, atol=tol, rtol=tol):
                fa, fb = (tuple(float(v) for v in np.round(x, 4)) for x in (a, b))
                return f"{name.split('_')[0]} {fa} vs {fb}"
        return None

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing(self.spacing_xyz)
        img.SetOrigin(self.origin_xyz)
        img.SetDirection(self.direction)
        return img


def _check_header(path: Path, dim: int, components: int) -> None:
    if dim != 3:
        raise ImageError(f"{path}: expected a 3D image, got {dim}D")
    if components != 1:
        raise ImageError(f"{path}: expected a scalar image, got {components} components per voxel")


def _reader_error(path: Path, e: Exception) -> ImageError:
    first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
    return ImageError(f"{path}: cannot read image (corrupt or truncated file?): {first}")


def read_image(path: str | Path) -> sitk.Image:
    """Read an image, turning any reader failure into an ImageError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:  # SimpleITK raises RuntimeError for corrupt files
        raise _reader_error(path, e) from None
    _check_header(path, img.GetDimension(), img.GetNumberOfComponentsPerPixel())
    return img


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    """NIfTI voxels through nibabel, geometry through SimpleITK's header reader.

    Why: SimpleITK zero-fills a .nii.gz truncated inside its voxel data and turns NaN/Inf into 0, so
    corrupt files and NaNs would pass unnoticed; nibabel raises on the first and keeps the second.
    nibabel's array is (x, y, z), the transpose of SimpleITK's (z, y, x) view of the same bytes."""
    import nibabel as nib

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _reader_error(path, e) from None
    _check_header(path, reader.GetDimension(), reader.GetNumberOfComponents())
    try:
        arr = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises EOFError, zlib/gzip errors, ValueError... for bad data
        raise ImageError(f"{path}: cannot read voxel data (corrupt or truncated file?): {type(e).__name__}: {e}") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    size = tuple(int(v) for v in reader.GetSize())
    if arr.shape != size:
        raise ImageError(f"{path}: voxel array {arr.shape} does not match header size {size}")
    geo = Geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), tuple(reversed(size)))
    return np.ascontiguousarray(arr.T), geo


def read_array(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """(z, y, x) voxels and geometry; any unreadable, truncated or non-3D file is an ImageError."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    if _is_nifti(path):
        return _read_nifti(path)
    img = read_image(path)
    try:
        arr = sitk.GetArrayFromImage(img)
    except RuntimeError as e:
        raise ImageError(f"{path}: cannot decode voxel data: {e}") from None
    return arr, Geometry.of(img)


def write_segmentation(seg: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write an integer label map with the given geometry, atomically."""
    path = Path(path)
    if tuple(seg.shape) != tuple(geometry.shape_zyx):
        raise ValueError(f"{path}: segmentation shape {seg.shape} does not match geometry {geometry.shape_zyx}")
    dtype = np.uint8 if seg.max(initial=0) < 256 else np.uint16
    _write_sitk_atomic(geometry.apply_to(sitk.GetImageFromArray(seg.astype(dtype))), path)


def _write_sitk_atomic(img: sitk.Image, path: Path) -> None:
    """Write to a temporary name beside the target, then rename: a crash never leaves half a file."""
    with replacing(path, "".join(path.suffixes) or ".nii.gz") as tmp:
        sitk.WriteImage(img, tmp, True)


def write_image(arr: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a scalar image with the given geometry, atomically."""
    _write_sitk_atomic(geometry.apply_to(sitk.GetImageFromArray(arr)), Path(path))
