"""`semiseg demo`: the whole pipeline on the embedded ChaosT2 sample, in minutes on a laptop CPU.

plan -> preprocess -> supervised training on the 4 labelled cases -> predict the 3 test cases ->
FLARE-style evaluation -> report folder (metrics table, overlay PNGs, training curve). Every stage is
resumable, so running it again finishes quickly. The sample is CC BY-NC-SA 4.0 (see its LICENSE.txt).
"""
from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

from semiseg.data.io import atomic_write_json, atomic_write_text, read_array

DEMO_ITERATIONS = 600
# a small net and patch that train at ~0.5 s/step on 2 CPU cores
DEMO_PLAN = dict(max_patch_voxels=24 * 64 * 64, base_features=16, max_features=128)


def sample_dataset() -> Path:
    """Path of the embedded ChaosT2 sample (nnU-Net raw layout)."""
    return Path(str(resources.files("semiseg") / "resources" / "chaos_sample"))


def run_demo(out: Path, iterations: int | None = None, progress: bool = True, device: str | None = None) -> dict:
    from semiseg.config import TrainConfig
    from semiseg.data.dataset import RawDataset
    from semiseg.evaluation.evaluate import evaluate_folders
    from semiseg.inference import Predictor, PredictorConfig
    from semiseg.report import metrics_markdown, overlay_png
    from semiseg.report.tables import per_case_markdown
    from semiseg.run import Run, create_run, model_dir, train_fold

    out.mkdir(parents=True, exist_ok=True)
    data = sample_dataset()
    ds = RawDataset.open(data)
    timings: dict[str, float] = {}

    t = time.time()
    run = Run(out / "run") if (out / "run" / "plan.json").is_file() else create_run(data, out / "run", progress=progress, **DEMO_PLAN)
    timings["plan_s"] = time.time() - t

    t = time.time()
    cfg = TrainConfig(iterations=iterations or DEMO_ITERATIONS, checkpoint_every=100, seed=0)
    model = train_fold(run, "all", cfg, device=device, progress=progress)
    timings["train_s"] = time.time() - t

    t = time.time()
    pred_dir = out / "predictions"
    test_images = out / "test_images"
    test_images.mkdir(exist_ok=True)
    for case in ds.test:  # gather the test images (and nothing else) into one input folder
        for p in ds.image_paths(case):
            if not (test_images / p.name).is_file():
                shutil.copy(p, test_images / p.name)
    predictor = Predictor.from_path(model, PredictorConfig(step=0.5))
    predictor.predict_folder(test_images, pred_dir, progress=progress)
    timings["predict_s"] = time.time() - t

    t = time.time()
    ref_dir = out / "test_labels"
    ref_dir.mkdir(exist_ok=True)
    for case in ds.test:
        src = ds.reference_label_path(case)
        if not (ref_dir / src.name).is_file():
            shutil.copy(src, ref_dir / src.name)
    result = evaluate_folders(pred_dir, ref_dir, data / "dataset.json", out / "metrics.json", progress=progress)
    timings["evaluate_s"] = time.time() - t

    report = out / "report"
    report.mkdir(exist_ok=True)
    pngs = []
    for case in ds.test:
        image, geo = read_array(test_images / f"{case}_0000{ds.file_ending}")
        ref, _ = read_array(ref_dir / f"{case}{ds.file_ending}")
        pred, _ = read_array(pred_dir / f"{case}{ds.file_ending}")
        dsc = result["cases"][case]
        title = f"{case}: " + ", ".join(f"{k} {v['DSC']:.2f}" for k, v in dsc.items())
        overlay_png(image, ref, pred, ds.labels, report / f"{case}.png", title, geo.spacing_zyx)
        pngs.append(f"{case}.png")
    curve = model_dir(run, cfg.method, "all") / "curve.png"
    if curve.is_file():
        shutil.copy(curve, report / "training_curve.png")
    md = [
        "# semiseg demo: supervised 3D U-Net on the embedded ChaosT2 sample",
        "",
        f"Trained on {len(ds.labelled)} labelled cases for {cfg.iterations} iterations; tested on {len(ds.test)} cases.",
        "Data: CHAOS MR T2-SPIR, CC BY-NC-SA 4.0 (see the sample's LICENSE.txt).",
        "",
        "## Mean over test cases",
        metrics_markdown(result),
        "## Dice per case",
        per_case_markdown(result),
        "## Timings (s)",
        " | ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        "",
        "## Overlays (image | reference | prediction)",
        *[f"![{p}]({p})" for p in pngs],
        "",
        "![training curve](training_curve.png)",
    ]
    atomic_write_text(report / "README.md", "\n".join(md) + "\n")
    summary = {"foreground_mean": result["foreground_mean"], "timings_s": timings, "iterations": cfg.iterations}
    atomic_write_json(out / "summary.json", summary)
    print(metrics_markdown(result))
    print(f"report: {report / 'README.md'}   timings: " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    return summary
