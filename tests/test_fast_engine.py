"""The CPU-speed features of the engine: the strided-first-stage U-Net chosen as data, bf16 autocast with
fp32 master weights, batch preparation in a background worker (batches still a pure function of
(seed, step), so resume stays exact), and thread control."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from semiseg.config import NetworkConfig, TrainConfig
from semiseg.engine.threads import child_env, decide_threads, threads_per_process
from semiseg.engine.trainer import DataSpec, load_model, train
from semiseg.networks.model_file import read_file
from semiseg.methods import build_method
from semiseg.networks import build_network
from semiseg.run import Run, create_run
from synthetic_data import make_dataset, tiny_overrides

LABELLED = [f"l{i}" for i in range(4)]
RES_UNET = {"network.arch": "res_unet", "network.features": [8, 16, 32], "network.strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    base = tmp_path_factory.mktemp("fast")
    raw = make_dataset(base / "raw", LABELLED, shape=(8, 36, 36))
    r = create_run(raw, base / "run", overrides={**tiny_overrides([8, 32, 32]), **RES_UNET}, progress=False)
    r.ensure_preprocessed(labelled=True, progress=False)
    return r


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"iterations": 6, "checkpoint_every": 2, "batch_size": 2, "seed": 3, "num_workers": 0, **kw})


def weights(path) -> dict[str, torch.Tensor]:
    return read_file(path)["weights"]


def net_cfg(**kw) -> NetworkConfig:
    return NetworkConfig(**{"arch": "res_unet", "features": [8, 16, 32], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], **kw})


# -- the CPU-tier network ------------------------------------------------------------------------------
def test_res_unet_is_chosen_in_the_plan_and_keeps_full_resolution_logits(run):
    assert run.plan.network.arch == "res_unet"
    net = build_network(run.plan.network, 1, 3)
    assert type(net).__name__ == "ResUNet"
    x = torch.randn(2, 1, 8, 32, 32)
    assert net(x).shape == (2, 3, 8, 32, 32)
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.stride == (2, 2, 2)  # the strided first stage that makes it cheap


HEADS = {"unet": lambda n: n.net.output_block, "res_unet": lambda n: n.net.model[-1], "vnet": lambda n: n.head,
         "light_unet": lambda n: n.head, "light_res_unet": lambda n: n.head}


@pytest.mark.parametrize("arch, placement", [("unet", "auto"), ("unet", "bottleneck"), ("res_unet", "auto"),
                                             ("res_unet", "bottleneck"), ("vnet", "auto"), ("light_unet", "auto"),
                                             ("light_res_unet", "auto")])
def test_logits_are_never_dropped(arch, placement):
    """With dropout on, the logits are a deterministic function of the head's input: nothing in or after it drops."""
    torch.manual_seed(0)
    cfg = NetworkConfig(arch=arch, features=[8, 16, 32] if arch != "vnet" else [4], dropout=0.5, dropout_at=placement,
                        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]] if arch != "vnet" else [])
    net = build_network(cfg, 1, 2).train()
    head = HEADS[arch](net)
    seen: list[torch.Tensor] = []
    head.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))  # returns None: input unchanged
    x = torch.randn(2, 1, 16, 32, 32)
    out = net(x)
    assert not torch.equal(out, net(x))  # dropout acts (before the head)
    assert torch.equal(out, head.forward(seen[0]))  # train mode: the head (its own hooks aside) replays exactly


def test_res_unet_bottleneck_dropout_is_stochastic_only_in_train_mode():
    torch.manual_seed(0)
    net = build_network(net_cfg(dropout=0.5, dropout_at="bottleneck"), 1, 2)
    x = torch.randn(2, 1, 8, 32, 32)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    plain = build_network(net_cfg(), 1, 2).train()
    assert not any(isinstance(m, torch.nn.Dropout3d) for m in plain.modules())


def test_dlunet_light_net_can_follow_the_cpu_tier_layout():
    """light_res_unet: DLUNet's depthwise-separable net off full resolution (its first stage strided, as res_unet)."""
    from semiseg.config import Plan

    plan = Plan(dataset_name="t", modality="MRI", num_input_channels=1, labels={"background": 0, "a": 1}, target_spacing=[1.0] * 3,
                patch_size=[8, 32, 32], network=net_cfg())
    method = build_method(plan, cfg(method="dlunet", method_params={"light_arch": "light_res_unet"}))
    kept = method.inference_network()
    assert type(kept).__name__ == "LightUNet" and method.inference_network_overrides == {"arch": "light_res_unet"}
    first = next(m for m in kept.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.stride == (2, 2, 2) and first.groups == 1 == first.in_channels  # depthwise on the one input channel
    assert kept(torch.randn(2, 1, 8, 32, 32)).shape == (2, 2, 8, 32, 32)
    with pytest.raises(ValueError, match="light_arch must be one of"):
        build_method(plan, cfg(method="dlunet", method_params={"light_arch": "vnet"}))
    # "plan": DLUNet's training on the plan's network, with that network's own fields (the bounds' dropout) by data
    same = build_method(plan, cfg(method="dlunet", method_params={"light_arch": "plan", "network": {"dropout": 0.5, "dropout_at": "bottleneck"}}))
    assert type(same.inference_network()).__name__ == type(build_network(net_cfg(), 1, 2)).__name__
    assert same.inference_network_overrides == {"dropout": 0.5, "dropout_at": "bottleneck"}
    assert any(isinstance(m, torch.nn.Dropout3d) for m in same.net2.modules())


def test_res_unet_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="deep supervision"):
        build_network(net_cfg(deep_supervision=True), 1, 2)
    with pytest.raises(ValueError, match="one entry per stage"):
        build_network(net_cfg(strides=[[1, 1, 1], [2, 2, 2]]), 1, 2)


