"""Prediction: sliding window, ensembles, inversion of preprocessing, NIfTI out."""
from semiseg.inference.predictor import Predictor, PredictorConfig, discover_cases, find_models
from semiseg.inference.sliding_window import sliding_window, window_starts

__all__ = ["Predictor", "PredictorConfig", "discover_cases", "find_models", "sliding_window", "window_starts"]
