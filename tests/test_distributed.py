"""Data-parallel training on CPU with the Gloo backend: two processes that each see half a batch take
exactly the step one process takes on the whole batch, and a torchrun launch of `semiseg train`
trains once, writes once and leaves a loadable model."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semiseg import distributed
from semiseg.config import Plan, TrainConfig
from semiseg.engine.trainer import DataSpec, make_batches
from semiseg.methods.base import Method
from semiseg.run import create_run
from synthetic_data import make_dataset, tiny_overrides

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with Gloo")


class TwoNets(Method):
    """Two small networks stepped together, like CPS: both must stay in sync across processes."""

    name = "test-two-nets"

    def __init__(self) -> None:
        super().__init__(lambda **_: None, 2, {}, TrainConfig(grad_clip=0.5))  # a clip that bites: it must see the mean gradient
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.b = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Conv3d(3, 2, 1))
        self.optimizers = {"a": self.sgd(self.a, lr=0.1), "b": self.sgd(self.b, lr=0.1)}

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a(x) ** 2).mean() + (self.b(x) - 1).abs().mean()


def _batch() -> torch.Tensor:
    return torch.randn(4, 1, 4, 6, 6, generator=torch.Generator().manual_seed(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leave() -> None:
    """Wait for the other process, then exit without C++ teardown: Gloo's destructors can abort
    ("terminate called without an active exception") in a process whose results are already on disk,
    which failed CI once though both processes had finished their work."""
    dist.barrier()  # neither process leaves while the other still uses the group
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    assert (info.rank, info.world) == (rank, world)
    m = TwoNets()
    if rank == 1:  # a different start on rank 1 is overwritten by process 0's weights
        with torch.no_grad():
            m.a.weight.add_(1.0)
    distributed.broadcast_state(m)
    x = _batch()[rank * 2 : rank * 2 + 2]  # this process's half of the global batch
    for _ in range(2):
        m.optimize(m.loss(x), "a", "b")
    torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, Path(out) / f"rank{rank}.pt")
    _leave()


def test_two_processes_take_the_whole_batch_step(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = TwoNets()
    x = _batch()
    start = {k: v.clone() for k, v in single.state_dict().items()}
    for _ in range(2):
        # the mean of the two halves' mean losses is the whole batch's mean loss
        single.optimize(0.5 * (single.loss(x[:2]) + single.loss(x[2:])), "a", "b")
    for k, v in single.state_dict().items():
        assert torch.equal(r0[k], r1[k]), f"{k}: processes diverged"
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6, msg=f"{k}: data-parallel step differs from the whole-batch step")
        assert not torch.equal(v, start[k]), f"{k} did not move"


def _amp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup("cpu")
    m = TwoNets()
    m.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = _batch()[rank * 2 : rank * 2 + 2]
    loss = m.loss(x) * (float("inf") if rank == 1 else 1.0)  # an overflow on one process only
    m.optimize(loss, "a", "b")
    torch.save({"state": {k: v.detach().clone() for k, v in m.state_dict().items()}, "scale": m.scaler.get_scale()},
               Path(out) / f"amp{rank}.pt")
    _leave()


def test_an_overflow_on_one_process_skips_the_step_on_all(tmp_path):
    """Gradients are averaged before the AMP scaler looks for inf/NaN, so no process steps alone."""
    mp.spawn(_amp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"amp{r}.pt") for r in (0, 1))
    start = TwoNets().state_dict()
    for k, v in start.items():
        assert torch.equal(r0["state"][k], v) and torch.equal(r1["state"][k], v), f"{k}: a process stepped on an overflow"
    assert r0["scale"] == r1["scale"] == 512.0  # both backed off once


def test_layout_helpers_without_a_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.from_env() == distributed.DistInfo(0, 1, 0) and not distributed.current().active
    assert distributed.setup("cpu") == distributed.DistInfo()  # plain process: nothing to join
    two = distributed.DistInfo(1, 2, 1)
    assert distributed.local_batch(4, two) == 2
    with pytest.raises(ValueError, match="batch_size 3 does not split over 2"):
        distributed.local_batch(3, two)
    assert distributed.rank_seed(7, distributed.DistInfo()) == 7 and distributed.rank_seed(7, two) != 7
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        distributed.from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        distributed.from_env()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    raw = make_dataset(base / "raw", [f"l{i}" for i in range(4)], ["u0", "u1"], shape=(8, 36, 36))
    return create_run(raw, base / "run", overrides=tiny_overrides([8, 32, 32]), progress=False)


def test_each_process_samples_its_share(tiny_run):
    tiny_run.ensure_preprocessed(labelled=True, unlabelled=True, progress=False)
    cfg = TrainConfig(method="mean-teacher", batch_size=4, unlabelled_batch_size=2)
    spec = DataSpec(tiny_run.cache, [f"l{i}" for i in range(4)], ["u0", "u1"])
    from semiseg.methods import get_method

    method = get_method("mean-teacher")
    batches = [make_batches(tiny_run.plan, cfg, spec, method, distributed.DistInfo(r, 2, r))[0] for r in (0, 1)]
    assert [b["image"].shape[0] for b in batches] == [2, 2] and [b["u_image"].shape[0] for b in batches] == [1, 1]
    assert not torch.equal(batches[0]["image"], batches[1]["image"])  # different patches per process
    whole = make_batches(tiny_run.plan, cfg, spec, method)[0]
    assert whole["image"].shape[0] == 4


@pytest.mark.parametrize("method", ["cps"])
def test_torchrun_semiseg_train(tiny_run, tmp_path, method):
    """The real launch: `torchrun --standalone --nproc_per_node=2 -m semiseg train ...` on CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out_name = f"ddp_{method}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "semiseg", "--quiet",
           "train", str(tiny_run.root), "--fold", "all", "--method", method, "--iterations", "4", "--set", "batch_size=4", "unlabelled_batch_size=2",
           "--name", out_name, "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finals = list(tiny_run.root.rglob("model_final.pt"))
    assert len(finals) == 1 and out_name in str(finals[0]), finals
    folder = finals[0].parent
    log = json.loads((folder / "log.json").read_text())
    assert [h["step"] for h in log["history"]] == [0, 1, 2, 3]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no half-written files
    from semiseg.engine.trainer import load_model

    net, plan = load_model(finals[0])
    assert isinstance(plan, Plan) and sum(p.numel() for p in net.parameters()) > 0
