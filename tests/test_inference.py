"""Prediction: window placement, exactness of the sliding window, TTA, grid fidelity of written NIfTI,
ensembles, precision and backends on a small trained model, bad inputs, and the memory structure
(no (K, full volume) float array in the streamed path)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

import semiseg.grid as grid
from semiseg.config import TrainConfig
from semiseg.data.io import Geometry, ImageError
from semiseg.data.preprocess import restore_to_input
from semiseg.inference import Predictor, PredictorConfig, sliding_window, window_starts
from semiseg.inference.predictor import cpu_fast_path
from semiseg.inference.restore import LabelRestorer, restore_labels
from semiseg.inference.sliding_window import iter_slabs
from synthetic_data import dice, make_dataset, rotation_z, synthetic_case, tiny_overrides, write_nifti

K = 3
BF16_AGREEMENT = 0.99  # stated tolerance: bf16 and fp32 labels agree on >= 99% of voxels of a trained model


# -- fixtures -----------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net trained for 40 steps on synthetic MR cases (anisotropic spacing): confident enough
    that labels are not coin flips, small enough to train in a few seconds."""
    from semiseg.run import create_run, train_fold

    base = tmp_path_factory.mktemp("inference")
    raw = make_dataset(base / "raw", labelled=["a", "b", "c"], shape=(12, 36, 36), spacing_xyz=(1.0, 1.0, 2.0))
    run = create_run(raw, base / "run", overrides={**tiny_overrides([8, 32, 32]), "target_spacing": [2.0, 1.0, 1.0]}, progress=False)
    cfg = TrainConfig(iterations=40, checkpoint_every=40, batch_size=2, seed=0, lr=0.02, num_workers=0, augmentation="none")
    return train_fold(run, "all", cfg, progress=False)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An oblique, anisotropic test image (spacing 0.9 x 1.1 x 2.5 mm, rotated 30 degrees, offset origin)."""
    img, lab = synthetic_case((14, 40, 38), seed=11)
    path = write_nifti(img, tmp_path_factory.mktemp("case") / "in" / "oblique_0000.nii.gz",
                       spacing_xyz=(0.9, 1.1, 2.5), origin_xyz=(12.5, -40.0, 7.25), direction=rotation_z(30))
    return path, lab


def _read(path: Path) -> tuple[np.ndarray, Geometry]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), Geometry.of(img)


class Repeat(nn.Module):
    """Identity network with K output channels: the sliding window must give its input back exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, K, 1, 1, 1)


# -- window placement -----------------------------------------------------------------------------
def _nnunet_steps(image_size: int, tile: int, step: float) -> list[int]:
    """nnU-Net v2 compute_steps_for_sliding_window, one axis (transcribed from its source)."""
    target = tile * step
    num_steps = int(np.ceil((image_size - tile) / target)) + 1
    max_step = image_size - tile
    actual = max_step / (num_steps - 1) if num_steps > 1 else 99999999999
    return [int(np.round(actual * i)) for i in range(num_steps)]


@pytest.mark.parametrize("step", [0.5, 0.9, 1.0, 0.33])
def test_window_starts_match_nnunet(step: float) -> None:
    for tile in (8, 20, 64, 128):
        for size in range(tile, tile * 5, 7):
            got = window_starts(size, tile, step)
            assert got == _nnunet_steps(size, tile, step)
            assert got[0] == 0 and got[-1] == size - tile
            assert all(b - a <= math.ceil(tile * step) for a, b in zip(got, got[1:]))  # no gaps beyond the stride
    assert window_starts(200, 64, 0.5) == [0, 27, 54, 82, 109, 136]
    with pytest.raises(ValueError, match="smaller than the patch"):
        window_starts(10, 16, 0.5)


# -- exactness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("patch", [(8, 16, 16), (6, 10, 24), (30, 50, 40)])  # last: larger than the volume
@pytest.mark.parametrize("step", [0.5, 0.9, 1.0])
def test_identity_network_reproduces_input(patch: tuple[int, int, int], step: float) -> None:
    data = np.random.default_rng(0).normal(size=(1, 23, 41, 37)).astype(np.float32)
    for gaussian, batch in ((True, 3), (False, 1)):
        out = sliding_window(Repeat(), data, patch, K, step=step, gaussian=gaussian, batch=batch)
        assert out.shape == (K, 23, 41, 37) and out.dtype == torch.float32
        torch.testing.assert_close(out, torch.from_numpy(data).expand(K, -1, -1, -1), rtol=1e-5, atol=1e-5)


