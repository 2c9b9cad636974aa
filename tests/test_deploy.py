"""Torch-free deployment (semiseg.deploy): the numpy core (semiseg.grid) equals torch where torch computes,
the ONNX deploy labels equal the torch Predictor's on a resampled oblique case, the output keeps the input's grid, and the
deploy process never imports torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

import semiseg.grid as ops
from semiseg.config import Plan, TrainConfig
from semiseg.data.io import Geometry, ImageError
from semiseg.data.preprocess import normalize, preprocess_array, resample_image
from semiseg.deploy import DeployPredictor, discover_cases, find_onnx
from semiseg.deploy.predict import main as deploy_main
from semiseg.inference import Predictor, PredictorConfig
from semiseg.inference import discover_cases as torch_discover_cases
from semiseg.inference.restore import LabelRestorer as TorchRestorer
from semiseg.inference.sliding_window import _gaussian, iter_slabs, window_starts
from synthetic_data import dice, make_dataset, rotation_z, synthetic_case, tiny_overrides, write_nifti

ROOT = Path(__file__).resolve().parents[1]
K = 3

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net trained 40 steps on synthetic anisotropic MR cases (model_final.pt)."""
    from semiseg.run import create_run, train_fold

    base = tmp_path_factory.mktemp("deploy")
    raw = make_dataset(base / "raw", labelled=["a", "b", "c"], shape=(12, 36, 36), spacing_xyz=(1.0, 1.0, 2.0))
    run = create_run(raw, base / "run", overrides={**tiny_overrides([8, 32, 32]), "target_spacing": [2.0, 1.0, 1.0]}, progress=False)
    cfg = TrainConfig(iterations=40, checkpoint_every=40, batch_size=2, seed=0, lr=0.02, num_workers=0, augmentation="none")
    return train_fold(run, "all", cfg, progress=False)


@pytest.fixture(scope="module")
def onnx_file(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model exported to ONNX alone in a folder: only the .onnx and the .plan.json export writes."""
    from semiseg.inference.onnx_backend import export_onnx

    return export_onnx(model, tmp_path_factory.mktemp("deploy") / "model_final.onnx")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Oblique, anisotropic (0.9 x 1.1 x 2.5 mm vs plan 1 x 1 x 2 mm), offset origin, int16 voxels."""
    img, _ = synthetic_case((14, 40, 38), seed=11)
    return write_nifti(np.round(img).astype(np.int16), tmp_path_factory.mktemp("case") / "in" / "oblique_0000.nii.gz",
                       spacing_xyz=(0.9, 1.1, 2.5), origin_xyz=(12.5, -40.0, 7.25), direction=rotation_z(30))


# -- the numpy core equals torch --------------------------------------------------------------------
def test_window_starts_and_gaussian_match() -> None:
    for tile in (8, 20, 64):
        for size in range(tile, tile * 4, 5):
            for step in (0.5, 0.9, 0.33):
                assert ops.window_starts(size, tile, step) == window_starts(size, tile, step)
    for patch in ((8, 32, 32), (20, 64, 64), (5, 7, 9)):
        np.testing.assert_allclose(ops.gaussian(patch), _gaussian(patch).numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("src,dst", [((7, 20, 22), (23, 41, 37)), ((30, 10, 10), (13, 25, 19)),
                                     ((9, 33, 12), (9, 33, 12)), ((40, 9, 50), (5, 30, 7))])
def test_resize_matches_torch_trilinear(src: tuple[int, ...], dst: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(0).normal(size=(2, *src)).astype(np.float32) * 100
    ref = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="trilinear", align_corners=False)[0].numpy()
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 500)  # many z chunks
    got = ops.resize_linear(x, dst)
    assert got.shape == (2, *dst) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)  # bit-equal where torch's kernel uses FMA (x86-64 AVX2)


def test_preprocess_matches_torch_preprocessing() -> None:
    img, _ = synthetic_case((14, 40, 38), seed=3)
    geo = Geometry((0.9, 1.1, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), img.shape)
    plan = Plan("x", "MRI", 1, {"bg": 0, "a": 1, "b": 2}, [2.0, 1.0, 1.0], [8, 32, 32], normalization=[{"scheme": "zscore"}])
    ref, _, props = preprocess_array(img[None], geo, plan)
    got, p = ops.preprocess(img[None], geo.spacing_zyx, plan)
    assert p["bbox"] == props["bbox"] and p["shape_after_resample"] == props["shape_after_resample"]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    ct = [{"scheme": "ct", "lower": -50.0, "upper": 200.0, "mean": 40.0, "std": 30.0}]
    np.testing.assert_array_equal(ops.normalize(img[None] * 3 - 100, ct), normalize(img[None] * 3 - 100, ct))


