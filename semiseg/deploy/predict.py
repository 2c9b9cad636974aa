"""Torch-free prediction with an exported ONNX model: numpy + SimpleITK/nibabel + ONNX Runtime.

Reads ``model_final.onnx`` (from ``semiseg export-onnx``) and its plan (``model_final.plan.json`` beside
it, else the fold's ``plan.json``), then does what :class:`semiseg.inference.Predictor` does with its
defaults: crop to non-zero, normalise, resample to the plan spacing, Gaussian sliding window streamed in
z-slabs, probabilities resampled back to the input grid slab by slab, argmax, atomic NIfTI write with the
input's geometry. Nothing here imports torch (tests/test_deploy.py checks it in a subprocess): a
deployment needs neither PyTorch nor MONAI, and the process stays ~250 MB lighter.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from semiseg.argtypes import positive_int, unit_fraction
from semiseg.config import Plan
from semiseg.data.cases import discover_cases, read_channels  # noqa: F401  (discover_cases re-exported)
from semiseg.data.io import Geometry, ImageError, write_segmentation
from semiseg.data.outputs import prediction_stamp
from semiseg.grid import LabelRestorer, iter_slabs, preprocess, softmax
from semiseg.runtime import ENSEMBLE_FIELDS, find_model_files, onnx_session, plan_mismatch, predict_folder

RESAMPLE_MODES = ("probabilities", "logits")


def find_onnx(path: str | Path) -> list[Path]:
    """An .onnx file, a folder with model_final.onnx, or a folder of fold_*/model_final.onnx (an ensemble)."""
    return find_model_files(path, "model_final.onnx", f" (run `semiseg export-onnx {path}` first)")


def plan_path(onnx_file: Path) -> Path:
    """The plan written by export-onnx beside the .onnx; the training fold's plan.json as a fallback."""
    for cand in (onnx_file.with_suffix(".plan.json"), onnx_file.parent / "plan.json"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{onnx_file}: no {onnx_file.with_suffix('.plan.json').name} nor plan.json beside it "
                            "(re-run `semiseg export-onnx` to write it)")


class OrtNetwork:
    """One ONNX Runtime session: float32 (B, C, *patch) windows -> (B, K, *patch) logits."""

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence[str] | None = None):
        self.session = onnx_session(path, threads, providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


# an exported graph takes windows of the patch it was traced with, and the windows are cut at the first plan's
SHARED_FIELDS = (*ENSEMBLE_FIELDS, "patch_size")


class DeployPredictor:
    """ONNX model(s) sharing one plan -> label maps on the input grid; mirrors Predictor's default options."""

    def __init__(self, models: Sequence[str | Path], step: float = 0.5, batch: int = 2, threads: int | None = None,
                 resample: str = "probabilities", providers: Sequence[str] | None = None):
        if not 0 < step <= 1:
            raise ValueError(f"step must be in (0, 1], got {step}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {list(RESAMPLE_MODES)}, got '{resample}'")
        if not models:
            raise ValueError("no models given")
        self.step, self.batch, self.resample = step, batch, resample
        self.model_paths = [Path(m) for m in models]
        self.networks: list[OrtNetwork] = []
        plan: Plan | None = None
        for m in models:
            p = Plan.load(plan_path(Path(m)))
            differ = plan_mismatch(plan, p, SHARED_FIELDS) if plan is not None else []
            if differ:
                raise ValueError(f"{m}: its plan differs from the first model's in {', '.join(differ)}")
            plan = p
            self.networks.append(OrtNetwork(Path(m), threads, providers))
        assert plan is not None
        self.plan = plan

    @classmethod
    def from_path(cls, path: str | Path, **kw: object) -> "DeployPredictor":
        return cls(find_onnx(path), **kw)  # type: ignore[arg-type]

    def predict_array(self, image: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
        """(C, z, y, x) raw image with its (z, y, x) spacing -> label map on the same grid (uint8 up to 256 classes)."""
        if image.ndim != 4 or image.shape[0] != self.plan.num_input_channels:
            raise ValueError(f"expected a ({self.plan.num_input_channels}, z, y, x) image, got shape {image.shape}")
        data, props = preprocess(image, spacing_zyx, self.plan)
        k, n = self.plan.num_classes, len(self.networks)
        restorer = LabelRestorer(props, k)
        score = softmax if self.resample == "probabilities" else (lambda t: t)
        for slab in iter_slabs(self.networks, data, self.plan.patch_size, k, self.step, self.batch):
            mean = score(slab.logits[0])
            for lg in slab.logits[1:]:
                mean += score(lg)
            if n > 1:
                mean /= n
            restorer.push(slab.z0, slab.z1, mean)
        del data
        return restorer.finish()

    def read_case(self, paths: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
        """Channel files -> (C, z, y, x); one integer channel keeps its dtype (normalising copies anyway)."""
        return read_channels(paths, self.plan.num_input_channels, native_dtype=True)

    def predict_files(self, paths: Sequence[Path], out_path: str | Path) -> Path:
        image, geo = self.read_case(paths)
        try:
            seg = self.predict_array(image, geo.spacing_zyx)
        except ValueError as e:
            raise ImageError(f"{paths[0]}: {e}") from None
        del image
        write_segmentation(seg, geo, out_path)  # temporary name, then rename
        return Path(out_path)

    def predict_folder(self, input_path: str | Path, output_dir: str | Path, overwrite: bool = False,
                       progress: bool = True, shard: tuple[int, int] | None = None) -> list[Path]:
        """A file or every case of a folder (or shard i of n of them); outputs of this same prediction are kept
        (resumable), label maps of any other one refused (semiseg.data.outputs) unless ``overwrite``."""
        stamp = prediction_stamp(self.model_paths, {"backend": "deploy", "step": self.step, "resample": self.resample})
        return predict_folder(self.predict_files, input_path, output_dir, self.plan.num_input_channels, stamp,
                              overwrite, progress, shard)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semiseg.deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model_final.onnx, its folder, or a folder of fold_*/model_final.onnx (ensemble)")
    ap.add_argument("input", help="an image file or a folder of CASE_XXXX.nii.gz files")
    ap.add_argument("output", help="output folder (one label map per case, the input's name and geometry)")
    ap.add_argument("--step", type=unit_fraction, default=0.5, help="sliding-window stride as a fraction of the patch")
    ap.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    ap.add_argument("--batch", type=positive_int, default=2, help="windows per ONNX Runtime call")
    ap.add_argument("--resample", default="probabilities", choices=RESAMPLE_MODES,
                    help="what is resampled to the input grid before argmax (logits: nnU-Net's export)")
    ap.add_argument("--overwrite", action="store_true", help="re-predict cases whose output exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        pred = DeployPredictor.from_path(a.model, step=a.step, batch=a.batch, threads=a.threads, resample=a.resample)
        written = pred.predict_folder(a.input, a.output, overwrite=a.overwrite, progress=not a.quiet)
    except (ImageError, FileNotFoundError, ValueError, KeyError, PermissionError, ImportError) as e:
        print(f"semiseg.deploy: error: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        print(f"{len(written)} case(s) -> {a.output}")
    return 0
