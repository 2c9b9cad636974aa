"""The ``semiseg`` command: a thin layer over the Python API (each subcommand calls one function)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from semiseg.argtypes import fold, nonnegative_int, positive_float, positive_int, unit_fraction
from semiseg.config import EPOCH_LENGTH, read_data_file


def _parse_value(text: str) -> Any:
    """Values of ``--set key=value`` are JSON when they parse as JSON (numbers, lists), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"--set expects KEY=VALUE, got '{p}'")
        k, v = p.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


# -- subcommands ------------------------------------------------------------------------------------
def cmd_validate(a: argparse.Namespace) -> int:
    from semiseg.data.dataset import RawDataset
    from semiseg.data.validate import format_problems, validate_dataset

    ds = RawDataset.open(a.dataset, a.split, check=False)  # every problem at once, split problems included
    problems = validate_dataset(ds, progress=not a.quiet)
    print(format_problems(ds.root, problems))
    return 1 if problems else 0


def cmd_plan(a: argparse.Namespace) -> int:
    from semiseg.config import Plan, check_override_keys
    from semiseg.run import create_run

    overrides = _overrides(a.set)
    try:
        check_override_keys(Plan, overrides)  # before the dataset scan
    except KeyError as e:
        raise ValueError(f"--set: {e.args[0]}") from None
    run = create_run(a.dataset, a.out, a.split, spacing=a.spacing, max_patch_voxels=a.max_patch_voxels,
                     base_features=a.base_features, max_features=a.max_features, overrides=overrides, progress=not a.quiet)
    p = run.plan
    print(f"plan written to {run.root / 'plan.json'}")
    print(f"  spacing (z,y,x) mm: {p.target_spacing}   patch: {p.patch_size}   median shape: {p.median_shape}")
    print(f"  network: {p.network.arch} features {p.network.features}   normalisation: {[n['scheme'] for n in p.normalization]}")
    return 0


def cmd_preprocess(a: argparse.Namespace) -> int:
    from semiseg.run import Run

    Run(Path(a.run)).ensure_preprocessed(labelled=True, unlabelled=a.unlabelled, workers=a.workers, progress=not a.quiet)
    return 0


def build_train_config(a: argparse.Namespace) -> Any:
    from semiseg.config import TrainConfig, apply_overrides

    cfg = TrainConfig.from_dict(read_data_file(a.config), f"--config {a.config}") if a.config else TrainConfig()
    if a.method:
        cfg.method = a.method
    if a.iterations is not None:
        cfg.iterations = a.iterations
    if a.epochs is not None:
        cfg.iterations = a.epochs * EPOCH_LENGTH
    if a.seed is not None:
        cfg.seed = a.seed
    try:
        return apply_overrides(cfg, _overrides(a.set))
    except (ValueError, KeyError) as e:
        raise ValueError(f"--set: {e.args[0]}") from None


def cmd_train(a: argparse.Namespace) -> int:
    from semiseg.run import Run, check_fold, model_dir, train_fold

    try:
        check_fold(a.fold, a.k)  # every option checked before any preprocessing
    except ValueError as e:
        raise ValueError(f"--fold/--k: {e}") from None
    cfg = build_train_config(a)
    run = Run(Path(a.run))
    run.plan  # a run folder, or a message saying it is not one
    t0 = time.time()
    out = model_dir(run, cfg.method, a.fold, a.name)
    path = train_fold(run, a.fold, cfg, k=a.k, out=out, device=a.device, resume=not a.no_resume, progress=not a.quiet, workers=a.workers)
    print(f"{path} ({time.time() - t0:.0f} s)")
    return 0


def predictor_config(a: argparse.Namespace) -> Any:
    from semiseg.inference import PredictorConfig
    from semiseg.inference.cli import backend_kwargs

    return PredictorConfig(step=a.step, gaussian=not a.no_gaussian, tta=a.tta, precision=a.precision,
                           resample=a.resample, device=a.device, batch=a.batch, threads=a.threads, **backend_kwargs(a))


