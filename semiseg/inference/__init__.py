"""Prediction: sliding window, ensembles, inversion of preprocessing, NIfTI out."""
from semiseg.inference.predictor import Predictor, PredictorConfig, cpu_fast_path, discover_cases, find_models
from semiseg.inference.restore import LabelRestorer, restore_labels
from semiseg.inference.sliding_window import Slab, iter_slabs, sliding_window, window_starts

__all__ = ["LabelRestorer", "Predictor", "PredictorConfig", "Slab", "cpu_fast_path", "discover_cases", "find_models",
           "iter_slabs", "restore_labels", "sliding_window", "window_starts"]