def test_slabs_are_contiguous_and_patch_deep() -> None:
    """Slabs cover the volume in order, and none is deeper than the windows' z stride (about one patch)."""
    data = np.random.default_rng(1).normal(size=(1, 61, 20, 20)).astype(np.float32)
    slabs = list(iter_slabs([Repeat(), Repeat()], data, (8, 16, 16), K, step=0.5, batch=4))
    assert slabs[0].z0 == 0 and slabs[-1].z1 == 61
    assert all(a.z1 == b.z0 for a, b in zip(slabs, slabs[1:]))
    assert max(s.z1 - s.z0 for s in slabs) <= 8
    assert all(len(s.logits) == 2 and s.logits[0].shape == (K, s.z1 - s.z0, 20, 20) for s in slabs)


@pytest.mark.parametrize("tta", ["3", "7"])
def test_tta_with_flip_equivariant_net_changes_nothing(tta: str) -> None:
    torch.manual_seed(0)
    pointwise = nn.Conv3d(1, K, 1)
    blur = nn.Sequential(nn.Conv3d(1, K, 1), nn.AvgPool3d(3, stride=1, padding=1))  # symmetric kernel
    data = np.random.default_rng(2).normal(size=(1, 12, 30, 26)).astype(np.float32)
    for net in (pointwise, blur):
        ref = sliding_window(net, data, (8, 16, 16), K, tta="none")
        torch.testing.assert_close(sliding_window(net, data, (8, 16, 16), K, tta=tta), ref, rtol=1e-5, atol=1e-5)


def test_cpu_fast_path_is_the_same_function(model: Path) -> None:
    from semiseg.engine.trainer import load_model

    net, plan = load_model(model)
    fast = cpu_fast_path(load_model(model)[0])
    x = torch.randn(2, 1, *plan.patch_size)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last_3d)), net(x), rtol=1e-4, atol=1e-4)


# -- streaming restore == whole-volume restore ----------------------------------------------------
@pytest.mark.parametrize("in_shape,crop,full,bbox", [
    ((7, 20, 22), (23, 41, 37), (30, 50, 40), [[3, 26], [4, 45], [1, 38]]),  # upsampling, inside a bbox
    ((30, 10, 10), (13, 25, 19), (13, 25, 19), [[0, 13], [0, 25], [0, 19]]),  # z downsampled
    ((9, 33, 12), (9, 33, 12), (9, 33, 12), [[0, 9], [0, 33], [0, 12]]),  # no resampling
])
def test_streamed_restore_equals_whole_volume_restore(in_shape, crop, full, bbox, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.nn.functional.avg_pool3d(torch.randn(1, 4, *in_shape, generator=g), 3, 1, 1)[0] * 5, 0)
    props = {"shape_after_resample": list(in_shape), "shape_after_crop": list(crop), "geometry": {"shape_zyx": list(full)}, "bbox": bbox}
    ref = restore_to_input(probs.numpy(), props, True)
    monkeypatch.setattr(grid, "CHUNK_ELEMENTS", 1000)  # force many small in-plane chunks
    r = LabelRestorer(props, 4, "linear")
    z = 0
    for dz in [2, 1, 3] * in_shape[0]:
        if z >= in_shape[0]:
            break
        r.push(z, min(in_shape[0], z + dz), probs[:, z : z + dz])
        z = min(in_shape[0], z + dz)
    got = r.finish()
    assert got.dtype == np.uint8 and got.shape == tuple(full)
    np.testing.assert_array_equal(got, ref)
    ref_nn = restore_to_input(probs.argmax(0).numpy().astype(np.int16), props, False)
    np.testing.assert_array_equal(restore_labels(probs.argmax(0).to(torch.uint8), props, 4, "argmax"), ref_nn)


