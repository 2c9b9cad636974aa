"""benchmarks/plain_loop.py: BENCHMARK.md's MONAI reference loop (ranges, bad input, a few steps end to end)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pl():
    spec = importlib.util.spec_from_file_location("plain_loop", ROOT / "benchmarks" / "plain_loop.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["plain_loop"] = mod
    spec.loader.exec_module(mod)
    return mod


def write_case(root: Path, case: str, shape=(40, 40, 24), label_shape=None, seed=0) -> None:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    img = rng.normal(size=shape).astype(np.float32)
    lab = np.zeros(label_shape or shape, np.uint8)
    lab[12:28, 12:28, 6:18] = 1
    img[12:28, 12:28, 6:18] += 3.0  # a bright blob where the label is
    aff = np.diag([0.625, 0.625, 0.625, 1.0])
    nib.save(nib.Nifti1Image(img, aff), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    nib.save(nib.Nifti1Image(lab, aff), str(root / "labelsTr" / f"{case}.nii.gz"))


def test_ranges_expand_as_in_the_configs(pl):
    assert pl.expand(["la_000..la_003", "la_010"]) == ["la_000", "la_001", "la_002", "la_003", "la_010"]


def test_bad_input_names_the_file(pl, tmp_path):
    with pytest.raises(FileNotFoundError, match="x_0000.nii.gz"):
        pl.load_case(tmp_path, "x")
    write_case(tmp_path, "bad", label_shape=(40, 40, 20))
    with pytest.raises(ValueError, match="bad.nii.gz.*differs"):
        pl.load_case(tmp_path, "bad")


def test_a_short_run_is_recorded_and_not_repeated(pl, tmp_path, monkeypatch):
    for i in range(3):
        write_case(tmp_path / "raw", f"c_{i}", seed=i)
    monkeypatch.setattr(pl, "PATCH_XYZ", (16, 16, 8))
    out = tmp_path / "res.json"
    args = ["--data", str(tmp_path / "raw"), "--labelled", "c_0..c_1", "--test", "c_2", "--steps", "3", "--seeds", "0", "--out", str(out)]
    assert pl.main(args) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["labelled"] == ["c_0", "c_1"] and run["test"] == ["c_2"] and run["steps"] == 3 and 0.0 <= run["dice"] <= 1.0
    assert set(run["cases"]["c_2"]) == {"dice", "dice_1.25mm"}
    mtime = out.stat().st_mtime_ns
    assert pl.main(args) == 0 and out.stat().st_mtime_ns == mtime  # finished: skipped, file untouched
    with pytest.raises(SystemExit):
        pl.main(["--data", str(tmp_path / "raw"), "--labelled", "c_0", "--test", "c_0", "--out", str(out)])
