"""Side by side: semiseg's predictor vs nnU-Net v2's own predictor (``nnUNetPredictor``), same network,
same weights, same input, same machine, in one run.

    python benchmarks/nnunet_compare.py [--model RUN/supervised/fold_all] [--cases 2] [--skip-ct]

nnU-Net v2 is never a dependency of semiseg: this script creates ``benchmarks/.nnunet_venv`` (gitignored)
with ``pip install torch==<our torch version>`` first and then ``nnunetv2`` and ``monai`` under a
``torch==`` constraint (otherwise timm -> torchvision drags in a newer, CUDA, torch). Inside that venv
the nnU-Net worker builds our network class (semiseg.networks, imported from this checkout; it needs
only monai) and hands it to ``nnUNetPredictor.manual_initialization`` with plans written from our plan:

* same target spacing, patch size, z-score normalisation, crop to non-zero;
* resampling ``resample_torch_fornnunet`` (trilinear, align_corners=False, no separate-z) for data and
  logits: nnU-Net's own torch resampler set to the interpolation semiseg uses, so both predictors see the
  same preprocessed array and differences in labels come from the predictors alone;
* step 0.5, Gaussian weighting, no mirroring (semiseg: tta none), CPU, ``nnUNet_def_n_proc`` = threads.

nnU-Net runs its documented single-array entry point ``predict_single_npy_array`` (preprocess ->
sliding window with fp16 accumulators -> resample logits to the input grid -> argmax -> uncrop). Each
predictor runs in its own subprocess with the same torch thread count; we time reading the image,
prediction and writing the NIfTI for both, and take the peak RSS (ru_maxrss) of each process.
The last two rows are the torch-free deployment path (``python -m semiseg.deploy``: numpy + ONNX Runtime on the
model's ONNX export, exported before the timed runs), whose process never imports torch.

Results: benchmarks/results/nnunet_compare.json and .md (exact command, git commit, machine, versions).
"""
from __future__ import annotations

import argparse
import json
import os
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
VENV = ROOT / "benchmarks" / ".nnunet_venv"
WORK = ROOT / "benchmarks" / ".work"
RESULTS = ROOT / "benchmarks" / "results"


# -- environment -------------------------------------------------------------------------------------
def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, torch_version: str, log: Path) -> dict[str, Any]:
    """Create the nnU-Net venv if missing: torch pinned first, then nnunetv2 + monai under a torch constraint.
    Returns what was installed (or the error, verbatim, when pip cannot satisfy the requirements)."""
    py = venv_python(venv)
    info: dict[str, Any] = {"venv": str(venv), "torch_pin": torch_version}
    check = [str(py), "-c", "import nnunetv2, monai, torch, importlib.metadata as m; "
             "print(m.version('nnunetv2'), monai.__version__, torch.__version__)"]
    if py.is_file():
        p = subprocess.run(check, capture_output=True, text=True)
        if p.returncode == 0:
            info["versions"] = dict(zip(("nnunetv2", "monai", "torch"), p.stdout.split()))
            info["installed_now"] = False
            return info
    t = time.time()
    pin = torch_version.split("+")[0]
    constraints = WORK / "nnunet_constraints.txt"
    constraints.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text(f"torch=={pin}\n")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", f"torch=={pin}"],
        [str(py), "-m", "pip", "install", "nnunetv2", "monai", "-c", str(constraints)],
    ]
    with open(log, "w") as f:
        for cmd in steps:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
            if p.returncode != 0:
                tail = log.read_text().strip().splitlines()[-15:]
                info["error"] = {"command": " ".join(cmd), "exit": p.returncode, "log_tail": tail}
                return info
    p = subprocess.run(check, capture_output=True, text=True)
    if p.returncode != 0:
        info["error"] = {"command": "import check", "stderr": p.stderr.strip().splitlines()[-5:]}
        return info
    info["versions"] = dict(zip(("nnunetv2", "monai", "torch"), p.stdout.split()))
    info["installed_now"] = True
    info["install_s"] = round(time.time() - t, 1)
    return info


