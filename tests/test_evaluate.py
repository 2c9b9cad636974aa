"""Folder evaluation round trip on tiny NIfTI files, and its input checks."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from semiseg.evaluation.evaluate import evaluate_folders, format_summary
from semiseg.evaluation.metrics import evaluate_case

LABELS = {"background": 0, "liver": 1, "aorta": 2}
SPACING_XYZ = (1.0, 1.0, 3.0)  # SimpleITK order; arrays see (3, 1, 1)


def write(arr: np.ndarray, path: Path, spacing_xyz: tuple[float, ...] = SPACING_XYZ, origin: tuple[float, ...] = (0.0, 0.0, 0.0)) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def case_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two cases: (pred, ref). In case_a the liver voxel is shifted 2 slices along z."""
    ref_a = np.zeros((12, 10, 8), dtype=np.uint8)
    ref_a[5, 5, 5] = 1
    ref_a[2:8, 1:3, 1:3] = 2
    pred_a = ref_a.copy()
    pred_a[5, 5, 5], pred_a[7, 5, 5] = 0, 1
    pred_a[0:12, 1:3, 1:3] = 2  # aorta beyond the reference's z-range: not penalised
    ref_b = np.zeros((12, 10, 8), dtype=np.uint8)
    ref_b[3:9, 3:8, 2:6] = 1
    pred_b = np.zeros_like(ref_b)  # liver missed, aorta absent in both
    return {"case_a": (pred_a, ref_a), "case_b": (pred_b, ref_b)}


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for case, (pred, ref) in case_arrays().items():
        write(pred, pred_dir / f"{case}.nii.gz")
        write(ref, ref_dir / f"{case}.nii.gz")
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    return pred_dir, ref_dir, dataset_json


def test_round_trip(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir, dataset_json = folders
    out = tmp_path / "results" / "summary.json"
    result = evaluate_folders(pred_dir, ref_dir, dataset_json, out, progress=False)

    a, b = result["cases"]["case_a"], result["cases"]["case_b"]
    # One voxel shifted 2 slices along z with z spacing 3 mm: HD95 = 6 mm (spacing turned to z, y, x).
    assert a["liver"]["DSC"] == 0.0 and a["liver"]["HD95"] == pytest.approx(6.0)
    assert a["aorta"]["DSC"] == 1.0 and a["aorta"]["NSD"] == 1.0
    assert (b["liver"]["DSC"], b["liver"]["NSD"]) == (0.0, 0.0) and math.isnan(b["liver"]["HD95"])
    assert b["aorta"] == {"DSC": 1.0, "IoU": 1.0, "NSD": 1.0, "HD95": 0.0, "ASD": 0.0}
    pred_a, ref_a = case_arrays()["case_a"]
    assert a == evaluate_case(pred_a, ref_a, (3.0, 1.0, 1.0), LABELS)

    assert result["mean"]["liver"]["DSC"] == 0.0 and result["mean"]["aorta"]["DSC"] == 1.0
    assert result["mean"]["liver"]["HD95"] == pytest.approx(6.0)  # NaN of case_b skipped
    assert result["foreground_mean"]["DSC"] == pytest.approx(0.5)
    assert result["tolerances_mm"] == {"liver": 5.0, "aorta": 2.0}

    written = json.loads(out.read_text())
    assert written["cases"]["case_b"]["liver"]["HD95"] is None  # NaN written as null
    assert written["mean"]["aorta"]["NSD"] == 1.0

    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [(r["case"], r["class"]) for r in rows] == [
        ("case_a", "liver"), ("case_a", "aorta"), ("case_b", "liver"), ("case_b", "aorta")
    ]
    assert float(rows[0]["HD95"]) == pytest.approx(6.0) and math.isnan(float(rows[2]["HD95"]))
    assert sorted(p.name for p in out.parent.iterdir()) == ["summary.csv", "summary.json"]  # no temp files

    table = format_summary(result)
    assert "liver" in table and "aorta" in table and "mean (foreground)" in table
    assert format_summary(written) == table  # works on the JSON as read back


def test_parallel_workers_give_same_result(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir, dataset_json = folders
    serial = evaluate_folders(pred_dir, ref_dir, dataset_json, tmp_path / "s.json", progress=False)
    parallel = evaluate_folders(pred_dir, ref_dir, dataset_json, tmp_path / "p.json", num_workers=2, progress=False)
    assert json.loads((tmp_path / "s.json").read_text())["cases"] == json.loads((tmp_path / "p.json").read_text())["cases"]
    assert list(parallel["cases"]) == list(serial["cases"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"origin": (0.0, 5.0, 0.0)}, "origin"),
        ({"spacing_xyz": (1.0, 1.0, 2.0)}, "spacing"),
    ],
)
def test_geometry_mismatch_names_the_file(folders: tuple[Path, Path, Path], tmp_path: Path, change: dict, message: str) -> None:
    pred_dir, ref_dir, dataset_json = folders
    pred, _ = case_arrays()["case_b"]
    write(pred, pred_dir / "case_b.nii.gz", **change)
    with pytest.raises(ValueError, match=rf"case_b\.nii\.gz.*{message}"):
        evaluate_folders(pred_dir, ref_dir, dataset_json, tmp_path / "out.json", progress=False)
    assert not (tmp_path / "out.json").exists()


def test_shape_mismatch_names_the_file(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir, dataset_json = folders
    write(np.zeros((12, 10, 9), dtype=np.uint8), pred_dir / "case_a.nii.gz")
    with pytest.raises(ValueError, match=r"case_a\.nii\.gz.*shape"):
        evaluate_folders(pred_dir, ref_dir, dataset_json, tmp_path / "out.json", progress=False)


def test_missing_prediction_names_the_case(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir, dataset_json = folders
    (pred_dir / "case_b.nii.gz").unlink()
    with pytest.raises(ValueError, match="case_b"):
        evaluate_folders(pred_dir, ref_dir, dataset_json, tmp_path / "out.json", progress=False)


def test_bad_dataset_json(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = folders
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"file_ending": ".nii.gz"}))
    with pytest.raises(ValueError, match="bad.json.*labels"):
        evaluate_folders(pred_dir, ref_dir, bad, tmp_path / "out.json", progress=False)
    bad.write_text(json.dumps({"labels": {"background": 0, "liver": "one"}}))
    with pytest.raises(ValueError, match="bad.json.*liver"):
        evaluate_folders(pred_dir, ref_dir, bad, tmp_path / "out.json", progress=False)
