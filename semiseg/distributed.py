"""Data-parallel training over several processes (one per GPU), written once for every method.

Launch any training command under ``torchrun``, e.g.
``torchrun --nproc_per_node=4 -m semiseg train RUN --fold all --method cps``: each process reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from its environment, joins the process group (NCCL on
CUDA, Gloo on CPU) and trains on its own share of every batch.

Why not ``DistributedDataParallel``: a method owns one to three networks (CPS's pair, a mean teacher,
MPL's teacher and student) and steps them all through ``Method.optimize``. Averaging the gradients
there, in one flattened all-reduce per optimiser step, makes every method data-parallel without
wrapping its networks, and keeps functional calls (MPL's ``torch.func``) on plain modules.

As in nnU-Net, the configured batch size is the global one and is split over the processes, so a run
on N GPUs follows the same optimisation as one process with the whole batch. Process 0 writes every
file (checkpoints, logs, the final model); the others only compute.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def from_env() -> DistInfo:
    """The job layout torchrun put in the environment."""
    info = DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if info.world < 1 or not 0 <= info.rank < info.world:
        raise ValueError(f"inconsistent torchrun environment: RANK={info.rank}, WORLD_SIZE={info.world}")
    return info


def current() -> DistInfo:
    """This process's place in the running process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return DistInfo()


def setup(device: str | None = None) -> DistInfo:
    """Join the process group torchrun described (once; later calls return the same layout).

    NCCL when this process trains on CUDA, Gloo otherwise. A no-op for a plain single process."""
    info = from_env()
    if not info.active or (dist.is_available() and dist.is_initialized()):
        return current() if info.active else info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_cuda = torch.cuda.is_available() and (device is None or device == "auto" or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each process on its own GPU (``cuda:LOCAL_RANK``); CPU stays CPU."""
    if info.active and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def local_batch(size: int, info: DistInfo, what: str = "batch_size") -> int:
    """This process's share of a global batch; it must split evenly (as nnU-Net requires)."""
    if size % info.world:
        raise ValueError(f"{what} {size} does not split over {info.world} processes: use a multiple of {info.world}")
    return size // info.world


def rank_seed(seed: int, info: DistInfo) -> int:
    """Different data and dropout per process; rank 0 keeps ``seed`` so one process matches a plain run."""
    return seed + 1_000_003 * info.rank


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy process 0's parameters and buffers to every process (start and resume begin identical)."""
    if not current().active:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if isinstance(t, torch.Tensor):
                dist.broadcast(t, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over processes, in one flattened all-reduce.

    A parameter without a gradient on this process counts as zero, so every process reduces the same
    buffer even when a branch was unused on one of them."""
    info = current()
    if not info.active:
        return
    ps = [p for p in params if p.requires_grad]
    if not ps:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in ps])
    dist.all_reduce(flat)
    flat /= info.world
    offset = 0
    for p in ps:
        n = p.numel()
        g = flat[offset : offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


def barrier() -> None:
    if current().active:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[DistInfo]:
    """Process 0 runs the block first (e.g. preprocessing into the shared cache); the others run it
    afterwards and find the work done, so no two processes write the same file."""
    info = current()
    if info.active and not info.is_main:
        dist.barrier()
    try:
        yield info
    finally:
        if info.active and info.is_main:
            dist.barrier()
