"""semiseg: semi-supervised 3D medical image segmentation.

The Python API a notebook uses (the CLI is a thin layer over the same functions). Names are imported on first
use, so ``import semiseg`` stays light and the torch-free ``semiseg.deploy`` never pulls in torch:

    create_run, Run        plan a dataset into a run folder (semiseg.run)
    TrainConfig, Plan      configuration as data (semiseg.config)
    train_fold             train any method on a fold or on all labelled cases (semiseg.run)
    SelfTrainConfig, run_selftrain     offline self-training (semiseg.selftrain.pipeline)
    Predictor, PredictorConfig         prediction with the input's geometry (semiseg.inference)
    evaluate_folders       FLARE-style metrics of a prediction folder (semiseg.evaluation.evaluate)
    load_config, run_benchmark         benchmark files (semiseg.benchmark)
    sample_dataset         the embedded ChaosT2 sample (CC BY-NC-SA 4.0)
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_run": "semiseg.run", "Run": "semiseg.run", "train_fold": "semiseg.run",
    "TrainConfig": "semiseg.config", "Plan": "semiseg.config", "NetworkConfig": "semiseg.config",
    "SelfTrainConfig": "semiseg.selftrain.pipeline", "run_selftrain": "semiseg.selftrain.pipeline",
    "Predictor": "semiseg.inference", "PredictorConfig": "semiseg.inference",
    "evaluate_folders": "semiseg.evaluation.evaluate",
    "load_config": "semiseg.benchmark.config", "run_benchmark": "semiseg.benchmark.harness",
    "sample_dataset": "semiseg.demo",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'semiseg' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