def nnunet_plans(plan: dict[str, Any], threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """plans.json and dataset.json equivalents of a semiseg plan (z-score, torch trilinear resampling)."""
    if any(n.get("scheme") != "zscore" for n in plan["normalization"]):
        raise ValueError("this comparison writes nnU-Net plans for z-score (MR) models only")
    rs = {"is_seg": False, "force_separate_z": False, "num_threads": threads}
    config = {
        "data_identifier": "semiseg_compare", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": plan["patch_size"], "median_image_size_in_voxels": plan.get("median_shape") or plan["patch_size"],
        "spacing": plan["target_spacing"],
        "normalization_schemes": ["ZScoreNormalization"] * plan["num_input_channels"],
        "use_mask_for_norm": [False] * plan["num_input_channels"],
        "resampling_fn_data": "resample_torch_fornnunet", "resampling_fn_data_kwargs": rs,
        "resampling_fn_seg": "resample_torch_fornnunet", "resampling_fn_seg_kwargs": {**rs, "is_seg": True},
        "resampling_fn_probabilities": "resample_torch_fornnunet", "resampling_fn_probabilities_kwargs": rs,
        "architecture": {"network_class_name": "semiseg.networks.unet.UNet", "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": False,
    }
    plans = {
        "dataset_name": plan["dataset_name"], "plans_name": "semiseg_compare",
        "original_median_spacing_after_transp": plan["target_spacing"],
        "original_median_shape_after_transp": plan.get("median_shape") or plan["patch_size"],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "semiseg", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): {} for c in range(plan["num_input_channels"])},
    }
    dataset = {"channel_names": {str(c): "MRI" for c in range(plan["num_input_channels"])}, "labels": plan["labels"],
               "numTraining": 0, "file_ending": ".nii.gz"}
    return plans, dataset


# -- workers -------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current RSS from /proc (psutil may be missing in the nnU-Net venv)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def nnunet_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the nnU-Net venv."""
    os.environ["nnUNet_def_n_proc"] = str(spec["threads"])  # read by nnunetv2.configuration at import
    import warnings

    warnings.filterwarnings("ignore")
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(ROOT))
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from semiseg.config import NetworkConfig
    from semiseg.networks import build_network

    t = time.perf_counter()
    from semiseg.networks.model_file import read_model

    state = read_model(spec["model"])
    plan = state["plan"]
    net_cfg = NetworkConfig(**{**state["network"], "deep_supervision": False})
    net = build_network(net_cfg, plan["num_input_channels"], len(plan["labels"])).eval()
    net.load_state_dict(state["weights"])
    plans, dataset = nnunet_plans(plan, spec["threads"])
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    predictor = nnUNetPredictor(tile_step_size=spec["step"], use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, [state["weights"]], dataset, "semiseg", None)
    load_s = time.perf_counter() - t
    rss_loaded = rss_mb()
    cases = []
    for case, paths in spec["cases"].items():
        out = Path(spec["out_dir"]) / f"{case}.nii.gz"
        t = time.perf_counter()
        imgs = [sitk.ReadImage(p) for p in paths]
        image = np.stack([sitk.GetArrayFromImage(i) for i in imgs]).astype(np.float32)
        props = {"spacing": list(reversed(imgs[0].GetSpacing()))}
        seg = predictor.predict_single_npy_array(image, props, None, None, False)
        del image
        o = sitk.GetImageFromArray(seg.astype(np.uint8))
        o.CopyInformation(imgs[0])
        sitk.WriteImage(o, str(out), True)
        cases.append({"case": case, "seconds": time.perf_counter() - t, "output": str(out)})
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cases": cases}


def semiseg_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(ROOT))
    from semiseg.inference import Predictor, PredictorConfig

    t = time.perf_counter()
    pred = Predictor([spec["model"]], PredictorConfig(**spec["options"], threads=spec["threads"]))
    load_s = time.perf_counter() - t
    rss_loaded = rss_mb()
    cases = []
    for case, paths in spec["cases"].items():
        out = Path(spec["out_dir"]) / f"{case}.nii.gz"
        t = time.perf_counter()
        pred.predict_files([Path(p) for p in paths], out)
        cases.append({"case": case, "seconds": time.perf_counter() - t, "output": str(out)})
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cases": cases}


