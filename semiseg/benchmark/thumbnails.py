"""Small overlay thumbnails of a run's best and worst test case, kept beside the results file.

Predictions live in ``runs/``, which is never committed, so a report made from a fresh clone cannot
draw overlays; a few kilobytes of PNG per run, written when the run is scored and listed in its piece
(``thumbnails``), keep the committed report showing them. Torch-free: numpy, SimpleITK reading, Pillow.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from semiseg.atomic import atomic_write_bytes, atomic_write_text
from semiseg.benchmark.results import case_foreground
from semiseg.evaluation.slices import best_slice, window_intensity

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd")
ALPHA = 0.45  # label colour over the image, as in semiseg.report.overlay
GAP = 2  # white pixels between the image, reference and prediction panels
SLOTS = 10  # label colours before they repeat (tab10)
WHITE = 255  # palette index of the gaps; grey levels x (label colours + none) fill the indices below it


def best_and_worst(cases: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> list[tuple[str, str, float]]:
    """``[("best", case, dice), ("worst", case, dice)]`` by case foreground Dice; empty when no case has a score."""
    scores = {c: case_foreground(v) for c, v in cases.items()}
    ranked = sorted((c for c, v in scores.items() if v is not None), key=lambda c: scores[c])
    return [(which, c, float(scores[c])) for which, c in (("best", ranked[-1]), ("worst", ranked[0]))] if ranked else []


def case_files(test: Mapping[str, Any], case: str) -> tuple[Path, Path, Path] | None:
    """Image (first channel), reference and prediction of ``case`` in a piece's ``test``; None unless all three exist."""
    ref_dir = Path(test["ref_dir"])
    ending = next((e for e in IMAGE_ENDINGS if (ref_dir / f"{case}{e}").is_file()), None)
    if ending is None:
        return None
    files = (Path(test["images_dir"]) / f"{case}_0000{ending}", ref_dir / f"{case}{ending}", Path(test["pred_dir"]) / f"{case}{ending}")
    return files if all(p.is_file() for p in files) else None


def _colours(slots: int) -> np.ndarray:
    """RGB in [0, 1] of the first ``slots`` label colours: matplotlib's tab10, the colours of the full-size overlays."""
    from matplotlib import colormaps

    return np.asarray(colormaps["tab10"].colors, dtype=np.float32)[:slots]


def _palette(slots: int, levels: int) -> list[int]:
    """Index ``s * levels + k``: grey level k under label colour slot s (0: none); index 255 is white."""
    grey = np.repeat(np.linspace(0, 1, levels, dtype=np.float32)[:, None], 3, axis=1)
    rows = np.concatenate([grey] + [(1 - ALPHA) * grey + ALPHA * c for c in _colours(slots)])
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(rows)] = (rows * 255).round().astype(np.uint8)
    pal[WHITE] = 255
    return pal.ravel().tolist()


def _label_slots(seg: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label slice as colour slots 1..SLOTS (cycling like tab10; 0 stays background), resized by nearest
    neighbour so a label stays a label."""
    from PIL import Image

    slots = np.where(seg > 0, (seg.astype(np.int64) - 1) % SLOTS + 1, 0).astype(np.uint8)
    return np.asarray(Image.fromarray(slots).resize(size, Image.Resampling.NEAREST))


def _panel(grey: np.ndarray, seg: np.ndarray | None, levels: int) -> np.ndarray:
    """Palette indices of one panel (grey and label map already at panel size)."""
    k = np.clip(np.round(grey * (levels - 1)), 0, levels - 1).astype(np.int64)
    return k if seg is None else np.where(seg > 0, seg.astype(np.int64) * levels + k, k)


def save_case_thumbnails(image_path: str | Path, reference_path: str | Path, prediction_path: str | Path,
                         out_png: str | Path, max_side: int = 160) -> Path:
    """One small PNG, image | reference | prediction, at the axial slice with the most foreground; each panel's
    longer side is ``max_side`` pixels, in the voxel spacing's aspect ratio. A palette PNG with exact colours
    (64 grey levels under each label colour) is about half the bytes of RGB on noisy MR texture."""
    from PIL import Image

    from semiseg.data.io import read_array

    image, geo = read_array(image_path)
    ref, _ = read_array(reference_path)
    pred, _ = read_array(prediction_path)
    z = best_slice(ref, pred)
    grey = window_intensity(image[z].astype(np.float32))
    h_mm, w_mm = grey.shape[0] * geo.spacing_zyx[1], grey.shape[1] * geo.spacing_zyx[2]
    size = (max(1, round(max_side * w_mm / max(h_mm, w_mm))), max(1, round(max_side * h_mm / max(h_mm, w_mm))))
    slots = int(min(SLOTS, max(ref.max(initial=0), pred.max(initial=0))))
    levels = min(64, WHITE // (slots + 1))
    small = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX))
    sheet = np.full((size[1], 3 * size[0] + 2 * GAP), WHITE, np.int64)
    for i, seg in enumerate((None, ref[z], pred[z])):
        x = i * (size[0] + GAP)
        sheet[:, x: x + size[0]] = _panel(small, None if seg is None else _label_slots(seg, size), levels)
    png = Image.fromarray(sheet.astype(np.uint8))
    png.putpalette(_palette(slots, levels))
    buf = io.BytesIO()
    png.save(buf, format="PNG", optimize=True)
    out = Path(out_png)
    atomic_write_bytes(out, buf.getvalue())
    return out


NOTICE = "NOTICE.txt"  # beside the thumbnails: the terms of the data they are drawn from


def dataset_terms(dataset_dir: str | Path) -> tuple[str, str] | None:
    """(name, terms) of ``dataset_dir``: its dataset.json's ``provenance`` (where a licence such as CHAOS's
    CC BY-NC-SA 4.0 is stated), or None when it states none."""
    path = Path(dataset_dir) / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    text = meta.get("provenance") or meta.get("licence") or meta.get("license")
    return (meta.get("name", Path(dataset_dir).name), text) if text else None


def data_notice(dataset_dir: str | Path) -> str | None:
    """The text a folder of images drawn from ``dataset_dir`` must carry (:func:`dataset_terms`), or None."""
    terms = dataset_terms(dataset_dir)
    if terms is None:
        return None
    return (f"The images in this folder are drawn from the dataset {terms[0]}, and are "
            f"under its terms:\n{terms[1]}\nThis notice covers this folder only.\n")


def write_data_notice(folder: str | Path, dataset_dir: str | Path) -> Path | None:
    """``folder/NOTICE.txt`` with :func:`data_notice` (rewritten when it changes); None when there is none to write."""
    text = data_notice(dataset_dir)
    if text is None:
        return None
    path = Path(folder) / NOTICE
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def piece_thumbnails(test: Mapping[str, Any], out_dir: str | Path, stem: str, max_side: int = 160) -> list[dict[str, Any]]:
    """Thumbnails of the best and worst case of a piece's ``test`` as ``out_dir/<stem>_{best,worst}.png``; the list
    to store as the piece's ``thumbnails`` (cases whose files are missing are left out)."""
    made = []
    for which, case, dice in best_and_worst(test["cases"]):
        files = case_files(test, case)
        if files is not None:
            png = save_case_thumbnails(*files, Path(out_dir) / f"{stem}_{which}.png", max_side)
            made.append({"which": which, "case": case, "dice": dice, "png": str(png)})
    return made
