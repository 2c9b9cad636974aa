"""Efficiency measurement the FLARE way: sample resources every 0.1 s while work runs.

FLARE reports wall time, peak GPU memory (device-wide), the area under the GPU-memory-time curve
(MB*s) and the area under the CPU-utilisation-time curve (%*s). ``ResourceSampler`` records the same
from a background thread, plus the RSS of the process tree; areas are trapezoids over the recorded
sample times, so they do not depend on the sampler keeping perfect time.

The probe is injectable (any callable returning ``(rss_mb, cpu_percent, gpu_mb | None)``), which is
how tests feed a known load and check the areas exactly.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import psutil

from semiseg.atomic import save_png

Probe = Callable[[], "tuple[float, float, float | None]"]
R = TypeVar("R")
MB = 1024.0 * 1024.0  # "MB" throughout (rss_mb, peak_rss_mb) is 2**20 bytes (MiB); tables divide by 1024 and say GiB


def gpu_memory_mb(device: int = 0) -> float | None:
    """Device-wide used GPU memory in MB (all processes), or None when it cannot be read.

    Uses pynvml when importable. Otherwise torch, but only once CUDA is initialised in this process:
    querying earlier would create a CUDA context (hundreds of MB) that the measured work never asked for.
    """
    nvml = _nvml_handle(device)
    if nvml is not None:
        import pynvml  # type: ignore[import-not-found]

        return pynvml.nvmlDeviceGetMemoryInfo(nvml).used / MB
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / MB


_NVML: dict[int, Any] = {}


def _nvml_handle(device: int) -> Any | None:
    """Cached NVML device handle; None (cached too) when pynvml is missing or fails."""
    if device not in _NVML:
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            _NVML[device] = pynvml.nvmlDeviceGetHandleByIndex(device)
        except Exception:
            _NVML[device] = None
    return _NVML[device]


class ProcessTreeProbe:
    """RSS (MB) and CPU utilisation (%, 100 = one core) of a process and all its descendants, plus GPU MB.

    psutil measures CPU as the change since the previous call on the same ``Process`` object, so the
    objects are kept between calls; a child seen for the first time contributes 0 % on that sample.
    """

    def __init__(self, pid: int | None = None, gpu_device: int = 0) -> None:
        self._root = psutil.Process(pid)
        self._procs: dict[int, psutil.Process] = {}
        self._gpu_device = gpu_device
        self()  # prime the CPU counters

    def __call__(self) -> tuple[float, float, float | None]:
        try:
            tree = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        rss = cpu = 0.0
        alive: dict[int, psutil.Process] = {}
        for proc in tree:
            proc = self._procs.get(proc.pid, proc)
            try:
                cpu += proc.cpu_percent(interval=None)
                rss += proc.memory_info().rss / MB
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            alive[proc.pid] = proc
        self._procs = alive
        return rss, cpu, gpu_memory_mb(self._gpu_device)


@dataclass
class Samples:
    """The raw time series; times in s since the sampler started, ``gpu_mb`` entries None if unreadable."""

    times_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)
    gpu_mb: list[float | None] = field(default_factory=list)


def _trapezoid(times: list[float], values: list[float]) -> float:
    return float(sum((t1 - t0) * (v0 + v1) / 2 for t0, t1, v0, v1 in zip(times, times[1:], values, values[1:])))


@dataclass
class EfficiencyReport:
    """FLARE efficiency numbers of one measured run.

    GPU fields are None when no sample could read GPU memory; otherwise unreadable samples (e.g.
    before CUDA was initialised) count as 0 MB in the area and the maximum.
    """

    wall_time_s: float
    peak_rss_mb: float
    max_gpu_mb: float | None
    auc_gpu_mb_s: float | None
    auc_cpu_percent_s: float
    samples: Samples

    @classmethod
    def from_samples(cls, samples: Samples, wall_time_s: float) -> "EfficiencyReport":
        if not samples.times_s:
            raise ValueError("no samples recorded")
        has_gpu = any(g is not None for g in samples.gpu_mb)
        gpu = [0.0 if g is None else g for g in samples.gpu_mb]
        return cls(
            wall_time_s=wall_time_s,
            peak_rss_mb=max(samples.rss_mb),
            max_gpu_mb=max(gpu) if has_gpu else None,
            auc_gpu_mb_s=_trapezoid(samples.times_s, gpu) if has_gpu else None,
            auc_cpu_percent_s=_trapezoid(samples.times_s, samples.cpu_percent),
            samples=samples,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def plot(self, path: str | Path) -> None:
        """Write a PNG of RAM, CPU and GPU over time, atomically (temp file, then ``os.replace``)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        s = self.samples
        fig = Figure(figsize=(8, 7), tight_layout=True)
        FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
        axes = fig.subplots(3, 1, sharex=True)
        gpu = [float("nan") if g is None else g for g in s.gpu_mb]
        for ax, values, label in zip(
            axes, (s.rss_mb, s.cpu_percent, gpu), ("RAM (RSS, MiB)", "CPU (%)", "GPU memory (MiB)")
        ):
            ax.plot(s.times_s, values, lw=1.2)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("time (s)")
        gpu_text = "n/a" if self.max_gpu_mb is None else f"{self.max_gpu_mb:.0f} MiB, AUC {self.auc_gpu_mb_s:.0f} MiB*s"
        axes[0].set_title(f"wall {self.wall_time_s:.1f} s | peak RSS {self.peak_rss_mb:.0f} MiB | GPU {gpu_text}")
        save_png(fig, path, dpi=100)