def deploy_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The torch-free path (semiseg.deploy): numpy + SimpleITK/nibabel + ONNX Runtime; reports whether
    torch was ever imported (it must not be: that is the point of the row)."""
    sys.path.insert(0, str(ROOT))
    from semiseg.deploy import DeployPredictor

    t = time.perf_counter()
    pred = DeployPredictor([spec["onnx"]], step=spec["step"], threads=spec["threads"], **spec.get("options", {}))
    load_s = time.perf_counter() - t
    rss_loaded = rss_mb()
    cases = []
    for case, paths in spec["cases"].items():
        out = Path(spec["out_dir"]) / f"{case}.nii.gz"
        t = time.perf_counter()
        pred.predict_files([Path(p) for p in paths], out)
        cases.append({"case": case, "seconds": time.perf_counter() - t, "output": str(out)})
    return {"load_s": load_s, "rss_after_load_mb": rss_loaded, "torch_imported": "torch" in sys.modules,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cases": cases}


def run_worker(python: Path, kind: str, spec: dict[str, Any], timeout: int) -> dict[str, Any]:
    Path(spec["out_dir"]).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        p = subprocess.run([str(python), __file__, f"--{kind}-worker", f.name], capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        return {"error": "\n".join(p.stderr.strip().splitlines()[-6:]) or f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- driver ----------------------------------------------------------------------------------------------
def dice_agreement(a_path: str, b_path: str, num_classes: int) -> dict[str, float]:
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(a_path))
    b = sitk.GetArrayFromImage(sitk.ReadImage(b_path))
    per = {}
    for c in range(1, num_classes):
        x, y = a == c, b == c
        s = int(x.sum()) + int(y.sum())
        if s:
            per[str(c)] = 2 * int((x & y).sum()) / s
    return {"mean_fg_dice": float(np.mean(list(per.values()))) if per else 1.0,
            "min_fg_dice": float(min(per.values())) if per else 1.0, "voxel_agreement": float((a == b).mean()),
            "per_class_dice": per}


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = ["# semiseg vs nnU-Net v2 predictor", "", f"Command: `{doc['command']}`  ", f"Commit: `{doc['git_commit']}`  ",
             f"Machine: {m['platform']}, {m['cpu_count']} CPUs, load average at start {m['load_average_at_start']} "
             "(shared machine; other jobs ran concurrently)  ",
             f"nnU-Net environment: {json.dumps(doc['nnunet_env'].get('versions') or doc['nnunet_env'].get('error'))}  ",
             f"Model: {doc['model']}; threads {doc['threads']}", ""]
    if "error" in doc["nnunet_env"]:
        lines += ["nnU-Net could not be installed; see nnunet_env.error in the JSON.", ""]
    for section, rows in doc.get("sections", {}).items():
        lines += [f"## {section}", "", "| predictor | s / case | peak RSS MB | RSS after load MB | peak - after load MB | Dice vs nnU-Net (mean / min class) | voxel agreement | speed-up | RAM ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'].splitlines()[-1]} | | | | | | | |")
                continue
            v = r.get("vs_nnunet", {})
            lines.append(f"| {name} | {r['mean_case_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_after_load_mb']:.0f} | "
                         f"{r['peak_rss_mb'] - r['rss_after_load_mb']:.0f} | "
                         f"{v.get('mean_fg_dice', float('nan')):.4f} / {v.get('min_fg_dice', float('nan')):.4f} | "
                         f"{v.get('voxel_agreement', float('nan')):.5f} | {r.get('speedup_vs_nnunet', float('nan')):.2f}x | "
                         f"{r.get('ram_ratio_vs_nnunet', float('nan')):.2f} |")
        lines.append("")
    lines += ["Speed-up = nnU-Net s/case / ours; RAM ratio = our peak RSS / nnU-Net's (targets: >= 2x, <= 0.5). "
              "'after load' is the process after imports and model loading (python + torch + the predictor's "
              "modules, before any image is read); 'peak - after load' is what predicting the case itself added.", ""]
    return "\n".join(lines)


SEMISEG_CONFIGS: dict[str, dict[str, Any]] = {
    "semiseg logits resample (nnU-Net's export; fp32, batch 2)": {"resample": "logits"},
    "semiseg reference (probabilities, fp32, batch 2)": {},
    "semiseg argmax resample (fp32, batch 4)": {"resample": "argmax", "batch": 4},
}
DEPLOY_CONFIGS: dict[str, dict[str, Any]] = {  # python -m semiseg.deploy, batch 2
    "semiseg deploy logits resample (ONNX Runtime, no torch)": {"resample": "logits"},
    "semiseg deploy (ONNX Runtime, no torch; probabilities)": {},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnunet-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--semiseg-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deploy-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="model_final.pt or folder (default: the tiny model of predict_bench.py, trained if missing)")
    ap.add_argument("--data", default="/work/shared/data/ChaosT2")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--step", type=float, default=0.5)
    ap.add_argument("--skip-ct", action="store_true")
    ap.add_argument("--venv", default=str(VENV))
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from an existing .json in --out")
    a = ap.parse_args(argv)
    if a.render:
        doc = json.loads((Path(a.out) / "nnunet_compare.json").read_text())
        (Path(a.out) / "nnunet_compare.md").write_text(markdown(doc))
        return 0
    if a.nnunet_worker:
        print(json.dumps(nnunet_worker(json.loads(Path(a.nnunet_worker).read_text()))))
        return 0
    if a.semiseg_worker:
        print(json.dumps(semiseg_worker(json.loads(Path(a.semiseg_worker).read_text()))))
        return 0
    if a.deploy_worker:
        print(json.dumps(deploy_worker(json.loads(Path(a.deploy_worker).read_text()))))
        return 0

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import predict_bench as pb
    import torch

    from semiseg.inference import find_models

    WORK.mkdir(parents=True, exist_ok=True)
    data = Path(a.data)
    model = find_models(a.model)[0] if a.model else pb.train_tiny_model(data, WORK, 200)
    from semiseg.networks.model_file import read_plan

    plan = read_plan(model)
    from semiseg.inference.onnx_backend import ensure_onnx

    onnx_file = ensure_onnx(model)  # + model_final.plan.json; exported here, not inside a timed run
    k = len(plan["labels"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]), "git_commit": pb.git_commit(),
        "machine": pb.machine(), "model": str(model), "threads": a.threads, "step": a.step,
        "nnunet_env": ensure_venv(Path(a.venv), torch.__version__, out / "nnunet_install.log"),
        "settings": "nnU-Net: predict_single_npy_array, step as given, Gaussian, no mirroring, CPU, torch trilinear "
                    "resampling (no separate z) for data and logits; semiseg: same step, Gaussian, tta none.",
        "sections": {},
    }

    def save() -> None:
        from semiseg.benchmark.results import portable_paths  # results files name no directory of this machine

        doc = portable_paths(doc)
        (out / "nnunet_compare.json").write_text(json.dumps(doc, indent=2))
        (out / "nnunet_compare.md").write_text(markdown(doc))

    if "error" in doc["nnunet_env"]:
        save()
        print(markdown(doc))
        return 1
    inputs = {"ChaosT2 cases": pb.chaos_cases(data, a.cases)}
    if not a.skip_ct:
        src = next(iter(pb.chaos_cases(data, 1).values()))[0]
        inputs["CT-sized volume (512 x 512 x 500)"] = {"ctsized": [str(pb.make_ct_volume(Path(src), WORK / "ct" / "ctsized_0000.nii"))]}
    for section, cases in inputs.items():
        tag = "ct" if "CT" in section else "chaos"
        base = {"model": str(model), "cases": cases, "threads": a.threads}
        rows: dict[str, Any] = {}
        t = time.time()
        rows["nnU-Net v2 nnUNetPredictor"] = run_worker(venv_python(Path(a.venv)), "nnunet",
                                                        {**base, "step": a.step, "out_dir": str(WORK / "nnunet" / tag / "nnunet")}, a.timeout)
        print(f"{section}: nnU-Net {time.time() - t:.0f} s", flush=True)
        for name, opts in SEMISEG_CONFIGS.items():
            t = time.time()
            rows[name] = run_worker(Path(sys.executable), "semiseg",
                                    {**base, "options": {"step": a.step, **opts}, "out_dir": str(WORK / "nnunet" / tag / name.split(" (")[0].replace(" ", "_"))}, a.timeout)
            print(f"{section}: {name} {time.time() - t:.0f} s", flush=True)
        for name, opts in DEPLOY_CONFIGS.items():
            t = time.time()
            rows[name] = run_worker(Path(sys.executable), "deploy",
                                    {**base, "onnx": str(onnx_file), "step": a.step, "options": opts,
                                     "out_dir": str(WORK / "nnunet" / tag / ("deploy_" + (opts.get("resample") or "probabilities")))}, a.timeout)
            print(f"{section}: {name} {time.time() - t:.0f} s", flush=True)
        ref = rows["nnU-Net v2 nnUNetPredictor"]
        for name, r in rows.items():
            if "error" in r:
                continue
            r["mean_case_s"] = float(np.mean([c["seconds"] for c in r["cases"]]))
            if "error" not in ref:
                cmp = [dice_agreement(c["output"], b["output"], k) for c, b in zip(r["cases"], ref["cases"])]
                r["vs_nnunet"] = {key: float(np.mean([c[key] for c in cmp])) for key in ("mean_fg_dice", "min_fg_dice", "voxel_agreement")}
                r["vs_nnunet_per_case"] = cmp
                r["speedup_vs_nnunet"] = float(np.mean([c["seconds"] for c in ref["cases"]])) / r["mean_case_s"]
                r["ram_ratio_vs_nnunet"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
        doc["sections"][section] = rows
        save()
    save()
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
