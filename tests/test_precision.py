"""The native-bf16 probe: ``auto`` picks bf16 only where the CPU runs it natively, and a run that asks for bf16 on a
CPU that would emulate it (an order of magnitude slower) is warned, once."""
from __future__ import annotations

import warnings

import pytest
import torch

import semiseg.precision as precision
from semiseg.config import Plan, TrainConfig


@pytest.fixture
def cpu_probes(monkeypatch):
    def set_probes(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(precision, "_warned", False)
    return set_probes


def test_native_bf16_is_either_probe(cpu_probes):
    cpu_probes(False, False)
    assert precision.cpu_has_native_bf16() is False
    cpu_probes(True, False)
    assert precision.cpu_has_native_bf16() is True
    cpu_probes(False, True)
    assert precision.cpu_has_native_bf16() is True


def test_demo_auto_precision_follows_the_probe(cpu_probes):
    from semiseg.demo import training_precision

    cpu_probes(True, False)
    assert training_precision("cpu", "auto") == "bf16"
    cpu_probes(False, False)
    assert training_precision("cpu", "auto") == "auto"  # the engine's default: fp32 on the CPU
    assert training_precision("cpu", "bf16") == "bf16"  # an explicit choice is kept (and warned about by the engine)


def test_bf16_on_a_cpu_without_it_warns_once(cpu_probes):
    cpu_probes(False, False)
    with pytest.warns(RuntimeWarning, match="AVX512-BF16 or AMX is emulated"):
        assert precision.warn_if_slow_bf16(torch.device("cpu")) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.warn_if_slow_bf16(torch.device("cpu")) is True  # said once per process
        cpu_probes(True, False)
        assert precision.warn_if_slow_bf16(torch.device("cpu")) is False
        cpu_probes(False, False)
        assert precision.warn_if_slow_bf16(torch.device("cuda")) is False  # CUDA has its own bf16


def test_the_engine_warns_when_a_run_asks_for_emulated_bf16(cpu_probes):
    from semiseg.methods import build_method

    plan = Plan(dataset_name="t", modality=["MRI"], num_input_channels=1, labels={"background": 0, "a": 1},
                target_spacing=(1.0, 1.0, 1.0), patch_size=(16, 32, 32))
    method = build_method(plan, TrainConfig(method="supervised"))
    cpu_probes(False, False)
    with pytest.warns(RuntimeWarning, match="use precision fp32"):
        method.enable_amp(torch.device("cpu"), True, "bf16")
    assert method.autocast_dtype is torch.bfloat16  # still what was asked for: a warning, not a silent change
    cpu_probes(False, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.enable_amp(torch.device("cpu"), True, "fp32")


def test_results_record_whether_the_cpu_had_native_bf16(cpu_probes):
    from semiseg.benchmark.results import cpu_model_text, machine_info

    cpu_probes(False, False)
    assert machine_info("cpu")["cpu_native_bf16"] is False
    assert cpu_model_text({"machine": {"cpu_model": "AMD EPYC", "cpu_native_bf16": False}}) == " (AMD EPYC, no native bf16)"
    assert cpu_model_text({"machine": {"cpu_model": "AMD EPYC", "cpu_native_bf16": True}}) == " (AMD EPYC)"
    assert cpu_model_text({"machine": {"cpu_model": "AMD EPYC"}}) == " (AMD EPYC)"  # recorded before the field existed
    assert cpu_model_text({"machine": {}}) == ""
