"""Configuration as data: the plan (what the data needs) and the training config (what a run does).

Both are plain dataclasses that round-trip through JSON, so a new configuration is a file, not code.
All spatial tuples are in array order (z, y, x), the order of ``SimpleITK.GetArrayFromImage``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class NetworkConfig:
    """Topology of the segmentation network; ``arch`` picks the family."""

    arch: str = "unet"  # unet (nnU-Net-style DynUNet) | res_unet (CPU tier: strided first stage) | vnet | light_unet | light_res_unet (DLUNet's light net laid out as res_unet)
    features: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 320])
    kernels: list[list[int]] = field(default_factory=list)  # per stage, (z, y, x)
    strides: list[list[int]] = field(default_factory=list)  # per stage, first is [1, 1, 1]
    deep_supervision: bool = False
    dropout: float = 0.0
    # where dropout acts: "auto" (the arch's own: every conv block for the U-Net, as DynUNet; the bottleneck
    # and before the head for V-Net and the light U-Net), "bottleneck" (SSL4MIS / UA-MT placement, any arch),
    # "blocks" (unet and res_unet only)
    dropout_at: str = "auto"


ALL_AXES: tuple[int, ...] = (0, 1, 2)  # the spatial (z, y, x) axes: mirroring's default
LABEL_RESAMPLING: tuple[str, ...] = ("linear", "nearest")


@dataclass
class Plan:
    """What self-configuration decided for one dataset; every field may be overridden in plan.json."""

    dataset_name: str
    modality: str  # "CT" or anything else (per-case z-score)
    num_input_channels: int
    labels: dict[str, int]
    target_spacing: list[float]  # (z, y, x) mm
    patch_size: list[int]  # (z, y, x) voxels
    batch_size: int = 2
    normalization: list[dict[str, Any]] = field(default_factory=list)  # one per channel
    network: NetworkConfig = field(default_factory=NetworkConfig)
    median_shape: list[int] = field(default_factory=list)  # after resampling
    foreground_oversample: float = 0.33
    # False: a foreground patch is centred on a foreground voxel and zero-padded where it leaves the volume (this
    # engine until stop 25); True: its centre is moved inward so the patch stays inside the volume wherever the
    # volume is at least a patch wide, as nnU-Net and MONAI's RandCropByPosNegLabeld do (test windows are never padded).
    # Planning writes True since stop 26 (lower bound on LA-SSL-4 +0.036 over 3 seeds); a plan file without the field
    # was made before it existed and keeps the padding it was trained with
    foreground_inside: bool = False
    # how training labels reach the plan's spacing: "linear" (per-class linear interpolation, then argmax; nnU-Net's
    # kind, smooth, but thin structures lose volume when downsampled: 2-4% of the atrium at 1.25 mm) or "nearest"
    label_resampling: str = "linear"
    # spatial (z, y, x) axes mirrored in training and test-time augmentation; planning drops the patient's
    # left-right axis when labels are lateralised (left/right kidney), since a flip would swap their meaning
    mirror_axes: list[int] = field(default_factory=lambda: list(ALL_AXES))

    def __post_init__(self) -> None:
        if self.label_resampling not in LABEL_RESAMPLING:
            raise ValueError(f"label_resampling must be one of {', '.join(LABEL_RESAMPLING)}, got '{self.label_resampling}'")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def save(self, path: str | Path) -> None:
        from semiseg.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "plan") -> "Plan":
        """A plan from its JSON form (``dataclasses.asdict``), as plan.json files and checkpoints hold it; an
        unknown or missing field is refused naming ``source``."""
        net = fields_from(NetworkConfig, raw.get("network", {}), f"{source}: network")
        return cls(**{**fields_from(cls, raw, source, nested=("network",)), "network": NetworkConfig(**net)})

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_dict(read_data_file(path), str(path))


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """What one training run does. ``method_params`` holds the options of the chosen method."""

    method: str = "supervised"
    iterations: int = 1000
    batch_size: int = 2
    unlabelled_batch_size: int = 2
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    seed: int = 0
    amp: bool = True  # mixed precision on or off (off: fp32 everywhere)
    # autocast dtype when amp is on: "auto" (fp16 + grad scaler on CUDA, fp32 on CPU), "bf16" (CPU or CUDA;
    # no scaler: bf16 keeps fp32's exponent range), "fp16" (CUDA only), "fp32". Master weights stay fp32.
    precision: str = "auto"
    augmentation: str = "teacher"  # preset name in semiseg.data.augment
    unlabelled_augmentation: str = "mirror"  # preset of the unlabelled stream, for methods that read it
    checkpoint_every: int = 250
    num_workers: int = 0
    method_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "unlabelled_batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        for name in ("momentum", "weight_decay", "poly_exponent", "grad_clip"):  # a YAML '1.0e9' is a string, not a float
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.method_params, dict):
            raise ValueError(f"method_params must be a mapping of option -> value, got {self.method_params!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    def save(self, path: str | Path) -> None:
        from semiseg.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "training config") -> "TrainConfig":
        """A training config from a mapping (a --config file, train_config.json); unknown fields are refused by
        name (a typo would otherwise train with the default), values checked in ``__post_init__``."""
        fields = fields_from(cls, raw, source)
        try:
            return cls(**fields)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_data_file(path), str(path))


EPOCH_LENGTH = 250  # iterations per epoch, nnU-Net's: ``--epochs``, per-epoch method hooks, curve smoothing
RESULT_NEUTRAL = ("num_workers", "checkpoint_every")  # TrainConfig fields that change no number of a training


def comparable_train_config(d: dict[str, Any]) -> dict[str, Any]:
    """A training config's JSON form as compared between runs: fields missing from an older file take their
    defaults (a field added later must not make old runs look different), result-neutral fields dropped."""
    full = json.loads(json.dumps({**dataclasses.asdict(TrainConfig()), **d}))  # as read back from JSON: tuples are lists
    return {k: v for k, v in full.items() if k not in RESULT_NEUTRAL}


def fields_from(cls: type, raw: Any, source: str, nested: tuple[str, ...] = ()) -> dict[str, Any]:
    """``raw`` checked to hold only fields of the dataclass ``cls`` and all its required ones (errors name
    ``source`` and the fields); ``nested`` fields are left to the caller."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} field(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(known)})")
    required = [n for n, f in known.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise ValueError(f"{source}: missing {cls.__name__} field(s) {', '.join(map(repr, missing))}")
    return {k: v for k, v in raw.items() if k not in nested}


def check_override_keys(cls: type, overrides: dict[str, Any]) -> None:
    """KeyError naming the first dotted key that names no field of dataclass ``cls`` (or of its nested dataclasses),
    so a typo is caught before the work that would precede :func:`apply_overrides` (a dataset scan)."""
    import typing

    for key in overrides:
        target: Any = cls
        for p in key.split("."):
            if not dataclasses.is_dataclass(target):
                break  # a free-form mapping (method_params) or a plain value: nothing to check below it
            names = {f.name for f in dataclasses.fields(target)}
            if p not in names:
                raise KeyError(f"unknown configuration field '{key}' (no '{p}' in {target.__name__}; "
                               f"fields: {', '.join(sorted(names))})")
            target = typing.get_type_hints(target).get(p)


def apply_overrides(obj: T, overrides: dict[str, Any]) -> T:
    """Return a copy of a dataclass with dotted-key overrides applied (``network.features``)."""
    obj = dataclasses.replace(obj)
    for key, value in overrides.items():
        target: Any = obj
        parts = key.split(".")
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(target, dict):  # free-form options such as method_params.cps_weight
                if last:
                    target[p] = value
                else:
                    target = target.setdefault(p, {})
                continue
            if not dataclasses.is_dataclass(target) or p not in {f.name for f in dataclasses.fields(target)}:
                raise KeyError(f"unknown configuration field '{key}' (no '{p}' in {type(target).__name__})")
            if last:
                setattr(target, p, value)
            else:
                sub = getattr(target, p)
                sub = dataclasses.replace(sub) if dataclasses.is_dataclass(sub) else dict(sub) if isinstance(sub, dict) else sub
                setattr(target, p, sub)
                target = sub
    return dataclasses.replace(obj)  # once more through __init__: the overridden values are checked as given ones are


def read_data_file(path: str | Path) -> Any:
    """A configuration file, JSON or YAML by suffix, with an error naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read configuration: {e}") from None