def test_sliding_window_slabs_match_torch() -> None:
    """Same windows, weights, slabs and numbers as sliding_window.iter_slabs (a pointwise 'network')."""
    w = np.array([1.0, -2.0, 0.5], np.float32)[None, :, None, None, None]

    def np_net(x: np.ndarray) -> np.ndarray:
        return np.tanh(x * w) + x**2

    def torch_net(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np_net(x.numpy()))

    data = np.random.default_rng(1).normal(size=(1, 29, 21, 40)).astype(np.float32)
    for patch in ((8, 16, 16), (30, 24, 20)):  # the second pads z and y
        ref = list(iter_slabs([torch_net], data, patch, K, step=0.5, batch=3))
        got = list(ops.iter_slabs([np_net], data, patch, K, step=0.5, batch=3))
        assert [(s.z0, s.z1) for s in got] == [(s.z0, s.z1) for s in ref]
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a.logits[0], b.logits[0].numpy(), rtol=1e-6, atol=1e-6)


def test_restorer_matches_torch_restorer(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    in_shape, crop, full, bbox = (7, 20, 22), (23, 41, 37), (30, 50, 40), [[3, 26], [4, 45], [1, 38]]
    probs = torch.softmax(F.avg_pool3d(torch.randn(1, 4, *in_shape, generator=g), 3, 1, 1)[0] * 5, 0)
    ref = TorchRestorer({"shape_after_resample": in_shape, "shape_after_crop": crop, "geometry": {"shape_zyx": full},
                         "bbox": bbox}, 4, "linear")
    ref.push(0, in_shape[0], probs)
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 1000)
    r = ops.LabelRestorer({"shape_after_resample": in_shape, "shape_after_crop": crop, "geometry": {"shape_zyx": full},
                          "bbox": bbox}, 4)
    for z in range(0, in_shape[0], 2):
        r.push(z, min(in_shape[0], z + 2), probs[:, z : z + 2].numpy())
    np.testing.assert_array_equal(r.finish(), ref.finish())


def test_case_discovery_matches_torch_predictor(tmp_path: Path) -> None:
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert discover_cases(tmp_path, 2) == torch_discover_cases(tmp_path, 2)
    (tmp_path / "b_0001.nii.gz").unlink()
    with pytest.raises(ImageError, match=r"'b' lacks channel file\(s\) \[1\]"):
        discover_cases(tmp_path, 2)


