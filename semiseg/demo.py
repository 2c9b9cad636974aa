"""`semiseg demo`: what semiseg is for, in minutes on a laptop CPU: labelled + unlabelled against labelled alone.

On the embedded ChaosT2 sample (4 labelled, 10 unlabelled, 6 test cases) it trains the supervised baseline
and one semi-supervised method with the same network, patch, budget and seed, then predicts the test
cases, keeps each organ's largest component (each of these organs is one object), evaluates with FLARE
rules and writes one report with both side by side: per-organ table, Dice bars, overlays of reference,
baseline and semi-supervised on the same slice, training curves, and a label-free check that names the test
images whose intensities are unlike the training images' (semiseg.data.intensity_profile). Every stage resumes, so a second run
finishes quickly. The sample is CC BY-NC-SA 4.0 (see its LICENSE.txt).

The semi-supervised method is AD-MT in its default setting, third on our LA-SSL-4 benchmark over 3 seeds
(benchmarks/results/la_ssl4_cpu.json: 0.857, behind its authors' LA setting 0.868 and UniMatch 0.865; lower bound
0.777) at a third of UniMatch's step cost (0.51 against 1.54 s/step; README, "Demo")."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from semiseg.atomic import replacing
from semiseg.data.io import atomic_write_json, atomic_write_text, read_array

# The CPU-tier U-Net of the benchmarks (MONAI UNet, strided first stage): its first stage halves only the
# in-plane axes, as the sample's voxels are 2.5 x 2.5 x 7.7 mm.
DEMO_OVERRIDES: dict[str, Any] = {
    "network.arch": "res_unet",
    "network.features": [16, 32, 64, 128],
    "network.strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "network.kernels": [[3, 3, 3]] * 4,
    "network.deep_supervision": False,
}


@dataclass(frozen=True)
class DemoConfig:
    """The demo's budget, sized so `make demo` (install included) stays under 10 minutes on 2 CPU cores."""

    methods: tuple[str, ...] = ("supervised", "ad-mt")  # the first is the baseline the others are compared with
    # Measured on 2 cores (stop 23; `make demo` on a fresh clone, mean foreground Dice over the 6 test cases,
    # supervised / AD-MT, one seed): 1000 steps, patch 32x80x80 at the sample's 2.5 mm: 10.5 min, 0.592 / 0.604
    # (3 test cases then); 800 steps, 32x64x64, 2.5 mm: 7.5 min, 0.569 / 0.586; 800 steps, 32x64x64 at 5 mm in-plane
    # (a whole slice in view): 5.4 min without the install, 0.618 / 0.390. No seed repeats were run; a nearby setting reversed the order.
    iterations: int = 800
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm; None: the plan's (the sample's 7.7 x 2.5 x 2.5)
    patch_size: tuple[int, int, int] = (32, 64, 64)  # (z, y, x)
    seed: int = 0
    precision: str = "auto"  # "auto": bf16 on a CPU with native bf16 (AVX512-BF16/AMX), else the device's default
    augmentation: str = "mirror"  # a semiseg.data.augment preset, the same for every model
    overrides: dict[str, Any] = field(default_factory=lambda: dict(DEMO_OVERRIDES))

    def __post_init__(self) -> None:
        from semiseg.methods import get_method

        if not self.methods or self.methods[0] != "supervised":
            raise ValueError(f"demo methods must start with the supervised baseline, got {list(self.methods)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"demo methods repeat: {list(self.methods)}")
        for m in self.methods:
            get_method(m)  # an unknown name fails here, naming the known ones
        if self.iterations < 1:
            raise ValueError(f"demo iterations must be >= 1, got {self.iterations}")
        from semiseg.data.augment import AUGMENTATIONS

        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"demo augmentation '{self.augmentation}' is not a preset (choose {', '.join(AUGMENTATIONS)})")


def sample_dataset() -> Path:
    """Path of the embedded ChaosT2 sample (nnU-Net raw layout)."""
    return Path(str(resources.files("semiseg") / "resources" / "chaos_sample"))


def training_precision(device: str | None, precision: str) -> str:
    """bf16 autocast where the CPU runs it natively (2x faster steps on this project's CPU, benchmarks/
    results/step_bench_cpu.md); elsewhere the engine's default. An explicit choice is kept."""
    import torch

    from semiseg.precision import cpu_has_native_bf16

    if precision != "auto":
        return precision
    on_cpu = device == "cpu" or (device in (None, "auto") and not torch.cuda.is_available())
    if on_cpu and cpu_has_native_bf16():
        return "bf16"
    return "auto"