class ResourceSampler:
    """Context manager sampling resources every ``interval`` s from a background thread.

    One sample is taken on entry (t = 0) and one on exit, so the areas span the whole block. A probe
    error stops sampling and is raised on exit.
    """

    def __init__(self, interval: float = 0.1, probe: Probe | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 s, got {interval}")
        self.interval = float(interval)
        self._probe = probe
        self._samples = Samples()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._t0 = 0.0
        self._wall: float | None = None

    def _sample(self) -> None:
        assert self._probe is not None
        value = self._probe()
        t = time.perf_counter() - self._t0
        if not (isinstance(value, tuple) and len(value) == 3):
            raise ValueError(f"probe must return (rss_mb, cpu_percent, gpu_mb | None), got {value!r}")
        rss, cpu, gpu = value
        s = self._samples
        s.times_s.append(t)
        s.rss_mb.append(float(rss))
        s.cpu_percent.append(float(cpu))
        s.gpu_mb.append(None if gpu is None else float(gpu))

    def _run(self) -> None:
        k = 1
        while not self._stop.wait(max(0.0, self._t0 + k * self.interval - time.perf_counter())):
            try:
                self._sample()
            except BaseException as err:  # surfaced on exit
                self._error = err
                return
            k = max(k + 1, int((time.perf_counter() - self._t0) / self.interval) + 1)  # skip missed ticks

    def __enter__(self) -> "ResourceSampler":
        if self._thread is not None:
            raise RuntimeError("a ResourceSampler can only be used once")
        if self._probe is None:
            self._probe = ProcessTreeProbe()
        self._t0 = time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="ResourceSampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._thread is not None
        self._stop.set()
        self._thread.join()
        if self._error is None:
            self._sample()
        self._wall = time.perf_counter() - self._t0
        if self._error is not None and exc is None:
            raise RuntimeError(f"resource probe failed: {self._error}") from self._error

    def result(self) -> EfficiencyReport:
        if self._wall is None:
            raise RuntimeError("result() is available after the sampler's with-block has ended")
        return EfficiencyReport.from_samples(self._samples, self._wall)


def profile_call(fn: Callable[..., R], *args: Any, **kwargs: Any) -> tuple[R, EfficiencyReport]:
    """Run ``fn(*args, **kwargs)`` under a default ``ResourceSampler``; return its result and the report."""
    with ResourceSampler() as sampler:
        result = fn(*args, **kwargs)
    return result, sampler.result()