# -- end to end on a trained model -----------------------------------------------------------------
def test_predict_folder_writes_input_grid(model: Path, case: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, lab = case
    pred = Predictor.from_path(model, PredictorConfig(step=0.5))
    written = pred.predict_folder(path.parent, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["oblique.nii.gz"]
    src, out = sitk.ReadImage(str(path)), sitk.ReadImage(str(written[0]))
    assert out.GetSize() == src.GetSize()
    assert out.GetSpacing() == src.GetSpacing() and out.GetOrigin() == src.GetOrigin() and out.GetDirection() == src.GetDirection()
    seg = sitk.GetArrayFromImage(out)
    assert set(np.unique(seg)) <= {0, 1, 2}
    assert dice(seg == 1, lab == 1) > 0.5 or dice(seg > 0, lab > 0) > 0.5  # trained a little, not perfect
    image, geo = _read(path)
    arr = pred.predict_array(image[None].astype(np.float32), geo)
    assert arr.shape == image.shape and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, seg)


def test_ensemble_of_identical_models_equals_one(model: Path, case: tuple[Path, np.ndarray]) -> None:
    image, geo = _read(case[0])
    one = Predictor([model], PredictorConfig())
    two = Predictor([model, model], PredictorConfig())
    np.testing.assert_array_equal(two.predict_array(image[None].astype(np.float32), geo), one.predict_array(image[None].astype(np.float32), geo))
    data, _ = one.preprocess(image[None].astype(np.float32), geo)
    torch.testing.assert_close(two.predict_preprocessed(data), one.predict_preprocessed(data), rtol=1e-5, atol=1e-6)
    seen = []
    two.predict_preprocessed(data, each_model=lambda i, p: seen.append((i, tuple(p.shape))))
    assert seen == [(0, (K, *data.shape[1:])), (1, (K, *data.shape[1:]))]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def test_argmax_logit_and_probability_resampling_agree(model: Path, case: tuple[Path, np.ndarray]) -> None:
    image, geo = _read(case[0])
    x = image[None].astype(np.float32)
    probs = Predictor([model], PredictorConfig(resample="probabilities")).predict_array(x, geo)
    argm = Predictor([model], PredictorConfig(resample="argmax")).predict_array(x, geo)
    logits = Predictor([model], PredictorConfig(resample="logits")).predict_array(x, geo)
    assert _agreement(probs, argm) > 0.97  # they differ only along label borders
    assert _agreement(probs, logits) > 0.99
    for c in (1, 2):
        if (probs == c).sum() > 50:
            assert dice(probs == c, argm == c) > 0.85
    two = Predictor([model, model], PredictorConfig(resample="logits")).predict_array(x, geo)
    np.testing.assert_array_equal(two, logits)


def test_bf16_labels_agree_with_fp32(model: Path, case: tuple[Path, np.ndarray]) -> None:
    image, geo = _read(case[0])
    x = image[None].astype(np.float32)
    fp32 = Predictor([model], PredictorConfig(precision="fp32")).predict_array(x, geo)
    bf16 = Predictor([model], PredictorConfig(precision="bf16")).predict_array(x, geo)
    assert _agreement(fp32, bf16) >= BF16_AGREEMENT


def test_options_give_consistent_labels(model: Path, case: tuple[Path, np.ndarray]) -> None:
    """step/gaussian/TTA/batch/fast-path change the numbers a little, never the picture."""
    image, geo = _read(case[0])
    x = image[None].astype(np.float32)
    ref = Predictor([model], PredictorConfig()).predict_array(x, geo)
    for cfg in (PredictorConfig(batch=1, cpu_fast=False), PredictorConfig(step=0.9, gaussian=False), PredictorConfig(tta="3", batch=3)):
        got = Predictor([model], cfg).predict_array(x, geo)
        assert _agreement(got, ref) > (0.999 if cfg.step == 0.5 and cfg.tta == "none" else 0.95), cfg


def test_onnx_backend_matches_torch(model: Path, case: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from semiseg.inference.onnx_backend import OnnxNetwork, export_onnx

    onnx_file = export_onnx(model, tmp_path / "m.onnx")
    image, geo = _read(case[0])
    x = image[None].astype(np.float32)
    ref = Predictor([model], PredictorConfig()).predict_array(x, geo)
    got = Predictor([model], PredictorConfig(backend="onnx", onnx_path=str(onnx_file))).predict_array(x, geo)
    assert _agreement(got, ref) >= 0.9999
    # dynamic batch axis
    net = OnnxNetwork(onnx_file)
    assert net(torch.zeros(3, 1, 8, 32, 32)).shape == (3, K, 8, 32, 32)
    with pytest.raises(ValueError, match="fp32 only"):
        PredictorConfig(backend="onnx", precision="bf16")


def test_onnx_auto_export_and_cli(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import argparse
    import shutil

    from semiseg.inference.cli import register_cli

    m = tmp_path / "fold_0" / "model_final.pt"
    m.parent.mkdir()
    shutil.copy(model, m)
    Predictor([m], PredictorConfig(backend="onnx"))  # exports beside the model
    assert (m.parent / "model_final.onnx").is_file()
    ap = argparse.ArgumentParser()
    register_cli(ap.add_subparsers(dest="command"))
    a = ap.parse_args(["export-onnx", str(m.parent), "--out", str(tmp_path / "x.onnx")])
    assert a.func(a) == 0 and (tmp_path / "x.onnx").is_file()


# -- bad inputs ------------------------------------------------------------------------------------
def test_bad_inputs_name_the_file(model: Path, tmp_path: Path) -> None:
    pred = Predictor([model], PredictorConfig())
    img, _ = synthetic_case((10, 20, 20))
    nan = img.copy()
    nan[3, 4, 5] = np.nan
    write_nifti(nan, tmp_path / "nan" / "withnan_0000.nii.gz")
    with pytest.raises(ImageError, match=r"withnan_0000\.nii\.gz.*NaN"):
        pred.predict_folder(tmp_path / "nan", tmp_path / "o1", progress=False)
    write_nifti(img[0], tmp_path / "flat" / "slice_0000.nii.gz")  # a 2D image
    with pytest.raises(ImageError, match=r"slice_0000\.nii\.gz.*3D"):
        pred.predict_folder(tmp_path / "flat", tmp_path / "o2", progress=False)
    two = Predictor([model], PredictorConfig())
    two.plan = dataclasses.replace(two.plan, num_input_channels=2)
    write_nifti(img, tmp_path / "multi" / "case_0000.nii.gz")
    with pytest.raises(ImageError, match=r"case_0001\.nii\.gz"):
        two.predict_folder(tmp_path / "multi", tmp_path / "o3", progress=False)
    with pytest.raises(ValueError, match="NaN"):
        pred.predict_array(nan[None], Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), nan.shape))
    with pytest.raises(ValueError, match=r"expected a \(1, z, y, x\) image"):
        pred.predict_array(img, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), img.shape))