def _copy_cases(paths: list[Path], folder: Path) -> None:
    """Copies (never links: the package's sample stays read-only) under a temporary name, so a killed demo
    leaves no truncated input for the next run to trust."""
    for p in paths:
        if not (folder / p.name).is_file():
            with replacing(folder / p.name, ".nii.gz") as tmp:
                shutil.copyfile(p, tmp)


INTENSITY_FACTOR = 1.5  # a test image is flagged beyond this many times the training images' 90th-percentile distance
_ADDED_FIELDS: dict[str, Any] = {"augmentation": "mirror"}  # DemoConfig fields newer than the first record, as they were before


def _check_same_config(out: Path, cfg: DemoConfig) -> None:
    """A demo folder is resumed only with the configuration that started it (its plan, models and predictions
    belong to it); another one is refused, naming the folder, rather than mixed in."""
    record = out / "demo_config.json"
    mine = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if record.is_file():
        # a field added since that run was recorded held its value of _ADDED_FIELDS then
        theirs = {**_ADDED_FIELDS, **json.loads(record.read_text())}
        if theirs != mine:
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise ValueError(f"{out}: holds a demo run with other settings ({', '.join(diff)}); delete the folder or "
                             "choose another --out")
    elif (out / "run").exists():
        raise ValueError(f"{out}: holds a run from an older demo; delete the folder or choose another --out")
    else:
        atomic_write_json(record, mine)