# -- bf16 autocast ---------------------------------------------------------------------------------------
def test_precision_is_validated_and_fp16_needs_cuda(run):
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")
    method = build_method(run.plan, cfg(precision="fp16"))
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        method.enable_amp(torch.device("cpu"), True, "fp16")
    method.enable_amp(torch.device("cpu"), True, "auto")
    assert method.autocast_dtype is None and method.scaler is None  # CPU default stays fp32
    method.enable_amp(torch.device("cpu"), False, "bf16")
    assert method.autocast_dtype is None  # amp off wins


def test_bf16_trains_with_fp32_master_weights(run):
    c = cfg(precision="bf16")
    method = build_method(run.plan, c)
    method.enable_amp(torch.device("cpu"), c.amp, c.precision)
    assert method.autocast_dtype == torch.bfloat16 and method.scaler is None
    with method.autocast(torch.device("cpu")):
        out = method.net(torch.randn(2, 1, 8, 32, 32))
    assert out.dtype == torch.bfloat16  # the convolutions ran in bf16
    method.optimize(torch.nn.functional.mse_loss(out.float(), torch.zeros_like(out.float())), "net")  # a bf16 step
    assert all(q.dtype == torch.float32 and q.grad is not None and q.grad.dtype == torch.float32
               for q in method.net.parameters())  # fp32 master weights and gradients


def test_bf16_labels_agree_with_fp32_on_a_trained_model(run, tmp_path):
    """Stated tolerance: on a trained model, bf16-autocast labels agree with fp32 on >= 99% of voxels."""
    model = train(run.plan, cfg(iterations=40), DataSpec(run.cache, LABELLED), tmp_path / "m", device="cpu", progress=False)
    net, _ = load_model(model)
    torch.manual_seed(1)
    from semiseg.data.sampling import PatchSampler, open_cases

    sampler = PatchSampler(open_cases(run.cache, LABELLED, True), run.plan.patch_size, 1.0, "none")
    import numpy as np

    x = torch.from_numpy(np.stack([sampler.sample(np.random.default_rng(i), True)["image"] for i in range(4)])).float()
    with torch.no_grad():
        ref = net(x).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).argmax(1)
    assert ref.unique().numel() > 1  # the model predicts foreground somewhere: the comparison is not trivial
    assert (ref == low).float().mean() >= 0.99


# -- the background worker -------------------------------------------------------------------------------
def test_background_worker_gives_the_same_training_and_resumes_exactly(run, tmp_path):
    spec = DataSpec(run.cache, LABELLED)
    inline = train(run.plan, cfg(), spec, tmp_path / "inline", device="cpu", progress=False)
    worker = train(run.plan, cfg(num_workers=1), spec, tmp_path / "worker", device="cpu", progress=False)
    out = tmp_path / "resumed"
    train(run.plan, cfg(num_workers=1), spec, out, device="cpu", progress=False, stop_after=3)
    resumed = train(run.plan, cfg(num_workers=1), spec, out, device="cpu", progress=False)
    a, b, c = weights(inline), weights(worker), weights(resumed)
    assert len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: the worker's batches differ from the inline ones"
        assert torch.equal(a[k], c[k]), f"{k}: resume with a worker is not exact"


def test_num_workers_is_not_part_of_a_benchmark_key():
    from semiseg.benchmark.harness import _train_key

    assert _train_key(cfg(num_workers=0)) == _train_key(cfg(num_workers=2))
    assert _train_key(cfg(precision="bf16")) != _train_key(cfg())
    assert "precision" not in _train_key(cfg())  # default left out: pieces made before the field stay valid
    with pytest.raises(ValueError, match="num_workers"):
        cfg(num_workers=-1)


# -- thread control --------------------------------------------------------------------------------------
def test_threads_share_the_cores_among_processes():
    assert threads_per_process(1, cores=16) == 16
    assert threads_per_process(3, cores=2) == 1  # never 0, never oversubscribed beyond one each
    assert decide_threads(None, env={}, cores=8) == 8
    assert decide_threads(None, env={"SEMISEG_PROCESSES": "4"}, cores=8) == 2
    assert decide_threads(None, env={"OMP_NUM_THREADS": "3", "SEMISEG_PROCESSES": "4"}, cores=8) == 3  # explicit wins
    assert decide_threads(5, env={"OMP_NUM_THREADS": "3"}, cores=8) == 5
    env = child_env(2, cores=2, base={})
    assert env == {"OMP_NUM_THREADS": "1", "SEMISEG_PROCESSES": "2"}
    with pytest.raises(ValueError, match="--threads"):
        decide_threads(0, env={})
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        decide_threads(None, env={"OMP_NUM_THREADS": "many"})
    with pytest.raises(ValueError, match="SEMISEG_PROCESSES"):
        decide_threads(None, env={"SEMISEG_PROCESSES": "0"})
