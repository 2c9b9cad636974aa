"""Preprocessing: normalisation by hand, crop to non-zero, preprocess -> restore round trip on an
anisotropic oblique image, and the resumable, atomic preprocessing cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import semiseg.data.preprocess as pp
from semiseg.config import NetworkConfig, Plan
from semiseg.data.io import Geometry, read_array, write_segmentation
from semiseg.data.preprocess import (
    crop_to_nonzero,
    nonzero_bbox,
    normalize,
    preprocess_array,
    preprocess_dataset,
    resample_labels,
    restore_to_input,
)
from synthetic_data import LABELS, dice, make_dataset, rotation_z, synthetic_case, write_nifti


def make_plan(target_spacing=(1.5, 1.0, 1.0), normalization=None) -> Plan:
    return Plan(
        dataset_name="synthetic", modality="MRI", num_input_channels=1, labels=dict(LABELS),
        target_spacing=list(target_spacing), patch_size=[8, 32, 32],
        normalization=normalization or [{"scheme": "zscore"}],
        network=NetworkConfig(features=[4, 8, 16]),
    )


# -- normalisation ----------------------------------------------------------------------------
def test_normalize_ct_clips_then_global_zscore():
    x = np.array([-1000.0, -100.0, 0.0, 50.0, 100.0, 200.0, 300.0, 3000.0], np.float32).reshape(1, 2, 2, 2)
    sch = [{"scheme": "ct", "lower": -100.0, "upper": 200.0, "mean": 50.0, "std": 25.0}]
    out = normalize(x, sch)
    expected = np.array([-6.0, -6.0, -2.0, 0.0, 2.0, 6.0, 6.0, 6.0], np.float32).reshape(1, 2, 2, 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_normalize_zscore_per_case_and_none():
    x = np.arange(8, dtype=np.int16).reshape(1, 2, 2, 2)  # mean 3.5, population std sqrt(5.25)
    out = normalize(x, [{"scheme": "zscore"}])
    np.testing.assert_allclose(out.ravel(), (np.arange(8) - 3.5) / np.sqrt(5.25), atol=1e-6)
    np.testing.assert_array_equal(normalize(x, [{"scheme": "none"}]), x.astype(np.float32))
    const = normalize(np.full((1, 2, 2, 2), 7.0), [{"scheme": "zscore"}])
    assert np.isfinite(const).all() and np.all(const == 0)


def test_normalize_per_channel_schemes():
    x = np.stack([np.full((2, 2, 2), 500.0), np.arange(8.0).reshape(2, 2, 2)])
    out = normalize(x, [{"scheme": "ct", "lower": 0.0, "upper": 100.0, "mean": 0.0, "std": 10.0}, {"scheme": "zscore"}])
    np.testing.assert_allclose(out[0], 10.0)
    assert abs(out[1].mean()) < 1e-6 and abs(out[1].std() - 1) < 1e-5


def test_normalize_unknown_scheme():
    with pytest.raises(ValueError, match="unknown normalisation scheme 'minmax'"):
        normalize(np.zeros((1, 2, 2, 2)), [{"scheme": "minmax"}])


# -- crop -------------------------------------------------------------------------------------
def test_crop_to_nonzero_bbox_over_all_channels():
    img = np.zeros((2, 10, 12, 14), np.float32)
    img[0, 2:5, 3:7, 4:6] = 1.0
    img[1, 3:6, 5:9, 1:3] = -2.0  # negative values are non-zero too
    lab = np.zeros((10, 12, 14), np.int16)
    lab[3, 5, 5] = 1
    cropped, clab, bbox = crop_to_nonzero(img, lab)
    assert bbox == [[2, 6], [3, 9], [1, 6]]
    assert cropped.shape == (2, 4, 6, 5) and clab.shape == (4, 6, 5)
    assert clab[1, 2, 4] == 1 and clab.sum() == 1
    np.testing.assert_array_equal(cropped, img[:, 2:6, 3:9, 1:6])


def test_crop_all_zero_keeps_everything():
    img = np.zeros((1, 3, 4, 5))
    assert nonzero_bbox(img) == [[0, 3], [0, 4], [0, 5]]
    cropped, lab, _ = crop_to_nonzero(img)
    assert cropped.shape == img.shape and lab is None


# -- preprocess -> restore --------------------------------------------------------------------
SHAPE = (16, 64, 64)
SPACING_XYZ = (0.8, 0.8, 3.0)  # array (z, y, x) spacing (3.0, 0.8, 0.8): anisotropic
ORIGIN_XYZ = (12.0, -30.0, 5.0)
DIRECTION = rotation_z(30)  # oblique


@pytest.fixture(scope="module")
def oblique_case():
    image, label = synthetic_case(SHAPE, seed=3, border=3)
    img = sitk.GetImageFromArray(image)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN_XYZ)
    img.SetDirection(DIRECTION)
    return image[None], label, Geometry.of(img)


def test_preprocess_array_resamples_and_records_inverse(oblique_case):
    image, label, geo = oblique_case
    assert geo.spacing_zyx == pytest.approx((3.0, 0.8, 0.8))
    plan = make_plan((1.5, 1.0, 1.0))
    data, lab, props = preprocess_array(image, geo, plan, label)
    assert props["bbox"] == [[0, 16], [3, 61], [3, 61]]
    assert props["shape_after_crop"] == [16, 58, 58]
    assert props["shape_after_resample"] == [32, 46, 46] == list(data.shape[1:]) == list(lab.shape)
    assert data.dtype == np.float32 and np.isfinite(data).all()
    assert set(np.unique(lab).tolist()) == {0, 1, 2}
    assert Geometry.from_dict(json.loads(json.dumps(props["geometry"]))) == geo


def test_label_resampling_is_the_plans_choice(oblique_case):
    """Training labels reach the plan's spacing by per-class linear interpolation (default, nnU-Net's kind) or, when
    the plan says so, by nearest neighbour; the image is the same either way, and an unknown mode is refused."""
    import dataclasses

    from semiseg.data.preprocess import resample_nearest

    image, label, geo = oblique_case
    plan = make_plan((1.5, 1.0, 1.0))
    data, linear, props = preprocess_array(image, geo, plan, label)
    crop = label[tuple(slice(a, b) for a, b in props["bbox"])]
    np.testing.assert_array_equal(linear, resample_labels(crop, props["shape_after_resample"], [0, 1, 2]))
    data_n, nearest, _ = preprocess_array(image, geo, dataclasses.replace(plan, label_resampling="nearest"), label)
    np.testing.assert_array_equal(nearest, resample_nearest(crop.astype(np.int16), props["shape_after_resample"]))
    np.testing.assert_array_equal(data_n, data)
    assert (nearest != linear).any() and set(np.unique(nearest).tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="label_resampling must be one of linear, nearest, got 'cubic'"):
        dataclasses.replace(plan, label_resampling="cubic")


@pytest.mark.parametrize("is_probabilities", [False, True])
def test_restore_to_input_round_trip(oblique_case, is_probabilities, tmp_path):
    image, label, geo = oblique_case
    plan = make_plan((1.5, 1.0, 1.0))
    _, lab, props = preprocess_array(image, geo, plan, label)
    props = json.loads(json.dumps(props))  # as stored in the cache
    pred = np.stack([(lab == c) for c in range(3)]).astype(np.float32) if is_probabilities else lab
    restored = restore_to_input(pred, props, is_probabilities=is_probabilities)
    assert restored.shape == SHAPE
    assert dice(restored == 1, label == 1) > 0.95
    assert dice(restored == 2, label == 2) > 0.9  # a small lesion: boundary voxels weigh more
    assert dice(restored > 0, label > 0) > 0.95
    # written back with the recorded geometry it lies exactly on the input grid (oblique, shifted)
    out = tmp_path / "pred.nii.gz"
    write_segmentation(restored, Geometry.from_dict(props["geometry"]), out)
    arr, g = read_array(out)
    assert g.matches(geo) is None
    np.testing.assert_array_equal(arr, restored)


def test_restore_identity_when_spacing_unchanged(oblique_case):
    image, label, geo = oblique_case
    _, lab, props = preprocess_array(image, geo, make_plan((3.0, 0.8, 0.8)), label)
    np.testing.assert_array_equal(restore_to_input(lab, props, False), label)


def test_resample_labels_keeps_classes_and_shape():
    lab = np.zeros((6, 20, 20), np.int16)
    lab[1:5, 4:16, 4:16] = 1
    lab[2:4, 8:12, 8:12] = 2
    up = resample_labels(lab, [12, 30, 30], [0, 1, 2])
    assert up.shape == (12, 30, 30) and set(np.unique(up).tolist()) == {0, 1, 2}


def test_preprocess_array_rejects_nan():
    img = np.ones((1, 4, 8, 8), np.float32)
    img[0, 1, 1, 1] = np.nan
    geo = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), (4, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        preprocess_array(img, geo, make_plan())


# -- the cache --------------------------------------------------------------------------------
CASES = {"a": True, "b": True, "u": False}


@pytest.fixture
def raw(tmp_path) -> Path:
    return make_dataset(tmp_path / "raw", ["a", "b"], ["u"], shape=(6, 24, 24), spacing_xyz=(1.0, 1.0, 2.0))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture
def spy(monkeypatch) -> list[str]:
    done: list[str] = []
    real = pp._preprocess_one

    def wrapper(args):
        done.append(args[3])
        return real(args)

    monkeypatch.setattr(pp, "_preprocess_one", wrapper)
    return done


def test_preprocess_dataset_writes_cache(raw, tmp_path, spy):
    cache = tmp_path / "cache"
    preprocess_dataset(raw, None, make_plan(), CASES, cache, progress=False)
    assert sorted(spy) == ["a", "b", "u"]
    names = sorted(p.name for p in cache.iterdir())
    assert names == ["a.json", "a.npy", "a_seg.npy", "b.json", "b.npy", "b_seg.npy", "u.json", "u.npy"]
    pa = json.loads((cache / "a.json").read_text())
    assert pa["labelled"] is True and set(pa["class_locations"]) == {"1", "2"}
    seg = np.load(cache / "a_seg.npy")
    assert seg.shape == tuple(pa["shape_after_resample"]) == np.load(cache / "a.npy").shape[1:]
    z, y, x = pa["class_locations"]["2"][0]
    assert seg[z, y, x] == 2
    pu = json.loads((cache / "u.json").read_text())
    assert pu["labelled"] is False and "class_locations" not in pu


def test_preprocess_dataset_is_resumable(raw, tmp_path, spy):
    cache = tmp_path / "cache"
    plan = make_plan()
    preprocess_dataset(raw, None, plan, CASES, cache, progress=False)
    first = snapshot(cache)
    spy.clear()

    preprocess_dataset(raw, None, plan, CASES, cache, progress=False)
    assert spy == [] and snapshot(cache) == first  # nothing redone, nothing rewritten

    (cache / "b.json").unlink()  # as if interrupted before b was marked complete
    preprocess_dataset(raw, None, plan, CASES, cache, progress=False)
    assert spy == ["b"]
    again = snapshot(cache)
    assert set(again) == set(first)
    for name, stat in again.items():
        if name.startswith("b"):
            assert stat != first[name], name
        else:
            assert stat == first[name], name
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]


def test_cache_module_names_every_file_the_cache_holds(raw, tmp_path):
    """semiseg.data.cache owns the names: a preprocessed folder holds exactly the files Cache.files lists,
    and its reader gives back what was written."""
    from semiseg.data.cache import Cache

    cache = Cache(tmp_path / "cache")
    preprocess_dataset(raw, None, make_plan(), CASES, cache.root, progress=False)
    named = {p.name for c, labelled in CASES.items() for p in cache.files(c, labelled)}
    assert {p.name for p in cache.root.iterdir() if not p.name.startswith(".")} == named
    assert all(cache.has_all_files(c, labelled) for c, labelled in CASES.items())
    assert cache.props("a")["labelled"] is True and cache.props("missing") is None
    assert cache.load_seg("a").shape == cache.load_data("a", mmap=True).shape[1:]
    copy = Cache(tmp_path / "copy")
    copy.link_case(cache, "a", labelled=True)
    assert copy.props("a") == cache.props("a") and np.array_equal(copy.load_data("a"), cache.load_data("a"))


def test_cache_records_each_array_and_clears_only_its_cases_cut_writes(tmp_path):
    """The writer casts to the cache's dtypes and records shape and dtype (which every read checks); a killed
    writer's temporaries of one case are removed, another case's are not."""
    from semiseg.data.cache import Cache, CacheError

    cache = Cache(tmp_path)
    cache.write_case("a", np.zeros((1, 2, 3, 4)), np.ones((2, 3, 4), dtype=np.int64), {"shape_after_resample": [2, 3, 4]})
    assert cache.props("a")["arrays"] == {"data": {"shape": [1, 2, 3, 4], "dtype": "float32"},
                                          "seg": {"shape": [2, 3, 4], "dtype": "int16"}}
    data, seg = cache.load("a", labelled=True)
    assert (data.dtype, seg.dtype) == (np.float32, np.int16)
    np.save(cache.seg_path("a"), np.ones((2, 3, 4), dtype=np.int64))
    with pytest.raises(CacheError, match="a_seg.npy: cached array holds int64"):
        cache.load_seg("a")
    cut = [tmp_path / ".a.json.x1.tmp.json", tmp_path / ".a_seg.npy.x2.tmp.npy", tmp_path / ".a.npy.tmp123"]
    other = tmp_path / ".ab.json.x3.tmp.json"
    for p in (*cut, other):
        p.write_bytes(b"half")
    assert sorted(cache.remove_partial("a")) == sorted(cut)
    assert other.exists() and cache.has_all_files("a", labelled=True)


def test_preprocess_dataset_redoes_case_whose_label_use_changed(raw, tmp_path, spy):
    cache = tmp_path / "cache"
    preprocess_dataset(raw, None, make_plan(), {"a": False}, cache, progress=False)
    assert not (cache / "a_seg.npy").exists()
    preprocess_dataset(raw, None, make_plan(), {"a": True}, cache, progress=False)
    assert spy == ["a", "a"] and (cache / "a_seg.npy").is_file()


def test_preprocess_never_reads_unlabelled_labels(raw, tmp_path):
    (raw / "labelsTr" / "u.nii.gz").write_bytes(b"not an image")
    preprocess_dataset(raw, None, make_plan(), CASES, tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / "u.json").is_file()


def test_preprocess_dataset_refuses_labels_of_unlabelled_case(raw, tmp_path):
    from semiseg.data.dataset import LabelAccessError

    with pytest.raises(LabelAccessError):
        preprocess_dataset(raw, None, make_plan(), {"u": True}, tmp_path / "cache", progress=False)


def nan_raw(tmp_path: Path, ending: str) -> Path:
    raw = make_dataset(tmp_path / "raw", ["a", "b"], shape=(6, 24, 24), file_ending=ending)
    img, _ = synthetic_case((6, 24, 24), seed=1)
    img[3, 10, 10] = np.nan
    write_nifti(img, raw / "imagesTr" / f"b_0000{ending}")
    return raw


def test_nan_image_error_names_the_file(tmp_path):
    raw = nan_raw(tmp_path, ".mha")
    with pytest.raises(ValueError, match="NaN") as e:
        preprocess_dataset(raw, None, make_plan(), {"a": True, "b": True}, tmp_path / "cache", progress=False)
    assert str(raw / "imagesTr" / "b_0000.mha") in str(e.value)
    assert not (tmp_path / "cache" / "b.json").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_nan_nifti_image_error_names_the_file(tmp_path):
    raw = nan_raw(tmp_path, ".nii.gz")
    with pytest.raises(ValueError, match="b_0000.nii.gz"):
        preprocess_dataset(raw, None, make_plan(), {"a": True, "b": True}, tmp_path / "cache", progress=False)


def test_run_rebuilds_cache_when_plan_preprocessing_changes(raw, tmp_path):
    """plan.json may be edited after preprocessing: the run's cache must follow the new spacing."""
    from semiseg.run import create_run

    run = create_run(raw, tmp_path / "run", overrides={"target_spacing": [2.0, 1.0, 1.0]}, progress=False)
    run.ensure_preprocessed(labelled=True, progress=False)
    assert json.loads((run.cache / "a.json").read_text())["shape_after_resample"] == [6, 20, 20]
    edited = json.loads((run.root / "plan.json").read_text())
    edited["target_spacing"] = [2.0, 2.0, 2.0]
    (run.root / "plan.json").write_text(json.dumps(edited))
    run.ensure_preprocessed(labelled=True, progress=False)
    assert json.loads((run.cache / "a.json").read_text())["shape_after_resample"] == [6, 10, 10]
    assert np.load(run.cache / "a_seg.npy").shape == (6, 10, 10)
    assert not [p for p in run.cache.iterdir() if p.name.startswith(".")]


def test_nan_in_second_channel_names_that_channel(tmp_path):
    raw = make_dataset(tmp_path / "raw", ["a"], shape=(6, 24, 24), file_ending=".mha")
    meta = json.loads((raw / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1", "1": "T2"}
    (raw / "dataset.json").write_text(json.dumps(meta))
    img, _ = synthetic_case((6, 24, 24), seed=0)
    img[2, 12, 12] = np.nan
    write_nifti(img, raw / "imagesTr" / "a_0001.mha")
    plan = make_plan(normalization=[{"scheme": "zscore"}, {"scheme": "zscore"}])
    plan.num_input_channels = 2
    with pytest.raises(ValueError, match="a_0001.mha"):
        preprocess_dataset(raw, None, plan, {"a": True}, tmp_path / "cache", progress=False)
