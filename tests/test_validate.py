"""validate_dataset: every bad input is reported, all at once, each problem naming its file; labels of
unlabelled/test cases are never opened; RawDataset refuses to hand them out."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import semiseg.data.validate as validate_mod
from semiseg.data.dataset import LabelAccessError, RawDataset
from semiseg.data.io import ImageError, read_array
from semiseg.data.validate import format_problems, validate_dataset
from synthetic_data import make_dataset, rotation_z, synthetic_case, write_nifti

SHAPE = (6, 16, 16)
LAB = ["a", "b"]
UNL = ["u"]
TEST = ["t"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds", LAB, UNL, TEST, shape=SHAPE)


def img_path(root: Path, case: str) -> Path:
    return root / "imagesTr" / f"{case}_0000.nii.gz"


def lab_path(root: Path, case: str) -> Path:
    return root / "labelsTr" / f"{case}.nii.gz"


def problems_of(root: Path) -> list[str]:
    return validate_dataset(RawDataset.open(root, check=False), progress=False)  # as `semiseg validate` opens it


def only_problem_naming(problems: list[str], path: Path, *words: str) -> str:
    """The problems that name ``path``: exactly one, and it contains every word (case-insensitive)."""
    hits = [p for p in problems if str(path) in p]
    assert len(hits) == 1, f"expected one problem naming {path}, got {problems}"
    for w in words:
        assert w.lower() in hits[0].lower(), f"'{w}' not in {hits[0]!r}"
    return hits[0]


def truncate(path: Path, keep: int | float) -> None:
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])


# -- clean ------------------------------------------------------------------------------------
def test_clean_dataset_has_no_problems(root):
    ds = RawDataset.open(root)
    assert (ds.labelled, ds.unlabelled, ds.test) == (LAB, UNL, TEST)
    assert validate_dataset(ds, progress=False) == []
    assert format_problems(root, []).endswith("OK")


# -- one test per bad input -------------------------------------------------------------------
@pytest.mark.parametrize("which", ["image", "label"])
def test_corrupt_file_is_reported_by_name(root, which):
    p = img_path(root, "a") if which == "image" else lab_path(root, "b")
    p.write_bytes(b"this is not a NIfTI file at all" * 3)
    only_problem_naming(problems_of(root), p, "corrupt")


def test_header_truncated_nifti_is_reported(root):
    p = img_path(root, "b")
    truncate(p, 40)  # inside the gzip header: unreadable
    only_problem_naming(problems_of(root), p, "cannot read")


@pytest.mark.parametrize("which", ["image", "label"])
def test_data_truncated_nifti_is_reported(root, which):
    p = img_path(root, "a") if which == "image" else lab_path(root, "a")
    truncate(p, 0.5)  # valid header, half of the compressed voxel data
    only_problem_naming(problems_of(root), p)


def test_missing_image_is_reported(root):
    p = img_path(root, "u")
    p.unlink()
    only_problem_naming(problems_of(root), p, "not found")


def test_image_label_shape_mismatch(root):
    img, lab = synthetic_case(SHAPE, seed=0)
    write_nifti(lab[:, :, :-3], lab_path(root, "a"))
    only_problem_naming(problems_of(root), lab_path(root, "a"), "shape", str(SHAPE))


@pytest.mark.parametrize(
    "geometry, word",
    [
        ({"spacing_xyz": (1.0, 1.0, 2.5)}, "spacing"),
        ({"origin_xyz": (0.0, 0.0, 7.0)}, "origin"),
        ({"direction": rotation_z(20)}, "direction"),
    ],
)
def test_image_label_geometry_mismatch(root, geometry, word):
    _, lab = synthetic_case(SHAPE, seed=1)
    write_nifti(lab, lab_path(root, "b"), **geometry)
    only_problem_naming(problems_of(root), lab_path(root, "b"), "geometry", word)


def test_label_values_not_declared(root):
    _, lab = synthetic_case(SHAPE, seed=0)
    lab[0, 0, 0] = 7
    lab[1, 0, 0] = 9
    write_nifti(lab, lab_path(root, "a"))
    only_problem_naming(problems_of(root), lab_path(root, "a"), "not declared", "[7, 9]")


def test_non_integer_float_label(root):
    _, lab = synthetic_case(SHAPE, seed=1)
    lab = lab.astype(np.float32)
    lab[2, 5, 5] = 0.5
    write_nifti(lab, lab_path(root, "b"))
    assert any(str(lab_path(root, "b")) in p and "non-integer" in p for p in problems_of(root))


# SimpleITK alone zero-fills NaN/Inf of a float NIfTI and truncated .nii.gz data; read_array must not.


def nan_dataset(tmp_path: Path, bad: float, file_ending: str) -> tuple[Path, Path]:
    root = make_dataset(tmp_path / "ds", LAB, UNL, TEST, shape=SHAPE, file_ending=file_ending)
    img, _ = synthetic_case(SHAPE, seed=2)  # "u" is the third case written (seed 2)
    img[1, 4, 4] = bad
    img[2, 4, 4] = bad
    p = root / "imagesTr" / f"u_0000{file_ending}"
    write_nifti(img, p)
    return root, p


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_image_mha(tmp_path, bad):
    """The check itself, on a format whose reader keeps non-finite voxels."""
    root, p = nan_dataset(tmp_path, bad, ".mha")
    only_problem_naming(problems_of(root), p, "NaN/Inf", "2 ")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_in_image_nifti(tmp_path, bad):
    root, p = nan_dataset(tmp_path, bad, ".nii.gz")
    only_problem_naming(problems_of(root), p, "NaN/Inf")


def test_read_array_keeps_nan_of_nifti(tmp_path):
    arr = np.ones(SHAPE, np.float32)
    arr[0, 0, 0] = np.nan
    got, _ = read_array(write_nifti(arr, tmp_path / "nan.nii.gz"))
    assert np.isnan(got[0, 0, 0])


@pytest.mark.parametrize("arr, dims", [(np.zeros((16, 16), np.float32), "2D"), (np.ones((2, 3, 8, 8), np.float32), "4D")])
def test_wrong_dimensionality(root, arr, dims):
    p = img_path(root, "t")
    p.unlink()
    img = sitk.GetImageFromArray(arr, isVector=False)
    sitk.WriteImage(img, str(p), True)
    only_problem_naming(problems_of(root), p, "3D", dims)


def test_vector_image_rejected(root):
    p = img_path(root, "a")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((*SHAPE, 3), np.float32), isVector=True), str(p), True)
    only_problem_naming(problems_of(root), p, "scalar")


def write_split(root: Path, split: dict) -> Path:
    p = root / "splits_semisupervised.json"
    p.write_text(json.dumps(split))
    return p


def test_case_listed_twice_in_a_split(root):
    write_split(root, {"labelled": ["a", "b", "a"], "unlabelled": UNL, "test": TEST})
    probs = problems_of(root)
    hits = [p for p in probs if "'a'" in p and "2 times" in p and "labelled" in p]
    assert len(hits) == 1, probs


def test_case_both_labelled_and_unlabelled(root):
    write_split(root, {"labelled": LAB, "unlabelled": ["u", "b"], "test": TEST})
    probs = problems_of(root)
    hits = [p for p in probs if "'b'" in p and "both" in p and "labelled" in p and "unlabelled" in p]
    assert len(hits) == 1, probs


def test_split_problems_name_the_split_file(root):
    sp = write_split(root, {"labelled": ["a", "b", "a"], "unlabelled": ["u", "b"], "test": TEST})
    probs = [p for p in problems_of(root) if "'a'" in p or "'b'" in p]
    assert len(probs) == 2 and all(str(sp) in p for p in probs), probs


def test_labels_must_declare_background(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a"], shape=SHAPE, labels={"organ": 1, "lesion": 2})
    probs = problems_of(root)
    assert any(str(root / "dataset.json") in p and "background" in p for p in probs), probs


def test_no_labelled_cases(tmp_path):
    root = make_dataset(tmp_path / "ds", [], ["u"], shape=SHAPE)
    assert any("no labelled cases" in p for p in problems_of(root))


# -- everything at once -----------------------------------------------------------------------
def test_several_problems_reported_at_once(root):
    p_corrupt = lab_path(root, "a")
    p_corrupt.write_bytes(b"garbage" * 20)
    _, lab = synthetic_case(SHAPE, seed=1)
    lab[0, 0, 0] = 5
    write_nifti(lab, lab_path(root, "b"), spacing_xyz=(1.0, 1.0, 3.0))  # geometry and undeclared value
    img_path(root, "u").unlink()  # missing image (a NaN would be zeroed by the NIfTI reader: see above)
    p_2d = img_path(root, "t")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(p_2d), True)
    write_split(root, {"labelled": ["a", "b", "b"], "unlabelled": ["u", "a"], "test": TEST})

    probs = problems_of(root)
    checks = {
        "corrupt label": lambda p: str(p_corrupt) in p and "corrupt" in p,
        "label geometry": lambda p: str(lab_path(root, "b")) in p and "spacing" in p,
        "undeclared": lambda p: str(lab_path(root, "b")) in p and "[5]" in p,
        "missing": lambda p: str(img_path(root, "u")) in p and "not found" in p,
        "2d": lambda p: str(p_2d) in p and "2D" in p,
        "twice": lambda p: "'b'" in p and "2 times" in p,
        "both": lambda p: "'a'" in p and "both" in p,
    }
    for name, ok in checks.items():
        assert sum(ok(p) for p in probs) == 1, f"{name}: {probs}"
    assert len(probs) == len(checks), probs
    text = format_problems(root, probs)
    assert f"{len(checks)} problem(s)" in text


# -- unlabelled labels are never opened -------------------------------------------------------
def test_labels_of_unlabelled_and_test_cases_are_never_opened(root, monkeypatch):
    for case in UNL + TEST:
        lab_path(root, case).write_bytes(b"corrupt label that must not be read")
    opened: list[Path] = []
    real = validate_mod.read_array

    def spy(path):
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(validate_mod, "read_array", spy)
    assert problems_of(root) == []
    assert set(opened) == {img_path(root, c) for c in LAB + UNL + TEST} | {lab_path(root, c) for c in LAB}


def test_label_path_refuses_unlabelled_and_test_cases(root):
    ds = RawDataset.open(root)
    assert ds.label_path("a") == lab_path(root, "a")
    for case in ["u", "t", "never-heard-of"]:
        with pytest.raises(LabelAccessError, match=case):
            ds.label_path(case)
    for case in ["u", "t"]:
        with pytest.raises(LabelAccessError):
            ds.load_case(case, with_label=True)
    image, label, _ = ds.load_case("u", with_label=False)
    assert label is None and image.shape == (1, *SHAPE)


def test_split_without_file_uses_folders(tmp_path):
    root = make_dataset(tmp_path / "ds", ["a", "b"], shape=SHAPE, write_split=False)
    unl = tmp_path / "ds" / "imagesUnlabelled"
    unl.mkdir()
    img, _ = synthetic_case(SHAPE, seed=5)
    write_nifti(img, unl / "x_0000.nii.gz")
    ds = RawDataset.open(root)
    assert (ds.labelled, ds.unlabelled, ds.test) == (["a", "b"], ["x"], [])
    assert ds.image_paths("x") == [unl / "x_0000.nii.gz"]
    with pytest.raises(LabelAccessError):
        ds.label_path("x")


# -- read_array -------------------------------------------------------------------------------
def test_read_array_on_corrupt_file_names_the_file(tmp_path):
    p = write_nifti(np.ones(SHAPE, np.float32), tmp_path / "img.nii.gz")
    arr, geo = read_array(p)
    assert arr.shape == SHAPE and geo.shape_zyx == SHAPE
    truncate(p, 30)
    with pytest.raises(ImageError, match="img.nii.gz") as e:
        read_array(p)
    assert str(p) in str(e.value)
    with pytest.raises(ImageError, match="not found"):
        read_array(tmp_path / "missing.nii.gz")


def test_read_array_on_data_truncated_file_raises(tmp_path):
    rng = np.random.default_rng(0)
    p = write_nifti(rng.normal(size=SHAPE).astype(np.float32), tmp_path / "img.nii.gz")
    truncate(p, 0.5)
    with pytest.raises(ImageError, match="img.nii.gz"):
        read_array(p)


def test_geometry_message_is_readable(root):
    _, lab = synthetic_case(SHAPE, seed=0)
    write_nifti(lab, lab_path(root, "a"), spacing_xyz=(1.0, 1.0, 2.5))
    msg = only_problem_naming(problems_of(root), lab_path(root, "a"), "spacing")
    assert "np.float64" not in msg and "(1.0, 1.0, 1.0) vs (1.0, 1.0, 2.5)" in msg


@pytest.mark.parametrize("split, message", [
    ({"labelled": ["a", "b"], "unlabelled": UNL, "test": ["a"]}, "case 'a' is both labelled and test"),
    ({"labelled": ["a", "b", "a"], "unlabelled": UNL, "test": TEST}, "case 'a' is listed 2 times in 'labelled'"),
    ({"labelled": "ab", "unlabelled": UNL, "test": TEST}, "'labelled' must be a list of case names"),
])
def test_a_bad_split_is_refused_wherever_the_dataset_is_opened(root, split, message):
    """Not only `validate`: plan, preprocess, train and the benchmark open datasets this way, so none trains on it."""
    write_split(root, split)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        RawDataset.open(root)
    assert "splits_semisupervised.json" in str(e.value)


def test_validate_reports_a_split_list_that_is_not_a_list(root):
    write_split(root, {"labelled": "ab", "unlabelled": UNL, "test": TEST})
    assert any("'labelled' must be a list of case names" in p for p in problems_of(root))
