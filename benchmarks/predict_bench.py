"""Prediction benchmark: per-case wall time and peak RAM for each predictor option, on ChaosT2 cases
and on a CT-sized 512 x 512 x 500 volume.

    python benchmarks/predict_bench.py                    # trains a tiny ChaosT2 model first if needed
    python benchmarks/predict_bench.py --model RUN/supervised/fold_all --skip-ct

Each configuration runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own; the RSS after
imports and model loading is reported beside it so the prediction's share is visible. Labels of every
configuration are compared (mean foreground Dice, voxel agreement) with the reference configuration
(nnU-Net's defaults: step 0.5, Gaussian, no TTA, fp32, probability resampling).

The CT-sized volume is a ChaosT2 test case resampled to 512 x 512 x 500 voxels at 0.78 x 0.78 x 1.0 mm
(a CT-like grid and extent): at the tiny model's plan spacing (7.7 x 2.5 x 2.5 mm) that is 65 x 160 x 160
voxels, about 100 windows at step 0.5, a realistic window count that keeps the run within
minutes on 2 CPU cores, while every full-resolution array really is 131 M voxels.

The "deploy" configuration is the torch-free path (``python -m semiseg.deploy``: numpy + ONNX Runtime on
the model's ONNX export, made before the timed runs); its process never imports torch.

Threads: one torch thread by default. On the shared 2-core machine these numbers were taken on, other
jobs kept both cores busy and two OpenMP threads ran several times slower than one (see "threads 2").

Results: benchmarks/results/predict_bench.json (with the exact command, git commit and machine) and
benchmarks/results/predict_bench.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / ".work"
DEFAULT_DATA = Path("/work/shared/data/ChaosT2")
TINY_PLAN = dict(max_patch_voxels=24 * 64 * 64, base_features=16, max_features=128)  # the demo's plan when these results were measured
TINY_SPACING = (7.7, 2.5, 2.5)  # (z, y, x) mm: ChaosT2's slice spacing, in-plane halved in resolution to keep CPU runs short

BASE: dict[str, Any] = dict(step=0.5, gaussian=True, tta="none", precision="fp32", resample="probabilities", batch=2,
                            backend="torch", cpu_fast=True, threads=1)
# one option changed at a time from BASE, plus a fast combination and the whole-volume (pre-streaming) path
CONFIGS: dict[str, dict[str, Any]] = {
    "reference": {},
    "step 0.9": {"step": 0.9},
    "no gaussian": {"gaussian": False},
    "tta 3": {"tta": "3"},
    "bf16": {"precision": "bf16"},
    "argmax resample": {"resample": "argmax"},
    "logits resample": {"resample": "logits"},
    "batch 1": {"batch": 1},
    "batch 4": {"batch": 4},
    "onnx": {"backend": "onnx"},
    "no cpu fast path": {"cpu_fast": False},
    "threads 2": {"threads": 2},
    "fast: step 0.9 + argmax + bf16 + batch 4": {"step": 0.9, "resample": "argmax", "precision": "bf16", "batch": 4},
    "whole-volume path (before streaming)": {"legacy": True},
    "deploy (ONNX Runtime, no torch)": {"deploy": True},  # python -m semiseg.deploy on the ONNX export
}
CT_CONFIGS = ["reference", "argmax resample", "fast: step 0.9 + argmax + bf16 + batch 4", "whole-volume path (before streaming)",
              "deploy (ONNX Runtime, no torch)"]


# -- worker (one configuration, one process) -------------------------------------------------------
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def legacy_predict(pred: Any, paths: list[Path]) -> tuple[np.ndarray, Any]:
    """The predictor's logic before streaming: whole (K, volume) logits, softmax, whole-volume resampling
    of probabilities to the input grid (``restore_to_input``), channels stacked on read."""
    import torch

    from semiseg.data.io import read_array
    from semiseg.data.preprocess import preprocess_array, restore_to_input

    chans, geo = [], None
    for p in paths:
        arr, geo = read_array(p)
        chans.append(arr.astype(np.float32))
    image = np.stack(chans)
    data, _, props = preprocess_array(image, geo, pred.plan)
    mean = None
    for net in pred.networks:
        probs = torch.softmax(pred.logits(net, data), 0)
        mean = probs if mean is None else mean.add_(probs)
    seg = restore_to_input(mean.div_(len(pred.networks)).numpy(), props, is_probabilities=True)
    return seg, geo


def deploy_worker(spec: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """The torch-free path (semiseg.deploy) with BASE's options; never imports torch."""
    from semiseg.deploy import DeployPredictor, find_onnx

    t = time.perf_counter()
    pred = DeployPredictor(find_onnx(Path(spec["model"]).with_suffix(".onnx")), step=opts["step"], batch=opts["batch"],
                           threads=int(opts["threads"]), resample=opts["resample"])
    load_s = time.perf_counter() - t
    rss_loaded = _rss_mb()
    cases = []
    for case, paths in spec["cases"].items():
        out = Path(spec["out_dir"]) / f"{case}.nii.gz"
        t = time.perf_counter()
        pred.predict_files([Path(p) for p in paths], out)
        cases.append({"case": case, "seconds": time.perf_counter() - t, "output": str(out)})
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded, "torch_imported": "torch" in sys.modules,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cases": cases}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    opts = {**BASE, **spec["options"]}
    if opts.pop("deploy", False):
        return deploy_worker(spec, opts)
    import torch

    from semiseg.data.io import write_segmentation
    from semiseg.inference import Predictor, PredictorConfig

    legacy = bool(opts.pop("legacy", False))
    torch.set_num_threads(int(opts["threads"]))
    cfg = PredictorConfig(**{k: v for k, v in opts.items() if k in {f.name for f in dataclasses.fields(PredictorConfig)}})
    t = time.perf_counter()
    pred = Predictor([spec["model"]], cfg)
    load_s = time.perf_counter() - t
    rss_loaded = _rss_mb()
    cases = []
    for case, paths in spec["cases"].items():
        out = Path(spec["out_dir"]) / f"{case}.nii.gz"
        t = time.perf_counter()
        if legacy:
            seg, geo = legacy_predict(pred, [Path(p) for p in paths])
            write_segmentation(seg, geo, out)
            del seg
        else:
            pred.predict_files([Path(p) for p in paths], out)
        cases.append({"case": case, "seconds": time.perf_counter() - t, "output": str(out)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak, "cases": cases}


# -- helpers ---------------------------------------------------------------------------------------
def git_commit() -> str:
    """HEAD, with ' (+ uncommitted changes)' when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import psutil
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg())}


def train_tiny_model(data: Path, work: Path, iterations: int) -> Path:
    """A small ChaosT2 U-Net (the demo's plan at 7.7 x 2.5 x 2.5 mm) trained briefly: enough for
    realistic, non-random labels."""
    import torch

    from semiseg.config import TrainConfig
    from semiseg.run import Run, create_run, train_fold

    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
    run_dir = work / "chaos_run"
    run = Run(run_dir) if (run_dir / "plan.json").is_file() else create_run(data, run_dir, spacing=list(TINY_SPACING), progress=False, **TINY_PLAN)
    cfg = TrainConfig(iterations=iterations, checkpoint_every=max(1, iterations), seed=0)
    t = time.time()
    model = train_fold(run, "all", cfg, progress=False)
    print(f"trained {model} ({iterations} iterations, {time.time() - t:.0f} s)", flush=True)
    return model


def chaos_cases(data: Path, n: int) -> dict[str, list[str]]:
    split = json.loads((data / "splits_semisupervised.json").read_text())
    cases = split.get("test") or sorted(p.name[:-12] for p in (data / "imagesTr").glob("*_0000.nii.gz"))
    return {c: [str(data / "imagesTr" / f"{c}_0000.nii.gz")] for c in cases[:n]}


def make_ct_volume(src: Path, out: Path, shape: tuple[int, int, int] = (500, 512, 512),
                   spacing_zyx: tuple[float, float, float] = (1.0, 0.78125, 0.78125)) -> Path:
    """A ChaosT2 image resampled (trilinear) onto a CT-sized grid; uncompressed .nii (fast to read)."""
    if out.is_file():
        return out
    import SimpleITK as sitk
    import torch

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(src))).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(arr)[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]
    img = sitk.GetImageFromArray(big.round().to(torch.int16).numpy())
    del big
    img.SetSpacing(tuple(reversed(spacing_zyx)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(out), False)
    return out


def run_config(name: str, model: Path, cases: dict[str, list[str]], out_dir: Path, timeout: int) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"options": CONFIGS[name], "model": str(model), "cases": cases, "out_dir": str(out_dir)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", f.name], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def compare_labels(a_path: str, b_path: str, num_classes: int) -> dict[str, float]:
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(a_path))
    b = sitk.GetArrayFromImage(sitk.ReadImage(b_path))
    dices = []
    for c in range(1, num_classes):
        x, y = a == c, b == c
        s = int(x.sum()) + int(y.sum())
        if s:
            dices.append(2 * int((x & y).sum()) / s)
    return {"mean_fg_dice": float(np.mean(dices)) if dices else 1.0, "voxel_agreement": float((a == b).mean())}


def summarise(results: dict[str, Any], ref: str, num_classes: int) -> None:
    base = results.get(ref)
    for name, r in results.items():
        if "error" in r or not base or "error" in base:
            continue
        r["mean_case_s"] = float(np.mean([c["seconds"] for c in r["cases"]]))
        cmp = [compare_labels(c["output"], b["output"], num_classes) for c, b in zip(r["cases"], base["cases"])]
        r["vs_reference"] = {k: float(np.mean([c[k] for c in cmp])) for k in cmp[0]} if cmp else {}


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Prediction benchmark", "", f"Command: `{doc['command']}`  ", f"Commit: `{doc['git_commit']}`  ",
             f"Machine: {doc['machine']['platform']}, {doc['machine']['cpu_count']} CPUs, {doc['machine']['ram_gb']} GB RAM, "
             f"torch {doc['machine']['torch']}; load average at start {doc['machine']['load_average_at_start']} "
             "(shared machine: other jobs ran concurrently, so times are noisy)  ",
             f"Model: {doc['model']['path']} (plan spacing {doc['model']['spacing']}, patch {doc['model']['patch']}, "
             f"{doc['model']['classes']} classes)" + (f"; reference labels vs ground truth: mean foreground Dice "
             f"{doc['reference_vs_ground_truth']['mean_fg_dice']:.3f}" if "reference_vs_ground_truth" in doc else "")
             + (f"  \n{doc['model']['note']}" if doc["model"].get("note") else ""), ""]
    for section, title in (("chaos", "ChaosT2 cases"), ("ct", "CT-sized volume (512 x 512 x 500)")):
        res = doc.get(section)
        if not res:
            continue
        lines += [f"## {title}", "", doc.get(f"{section}_note", ""), "",
                  "| configuration | s / case | peak RSS MB | RSS after load MB | peak - after load MB | Dice vs reference | voxel agreement |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in res.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error']} | | | | | |")
                continue
            v = r.get("vs_reference", {})
            lines.append(f"| {name} | {r.get('mean_case_s', float('nan')):.1f} | {r['peak_rss_mb']:.0f} | {r['rss_after_load_mb']:.0f} | "
                         f"{r['peak_rss_mb'] - r['rss_after_load_mb']:.0f} | "
                         f"{v.get('mean_fg_dice', float('nan')):.4f} | {v.get('voxel_agreement', float('nan')):.5f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="model_final.pt or its folder (default: train a tiny ChaosT2 model)")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--train-iterations", type=int, default=800)
    ap.add_argument("--cases", type=int, default=2, help="ChaosT2 test cases to predict")
    ap.add_argument("--configs", nargs="*", default=None, help=f"subset of: {list(CONFIGS)}")
    ap.add_argument("--skip-chaos", action="store_true")
    ap.add_argument("--skip-ct", action="store_true")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from an existing .json in --out")
    a = ap.parse_args(argv)
    if a.render:
        doc = json.loads((Path(a.out) / "predict_bench.json").read_text())
        (Path(a.out) / "predict_bench.md").write_text(markdown(doc))
        return 0
    if a.worker:
        print(json.dumps(worker(json.loads(Path(a.worker).read_text()))))
        return 0

    sys.path.insert(0, str(ROOT))
    from semiseg.inference import find_models

    WORK.mkdir(parents=True, exist_ok=True)
    data = Path(a.data)
    model = find_models(a.model)[0] if a.model else train_tiny_model(data, WORK, a.train_iterations)
    note = "" if a.model else f"trained by this script: train_tiny_model, {a.train_iterations} iterations on the 4 labelled cases"
    import torch

    from semiseg.networks.model_file import read_model

    state = read_model(model)
    plan = state["plan"]
    k = len(plan["labels"])
    if any(CONFIGS[n].get("backend") == "onnx" or CONFIGS[n].get("deploy") for n in (a.configs or CONFIGS)):
        from semiseg.inference.onnx_backend import ensure_onnx

        ensure_onnx(model)  # exported once here, not inside the timed runs
    doc: dict[str, Any] = {
        "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
        "git_commit": git_commit(), "machine": machine(),
        "model": {"path": str(model), "spacing": plan["target_spacing"], "patch": plan["patch_size"], "classes": k,
                  "network": plan["network"]["features"], "note": note},
        "base_options": BASE, "configs": CONFIGS,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        from semiseg.benchmark.results import portable_paths  # results files name no directory of this machine

        doc = portable_paths(doc)
        (out / "predict_bench.json").write_text(json.dumps(doc, indent=2))
        (out / "predict_bench.md").write_text(markdown(doc))

    if not a.skip_chaos:
        cases = chaos_cases(data, a.cases)
        doc["chaos_note"] = f"cases {list(cases)} (256 x 256 x ~35 at 1.25 x 1.25 x 7.7 mm); times include reading, preprocessing and writing the NIfTI."
        res: dict[str, Any] = {}
        for name in a.configs or CONFIGS:
            t = time.time()
            res[name] = run_config(name, model, cases, WORK / "chaos" / name.replace(" ", "_").replace(":", ""), a.timeout)
            print(f"chaos  {name:45s} {time.time() - t:6.1f} s  {res[name].get('peak_rss_mb', res[name].get('error'))}", flush=True)
        summarise(res, "reference", k)
        ref = res.get("reference", {})
        if "error" not in ref:
            gt = [compare_labels(c["output"], str(data / "labelsTr" / f"{c['case']}.nii.gz"), k) for c in ref["cases"]]
            doc["reference_vs_ground_truth"] = {"mean_fg_dice": float(np.mean([g["mean_fg_dice"] for g in gt])), "per_case": gt}
        doc["chaos"] = res
        save()
    if not a.skip_ct:
        src = next(iter(chaos_cases(data, 1).values()))[0]
        ct = make_ct_volume(Path(src), WORK / "ct" / "ctsized_0000.nii")
        doc["ct_note"] = (f"{ct.name}: a ChaosT2 test image resampled to 512 x 512 x 500 voxels at 0.78 x 0.78 x 1.0 mm "
                          "(uncompressed .nii); the crop box is the whole volume (no zero background).")
        res = {}
        for name in [n for n in CT_CONFIGS if a.configs is None or n in a.configs]:
            t = time.time()
            res[name] = run_config(name, model, {"ctsized": [str(ct)]}, WORK / "ct" / name.replace(" ", "_").replace(":", ""), a.timeout)
            print(f"ct     {name:45s} {time.time() - t:6.1f} s  {res[name].get('peak_rss_mb', res[name].get('error'))}", flush=True)
        summarise(res, "reference", k)
        doc["ct"] = res
        save()
    save()
    print((out / "predict_bench.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
