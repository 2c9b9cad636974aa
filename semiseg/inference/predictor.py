"""Prediction as an API: models + options -> label maps on the input's exact grid.

``Predictor`` applies the training preprocessing (crop, normalise, resample), runs the sliding window
for each model of an ensemble (probabilities averaged, accumulated one model at a time), and inverts
the preprocessing either by resampling probabilities (accurate) or by argmax first and nearest-neighbour
resampling of labels (the noisy-student paper's fast path). The CLI is a thin layer over this class.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from semiseg.config import Plan
from semiseg.data.io import Geometry, ImageError, read_array, write_segmentation
from semiseg.data.preprocess import preprocess_array, restore_to_input
from semiseg.inference.sliding_window import TTA_AXES, sliding_window

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PredictorConfig:
    """Speed/accuracy options; the defaults are nnU-Net's (step 0.5, gaussian, probability resampling)."""

    step: float = 0.5
    gaussian: bool = True
    tta: str = "none"  # none | 3 | 7 (mirror axes)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 only on CUDA)
    resample: str = "probabilities"  # probabilities | argmax (argmax at plan spacing, then nearest)
    device: str = "auto"
    batch: int = 2  # windows per forward pass; >= 2 keeps CPU 3D convs off the slow path
    threads: int | None = None  # torch CPU threads

    def __post_init__(self) -> None:
        if self.tta not in TTA_AXES:
            raise ValueError(f"tta must be one of {list(TTA_AXES)}, got '{self.tta}'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got '{self.precision}'")
        if self.resample not in ("probabilities", "argmax"):
            raise ValueError(f"resample must be 'probabilities' or 'argmax', got '{self.resample}'")
        if not 0 < self.step <= 1:
            raise ValueError(f"step must be in (0, 1], got {self.step}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


def find_models(path: str | Path) -> list[Path]:
    """A model file, a folder with model_final.pt, or a folder of fold_*/model_final.pt (an ensemble)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / "model_final.pt").is_file():
        return [p / "model_final.pt"]
    found = sorted(p.glob("fold_*/model_final.pt"))
    if not found:
        raise FileNotFoundError(f"{p}: no model_final.pt here nor in fold_*/ subfolders")
    return found


def _same_preprocessing(a: Plan, b: Plan) -> bool:
    return (a.target_spacing == b.target_spacing and a.normalization == b.normalization
            and a.labels == b.labels and a.num_input_channels == b.num_input_channels)


class Predictor:
    """Holds one or more trained networks sharing a plan; predicts arrays, files or folders."""

    def __init__(self, models: Sequence[str | Path], config: PredictorConfig | None = None,
                 postprocess: Callable[[np.ndarray, Sequence[float]], np.ndarray] | None = None):
        from semiseg.engine.trainer import load_model, pick_device

        self.cfg = config or PredictorConfig()
        self.device = pick_device(self.cfg.device)
        if self.cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.networks: list[torch.nn.Module] = []
        plan: Plan | None = None
        for m in models:
            net, p = load_model(m, self.device)
            if plan is not None and not _same_preprocessing(plan, p):
                raise ValueError(f"{m}: its plan (spacing/normalisation/labels) differs from the first model's")
            plan = p
            self.networks.append(net)
        if plan is None:
            raise ValueError("no models given")
        self.plan = plan
        self.postprocess = postprocess

    @classmethod
    def from_path(cls, path: str | Path, config: PredictorConfig | None = None, **kw: Any) -> "Predictor":
        return cls(find_models(path), config, **kw)

    # -- arrays ----------------------------------------------------------------------------------
    def logits(self, net: torch.nn.Module, data: np.ndarray) -> torch.Tensor:
        """Sliding-window logits of one network on a preprocessed (C, z, y, x) array."""
        return sliding_window(
            net, data, self.plan.patch_size, self.plan.num_classes, step=self.cfg.step, gaussian=self.cfg.gaussian,
            tta=self.cfg.tta, batch=self.cfg.batch, device=self.device, autocast_dtype=PRECISIONS[self.cfg.precision],
        )

    def predict_preprocessed(self, data: np.ndarray, each_model: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Mean softmax over the ensemble at plan spacing, (K, z, y, x). ``each_model(i, probs_i)`` sees
        every model's probabilities as they are made (e.g. to keep its hard mask), so nothing is stacked."""
        mean: torch.Tensor | None = None
        for i, net in enumerate(self.networks):
            probs = torch.softmax(self.logits(net, data), 0)
            if each_model is not None:
                each_model(i, probs)
            mean = probs if mean is None else mean.add_(probs)
        assert mean is not None
        return mean.div_(len(self.networks))

    def predict_array(self, image: np.ndarray, geometry: Geometry) -> np.ndarray:
        """(C, z, y, x) raw image on ``geometry`` -> integer label map on the same grid."""
        if image.ndim != 4 or image.shape[0] != self.plan.num_input_channels:
            raise ValueError(f"expected a ({self.plan.num_input_channels}, z, y, x) image, got shape {image.shape}")
        data, _, props = preprocess_array(image, geometry, self.plan)
        probs = self.predict_preprocessed(data)
        if self.cfg.resample == "argmax":
            seg = restore_to_input(probs.argmax(0).numpy().astype(np.int16), props, is_probabilities=False)
        else:
            seg = restore_to_input(probs.numpy(), props, is_probabilities=True)
        if self.postprocess is not None:
            seg = self.postprocess(seg, geometry.spacing_zyx)
        return seg

    # -- files -----------------------------------------------------------------------------------
    def read_case(self, paths: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
        if len(paths) != self.plan.num_input_channels:
            raise ImageError(f"{paths[0]}: the model needs {self.plan.num_input_channels} channel(s), found {len(paths)} file(s)")
        chans, geo = [], None
        for p in paths:
            arr, g = read_array(p)
            if geo is None:
                geo = g
            elif (diff := geo.matches(g)) is not None:
                raise ImageError(f"{p}: channel geometry differs from channel 0: {diff}")
            if not np.isfinite(arr).all():
                raise ImageError(f"{p}: image contains {int((~np.isfinite(arr)).sum())} NaN/Inf voxels")
            chans.append(arr.astype(np.float32))
        assert geo is not None
        return np.stack(chans), geo

    def predict_files(self, paths: Sequence[Path], out_path: str | Path) -> Path:
        image, geo = self.read_case(paths)
        seg = self.predict_array(image, geo)
        write_segmentation(seg, geo, out_path)
        return Path(out_path)

    def predict_folder(self, input_path: str | Path, output_dir: str | Path, overwrite: bool = False, progress: bool = True) -> list[Path]:
        """Predict a file or every case of a folder; existing outputs are kept (resumable) unless ``overwrite``."""
        cases = discover_cases(input_path, self.plan.num_input_channels)
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for case, (paths, ending) in tqdm(cases.items(), desc="predict", unit="case", disable=not progress):
            target = out / f"{case}{ending}"
            if target.is_file() and not overwrite:
                written.append(target)
                continue
            written.append(self.predict_files(paths, target))
        return written


def _split_ending(name: str) -> tuple[str, str] | None:
    for e in IMAGE_ENDINGS:
        if name.endswith(e):
            return name[: -len(e)], e
    return None


def discover_cases(path: str | Path, num_channels: int = 1) -> dict[str, tuple[list[Path], str]]:
    """case -> (channel files, file ending). Files named ``{case}_{XXXX}{ending}`` are grouped by case
    (nnU-Net's convention); with one channel, any other image file is a case of its own."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: input not found")
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    groups: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    pat = re.compile(r"^(.*)_(\d{4})$")
    for f in files:
        split = _split_ending(f.name)
        if split is None:
            if p.is_file():
                raise ImageError(f"{f}: not an image file (expected one of {IMAGE_ENDINGS})")
            continue
        stem, ending = split
        m = pat.match(stem)
        case, ch = (m.group(1), int(m.group(2))) if m else (stem, 0)
        if not m and num_channels != 1:
            raise ImageError(f"{f}: multi-channel models need files named CASE_XXXX{ending}")
        groups.setdefault(case, {})[ch] = f
        endings[case] = ending
    out = {}
    for case, chans in groups.items():
        missing = [c for c in range(num_channels) if c not in chans]
        if missing:
            raise ImageError(f"{p}: case '{case}' lacks channel file(s) {missing} (expected {case}_{missing[0]:04d}{endings[case]})")
        out[case] = ([chans[c] for c in range(num_channels)], endings[case])
    if not out:
        raise FileNotFoundError(f"{p}: no image files ({', '.join(IMAGE_ENDINGS)})")
    return out


def config_dict(cfg: PredictorConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
