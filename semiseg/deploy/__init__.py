"""Torch-free deployment: predict with an exported ONNX model using numpy, SimpleITK/nibabel and ONNX
Runtime only (``python -m semiseg.deploy MODEL INPUT OUTPUT``). Nothing under this package imports torch,
so a deployed predictor needs neither PyTorch nor MONAI installed and peaks far lower in RAM."""
from semiseg.deploy.predict import DeployPredictor, discover_cases, find_onnx

__all__ = ["DeployPredictor", "discover_cases", "find_onnx"]
