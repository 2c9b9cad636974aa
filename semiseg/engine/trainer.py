"""The training engine: loop, poly LR, AMP, exact resume, logging, progress bar, curve plot.

Everything method-specific lives in the Method's ``training_step``; this file is the same for all.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from semiseg import distributed
from semiseg.atomic import save_png
from semiseg.config import EPOCH_LENGTH, Plan, TrainConfig, comparable_train_config
from semiseg.data.folder_lock import FolderLock
from semiseg.data.io import atomic_write_json
from semiseg.data.sampling import PatchSampler, TrainingBatches, open_cases
from semiseg.methods import Method, StepContext, build_method
from semiseg.networks.model_file import atomic_torch_save, load_model, read_file, read_model, save_model  # noqa: F401 (load_model: re-exported)


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class DataSpec:
    """Where the batches come from: cache folders and case lists for each stream."""

    cache: Path
    labelled: list[str]
    unlabelled: list[str] = field(default_factory=list)
    pseudo_cache: Path | None = None
    pseudo: list[str] = field(default_factory=list)
    pseudo_per_labelled: int = 3


def make_batches(plan: Plan, cfg: TrainConfig, spec: DataSpec, method: Method,
                 info: distributed.DistInfo = distributed.DistInfo()) -> TrainingBatches:
    """This process's stream of batches: its share of the global batch sizes, its own sampling seed."""
    lab = PatchSampler(open_cases(spec.cache, spec.labelled, True), plan.patch_size, plan.foreground_oversample, cfg.augmentation, plan.mirror_axes,
                       plan.foreground_inside)
    unl = None
    if method.needs_unlabelled:
        if not spec.unlabelled:
            raise ValueError(f"method '{cfg.method}' needs unlabelled cases but the split has none")
        unl = PatchSampler(open_cases(spec.cache, spec.unlabelled, False), plan.patch_size, 0.0, cfg.unlabelled_augmentation,
                           plan.mirror_axes)
    pseudo = None
    if spec.pseudo:
        assert spec.pseudo_cache is not None
        pseudo = PatchSampler(open_cases(spec.pseudo_cache, spec.pseudo, True), plan.patch_size, plan.foreground_oversample, cfg.augmentation,
                              plan.mirror_axes, plan.foreground_inside)
    return TrainingBatches(lab, distributed.local_batch(cfg.batch_size, info), distributed.rank_seed(cfg.seed, info), unl,
                           distributed.local_batch(cfg.unlabelled_batch_size, info, "unlabelled_batch_size") if unl is not None else cfg.unlabelled_batch_size,
                           pseudo, spec.pseudo_per_labelled)


def _checkpoint_state(method: Method, step: int, history: list[dict[str, float]], wall_time_s: float) -> dict[str, Any]:
    return {
        "step": step,
        "wall_time_s": wall_time_s,  # training time of every session so far: a resumed run's log reports the whole
        "method": method.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in method.optimizers.items()},
        "scaler": method.scaler.state_dict() if method.scaler is not None else None,
        "extra": method.extra_state(),
        "history": history,
    }