def _dice_table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    """Per organ: each model's mean Dice and HD95 over the test cases, and each method's Dice minus the baseline's."""
    names = list(results)
    others = [n for n in names if n != baseline]
    head = ["organ", *[f"Dice {n}" for n in names], *[f"Δ {n}" for n in others], *[f"HD95 {n} (mm)" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    rows = [(c, {n: results[n]["mean"][c] for n in names}) for c in results[baseline]["mean"]]
    rows.append(("**mean (foreground)**", {n: results[n]["foreground_mean"] for n in names}))
    for organ, vals in rows:
        dice = [vals[n].get("DSC") for n in names]
        delta = [vals[n]["DSC"] - vals[baseline]["DSC"] for n in others]
        hd = [vals[n].get("HD95") for n in names]
        lines.append("| " + " | ".join([organ, *(f"{v:.3f}" for v in dice), *(f"{v:+.3f}" for v in delta),
                                        *("n/a" if v is None else f"{v:.1f}" for v in hd)]) + " |")
    return "\n".join(lines) + "\n"


def run_demo(out: Path, iterations: int | None = None, progress: bool = True, device: str | None = None,
             config: DemoConfig | None = None) -> dict:
    from semiseg.config import TrainConfig
    from semiseg.data.dataset import RawDataset
    from semiseg.data.intensity_profile import check_dataset
    from semiseg.evaluation.evaluate import evaluate_folders
    from semiseg.inference import Predictor, PredictorConfig
    from semiseg.postprocess import Pipeline
    from semiseg.report.figures import class_dice_bars_png
    from semiseg.report.overlay import overlay_panels_png
    from semiseg.report.tables import per_case_markdown
    from semiseg.run import Run, create_run, model_dir, train_fold

    cfg = config or DemoConfig()
    if iterations is not None:
        cfg = dataclasses.replace(cfg, iterations=iterations)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(out, cfg)
    data = sample_dataset()
    ds = RawDataset.open(data)
    timings: dict[str, float] = {}

    t = time.time()
    overrides = {**cfg.overrides, "patch_size": list(cfg.patch_size)}
    patch_voxels = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    spacing = list(cfg.spacing) if cfg.spacing else None
    run = (Run(out / "run") if (out / "run" / "plan.json").is_file() else
           create_run(data, out / "run", spacing=spacing, overrides=overrides, progress=progress,
                      max_patch_voxels=patch_voxels, base_features=16, max_features=128))
    timings["plan_s"] = time.time() - t

    test_images, ref_dir = out / "test_images", out / "test_labels"
    _copy_cases([p for case in ds.test for p in ds.image_paths(case)], test_images)  # the test images and nothing else
    _copy_cases([ds.reference_label_path(case) for case in ds.test], ref_dir)
    organ_aware = Pipeline.from_config([{"step": "largest_component"}], ds.labels)
    precision = training_precision(device, cfg.precision)
    results: dict[str, dict[str, Any]] = {}
    models: dict[str, Path] = {}
    for method in cfg.methods:
        t = time.time()
        train_cfg = TrainConfig(method=method, iterations=cfg.iterations, seed=cfg.seed, checkpoint_every=250,
                                augmentation=cfg.augmentation, precision=precision, num_workers=1)  # batches made beside the step
        if progress:
            print(f"[demo] training {method}: {cfg.iterations} steps, precision {precision}")
        models[method] = train_fold(run, "all", train_cfg, device=device, progress=progress)
        timings[f"train_{method}_s"] = time.time() - t
        t = time.time()
        pred_dir = out / "predictions" / method
        Predictor.from_path(models[method], PredictorConfig(step=0.5), postprocess=organ_aware).predict_folder(
            test_images, pred_dir, progress=progress)
        results[method] = evaluate_folders(pred_dir, ref_dir, data / "dataset.json", out / f"metrics_{method}.json", progress=progress)
        timings[f"predict_evaluate_{method}_s"] = time.time() - t

    baseline = cfg.methods[0]
    t = time.time()
    qc = check_dataset(ds, run.plan.normalization, factor=INTENSITY_FACTOR)
    timings["intensity_check_s"] = time.time() - t
    report = out / "report"
    report.mkdir(exist_ok=True)
    class_dice_bars_png(results, report / "dice_by_organ.png", f"{len(ds.test)} test cases, {cfg.iterations} steps each")
    pngs = []
    for case in ds.test:
        image, geo = read_array(test_images / f"{case}_0000{ds.file_ending}")
        panels = {"reference": read_array(ref_dir / f"{case}{ds.file_ending}")[0]}
        for method in cfg.methods:
            label = f"{method} (Dice {_case_mean(results[method]['cases'][case]):.2f})"
            panels[label] = read_array(out / "predictions" / method / f"{case}{ds.file_ending}")[0]
        overlay_panels_png(image, panels, ds.labels, report / f"{case}.png", case, geo.spacing_zyx)
        pngs.append(f"{case}.png")
    curves = []
    for method in cfg.methods:
        curve = model_dir(run, method, "all") / "curve.png"
        if curve.is_file():
            shutil.copy(curve, report / f"training_curve_{method}.png")
            curves.append(f"training_curve_{method}.png")

    table = _dice_table(results, baseline)
    md = [
        f"# semiseg demo: {' vs '.join(cfg.methods)} on the embedded ChaosT2 sample",
        "",
        f"Every model: the same U-Net, patch {'x'.join(map(str, cfg.patch_size))}, {cfg.iterations} steps, seed {cfg.seed}, "
        f"precision {precision}, trained on the {len(ds.labelled)} labelled cases; the semi-supervised "
        f"{'methods also see' if len(cfg.methods) > 2 else 'method also sees'} the images (never labels) of the "
        f"{len(ds.unlabelled)} unlabelled cases. Tested on {len(ds.test)} cases, each organ's largest component kept.",
        "Data: CHAOS MR T2-SPIR, CC BY-NC-SA 4.0 (see the sample's LICENSE.txt).",
        "",
        "## Per organ (mean over the test cases)",
        table,
        "![Dice by organ](dice_by_organ.png)",
        "",
        "## What this can and cannot show",
        f"{len(ds.test)} test cases and one seed: a difference here is an illustration, not evidence. The evidence is "
        "the benchmarks (3 seeds, paired confidence intervals): see the project README's results section.",
        "",
        "## Test images against the training images' intensities (labels not read)",
        "Each image's 1st-99th percentiles after the plan's normalisation, against the median of the "
        f"{len(qc.training)} training images' (labelled and unlabelled); flagged above {qc.factor:g}x the 90th percentile of the "
        "training images' own distances "
        f"({qc.threshold:.3f}).",
        "",
        *[f"- {qc.describe(c)}" for c in ds.test],
        "",
        "## Dice per case",
        *[f"**{m}**\n\n{per_case_markdown(results[m])}" for m in cfg.methods],
        "## Timings (s)",
        " | ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        "",
        "## Overlays (image | reference | " + " | ".join(cfg.methods) + ", same slice)",
        *[f"![{p}]({p})" for p in pngs],
        "",
        "## Training curves",
        *[f"![{c}]({c})" for c in curves],
    ]
    atomic_write_text(report / "README.md", "\n".join(md) + "\n")
    summary = {"methods": list(cfg.methods), "iterations": cfg.iterations, "precision": precision, "test_cases": list(ds.test),
               "foreground_mean": {m: results[m]["foreground_mean"] for m in cfg.methods},
               "per_organ_dice": {m: {c: v.get("DSC") for c, v in results[m]["mean"].items()} for m in cfg.methods},
               "intensity_outliers": {c: qc.describe(c) for c in qc.outliers}, "timings_s": timings}
    atomic_write_json(out / "summary.json", summary)
    print(table)
    for c in qc.outliers:
        print(f"[demo] {qc.describe(c)}")
    print(f"report: {report / 'README.md'}   timings: " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    return summary


def _case_mean(per_class: dict[str, dict[str, Any]]) -> float:
    """Mean Dice over the classes of one case."""
    vals = [v["DSC"] for v in per_class.values() if v.get("DSC") is not None]
    return sum(vals) / len(vals) if vals else float("nan")
