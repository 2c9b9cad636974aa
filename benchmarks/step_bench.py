"""Training-step benchmark: seconds per optimiser step and peak memory of every training method, on each
benchmark's own plan (network, patch size, batch sizes, method parameters), fed synthetic batches so it
runs where the data is not (the GPU machine, which gets only this repository).

    python benchmarks/step_bench.py plan benchmarks/chaos_ssl_gpu.yaml ...    # needs the dataset: writes benchmarks/plans/<name>.json
    python benchmarks/step_bench.py plan --all                                # remakes every committed plan file
    python benchmarks/step_bench.py run --plans chaos_ssl_gpu la_ssl8_gpu --device cuda --amp on off
    python benchmarks/step_bench.py run --plans chaos_ssl_cpu la_ssl8_cpu --device cpu --threads 1
    python benchmarks/step_bench.py run --plans la_ssl4_cpu --precision bf16 fp32                       # CPU autocast vs fp32
    python benchmarks/step_bench.py run --plans la_ssl4_cpu --set network.arch=unet --variant dynunet  # same plan, nnU-Net-style net

What is timed is ``Method.training_step`` (forward, backward, optimiser steps, EMA, feedback, ...) at the
middle of the budget (MPL past its warm-up, DLUNet on its robust loss), after warm-up steps, with the
device synchronised around it; data loading and augmentation are not in it. The self-training methods
(uncertainty, unfiltered, noisy-student) train with the supervised step, so their per-step cost is the
``supervised`` row times the number of models they train. Each (plan, entry, AMP) runs in a subprocess of
its own, so its peak RSS (``ru_maxrss``) and CUDA peak (``torch.cuda.max_memory_allocated``) are its own.
Losses must stay finite and the kept network's weights must change, else the row is marked failed.

Results: ``benchmarks/results/step_bench_<device>.json`` and ``.md`` (``--out`` elsewhere), with the
command, commit and machine; rows of another plan/device/AMP already in that file are kept.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "benchmarks" / "plans"
RESULTS = ROOT / "benchmarks" / "results"
SELF_TRAINING = {"uncertainty", "unfiltered", "noisy-student"}  # supervised steps: timed as the 'supervised' row


def _dtype_names() -> dict[Any, str]:
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16"}


# -- plan files ------------------------------------------------------------------------------------
def make_plan_file(config: Path, out_dir: Path = PLANS) -> Path:
    """Plan a benchmark config as its harness would (fingerprint + plan + overrides) and keep what the
    step benchmark needs: the plan, the budget and the engine entries with their parameters."""
    from semiseg.benchmark.config import load_config
    from semiseg.benchmark.runners import EngineRunner, runner_for
    from semiseg.run import create_run

    cfg = load_config(config)
    p = cfg.plan
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.json"
        split.write_text(json.dumps(cfg.split))
        run = create_run(cfg.dataset, Path(tmp) / "run", split, spacing=p.spacing, max_patch_voxels=p.max_patch_voxels,
                         base_features=p.base_features, max_features=p.max_features, overrides=p.overrides or None, progress=False)
        plan = dataclasses.asdict(run.plan)
    entries = [{"name": "supervised", "method": "supervised", "params": {}}]
    for e in cfg.methods:
        if e.method not in SELF_TRAINING and isinstance(runner_for(e.method), EngineRunner):
            entries.append({"name": e.name, "method": e.method, "params": dict(e.params)})
    b = cfg.budget
    doc = {"benchmark": cfg.name, "tier": cfg.tier, "source": str(config), "plan": plan,
           "budget": {"iterations": b.iterations, "batch_size": b.batch_size, "unlabelled_batch_size": b.unlabelled_batch_size,
                      "train": dict(b.train)},
           "entries": entries}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{cfg.name}.json"
    _atomic_write(path, json.dumps(doc, indent=1) + "\n")
    return path


def load_plan_file(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PLANS / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such plan file (make it with `python benchmarks/step_bench.py plan CONFIG.yaml`)")
    doc = json.loads(path.read_text())
    missing = [k for k in ("benchmark", "plan", "budget", "entries") if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a step-benchmark plan file (missing {', '.join(missing)})")
    return doc


# -- one measurement (runs in its own process) -----------------------------------------------------
def time_entry(doc: dict[str, Any], entry: dict[str, Any], device: str, amp: bool, steps: int, warmup: int,
               precision: str | None = None, plan_set: dict[str, Any] | None = None, variant: str = "") -> dict[str, Any]:
    """Seconds per ``training_step`` and peak memory of one entry on synthetic batches of the plan's shape.

    ``precision`` replaces the budget's (None keeps it); ``plan_set`` are dotted plan overrides (e.g. the
    nnU-Net-style network on the same plan, for a before/after row), named by ``variant``."""
    import torch

    from semiseg.config import Plan, TrainConfig, apply_overrides
    from semiseg.methods import StepContext, build_method

    plan = apply_overrides(Plan.from_dict(doc["plan"]), plan_set or {})
    b = doc["budget"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    train = {k: v for k, v in b["train"].items() if k in known and k != "precision"}
    cfg = TrainConfig(**train, method=entry["method"], iterations=b["iterations"],
                      batch_size=b["batch_size"], unlabelled_batch_size=b["unlabelled_batch_size"], method_params=dict(entry["params"]),
                      amp=amp, precision=precision or b["train"].get("precision", "auto"))
    dev = torch.device(device)
    torch.manual_seed(0)
    method = build_method(plan, cfg).to(dev)
    method.enable_amp(dev, cfg.amp, cfg.precision)
    method.train()
    kept = method.inference_network()
    before = [p.detach().clone() for p in kept.parameters()]
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (plan.num_input_channels, *plan.patch_size)

    def batch() -> dict[str, torch.Tensor]:
        out = {"image": torch.randn(cfg.batch_size, *shape, generator=gen),
               "label": torch.randint(0, plan.num_classes, (cfg.batch_size, 1, *plan.patch_size), generator=gen)}
        if method.needs_unlabelled:
            out["u_image"] = torch.randn(cfg.unlabelled_batch_size, *shape, generator=gen)
        return {k: v.to(dev) for k, v in out.items()}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    batches = [batch() for _ in range(2)]  # made before timing; two alternate so no step reuses the previous one's input
    mid = cfg.iterations // 2
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, finite = [], True
    for i in range(warmup + steps):
        ctx = StepContext(min(mid + i, cfg.iterations - 1), cfg.iterations, dev)
        sync()
        t0 = time.perf_counter()
        metrics = method.training_step(batches[i % 2], ctx)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        finite &= all(math.isfinite(float(v)) for v in metrics.values())
    changed = any(not torch.equal(a, p.detach()) for a, p in zip(before, kept.parameters()))
    times.sort()
    return {
        "benchmark": doc["benchmark"], "variant": variant, "plan_set": plan_set or {},
        "entry": entry["name"], "method": entry["method"], "params": entry["params"],
        "device": device, "amp": method.autocast_dtype is not None, "precision": _dtype_names().get(method.autocast_dtype, "fp32"),
        "steps": steps, "warmup": warmup,
        "patch_size": plan.patch_size, "features": plan.network.features, "arch": plan.network.arch,
        "batch_size": cfg.batch_size, "unlabelled_batch_size": cfg.unlabelled_batch_size if method.needs_unlabelled else 0,
        "parameters": sum(p.numel() for p in kept.parameters()),
        "s_per_step_median": times[len(times) // 2], "s_per_step_mean": sum(times) / len(times), "s_per_step_min": times[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_allocated_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "ok": bool(finite and changed), "finite_metrics": bool(finite), "weights_changed": bool(changed),
    }


def _worker(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    doc = load_plan_file(args.plan)
    entry = next((e for e in doc["entries"] if e["name"] == args.entry), None)
    if entry is None:
        raise SystemExit(f"{args.plan}: no entry '{args.entry}' (have {', '.join(e['name'] for e in doc['entries'])})")
    row = time_entry(doc, entry, args.device, args.amp == "on", args.steps, args.warmup,
                     None if args.precision == "plan" else args.precision, json.loads(args.plan_set), args.variant)
    print("STEP_BENCH_ROW " + json.dumps(row), flush=True)
    return 0


# -- the whole run ---------------------------------------------------------------------------------
def run_all(plans: Sequence[str], device: str, amps: Sequence[str], steps: int, warmup: int, threads: int,
            entries: Sequence[str] | None, out: Path, command: str, commit: str | None = None,
            precisions: Sequence[str] = ("plan",), plan_set: dict[str, Any] | None = None, variant: str = "") -> Path:
    from tqdm import tqdm

    from semiseg.benchmark.results import git_commit, machine_info

    jobs = [(p, e["name"], a, pr) for p in plans for e in load_plan_file(p)["entries"] if not entries or e["name"] in entries
            for a in amps for pr in precisions]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"step_bench_{device.split(':')[0]}"
    old = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else {}
    new_rows, failures = [], []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for plan, entry, amp, prec in tqdm(jobs, desc="step bench", dynamic_ncols=True):
        cmd = [sys.executable, str(Path(__file__).resolve()), "_one", "--plan", plan, "--entry", entry, "--device", device,
               "--amp", amp, "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads),
               "--precision", prec, "--plan-set", json.dumps(plan_set or {}), "--variant", variant]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in res.stdout.splitlines() if x.startswith("STEP_BENCH_ROW ")), None)
        if res.returncode != 0 or line is None:
            failures.append({"benchmark": Path(plan).stem, "variant": variant, "entry": entry, "amp": amp, "precision": prec,
                             "error": (res.stderr or res.stdout)[-2000:]})
            tqdm.write(f"step bench: {plan} {entry} amp={amp} failed:\n{(res.stderr or res.stdout)[-1500:]}")
            continue
        new_rows.append(json.loads(line[len("STEP_BENCH_ROW "):]))
    key = lambda r: (r["benchmark"], r.get("variant", ""), r["entry"], r.get("amp", False), r.get("precision", "fp32"),  # noqa: E731
                     r.get("arch"), tuple(r.get("features") or ()), tuple(r.get("patch_size") or ()))  # a changed plan: rows of its own
    replaced = {key(r) for r in new_rows}
    rows = [r for r in old.get("rows", []) if key(r) not in replaced] + new_rows
    doc = {"what": "seconds per training step and peak memory per method (benchmarks/step_bench.py)",
           "rows": rows, "failures": failures,
           "runs": [*old.get("runs", []), {"command": command, "git_commit": commit or git_commit(),
                                           "machine": machine_info(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                           "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}]}
    _atomic_write(stem.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
    _atomic_write(stem.with_suffix(".md"), markdown(doc))
    return stem.with_suffix(".json")


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# Seconds per training step, per method", "",
             "Generated by `benchmarks/step_bench.py` (see its docstring for what is timed); synthetic batches of each",
             "benchmark's plan shape, median over the timed steps. Self-training methods step as `supervised`.", ""]
    def shape(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["arch"], tuple(r["features"]), tuple(r["patch_size"])

    latest = {(r["benchmark"], r.get("variant", "")): shape(r) for r in doc["rows"]}  # rows are appended: last is newest
    groups = sorted({(r["benchmark"], r.get("variant", ""), shape(r)) for r in doc["rows"]},
                    key=lambda g: (g[0], g[1], g[2] != latest[g[0], g[1]], str(g[2])))
    for bench, variant, shp in groups:  # a plan that changed since keeps its rows, under a title of their own
        rows = [r for r in doc["rows"] if r["benchmark"] == bench and r.get("variant", "") == variant and shape(r) == shp]
        r0 = rows[0]
        title = f"{bench}, {variant} (plan with {json.dumps(r0.get('plan_set', {}))})" if variant else bench
        if shp != latest[bench, variant]:
            title += " (an earlier plan of this name)"
        lines += [f"## {title}", "",
                  f"{r0['arch']} {r0['features']}, patch {r0['patch_size']} (z, y, x), batch {r0['batch_size']}; device {r0['device']}.", "",
                  "| entry | precision | s/step (median) | s/step (min) | relative to supervised (same precision) | peak RSS (MB) | CUDA peak (MB) | parameters kept | ok |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            sup = next((s for s in rows if s["entry"] == "supervised" and s.get("precision", "fp32") == r.get("precision", "fp32")
                        and s["device"] == r["device"]), None)
            rel = f"{r['s_per_step_median'] / sup['s_per_step_median']:.2f}" if sup else "n/a"
            cuda = "n/a" if r["cuda_peak_allocated_mb"] is None else f"{r['cuda_peak_allocated_mb']:.0f}"
            lines.append(f"| {r['entry']} | {r.get('precision', 'fp16' if r['amp'] else 'fp32')} | {r['s_per_step_median']:.3f} | {r['s_per_step_min']:.3f} | {rel} | "
                         f"{r['peak_rss_mb']:.0f} | {cuda} | {r['parameters']:,} | {'yes' if r['ok'] else 'NO'} |")
        lines.append("")
    if doc.get("failures"):
        lines += ["## Failed", ""] + [f"- {f['benchmark']} {f['entry']} (AMP {f['amp']}): `{f['error'].strip().splitlines()[-1] if f['error'].strip() else 'no output'}`"
                                       for f in doc["failures"]] + [""]
    lines += ["## Runs", ""]
    for run in doc["runs"]:
        m = run["machine"]
        lines.append(f"- `{run['command']}`: commit {run['git_commit'][:12]}, {m.get('cpu_count')} CPU cores ({m.get('cpu_model')}), "
                     f"{m.get('gpu', 'no GPU')}, torch {m.get('torch')}, load {run.get('load_average_1min')}, {run['time']}")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """semiseg.data.io.atomic_write_text without importing that module, which needs SimpleITK (not on the GPU machine)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="plan benchmark configs into benchmarks/plans/<name>.json (needs the datasets)")
    p.add_argument("configs", nargs="*")
    p.add_argument("--all", action="store_true", help="remake every plan file in benchmarks/plans/ from its recorded source "
                   "(a config that others extend changes their plan files too)")
    r = sub.add_parser("run", help="time every entry of the named plan files")
    r.add_argument("--plans", nargs="+", required=True, help="plan names in benchmarks/plans/ or paths")
    r.add_argument("--device", default="cpu")
    r.add_argument("--amp", nargs="+", choices=["on", "off"], default=["on"], help="mixed precision on/off (off: fp32)")
    r.add_argument("--precision", nargs="+", choices=["plan", "auto", "fp32", "bf16", "fp16"], default=["plan"],
                   help="autocast dtype when AMP is on (plan: the budget's; auto: fp16 on CUDA, fp32 on CPU)")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="plan overrides for a variant row, e.g. network.arch=unet")
    r.add_argument("--variant", default="", help="name of the --set variant (required with --set)")
    r.add_argument("--steps", type=int, default=10)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--entries", nargs="*", help="only these entry names")
    r.add_argument("--out", default=str(RESULTS))
    r.add_argument("--commit", help="git commit to record where the checkout has no .git (the device machine)")
    o = sub.add_parser("_one")  # internal: one measurement in a fresh process
    for name, kw in (("--plan", {}), ("--entry", {}), ("--device", {}), ("--amp", {}), ("--steps", {"type": int}),
                     ("--warmup", {"type": int}), ("--threads", {"type": int}), ("--precision", {}), ("--plan-set", {}), ("--variant", {})):
        o.add_argument(name, required=True, **kw)
    a = ap.parse_args(argv)
    if a.cmd == "plan":
        if bool(a.configs) == a.all:
            ap.error("plan takes config files, or --all for every committed plan file (one of the two)")
        sources = sorted({load_plan_file(str(f))["source"] for f in PLANS.glob("*.json")}) if a.all else a.configs
        for c in sources:
            print(make_plan_file(Path(c)))
        return 0
    if a.cmd == "_one":
        return _worker(a)
    if a.steps < 1 or a.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    command = "python benchmarks/step_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if bool(a.set) != bool(a.variant):
        ap.error("--set and --variant go together: a variant row needs its name and its overrides")
    plan_set = {}
    for pair in a.set:
        k, sep, v = pair.partition("=")
        if not sep:
            ap.error(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            plan_set[k] = json.loads(v)
        except json.JSONDecodeError:
            plan_set[k] = v
    path = run_all(a.plans, a.device, a.amp, a.steps, a.warmup, a.threads, a.entries, Path(a.out), command, a.commit,
                   a.precision, plan_set, a.variant)
    print(path)
    doc = json.loads(path.read_text())
    return 1 if doc["failures"] or not all(r["ok"] for r in doc["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