def train(
    plan: Plan,
    cfg: TrainConfig,
    spec: DataSpec,
    out_dir: str | Path,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    init_weights: str | Path | None = None,
) -> Path:
    """Train and write ``out_dir/model_final.pt``; continues from ``checkpoint.pt`` when resuming.

    ``stop_after`` ends the loop early (after that many steps in total) as an interruption would;
    ``init_weights`` starts the inference network from a trained model (fine-tuning). Under torchrun
    every process trains its share of each batch and process 0 alone writes files."""
    info = distributed.setup(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:  # one writer per run folder (process 0 writes every file)
        with FolderLock(out, f"train {cfg.method}"):
            return _train(plan, cfg, spec, out, info, resume, device, progress, stop_after, init_weights)
    return _train(plan, cfg, spec, out, info, resume, device, progress, stop_after, init_weights)


def _train(plan: Plan, cfg: TrainConfig, spec: DataSpec, out: Path, info: distributed.DistInfo, resume: bool,
           device: str | None, progress: bool, stop_after: int | None, init_weights: str | Path | None) -> Path:
    final = out / "model_final.pt"
    if resume and (final.is_file() or (out / "checkpoint.pt").is_file()):
        _refuse_other_config(out / "train_config.json", cfg)
    if resume and final.is_file():
        return final
    dev = distributed.process_device(pick_device(device), info)
    torch.manual_seed(cfg.seed)
    method = build_method(plan, cfg)
    if init_weights is not None:
        method.inference_network().load_state_dict(read_model(init_weights)["weights"])
    method.to(dev)
    distributed.broadcast_state(method)  # identical start on every process (init is seeded alike anyway)
    method.enable_amp(dev, cfg.amp, cfg.precision)
    if info.is_main:
        atomic_write_json(out / "train_config.json", dataclasses.asdict(cfg))
        plan.save(out / "plan.json")
    start, history, earlier_s = 0, [], 0.0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ck = read_file(ckpt_path, dev)
        method.load_state_dict(ck["method"])
        for k, o in method.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        if method.scaler is not None and ck["scaler"] is not None:
            method.scaler.load_state_dict(ck["scaler"])
        method.load_extra_state(ck["extra"])
        start, history, earlier_s = ck["step"], ck["history"], float(ck.get("wall_time_s", 0.0))
    batches = make_batches(plan, cfg, spec, method, info)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, end), num_workers=cfg.num_workers,
        pin_memory=dev.type == "cuda", persistent_workers=False,
    )
    method.train()
    bar = tqdm(total=cfg.iterations, initial=start, desc=f"train {cfg.method}", disable=not progress or not info.is_main,
               dynamic_ncols=True)
    t0 = time.time()
    step = start
    for step, batch in zip(range(start, end), loader):
        for name, o in method.optimizers.items():
            for g in o.param_groups:
                g["lr"] = method.learning_rate(name, g.get("initial_lr", cfg.lr), step, cfg.iterations)
        torch.manual_seed(distributed.rank_seed(cfg.seed, info) * 1_000_003 + step)  # dropout / noise: (seed, rank, step)
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        ctx = StepContext(step, cfg.iterations, dev)
        metrics = method.training_step(batch, ctx)
        history.append({"step": step, **metrics})
        bar.update()
        bar.set_postfix({k: f"{v:.3f}" for k, v in list(metrics.items())[:3]})
        if (step + 1) % EPOCH_LENGTH == 0:
            method.on_epoch_end(ctx)
        if info.is_main and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == end):
            atomic_torch_save(_checkpoint_state(method, step + 1, history, earlier_s + time.time() - t0), ckpt_path)
    bar.close()
    if not info.is_main:
        distributed.barrier()  # process 0 writes the checkpoint or final model; return once it exists
        return ckpt_path if end < cfg.iterations else final
    if end < cfg.iterations:
        distributed.barrier()
        return ckpt_path
    save_model(final, method.inference_network(), plan, _inference_net_cfg(plan, method), cfg.method, dataclasses.asdict(cfg))
    session_s = time.time() - t0
    atomic_write_json(out / "log.json", {"history": history, "wall_time_s": earlier_s + session_s,
                                            "wall_time_this_session_s": session_s, "device": str(dev)})
    plot_curve(history, out / "curve.png")
    distributed.barrier()
    return final


def _refuse_other_config(path: Path, cfg: TrainConfig) -> None:
    """A run folder holds one training: finishing or resuming it under other settings would return (or mix in)
    a model of the old ones, so that is refused with the difference."""
    if not path.is_file():
        return
    old = comparable_train_config(json.loads(path.read_text()))
    new = comparable_train_config(dataclasses.asdict(cfg))
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"{path.parent}: holds a training with other settings ({'; '.join(diff[:4])}); train into another "
                         "folder (--name), or start over with --no-resume")


def _inference_net_cfg(plan: Plan, method: Method):
    """The NetworkConfig of the kept network (a method may keep a different arch, e.g. DLUNet's light net)."""
    return dataclasses.replace(plan.network, **method.inference_network_overrides)


def history_keys(history: list[dict[str, float]]) -> list[str]:
    """Every logged scalar, in order of first appearance: keys of a later phase (MPL's h after its warm-up) or
    of a periodic diagnostic are absent from the first rows."""
    return list(dict.fromkeys(k for h in history for k in h if k != "step"))


def plot_curve(history: list[dict[str, float]], path: Path) -> None:
    """Training curve PNG: each logged scalar, smoothed over an epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not history:
        return
    keys = history_keys(history)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.array([h["step"] for h in history])
    w = max(1, min(EPOCH_LENGTH, len(history) // 10))
    sparse_ax = None
    for k in keys:
        v = np.array([h.get(k, np.nan) for h in history], float)
        seen = np.isfinite(v)
        if seen.mean() < 0.5:  # logged on some steps only (a diagnostic, a phase of the run): its points, own axis
            sparse_ax = sparse_ax or ax.twinx()
            sparse_ax.plot(steps[seen], v[seen], ".", ms=3, label=k)
            continue
        sm = np.convolve(np.where(seen, v, 0.0), np.ones(w), mode="valid") / np.maximum(np.convolve(seen, np.ones(w), mode="valid"), 1)
        ax.plot(steps[w - 1 :], sm, label=k)
    ax.set_xlabel("step")
    ax.set_title(f"training curve (moving average over {w} steps)")
    handles, labels = ax.get_legend_handles_labels()
    if sparse_ax is not None:
        sparse_ax.set_yscale("symlog", linthresh=1e-3)
        h2, l2 = sparse_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + [f"{x} (right axis)" for x in l2]
    ax.legend(handles, labels, fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=100)
