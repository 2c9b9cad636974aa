"""V-Net and DLUNet's light U-Net: shapes, topology, parameter budget, MC-dropout behaviour."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from semiseg.config import NetworkConfig
from semiseg.networks import build_network, main_output
from semiseg.networks.light_unet import LightUNet, ResidualSeparableConv
from semiseg.networks.vnet import VNet


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_light_unet_isotropic_shape():
    torch.manual_seed(0)
    net = build_network(NetworkConfig(arch="light_unet", features=[4, 8, 16, 32]), 1, 3)
    assert isinstance(net, LightUNet)
    out = net(torch.randn(1, 1, 16, 32, 32))
    assert out.shape == (1, 3, 16, 32, 32)


def test_light_unet_anisotropic_strides_and_kernels():
    torch.manual_seed(0)
    cfg = NetworkConfig(
        arch="light_unet", features=[4, 8, 16], kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    )
    net = build_network(cfg, 2, 3)
    bottleneck = []
    net.encoder[-1].register_forward_hook(lambda m, i, o: bottleneck.append(o.shape))
    out = net(torch.randn(2, 2, 8, 32, 32))
    assert out.shape == (2, 3, 8, 32, 32)
    # z halved once (8 -> 4), y/x halved twice (32 -> 8)
    assert bottleneck[0] == (2, 16, 4, 8, 8)


def test_light_unet_uses_separable_residual_convs():
    net = LightUNet(NetworkConfig(features=[4, 8, 16]), 1, 2)
    layers = [m for m in net.modules() if isinstance(m, ResidualSeparableConv)]
    assert len(layers) == 2 * 3 + 2 * 2  # two per encoder stage and per decoder stage
    for layer in layers:
        assert layer.depthwise.groups == layer.depthwise.in_channels
        assert layer.pointwise.kernel_size == (1, 1, 1)
    full_convs = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.groups == 1 < m.in_channels and m.kernel_size != (1, 1, 1)]
    assert full_convs == []
    # residual: with zeroed conv branches, an identity-shortcut layer passes act(x) through
    same = layers[1]
    assert isinstance(same.shortcut, nn.Identity)
    nn.init.zeros_(same.pointwise.weight)
    nn.init.zeros_(same.pointwise.bias)
    x = torch.randn(1, 4, 2, 4, 4)
    assert torch.allclose(same(x), nn.functional.leaky_relu(x, 0.01))


def test_light_unet_much_smaller_than_unet():
    features = [8, 16, 32, 64]
    unet = build_network(NetworkConfig(arch="unet", features=features), 1, 3)
    light = build_network(NetworkConfig(arch="light_unet", features=features), 1, 3)
    assert _n_params(light) < _n_params(unet) / 3


def test_light_unet_deep_supervision_convention():
    torch.manual_seed(0)
    net = build_network(NetworkConfig(arch="light_unet", features=[4, 8, 16, 32], deep_supervision=True), 1, 3)
    x = torch.randn(1, 1, 16, 32, 32)
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == 3  # main + 2 aux, as UNet with 4 stages
    assert all(o.shape == (1, 3, 16, 32, 32) for o in outs)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), main_output(outs))


def test_vnet_forward_shape_and_factory():
    torch.manual_seed(0)
    net = build_network(NetworkConfig(arch="vnet", features=[4]), 1, 2)
    assert isinstance(net, VNet)
    out = net(torch.randn(2, 1, 16, 32, 32))
    assert out.shape == (2, 2, 16, 32, 32)
    with pytest.raises(ValueError):
        net(torch.randn(2, 1, 8, 32, 32))
    with pytest.raises(ValueError):
        build_network(NetworkConfig(arch="vnet", features=[4], deep_supervision=True), 1, 2)


def test_vnet_size_matches_ssl4mis():
    # the UA-MT / SSL4MIS V-Net (16 base filters, 1 input channel, 2 classes) has 9.44M parameters
    net = build_network(NetworkConfig(arch="vnet", features=[16]), 1, 2)
    assert abs(_n_params(net) - 9.44e6) / 9.44e6 < 0.01


def test_vnet_mc_dropout_active_only_in_train_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 16, 16, 16)
    net = build_network(NetworkConfig(arch="vnet", features=[4], dropout=0.5), 2, 3)
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    plain = build_network(NetworkConfig(arch="vnet", features=[4], dropout=0.0), 2, 3).train()
    assert torch.allclose(plain(x), plain(x))


def test_unet_bottleneck_dropout_is_mc_dropout_and_survives_a_teacher_copy():
    """dropout_at='bottleneck' (UA-MT's placement on the U-Net): stochastic in train mode only, no per-block
    dropout left in DynUNet, and a deepcopy (a mean teacher) follows its own train/eval mode."""
    import copy

    cfg = NetworkConfig(features=[4, 8, 16], dropout=0.5, dropout_at="bottleneck")
    net = build_network(cfg, 1, 3)
    assert not [m for m in net.net.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout3d))]
    blocks = build_network(NetworkConfig(features=[4, 8, 16], dropout=0.5), 1, 3)  # auto: DynUNet's every-block dropout
    assert [m for m in blocks.net.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout3d))]
    x = torch.randn(2, 1, 8, 16, 16)
    net.train()
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x))
        teacher = copy.deepcopy(net).eval()
        assert torch.equal(teacher(x), teacher(x))  # the copy's hooks use the copy's (eval) dropout
        assert not torch.allclose(net(x), net(x))  # the original is still in train mode
        net.eval()
        assert torch.equal(net(x), net(x))
    assert set(net.state_dict()) == set(build_network(NetworkConfig(features=[4, 8, 16]), 1, 3).state_dict())
    with pytest.raises(ValueError, match="dropout_at"):
        build_network(NetworkConfig(features=[4, 8, 16], dropout=0.5, dropout_at="everywhere"), 1, 3)
    with pytest.raises(ValueError, match="unet only"):
        build_network(NetworkConfig(arch="vnet", features=[4], dropout=0.5, dropout_at="blocks"), 1, 3)


def test_cpu_depthwise_path_is_the_same_conv_in_fp32_channels_last():
    """The CPU fast path of the depthwise conv (fp32, channels-last, outside autocast) computes what the
    conv computes, keeps fp32 under bf16 autocast, and leaves the network's logits contiguous."""
    from semiseg.networks.light_unet import depthwise_conv

    torch.manual_seed(0)
    conv = nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False)
    x = torch.randn(2, 4, 6, 8, 8)
    assert torch.allclose(depthwise_conv(conv, x), conv(x), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise_conv(conv, x.bfloat16())
        plain = conv(x)
    assert out.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert torch.allclose(out, conv(x.bfloat16().float()), atol=1e-5)  # fp32 arithmetic on the bf16 input
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    # gradients through the format change equal the plain conv's
    x.requires_grad_(True)
    depthwise_conv(conv, x).square().sum().backward()
    got_x, got_w = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    conv(x).square().sum().backward()
    assert torch.allclose(got_x, x.grad, atol=1e-4) and torch.allclose(got_w, conv.weight.grad, atol=1e-3)
    # a model cast to another dtype (bf16 inference, double for gradcheck) runs the conv in that dtype
    for dtype in (torch.bfloat16, torch.float64):
        cast = nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False).to(dtype)
        assert depthwise_conv(cast, x.detach().to(dtype)).dtype == dtype
    net = build_network(NetworkConfig(arch="light_res_unet", features=[4, 8, 16]), 1, 2).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(torch.randn(2, 1, 8, 16, 16))
    assert logits.is_contiguous() and logits.shape == (2, 2, 8, 16, 16)


def test_light_unet_exports_to_onnx_with_the_cpu_depthwise_path(tmp_path):
    """The light net is the one people deploy: the export takes the plain depthwise conv (ONNX has no memory
    formats; without that guard the exporter refuses), and its graph gives the CPU fast path's logits."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = build_network(NetworkConfig(arch="light_res_unet", features=[4, 8, 16]), 1, 2).eval()
    x = torch.randn(2, 1, 8, 16, 16)
    path = tmp_path / "light.onnx"
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"], output_names=["logits"])
        ref = net(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert abs(got - ref).max() < 1e-4