def load_postprocess(spec: str | None, model_path: str) -> Any:
    """``--postprocess FILE.json|yaml`` (a list of steps) resolved against the model's labels."""
    if not spec:
        return None
    from semiseg.inference import find_models
    from semiseg.postprocess import Pipeline
    from semiseg.networks.model_file import read_plan

    labels = read_plan(find_models(model_path)[0])["labels"]
    steps = read_data_file(spec)
    if isinstance(steps, dict):
        steps = steps.get("steps", [])
    return Pipeline.from_config(steps, labels)


def cmd_predict(a: argparse.Namespace) -> int:
    from semiseg.inference import Predictor

    from semiseg.data.cases import parse_shard

    cfg = predictor_config(a)
    shard = parse_shard(a.shard) if a.shard else None  # before loading models: a typo fails at once
    t0 = time.time()
    pred = Predictor.from_path(a.model, cfg, postprocess=load_postprocess(a.postprocess, a.model))
    if a.profile:
        from semiseg.profiling import profile_call

        written, report = profile_call(pred.predict_folder, a.input, a.output, overwrite=a.overwrite, progress=not a.quiet, shard=shard)
        out = Path(a.output)
        from semiseg.data.io import atomic_write_json

        atomic_write_json(out / "profile.json", report.to_dict())
        report.plot(out / "profile.png")
        summary = {k: v for k, v in report.to_dict().items() if k != "samples"}
        print(json.dumps(summary, indent=2) + f"\nsamples and plot: {out / 'profile.json'}, {out / 'profile.png'}")
    else:
        written = pred.predict_folder(a.input, a.output, overwrite=a.overwrite, progress=not a.quiet, shard=shard)
    print(f"{len(written)} case(s) -> {a.output} ({time.time() - t0:.1f} s, {len(pred.networks)} model(s))")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from semiseg.evaluation.evaluate import evaluate_folders, format_summary

    ds_json = Path(a.dataset)
    if ds_json.is_dir():
        ds_json = ds_json / "dataset.json"
    result = evaluate_folders(a.pred, a.ref, ds_json, a.out, num_workers=a.workers, progress=not a.quiet)
    print(format_summary(result))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from semiseg.demo import DemoConfig, run_demo

    run_demo(Path(a.out), iterations=a.iterations, progress=not a.quiet, device=a.device,
             config=DemoConfig(methods=("supervised", a.method)))
    return 0


