from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from semiseg.profiling import EfficiencyReport, ProcessTreeProbe, ResourceSampler, Samples, profile_call


def hand_trapezoid(t: list[float], v: list[float]) -> float:
    total = 0.0
    for i in range(1, len(t)):
        total += (t[i] - t[i - 1]) * (v[i] + v[i - 1]) / 2.0
    return total


def test_constant_load_area_is_value_times_recorded_span():
    with ResourceSampler(interval=0.02, probe=lambda: (100.0, 50.0, 100.0)) as s:
        time.sleep(0.3)
    r = s.result()
    t = r.samples.times_s
    assert len(t) >= 3 and t[0] >= 0 and all(b > a for a, b in zip(t, t[1:]))
    assert r.auc_gpu_mb_s == pytest.approx(100.0 * (t[-1] - t[0]), rel=1e-9)
    assert r.auc_cpu_percent_s == pytest.approx(50.0 * (t[-1] - t[0]), rel=1e-9)
    assert r.peak_rss_mb == 100.0 and r.max_gpu_mb == 100.0
    assert r.wall_time_s >= t[-1]


def test_ramp_load_samples_in_order_and_exact_trapezoid():
    calls = iter(range(10_000))

    def probe():
        k = next(calls)
        return float(k), 10.0 * k, float(k)

    with ResourceSampler(interval=0.02, probe=probe) as s:
        time.sleep(0.2)
    r = s.result()
    n = len(r.samples.times_s)
    assert r.samples.rss_mb == [float(k) for k in range(n)]
    assert r.max_gpu_mb == n - 1 and r.peak_rss_mb == n - 1
    assert r.auc_gpu_mb_s == pytest.approx(hand_trapezoid(r.samples.times_s, list(range(n))), rel=1e-9)
    assert r.auc_cpu_percent_s == pytest.approx(10 * hand_trapezoid(r.samples.times_s, list(range(n))), rel=1e-9)


def test_gpu_unavailable_gives_none_and_json_dict():
    with ResourceSampler(interval=0.05, probe=lambda: (1.0, 2.0, None)) as s:
        pass
    r = s.result()
    assert r.max_gpu_mb is None and r.auc_gpu_mb_s is None
    d = json.loads(json.dumps(r.to_dict()))
    assert d["samples"]["gpu_mb"] == [None] * len(r.samples.times_s)
    assert len(r.samples.times_s) >= 2  # entry and exit samples


def test_partial_gpu_samples_count_as_zero():
    s = Samples(times_s=[0.0, 1.0, 2.0], rss_mb=[1, 1, 1], cpu_percent=[0, 100, 100], gpu_mb=[None, 100.0, 300.0])
    r = EfficiencyReport.from_samples(s, 2.0)
    assert r.auc_gpu_mb_s == pytest.approx(50.0 + 200.0)
    assert r.auc_cpu_percent_s == pytest.approx(50.0 + 100.0)
    assert r.max_gpu_mb == 300.0


def test_real_probe_sees_big_allocation():
    with ResourceSampler(interval=0.05) as s:
        time.sleep(0.1)
        big = np.ones(200 * 1024 * 1024 // 8)  # 200 MB, pages touched
        time.sleep(0.3)
        del big
    r = s.result()
    assert r.peak_rss_mb >= r.samples.rss_mb[0] + 150


def test_real_probe_counts_children():
    code = "import sys, time; b = b'x' * (150 * 2**20); print('ready', flush=True); time.sleep(5)"
    probe = ProcessTreeProbe()
    base = probe()[0]
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        rss, _, _ = probe()
        assert rss >= base + 120
    finally:
        child.kill()
        child.wait()


def test_real_probe_cpu_area_positive_when_busy():
    def spin(seconds: float) -> int:
        end, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            n += 1
        return n

    n, r = profile_call(spin, 0.4)
    assert n > 0
    assert r.auc_cpu_percent_s > 0
    assert len(r.samples.times_s) >= 2


def test_plot_writes_png_atomically(tmp_path):
    with ResourceSampler(interval=0.02, probe=lambda: (10.0, 20.0, 30.0)) as s:
        time.sleep(0.06)
    out = tmp_path / "sub" / "eff.png"
    s.result().plot(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["eff.png"]


def test_bad_use_raises():
    with pytest.raises(ValueError, match="interval"):
        ResourceSampler(interval=0)
    with pytest.raises(ValueError, match="probe must return"):
        with ResourceSampler(probe=lambda: 5):
            pass
    sampler = ResourceSampler(probe=lambda: (1.0, 1.0, None))
    with pytest.raises(RuntimeError, match="after"):
        sampler.result()

    calls = iter(range(100))

    def flaky():
        if next(calls) >= 1:
            raise OSError("sensor gone")
        return 1.0, 1.0, None

    with pytest.raises(RuntimeError, match="sensor gone"):
        with ResourceSampler(interval=0.01, probe=flaky):
            time.sleep(0.1)


def test_gpu_memory_from_torch_only_after_cuda_init(monkeypatch):
    import types

    from semiseg import profiling

    state = {"init": False}
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: state["init"],
        mem_get_info=lambda device: (6 * 2**20, 10 * 2**20),  # free, total in bytes
    )
    monkeypatch.setattr(profiling, "_nvml_handle", lambda device: None)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert profiling.gpu_memory_mb() is None  # would create a CUDA context: not queried
    state["init"] = True
    assert profiling.gpu_memory_mb() == 4.0
