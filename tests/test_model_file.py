"""Model and checkpoint files (semiseg.networks.model_file): plain types only, read with weights_only, so a
file carrying a pickled payload is refused, with its name, without running the payload."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from semiseg.config import NetworkConfig, Plan
from semiseg.networks import build_network
from semiseg.networks.model_file import ModelFileError, atomic_torch_save, load_model, read_file, read_model, read_plan, save_model

RAN: list[str] = []


class Payload:
    """What a malicious model file carries: unpickling it would call ``RAN.append``."""

    def __reduce__(self):
        return (RAN.append, ("payload ran",))


def tiny_plan() -> Plan:
    return Plan(dataset_name="t", modality="MRI", num_input_channels=1, labels={"background": 0, "a": 1}, target_spacing=[1.0] * 3,
                patch_size=[8, 16, 16], network=NetworkConfig(features=[4, 8, 16], kernels=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]]))


def test_a_saved_model_round_trips_with_weights_only(tmp_path):
    plan = tiny_plan()
    net = build_network(plan.network, 1, 2)
    path = tmp_path / "model_final.pt"
    save_model(path, net, plan, plan.network, "supervised", {"seed": 3})
    assert read_plan(path) == dataclasses.asdict(plan) and read_model(path)["method"] == "supervised"
    loaded, p = load_model(path)
    assert p == plan and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    assert [q.name for q in tmp_path.iterdir()] == ["model_final.pt"]  # no temporary left


def test_a_file_with_a_pickled_payload_is_refused_without_running_it(tmp_path):
    path = tmp_path / "shared_model.pt"
    torch.save({"weights": {}, "plan": {}, "network": {}, "extra": Payload()}, path)
    RAN.clear()
    with pytest.raises(ModelFileError, match=r"shared_model\.pt: refused: the file holds pickled objects"):
        read_model(path)
    assert RAN == []  # the payload never ran
    with pytest.raises(ModelFileError, match="shared_model.pt"):
        load_model(path)
    assert RAN == []


def test_other_bad_files_are_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match=r"junk\.pt: cannot read"):
        read_file(junk)
    listed = tmp_path / "list.pt"
    atomic_torch_save([1, 2], listed)
    with pytest.raises(ModelFileError, match=r"list\.pt: not a semiseg model or checkpoint file"):
        read_file(listed)
    partial = tmp_path / "partial.pt"
    atomic_torch_save({"weights": {}}, partial)
    with pytest.raises(ModelFileError, match=r"partial\.pt: not a semiseg model file \(missing plan, network\)"):
        read_model(partial)
