"""CPU thread control: one place decides how many intra-op threads a process gets.

Why: torch defaults to one thread per core in every process, and on a small machine two or three
processes side by side then oversubscribe the cores (measured on 2 cores: three trainings slowed one
from 1.85 to ~0.1 steps/s). The rule is ``cores / processes``, with the process count coming from the
caller (the benchmark's ``--jobs``) or from ``SEMISEG_PROCESSES`` set by whoever starts several.
An explicit ``OMP_NUM_THREADS`` (or ``--threads``) always wins.
"""
from __future__ import annotations

import os

PROCESSES_ENV = "SEMISEG_PROCESSES"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_process(processes: int = 1, cores: int | None = None) -> int:
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    return max(1, (cores if cores is not None else available_cores()) // processes)


def decide_threads(explicit: int | None = None, env: dict[str, str] | None = None, cores: int | None = None) -> int:
    """``explicit``, else ``OMP_NUM_THREADS``, else the cores shared among ``SEMISEG_PROCESSES`` processes."""
    env = os.environ if env is None else env
    if explicit is not None:
        if explicit < 1:
            raise ValueError(f"--threads must be >= 1, got {explicit}")
        return explicit
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp:
        try:
            return max(1, int(omp))
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS must be a whole number, got '{omp}'") from None
    raw = env.get(PROCESSES_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{PROCESSES_ENV} must be a whole number >= 1, got '{raw}'")
    processes = int(raw)
    return threads_per_process(processes, cores)


def apply_threads(explicit: int | None = None) -> int:
    """Set torch's intra-op threads by :func:`decide_threads` (inter-op to 1: our graphs are sequential)."""
    import torch

    n = decide_threads(explicit)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran: harmless
        pass
    return n


def child_env(processes: int, cores: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for one of ``processes`` worker processes started side by side: its share of the cores."""
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = str(threads_per_process(processes, cores))
    env[PROCESSES_ENV] = str(processes)
    return env
