"""End-to-end through the `semiseg` command: demo on the embedded sample, and the full
validate -> plan -> train -> predict -> evaluate chain on ChaosT2 when ../shared/data is present."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from semiseg.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_PLAN = ["--max-patch-voxels", str(16 * 48 * 48), "--base-features", "4", "--max-features", "16"]


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Supervised and AD-MT at a tiny budget: both models' rows in the report, the figures, and the printed
    table is the report's."""
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out), "--iterations", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["supervised", "ad-mt"]
    assert set(summary["foreground_mean"]["supervised"]) >= {"DSC", "NSD", "HD95"} and "ad-mt" in summary["foreground_mean"]
    report = out / "report"
    text = (report / "README.md").read_text()
    table = text[text.index("| organ |"):text.index("![Dice by organ]")].strip()
    assert table and table in printed
    for organ in ("liver", "right_kidney", "left_kidney", "spleen"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {organ} |"))
        assert len(row.strip("|").split("|")) == 6  # organ, Dice x2, delta, HD95 x2
    for png in ("dice_by_organ.png", "training_curve_supervised.png", "training_curve_ad-mt.png"):
        assert (report / png).is_file(), png
    assert sorted(p.stem for p in report.glob("chaos_*.png")) == summary["test_cases"] and len(summary["test_cases"]) == 6
    assert not [p for p in out.rglob(".*") if p.is_file()]  # nothing half-written
    # the label-free intensity check names the sample's one scan unlike the training images, in the report and
    # on screen (chaos_016: its kidneys and spleen are missed by every model, the 14-label bound included)
    assert list(summary["intensity_outliers"]) == ["chaos_016"]
    assert summary["intensity_outliers"]["chaos_016"] in text and summary["intensity_outliers"]["chaos_016"] in printed
    capsys.readouterr()
    assert main(["--quiet", "demo", "--out", str(out), "--iterations", "4", "--device", "cpu"]) == 2  # not mixed into this run
    assert "other settings (iterations)" in capsys.readouterr().err
    # the unlabelled cases of the sample ship without labels
    sample = Path(__file__).resolve().parents[1] / "semiseg/resources/chaos_sample"
    unlabelled = json.loads((sample / "splits_semisupervised.json").read_text())["unlabelled"]
    assert len(unlabelled) == 10 and not [p for c in unlabelled for p in (sample / "labelsTr").glob(f"{c}*")]


def test_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from semiseg.demo import sample_dataset

    assert main(["--quiet", "validate", str(sample_dataset())]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text("{not json")
    assert main(["--quiet", "validate", str(bad)]) == 2
    assert "dataset.json" in capsys.readouterr().err


def test_predict_rejects_corrupt_input_naming_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from semiseg.demo import sample_dataset

    run = tmp_path / "run"
    assert main(["--quiet", "plan", str(sample_dataset()), "--out", str(run), *TINY_PLAN]) == 0
    assert main(["--quiet", "train", str(run), "--fold", "all", "--iterations", "2"]) == 0
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    out = tmp_path / "out"
    assert main(["--quiet", "predict", "--model", str(run / "supervised" / "fold_all"), "--input", str(inp), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken_0000.nii.gz" in err
    assert not any(p.name.startswith(".") for p in out.iterdir())  # nothing half-written


@pytest.mark.skipif(not (SHARED / "ChaosT2" / "dataset.json").is_file(), reason="../shared/data/ChaosT2 not present")
def test_chaos_end_to_end_via_cli(tmp_path: Path) -> None:
    ds = SHARED / "ChaosT2"
    split = json.loads((ds / "splits_semisupervised.json").read_text())
    run = tmp_path / "run"
    assert main(["--quiet", "plan", str(ds), "--out", str(run), "--spacing", "7.7", "5", "5", *TINY_PLAN]) == 0
    assert main(["--quiet", "train", str(run), "--fold", "all", "--iterations", "3"]) == 0
    cache = run / "cache"
    assert sorted(p.stem for p in cache.glob("*_seg.npy")) == [f"{c}_seg" for c in split["labelled"]]
    inp, pred, ref = tmp_path / "test_images", tmp_path / "pred", tmp_path / "ref"
    inp.mkdir(), ref.mkdir()
    for c in split["test"][:2]:
        (inp / f"{c}_0000.nii.gz").symlink_to(ds / "imagesTr" / f"{c}_0000.nii.gz")
        (ref / f"{c}.nii.gz").symlink_to(ds / "labelsTr" / f"{c}.nii.gz")
    assert main(["--quiet", "predict", "--model", str(run / "supervised" / "fold_all"), "--input", str(inp), "--output", str(pred), "--step", "0.9"]) == 0
    for c in split["test"][:2]:
        a = sitk.ReadImage(str(ds / "imagesTr" / f"{c}_0000.nii.gz"))
        b = sitk.ReadImage(str(pred / f"{c}.nii.gz"))
        assert a.GetSize() == b.GetSize()
        assert np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
        assert np.allclose(a.GetDirection(), b.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(b))) <= {0, 1, 2, 3, 4}
    out = tmp_path / "metrics.json"
    assert main(["--quiet", "evaluate", "--pred", str(pred), "--ref", str(ref), "--dataset", str(ds), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["mean"]) == {"liver", "right_kidney", "left_kidney", "spleen"}
    assert out.with_suffix(".csv").is_file()


@pytest.mark.parametrize("method", ["dlunet", "cps", "mean-teacher"])
def test_semi_supervised_method_trains_and_predicts(tmp_path: Path, method: str) -> None:
    """Every kept network can be reloaded for prediction (DLUNet keeps a light U-Net, not the plan's)."""
    from semiseg.demo import sample_dataset

    run = tmp_path / "run"
    assert main(["--quiet", "plan", str(sample_dataset()), "--out", str(run), *TINY_PLAN]) == 0
    assert main(["--quiet", "train", str(run), "--method", method, "--iterations", "2"]) == 0
    cache = run / "cache"
    assert not (cache / "chaos_004_seg.npy").exists()  # unlabelled images cached without labels
    assert (cache / "chaos_004.npy").is_file()
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "chaos_014_0000.nii.gz").symlink_to(sample_dataset() / "imagesTs" / "chaos_014_0000.nii.gz")
    assert main(["--quiet", "predict", "--model", str(run / method / "fold_all"), "--input", str(inp), "--output", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "chaos_014.nii.gz").is_file()


def test_train_refuses_an_unknown_method_param_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--set method_params.consistncy=1` (a typo) stops the training before it starts, naming the bad key and
    the valid ones, instead of training with the default."""
    from semiseg.demo import sample_dataset

    run = tmp_path / "run"
    assert main(["--quiet", "plan", str(sample_dataset()), "--out", str(run), *TINY_PLAN]) == 0
    assert main(["--quiet", "train", str(run), "--method", "mean-teacher", "--iterations", "2",
                 "--set", "method_params.consistncy=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown params ['consistncy']" in err and "consistency" in err and "ema_decay" in err
    assert not (run / "cache").exists() and not (run / "mean-teacher").exists()  # refused before any work
    assert main(["--quiet", "train", str(run), "--method", "mean-teacher", "--iterations", "2",
                 "--set", "method_params.consistency=oops"]) == 2
    assert "consistency must be a number, got 'oops'" in capsys.readouterr().err


def test_demo_config_refuses_bad_settings_naming_them() -> None:
    from semiseg.demo import DemoConfig

    for kw, msg in [({"methods": ("ad-mt",)}, "must start with the supervised baseline"),
                    ({"methods": ("supervised", "ad-mt", "ad-mt")}, "repeat"),
                    ({"iterations": 0}, "iterations must be >= 1"),
                    ({"augmentation": "strong"}, "augmentation 'strong' is not a preset")]:
        with pytest.raises(ValueError, match=msg):
            DemoConfig(**kw)
    assert DemoConfig(augmentation="teacher").augmentation == "teacher"


def test_a_demo_folder_recorded_before_a_field_existed_resumes_with_its_default(tmp_path: Path) -> None:
    """demo_config.json written before DemoConfig gained ``augmentation`` (then always flips only) still resumes."""
    import dataclasses

    from semiseg.demo import DemoConfig, _check_same_config

    old = json.loads(json.dumps(dataclasses.asdict(DemoConfig())))
    del old["augmentation"]
    (tmp_path / "demo_config.json").write_text(json.dumps(old))
    _check_same_config(tmp_path, DemoConfig())  # accepted
    with pytest.raises(ValueError, match=r"other settings \(augmentation\)"):
        _check_same_config(tmp_path, DemoConfig(augmentation="teacher"))