# -- end to end on a trained model ------------------------------------------------------------------
def _labels(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def test_deploy_labels_equal_torch_predictor(model: Path, onnx_file: Path, case: Path, tmp_path: Path) -> None:
    assert sorted(f.name for f in onnx_file.parent.iterdir()) == ["model_final.onnx", "model_final.plan.json"]
    assert onnx_file.with_suffix(".plan.json").is_file()  # written by export_onnx
    assert find_onnx(onnx_file.parent) == [onnx_file]
    dep = DeployPredictor.from_path(onnx_file.parent, threads=1)
    got = _labels(dep.predict_folder(case.parent, tmp_path / "deploy", progress=False)[0])[0]
    ref_torch = _labels(Predictor([model], PredictorConfig()).predict_folder(case.parent, tmp_path / "torch", progress=False)[0])[0]
    ref_onnx = _labels(Predictor([model], PredictorConfig(backend="onnx", onnx_path=str(onnx_file), threads=1))
                       .predict_folder(case.parent, tmp_path / "onnx", progress=False)[0])[0]
    assert got.shape == ref_torch.shape and (ref_torch == 1).sum() > 200  # a real organ: a real comparison
    for c in range(K):
        assert dice(got == c, ref_torch == c) >= 0.999, c
    assert (got == ref_onnx).mean() >= 0.9999  # same ONNX network: identical up to float ties
    # logits resampling (nnU-Net's export) as well; ensembles average, so two copies change nothing
    logits = Predictor([model], PredictorConfig(resample="logits")).predict_folder(case.parent, tmp_path / "tl", progress=False)[0]
    dep2 = DeployPredictor([onnx_file, onnx_file], threads=1, resample="logits", batch=3)
    got2 = _labels(dep2.predict_folder(case.parent, tmp_path / "dl", progress=False)[0])[0]
    for c in range(K):
        assert dice(got2 == c, _labels(logits)[0] == c) >= 0.999, c


def test_deploy_output_folder_keeps_the_torch_predictors_record_and_shards(onnx_file: Path, case: Path, tmp_path: Path) -> None:
    """One folder loop for both predictors (semiseg.runtime.predict_folder): a shard keeps its own record, the
    same prediction resumes, a label map the folder has no record of is refused, another shard gets no case."""
    dep = DeployPredictor.from_path(onnx_file, threads=1)
    out = tmp_path / "out"
    assert dep.predict_folder(case.parent, out, progress=False, shard=(0, 2)) == []  # one case: it is shard 1's
    [target] = dep.predict_folder(case.parent, out, progress=False, shard=(1, 2))
    record = json.loads((out / "predictions.shard-1-of-2.json").read_text())
    assert list(record["cases"]) == ["oblique"] and record["stamp"]["options"]["backend"] == "deploy"
    first = target.stat().st_mtime_ns
    assert dep.predict_folder(case.parent, out, progress=False) == [target]  # every record of it vouches
    assert target.stat().st_mtime_ns == first
    stray = tmp_path / "stray"
    write_nifti(np.zeros((4, 4, 4), np.uint8), stray / "oblique.nii.gz")
    with pytest.raises(ValueError, match="no record"):
        dep.predict_folder(case.parent, stray, progress=False)


def test_cli_subprocess_imports_no_torch(onnx_file: Path, case: Path, tmp_path: Path) -> None:
    """The CLI in a fresh interpreter: prediction works, torch/monai never get imported, geometry is kept."""
    out = tmp_path / "out"
    code = ("import runpy, sys, json\n"
            f"sys.argv = ['semiseg.deploy', {str(onnx_file.parent)!r}, {str(case.parent)!r}, {str(out)!r}, '--threads', '1']\n"
            "try:\n    runpy.run_module('semiseg.deploy', run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai'))}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res == {"rc": 0, "heavy": []}
    seg, img = _labels(out / "oblique.nii.gz")
    src = sitk.ReadImage(str(case))
    assert img.GetSize() == src.GetSize() and img.GetSpacing() == src.GetSpacing()
    assert img.GetOrigin() == src.GetOrigin() and img.GetDirection() == src.GetDirection()
    assert seg.dtype == np.uint8 and seg.max() > 0
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporary files left


def test_bad_inputs_name_the_file(onnx_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, _ = synthetic_case((10, 20, 20))
    img[3, 4, 5] = np.nan
    write_nifti(img, tmp_path / "nan" / "withnan_0000.nii.gz")
    folder = str(onnx_file.parent)
    assert deploy_main([folder, str(tmp_path / "nan"), str(tmp_path / "o"), "--quiet"]) == 2
    assert "withnan_0000.nii.gz" in capsys.readouterr().err and not (tmp_path / "o" / "withnan.nii.gz").exists()
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert deploy_main([folder, str(tmp_path / "trunc"), str(tmp_path / "o"), "--quiet"]) == 2
    assert "broken_0000.nii.gz" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "m.onnx").write_bytes(onnx_file.read_bytes())  # no plan beside it
    assert deploy_main([str(tmp_path / "bare" / "m.onnx"), str(tmp_path / "nan"), str(tmp_path / "o"), "--quiet"]) == 2
    assert "m.plan.json" in capsys.readouterr().err
    for option, value in (("--step", "0"), ("--batch", "0"), ("--threads", "-1")):  # refused while parsing, by name
        with pytest.raises(SystemExit) as e:
            deploy_main([folder, str(tmp_path / "nan"), str(tmp_path / "o"), option, value])
        assert e.value.code == 2 and option in capsys.readouterr().err


def test_ensure_onnx_backfills_the_plan(model: Path, tmp_path: Path) -> None:
    """An export made before plans were written beside it gets its .plan.json from the .pt, equal to the plan."""
    import shutil

    from semiseg.inference.onnx_backend import ensure_onnx

    m = tmp_path / "model_final.pt"
    shutil.copy(model, m)
    onnx_path = ensure_onnx(m)
    plan_json = onnx_path.with_suffix(".plan.json")
    first = Plan.load(plan_json)
    plan_json.unlink()
    assert ensure_onnx(m) == onnx_path and Plan.load(plan_json) == first
    assert first == Plan.load(model.parent / "plan.json")
