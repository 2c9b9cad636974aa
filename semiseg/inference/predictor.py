"""Prediction as an API: models + options -> label maps on the input's exact grid.

``Predictor`` applies the training preprocessing (crop, normalise, resample), runs the sliding window
with every model of an ensemble on each batch of windows (softmax probabilities averaged), and inverts
the preprocessing either by resampling probabilities (accurate), by resampling logits (nnU-Net v2's
export, for parity with it), or by argmax first and nearest-neighbour resampling of labels (the
noisy-student paper's fast path). The CLI is a thin layer over this class.

Memory: the sliding window hands over finished z-slabs (semiseg.inference.sliding_window.iter_slabs)
and :class:`~semiseg.inference.restore.LabelRestorer` turns each into labels on the input grid at once,
so peak RAM is the input image, its preprocessed copy, one patch-deep slab of K-channel accumulators
and the uint8 output; never K x the input volume (512 x 512 x 500 CT: see benchmarks/predict_bench.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semiseg.config import Plan
from semiseg.data.cases import IMAGE_ENDINGS, discover_cases, read_channels, shard_of  # noqa: F401  (re-exported)
from semiseg.data.io import Geometry, ImageError, write_segmentation
from semiseg.data.outputs import prediction_stamp
from semiseg.data.preprocess import preprocess_array
from semiseg.inference.restore import LabelRestorer
from semiseg.inference.sliding_window import TTA_AXES, Net, iter_slabs, sliding_window
from semiseg.runtime import find_model_files, plan_mismatch, predict_folder

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("torch", "onnx")
RESAMPLE_MODES = ("probabilities", "logits", "argmax")


@dataclass
class PredictorConfig:
    """Speed/accuracy options; the defaults are nnU-Net's (step 0.5, gaussian, probability resampling)."""

    step: float = 0.5
    gaussian: bool = True
    tta: str = "none"  # none | 3 | 7 (mirror axes)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 only on CUDA)
    resample: str = "probabilities"  # probabilities | logits (nnU-Net's export; ensembles average logits) | argmax (then nearest)
    device: str = "auto"
    batch: int = 2  # windows per forward pass; with 1, PyTorch's CPU heuristic sends small-window 3D convs to slow im2col
    threads: int | None = None  # torch / ONNX Runtime CPU threads
    backend: str = "torch"  # torch | onnx (ONNX Runtime; fp32 only)
    onnx_path: str | None = None  # ONNX file for a single model; default: model_final.onnx beside each model, exported if missing
    cpu_fast: bool = True  # on CPU: instance norm through the group-norm kernel + channels-last 3D convolutions

    def __post_init__(self) -> None:
        if self.tta not in TTA_AXES:
            raise ValueError(f"tta must be one of {list(TTA_AXES)}, got '{self.tta}'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got '{self.precision}'")
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {list(RESAMPLE_MODES)}, got '{self.resample}'")
        if not 0 < self.step <= 1:
            raise ValueError(f"step must be in (0, 1], got {self.step}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got '{self.backend}'")
        if self.backend == "onnx" and self.precision != "fp32":
            raise ValueError("the onnx backend runs fp32 only (use --backend torch for bf16/fp16)")


def find_models(path: str | Path) -> list[Path]:
    """A model file, a folder with model_final.pt, or a folder of fold_*/model_final.pt (an ensemble)."""
    return find_model_files(path, "model_final.pt")


class _InstanceNormAsGroupNorm(nn.Module):
    """InstanceNorm3d (affine, no running stats) computed by ``F.group_norm`` with one group per channel:
    the same function, but PyTorch's CPU group-norm kernel is ~1.5x faster than instance norm's
    batch-norm reshaping on (B, C, z, y, x) windows."""

    def __init__(self, m: nn.InstanceNorm3d):
        super().__init__()
        self.num_channels, self.eps = m.num_features, m.eps
        self.weight, self.bias = m.weight, m.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_channels, self.weight, self.bias, self.eps)


