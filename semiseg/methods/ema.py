"""Exponential moving average of weights: the Mean Teacher update, written once for every method."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int | None = None) -> float:
    """teacher <- alpha * teacher + (1 - alpha) * student, in place; returns alpha.

    With ``step`` given, alpha = min(1 - 1/(step + 1), decay) (Tarvainen & Valpola; UA-MT code), so
    early on the teacher follows the student closely instead of averaging its random init. Buffers
    (e.g. BatchNorm running statistics) are copied: they are not weights to be averaged.
    """
    alpha = decay if step is None else min(1.0 - 1.0 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach().to(t.dtype), alpha=1.0 - alpha)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)
    return alpha
