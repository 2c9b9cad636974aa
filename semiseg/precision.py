"""Whether this CPU runs bf16 natively: one probe for every place that chooses or checks a precision.

Why: bf16 autocast is ~2x faster than fp32 on a CPU with AVX512-BF16 or AMX (benchmarks/results/step_bench_cpu.md),
but where oneDNN has neither it emulates bf16 and a training step gets an order of magnitude slower (measured on a
2-core AVX2-only EPYC, LA-SSL-4's supervised step: fp32 0.27 s, bf16 3.8 s). A run asked for bf16 there is told so.
"""
from __future__ import annotations

import warnings

import torch

_warned = False


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles, by torch's own probes (private: absent from a torch without them reads as False)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if callable(p))


def slow_bf16_message() -> str:
    return ("bf16 autocast on a CPU without AVX512-BF16 or AMX is emulated: a training step is about 14x slower than "
            "fp32 here (LA-SSL-4 supervised 3.8 vs 0.27 s); use precision fp32 (or auto) on this machine")


def warn_if_slow_bf16(device: torch.device) -> bool:
    """Warn once per process when bf16 is asked for on such a CPU; True when it did (or would have) warned."""
    global _warned
    if device.type != "cpu" or cpu_has_native_bf16():
        return False
    if not _warned:
        warnings.warn(slow_bf16_message(), RuntimeWarning, stacklevel=3)
        _warned = True
    return True