# -- memory structure --------------------------------------------------------------------------------
@pytest.mark.parametrize("resample", ["argmax", "probabilities", "logits"])
def test_no_full_volume_class_tensor(model: Path, resample: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a volume many patches deep, nothing of K x (input or plan volume) floats is made: softmax,
    accumulators and the restorer's buffer only ever hold slabs, and labels come back uint8."""
    shape = (120, 48, 48)  # input spacing 1 x 1 x 1 mm; plan 2 x 1 x 1 -> 60 plan rows, patch depth 8
    img = np.tile(synthetic_case((12, 48, 48), seed=3)[0], (10, 1, 1))
    geo = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), shape)
    pred = Predictor([model], PredictorConfig(resample=resample, step=0.5))
    limit = K * 48 * 48 * 16  # two patch depths of K-channel plan-resolution floats
    seen: list[tuple[str, int]] = []
    softmax, interpolate, cat = torch.softmax, torch.nn.functional.interpolate, torch.cat

    def spy_softmax(t: torch.Tensor, *a, **k):
        seen.append(("softmax", t.numel()))
        return softmax(t, *a, **k)

    def spy_interpolate(t: torch.Tensor, *a, **k):
        out = interpolate(t, *a, **k)
        if t.shape[1] == K:  # class channels (the input image's resampling has 1 channel)
            seen.append(("interpolate", out.numel()))
        return out

    def spy_cat(ts, *a, **k):
        out = cat(ts, *a, **k)
        if out.is_floating_point() and out.ndim == 4 and out.shape[0] == K:
            seen.append(("cat", out.numel()))
        return out

    write_rows = LabelRestorer._write_probability_rows

    def spy_restorer(self: LabelRestorer) -> None:
        seen.append(("restorer buffer", self.buf.size))
        write_rows(self)

    monkeypatch.setattr(LabelRestorer, "_write_probability_rows", spy_restorer)
    monkeypatch.setattr(torch, "softmax", spy_softmax)
    monkeypatch.setattr(torch.nn.functional, "interpolate", spy_interpolate)
    monkeypatch.setattr(torch, "cat", spy_cat)
    seg = pred.predict_array(img[None], geo)
    assert seg.shape == shape and seg.dtype == np.uint8
    assert seen, "spies saw nothing"
    too_big = [(name, n) for name, n in seen if n > limit]
    assert not too_big, f"full-volume class tensors: {too_big[:3]} (limit {limit})"
