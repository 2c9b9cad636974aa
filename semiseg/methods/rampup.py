"""Schedules over a training run: loss-weight ramps of consistency methods (Laine & Aila 2017; SSL4MIS
``ramps.py``) and nnU-Net's poly learning rate."""
from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = current / length clipped to [0, 1]; 1 when length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(float(current), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(current: float, length: float) -> float:
    """current / length, clipped to [0, 1]; 1 when length is 0."""
    if length <= 0:
        return 1.0
    return min(max(float(current), 0.0), float(length)) / float(length)


def cosine_rampdown(current: float, length: float) -> float:
    """0.5 (cos(pi t) + 1) with t = current / length clipped to [0, 1]: 1 -> 0."""
    if length <= 0:
        return 0.0
    t = min(max(float(current), 0.0), float(length)) / float(length)
    return 0.5 * (math.cos(math.pi * t) + 1.0)


def poly_lr(base: float, step: int, total: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule: base (1 - step / total)^exponent."""
    return base * (1 - step / max(1, total)) ** exponent
