"""Each method of every committed benchmark is judged against a supervised run of the same network with the same
regularisation (issue 16): a method whose kept network has dropout, or is another architecture, names a baseline
entry that trains exactly that network, so "method - baseline" measures the unlabelled data, not the network."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from semiseg.benchmark.config import ConfigError, load_config
from semiseg.benchmark.runners import SelfTrainRunner
from semiseg.config import TrainConfig
from semiseg.methods import METHODS, build_method
from semiseg.run import create_run
from semiseg.selftrain.pipeline import METHODS as SELFTRAIN, final_model_setup
from synthetic_data import make_dataset

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.yaml"))
DROPOUTS = (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def signature(net: nn.Module) -> tuple:
    """What makes two kept networks the same model class: architecture, parameter shapes, dropout modules."""
    drops = sorted((type(m).__name__, float(m.p)) for m in net.modules() if isinstance(m, DROPOUTS) and m.p > 0)
    return type(net).__name__, tuple(tuple(p.shape) for p in net.parameters()), tuple(drops)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("bl") / "raw", ["l0", "l1"], ["u0"], shape=(8, 32, 32))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_method_names_a_baseline_with_its_network(path: Path, synthetic: Path, tmp_path: Path) -> None:
    try:
        cfg = load_config(path)
    except (ConfigError, FileNotFoundError) as e:
        if "not found" in str(e).lower() or "no such" in str(e).lower() or "does not exist" in str(e).lower():
            pytest.skip(f"{path.name}: its dataset is not here ({e})")
        raise
    overrides = {k: v for k, v in cfg.plan.overrides.items() if k not in ("patch_size", "foreground_oversample")}
    layout = overrides.get("network.features") or overrides.get("network.strides")
    if layout:
        overrides["network.features"] = [4 * 2**i for i in range(len(layout))]  # the same layout, small enough to build quickly
    overrides["patch_size"] = [16, 32, 32]
    run = create_run(synthetic, tmp_path / "run", overrides=overrides, progress=False, base_features=4, max_features=32)
    torch.manual_seed(0)

    def kept(entry) -> tuple:
        tc = TrainConfig(method=entry.method, method_params=dict(entry.params))
        plan = run.plan
        if entry.method in SELFTRAIN:  # its final model: a supervised-engine run built from the entry's SelfTrainConfig
            plan, tc = final_model_setup(plan, SelfTrainRunner().selftrain_config(tc))
        return signature(build_method(plan, tc).inference_network())

    entries = {e.name: e for e in cfg.entries()}
    lower = kept(entries["lower"])
    for e in cfg.methods:
        if e.method == "supervised" or (e.method not in METHODS and e.method not in SELFTRAIN):
            continue
        mine, base = kept(e), kept(entries[e.baseline])
        assert mine == base, (f"{path.name}: '{e.name}' keeps {mine[0]} with dropout {mine[2] or 'none'} but its "
                              f"baseline '{e.baseline}' trains {base[0]} with dropout {base[2] or 'none'}")
        if e.baseline != "lower":
            assert base != lower, f"{path.name}: '{e.name}' names baseline '{e.baseline}', which trains the lower bound's network"