def cpu_fast_path(net: nn.Module) -> nn.Module:
    """Inference-only CPU rewrite: instance norms -> group-norm kernel, weights in channels-last 3D layout
    (oneDNN's preferred layout). Outputs equal the original up to float rounding (~1e-5).

    Dense tensors already run their convolutions through oneDNN (batch >= 2); converting the model with
    ``torch.utils.mkldnn.to_mkldnn`` is not an option for MONAI's DynUNet (its instance norm views the
    tensor: "Mkldnn tensor does not support view")."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.InstanceNorm3d) and child.affine and not child.track_running_stats:
            setattr(net, name, _InstanceNormAsGroupNorm(child))
        else:
            cpu_fast_path(child)
    return net.to(memory_format=torch.channels_last_3d)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d)


class Predictor:
    """Holds one or more trained networks sharing a plan; predicts arrays, files or folders."""

    def __init__(self, models: Sequence[str | Path], config: PredictorConfig | None = None,
                 postprocess: Callable[[np.ndarray, Sequence[float]], np.ndarray] | None = None):
        from semiseg.engine.trainer import pick_device
        from semiseg.networks.model_file import load_model

        self.cfg = config or PredictorConfig()
        # with ONNX Runtime the torch side (windows, accumulators) stays on the CPU; the session picks its provider
        self.device = torch.device("cpu") if self.cfg.backend == "onnx" else pick_device(self.cfg.device)
        if self.cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        if self.cfg.backend == "onnx" and self.cfg.onnx_path and len(models) != 1:
            raise ValueError(f"onnx_path names one ONNX file but {len(models)} models were given")
        self.model_paths = [Path(m) for m in models]
        self.networks: list[Net] = []
        self.prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
        plan: Plan | None = None
        for m in models:
            net, p = load_model(m, self.device)
            differ = plan_mismatch(plan, p) if plan is not None else []
            if differ:
                raise ValueError(f"{m}: its plan differs from the first model's in {', '.join(differ)}")
            plan = p
            if self.cfg.backend == "onnx":
                from semiseg.inference.onnx_backend import OnnxNetwork, ensure_onnx

                del net
                self.networks.append(OnnxNetwork(ensure_onnx(m, self.cfg.onnx_path), threads=self.cfg.threads))
            elif self.device.type == "cpu" and self.cfg.cpu_fast:
                self.networks.append(cpu_fast_path(net))
                self.prepare = _channels_last
            else:
                self.networks.append(net)
        if plan is None:
            raise ValueError("no models given")
        self.plan = plan
        self.postprocess = postprocess

    @classmethod
    def from_path(cls, path: str | Path, config: PredictorConfig | None = None, **kw: Any) -> "Predictor":
        return cls(find_models(path), config, **kw)

    # -- arrays ----------------------------------------------------------------------------------
    def _window_options(self) -> dict[str, Any]:
        return dict(step=self.cfg.step, gaussian=self.cfg.gaussian, tta=self.cfg.tta, batch=self.cfg.batch,
                    device=self.device, autocast_dtype=PRECISIONS[self.cfg.precision], prepare=self.prepare,
                    mirror_axes=self.plan.mirror_axes)

    def logits(self, net: Net, data: np.ndarray) -> torch.Tensor:
        """Sliding-window logits of one network on a preprocessed (C, z, y, x) array (whole volume)."""
        return sliding_window(net, data, self.plan.patch_size, self.plan.num_classes, **self._window_options())

    def iter_predictions(self, data: np.ndarray | torch.Tensor, output: str = "probabilities") -> Iterator[tuple[int, int, torch.Tensor]]:
        """(z0, z1, prediction) for consecutive z-slabs at plan spacing. ``output``: ``probabilities`` =
        the ensemble's mean softmax (K, dz, y, x); ``logits`` = the mean logits (nnU-Net's ensembling);
        ``labels`` = argmax of the mean softmax, (dz, y, x) uint8 (one model: argmax of its logits, no softmax)."""
        if output not in ("probabilities", "logits", "labels"):
            raise ValueError(f"output must be probabilities, logits or labels, got '{output}'")
        for slab in iter_slabs(self.networks, data, self.plan.patch_size, self.plan.num_classes, **self._window_options()):
            n = len(slab.logits)
            if n == 1 and output != "probabilities":
                lg = slab.logits[0]
                yield slab.z0, slab.z1, (lg if output == "logits" else lg.argmax(0).to(torch.uint8))
                continue
            f = (lambda t: t) if output == "logits" else (lambda t: torch.softmax(t, 0))
            mean = f(slab.logits[0])
            for lg in slab.logits[1:]:
                mean += f(lg)
            if n > 1:
                mean /= n
            yield slab.z0, slab.z1, (mean.argmax(0).to(torch.uint8) if output == "labels" else mean)

    def predict_preprocessed(self, data: np.ndarray, each_model: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Mean softmax over the ensemble at plan spacing, (K, z, y, x) float32 (the whole volume: for
        label maps use :meth:`labels_from_preprocessed`, which streams). ``each_model(i, probs_i)`` sees
        every model's probabilities as they are made (e.g. to keep its hard mask)."""
        if each_model is None:
            out = torch.empty((self.plan.num_classes, *data.shape[1:]), dtype=torch.float32)
            for z0, z1, probs in self.iter_predictions(data):
                out[:, z0:z1] = probs
            return out
        mean: torch.Tensor | None = None
        for i, net in enumerate(self.networks):
            probs = torch.softmax(self.logits(net, data), 0)
            each_model(i, probs)
            mean = probs if mean is None else mean.add_(probs)
        assert mean is not None
        return mean.div_(len(self.networks))

    def labels_from_preprocessed(self, data: np.ndarray | torch.Tensor, props: dict[str, Any]) -> np.ndarray:
        """Preprocessed (C, z, y, x) data + its properties -> label map on the input grid (uint8 up to
        256 classes), streaming slabs so no (K, input volume) array is ever made."""
        mode = self.cfg.resample
        restorer = LabelRestorer(props, self.plan.num_classes, "argmax" if mode == "argmax" else "linear")
        for z0, z1, pred in self.iter_predictions(data, output="labels" if mode == "argmax" else mode):
            restorer.push(z0, z1, pred)
        return restorer.finish()

    def preprocess(self, image: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, dict[str, Any]]:
        """Check the shape against the plan, then crop/normalise/resample as in training."""
        if image.ndim != 4 or image.shape[0] != self.plan.num_input_channels:
            raise ValueError(f"expected a ({self.plan.num_input_channels}, z, y, x) image, got shape {image.shape}")
        if tuple(image.shape[1:]) != tuple(geometry.shape_zyx):
            raise ValueError(f"image shape {image.shape[1:]} does not match its geometry {geometry.shape_zyx}")
        data, _, props = preprocess_array(image, geometry, self.plan)
        return data, props

    def predict_array(self, image: np.ndarray, geometry: Geometry) -> np.ndarray:
        """(C, z, y, x) raw image on ``geometry`` -> integer label map on the same grid (uint8 up to 256 classes)."""
        data, props = self.preprocess(image, geometry)
        return self._finish(self.labels_from_preprocessed(data, props), geometry)

    def _finish(self, seg: np.ndarray, geometry: Geometry) -> np.ndarray:
        if self.postprocess is not None:
            seg = self.postprocess(seg, geometry.spacing_zyx)
        return seg

    # -- files -----------------------------------------------------------------------------------
    def read_case(self, paths: Sequence[Path], native_dtype: bool = False) -> tuple[np.ndarray, Geometry]:
        """Channel files -> (C, z, y, x); see :func:`semiseg.data.cases.read_channels`."""
        return read_channels(paths, self.plan.num_input_channels, native_dtype)

    def predict_files(self, paths: Sequence[Path], out_path: str | Path) -> Path:
        image, geo = self.read_case(paths, native_dtype=True)
        try:
            data, props = self.preprocess(image, geo)
        except ValueError as e:
            raise ImageError(f"{paths[0]}: {e}") from None
        del image  # the raw image is not needed once preprocessed
        seg = self._finish(self.labels_from_preprocessed(data, props), geo)
        del data
        write_segmentation(seg, geo, out_path)
        return Path(out_path)

    def predict_folder(self, input_path: str | Path, output_dir: str | Path, overwrite: bool = False, progress: bool = True,
                       shard: tuple[int, int] | None = None) -> list[Path]:
        """Predict a file or every case of a folder. Outputs of this same prediction are kept (resumable); label maps
        of any other one in the folder are refused (semiseg.data.outputs), or replaced with ``overwrite``.
        ``shard`` (i, n): only shard i of n of the sorted cases (:func:`shard_of`), so n jobs started by any
        scheduler into one output folder predict every case exactly once (each keeps its own record)."""
        stamp = prediction_stamp(self.model_paths, config_dict(self.cfg), self._postprocess_config())
        return predict_folder(self.predict_files, input_path, output_dir, self.plan.num_input_channels, stamp,
                              overwrite, progress, shard)

    def _postprocess_config(self) -> Any:
        pp = self.postprocess
        if pp is None:
            return None
        to_config = getattr(pp, "to_config", None)
        return to_config() if callable(to_config) else f"{type(pp).__module__}.{type(pp).__qualname__}"


def config_dict(cfg: PredictorConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