# -- parser -----------------------------------------------------------------------------------------
def _predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step", type=unit_fraction, default=0.5, help="window stride as a fraction of the patch (0.5 nnU-Net, 0.9 fast)")
    p.add_argument("--no-gaussian", action="store_true", help="uniform window weights")
    p.add_argument("--tta", default="none", choices=["none", "3", "7"], help="mirroring test-time augmentation")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--resample", default="probabilities", choices=["probabilities", "logits", "argmax"],
                   help="probabilities: resample softmax to the input grid; logits: resample logits (as nnU-Net); "
                        "argmax: labels then nearest (fast, low memory)")
    p.add_argument("--batch", type=positive_int, default=2, help="windows per forward pass")
    p.add_argument("--threads", type=positive_int, default=None)
    from semiseg.inference.cli import add_backend_options

    add_backend_options(p)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other semiseg error; subcommands inherit it."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="semiseg", description="Semi-supervised 3D medical image segmentation")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the command line)")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch CPU threads (default: OMP_NUM_THREADS, else the cores shared among SEMISEG_PROCESSES processes)")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a raw dataset; lists every problem with its file")
    p.add_argument("dataset")
    p.add_argument("--split", default=None, help="split JSON (default: DATASET/splits_semisupervised.json if present)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="fingerprint a dataset and write RUN/plan.json")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--split", default=None)
    p.add_argument("--spacing", type=positive_float, nargs=3, default=None, metavar=("Z", "Y", "X"), help="override target spacing (mm)")
    p.add_argument("--max-patch-voxels", type=positive_int, default=128**3)
    p.add_argument("--base-features", type=positive_int, default=32, help="16 for the half-width network")
    p.add_argument("--max-features", type=positive_int, default=320)
    p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="override any plan field, e.g. network.features=[8,16,32]")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("preprocess", help="fill RUN/cache (resumable)")
    p.add_argument("run")
    p.add_argument("--unlabelled", action="store_true", help="also the unlabelled images (never their labels)")
    p.add_argument("--workers", type=positive_int, default=1)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train", help="train one fold (or 'all') with a method")
    p.add_argument("run")
    p.add_argument("--fold", type=fold, default="all", help="0..k-1 or 'all'")
    p.add_argument("--k", type=positive_int, default=5, help="number of folds")
    p.add_argument("--method", default=None, help="supervised | mean-teacher | ua-mt | cps | dlunet | mpl | bcp | unimatch | ad-mt")
    p.add_argument("--config", default=None, help="TrainConfig as JSON/YAML")
    p.add_argument("--iterations", type=positive_int, default=None)
    p.add_argument("--epochs", type=positive_int, default=None, help=f"x{EPOCH_LENGTH} iterations")
    p.add_argument("--seed", type=nonnegative_int, default=None)
    p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="override TrainConfig fields, e.g. method_params.lambda=1.0")
    p.add_argument("--name", default=None, help="model folder name (default: the method)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--workers", type=positive_int, default=1, help="preprocessing workers")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict NIfTI label maps on the inputs' grids")
    p.add_argument("--model", required=True, help="model_final.pt, its folder, or a folder of fold_* (ensemble)")
    p.add_argument("--input", required=True, help="image file or folder (CASE_0000.nii.gz ...)")
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--postprocess", default=None, help="JSON/YAML list of post-processing steps")
    p.add_argument("--profile", action="store_true", help="sample time/RAM/CPU/GPU memory every 0.1 s (FLARE figures)")
    p.add_argument("--shard", default=None, metavar="I/N", help="only shard I of N of the sorted cases (0 <= I < N), for N jobs of any scheduler")
    _predict_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="DSC/NSD/HD95/ASD/IoU with FLARE rules")
    p.add_argument("--pred", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--dataset", required=True, help="dataset.json or its folder")
    p.add_argument("--out", required=True, help="metrics JSON (a CSV is written beside it)")
    p.add_argument("--workers", type=positive_int, default=1)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="supervised vs semi-supervised on the embedded ChaosT2 sample: plan, train, predict, evaluate, report")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--iterations", type=positive_int, default=None, help="steps per model (default: the demo's budget)")
    p.add_argument("--method", default="ad-mt", help="the semi-supervised method shown beside the supervised baseline")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.set_defaults(func=cmd_demo)
    # subcommands that live beside their stage's code
    from semiseg.benchmark import cli as benchmark_cli
    from semiseg.inference import cli as inference_cli
    from semiseg.selftrain import cli as selftrain_cli

    for module in (selftrain_cli, inference_cli, benchmark_cli):
        module.register_cli(sub)
    return ap


# errors of the input or the setting (their message names the file or option); anything else is a bug or an
# environment failure and its message gets the exception's name
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, ImportError)


def error_line(e: BaseException) -> str:
    """An exception as one line: KeyError's quotes dropped, a multi-line message joined."""
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip()) or "(no message)"
    from semiseg.data.folder_lock import FolderBusy

    if not isinstance(e, USER_ERRORS + (FolderBusy,)):
        text = f"{type(e).__name__}: {text} (run with --debug for the traceback)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an error is one line on stderr with exit code 2 (its traceback only with ``--debug``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args((["--debug"] if debug else []) + [a for a in argv if a != "--debug"])
    try:
        from semiseg.engine.threads import apply_threads

        apply_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"semiseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"semiseg {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
