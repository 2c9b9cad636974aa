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


def engine_results(path: Path, entry: str, per_seed: dict[int, dict[str, float]], precision: str = "bf16") -> Path:
    runs = [{"entry": entry, "seed": s, "key": {"split": {"labelled": ["c_0", "c_1"]}, "train_config": {"precision": precision}},
             "train": {"steps": 3}, "test": {"cases": {c: {"organ": {"DSC": d}} for c, d in cases.items()}}}
            for s, cases in per_seed.items()]
    path.write_text(json.dumps({"runs": runs}))
    return path


def loop_run(seed: int, cases: dict[str, float], precision: str = "fp32") -> dict:
    return {"labelled": ["c_0", "c_1"], "steps": 3, "precision": precision, "dice_loss": "monai", "labels": "nearest", "seed": seed,
            "cases": {c: {"dice": d} for c, d in cases.items()}, "dice": float(np.mean(list(cases.values())))}


def test_calibration_pairs_cases_over_each_sides_seeds(pl, tmp_path):
    """An engine entry is compared case by case with the loop, each side averaged over its own seeds (different
    draws, so seeds are not pairs), against the loop as written (fp32) and at the entry's precision."""
    res = engine_results(tmp_path / "bench.json", "lower", {0: {"a": 0.5, "b": 0.8, "c": 0.9}, 1: {"a": 0.7, "b": 0.8, "c": 0.9}})
    doc = {"runs": [loop_run(0, {"a": 0.7, "b": 0.9, "c": 0.9}), loop_run(1, {"a": 0.9, "b": 0.9, "c": 0.9}),
                    loop_run(0, {"a": 0.6, "b": 0.8, "c": 0.9}, precision="bf16")]}
    rows = pl.calibration_rows(doc, [(res, "lower")])
    assert [r["loop_variant"][0] for r in rows] == ["fp32", "bf16"]
    fp32, bf16 = rows
    # case means: engine a 0.6, b 0.8, c 0.9; loop fp32 a 0.8, b 0.9, c 0.9 -> differences -0.2, -0.1, 0
    assert fp32["paired"]["n"] == 3 and fp32["paired"]["mean_diff"] == pytest.approx(-0.1)
    assert fp32["loop_seeds"] == [0, 1] and fp32["seeds"] == [0, 1] and not fp32["within"]
    assert bf16["paired"]["mean_diff"] == pytest.approx(0.0) and bf16["within"] and bf16["not_weaker"] and not fp32["not_weaker"]
    above = pl.calibration_rows({"runs": [loop_run(0, {"a": 0.5, "b": 0.7, "c": 0.8})]}, [(res, "lower")])[0]
    assert above["paired"]["mean_diff"] == pytest.approx(0.1) and not above["within"] and above["not_weaker"]  # stronger than the loop
    lo, hi = fp32["ci95_seeds_and_cases"]  # seed spread on both sides: wider than the cases alone give
    assert lo < fp32["paired"]["ci95"][0] <= fp32["paired"]["ci95"][1] <= hi
    md = pl.write_calibration(tmp_path / "loop.json", doc, [(res, "lower")], "python benchmarks/plain_loop.py --compare x")
    text = md.read_text()
    assert md.name == "loop.md" and "`bench.json` | lower | bf16 | 0, 1 | 0.767" in text and "-0.100" in text
    assert pl.write_calibration(tmp_path / "loop.json", doc, [], "c") is None


def test_compare_names_a_missing_file_or_entry(pl, tmp_path):
    with pytest.raises(SystemExit):
        pl.main(["--compare", str(tmp_path / "nope.json") + ":lower", "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit):
        pl.main(["--compare", "no-entry", "--out", str(tmp_path / "o.json")])
    res = engine_results(tmp_path / "bench.json", "lower", {0: {"a": 0.5}})
    with pytest.raises(ValueError, match=r"bench\.json: no finished runs of entry 'upper'"):
        pl.engine_runs(res, "upper")
