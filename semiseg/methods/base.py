"""The contract between the training engine and a method.

The engine owns the loop, learning-rate schedule, AMP, checkpoints, logging and progress. A method
owns its networks and optimisers and implements the one thing that differs between algorithms:
``training_step``. A batch is a dict of tensors:

- ``image``  (B, C, Z, Y, X) float, labelled images (weak/teacher augmentation)
- ``label``  (B, 1, Z, Y, X) long, their labels
- ``u_image`` (Bu, C, Z, Y, X) float, unlabelled images; present only when ``needs_unlabelled``

Strong views of the unlabelled patches, where a method wants them, are made by the method itself
(semiseg.data.strong_views). A method declares its parameters as a dataclass ``Params``
(semiseg.methods.params), checked whenever the method is built; ``self.params`` is that dataclass.
Every method also takes ``network`` (NetworkConfig fields replacing the plan's for all of its networks), so a
method trains, say, the bounds' dropout network by data, not by a variant in code.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from semiseg import distributed
from semiseg.config import NetworkConfig
from semiseg.methods.params import NoParams, parse_params
from semiseg.methods.rampup import poly_lr
from semiseg.precision import warn_if_slow_bf16


@dataclass
class StepContext:
    step: int  # 0-based optimiser step on the labelled stream
    total_steps: int
    device: torch.device

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


DIAGNOSTIC_EVERY = 50  # steps between gradient-share measurements (Method.gradient_share)
NetFactory = Callable[..., nn.Module]  # keyword overrides of NetworkConfig fields -> network
NETWORK_PARAM = "network"  # the params key every method takes: NetworkConfig fields replacing the plan's


def network_param(params: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``params['network']`` checked as NetworkConfig fields ({} without one); ValueError naming the bad keys."""
    given = params.get(NETWORK_PARAM, {}) if isinstance(params, Mapping) else {}
    if not isinstance(given, Mapping):
        raise ValueError(f"method '{method}': params.network must be a mapping of NetworkConfig fields, got {given!r}")
    known = {f.name for f in dataclasses.fields(NetworkConfig)}
    if set(given) - known:
        raise ValueError(f"method '{method}': params.network must map NetworkConfig fields ({', '.join(sorted(known))}); "
                         f"got {sorted(set(given) - known)}")
    return dict(given)


class Method(nn.Module):
    """Base class: subclasses register networks as attributes and optimisers in ``self.optimizers``."""

    name: ClassVar[str] = "base"
    needs_unlabelled: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams  # the method's parameters: a dataclass of names, types and defaults
    own_network_fields: ClassVar[tuple[str, ...]] = ()  # NetworkConfig fields its own params decide (network_overrides)

    def __init__(self, make_net: NetFactory, num_classes: int, params: Mapping[str, Any], train_cfg: Any):
        super().__init__()
        self.num_classes = num_classes
        self.params: Any = self.parse_params(params)
        # NetworkConfig fields of the networks (and the kept one) where they differ from the plan's: params.network,
        # then the method's own (network_overrides); a field set by both is refused by parse_params
        self.network_params = network_param(params, self.name)
        self.inference_network_overrides: dict[str, Any] = {**self.network_params, **self.network_overrides()}
        self.cfg = train_cfg
        # every network a method builds: self.make_net() (a keyword given there still wins)
        self.make_net: NetFactory = functools.partial(make_net, **self.inference_network_overrides)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scaler: torch.amp.GradScaler | None = None  # set by the engine on CUDA with AMP
        self.autocast_dtype: torch.dtype | None = None

    # -- helpers shared by every method -------------------------------------------------------
    def sgd(self, module: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """nnU-Net's optimiser: SGD, Nesterov momentum 0.99."""
        return torch.optim.SGD(
            module.parameters(),
            lr=lr if lr is not None else self.cfg.lr,
            momentum=self.cfg.momentum,
            nesterov=True,
            weight_decay=self.cfg.weight_decay,
        )

    def enable_amp(self, device: torch.device, enabled: bool = True, precision: str = "auto") -> None:
        """The engine's mixed precision (fp32 master weights either way): on CUDA fp16 autocast with a grad
        scaler ("auto"/"fp16") or bf16 autocast; on CPU bf16 autocast when asked ("bf16", worth it where the
        CPU has AVX512-BF16/AMX), else fp32."""
        self.scaler, self.autocast_dtype = None, None
        if not enabled or precision == "fp32":
            return
        if precision == "bf16":
            self.autocast_dtype = torch.bfloat16
            warn_if_slow_bf16(device)
        elif device.type == "cuda":  # auto or fp16
            self.scaler = torch.amp.GradScaler("cuda")
            self.autocast_dtype = torch.float16
        elif precision == "fp16":
            raise ValueError(f"precision fp16 needs CUDA (device is {device.type}); use bf16 on the CPU")

    def autocast(self, device: torch.device):
        """Mixed precision where the engine enabled it (CUDA fp16, bf16), a no-op elsewhere."""
        if self.autocast_dtype is None:
            return torch.autocast(device_type=device.type, enabled=False)
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def optimize(self, loss: torch.Tensor, *names: str) -> None:
        """Backward + clipped step of the named optimisers, through the AMP grad scaler if any.

        Under torchrun the gradients are averaged over processes here, before clipping, which makes
        every method data-parallel (semiseg.distributed)."""
        opts = [self.optimizers[n] for n in names]
        for o in opts:
            o.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        # averaged while still scaled, so every process's scaler sees the same inf/NaN and skips alike
        distributed.average_gradients(p for o in opts for g in o.param_groups for p in g["params"])
        if self.scaler is not None:
            for o in opts:
                self.scaler.unscale_(o)
        for o in opts:
            params = [p for g in o.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            if self.scaler is not None:
                self.scaler.step(o)
            else:
                o.step()
        if self.scaler is not None:
            self.scaler.update()

    def gradient_share(self, sup: torch.Tensor, unsup: torch.Tensor, module: nn.Module, ctx: StepContext,
                       name: str = "grad_share") -> dict[str, float]:
        """Every ``DIAGNOSTIC_EVERY`` steps, ||grad of the (weighted) unsupervised term|| / ||grad of the supervised
        term|| over ``module``'s parameters, so an inert (~0) or runaway (>> 1) unlabelled term shows in the log
        and curves. Costs two extra backward passes on those steps; changes no gradient the step applies."""
        if ctx.step % DIAGNOSTIC_EVERY or not unsup.requires_grad or not sup.requires_grad:
            return {}
        params = [q for q in module.parameters() if q.requires_grad]

        def norm(loss: torch.Tensor) -> float:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))

        s = norm(sup)
        return {name: norm(unsup) / s} if s > 0 else {}  # no supervised gradient: no share to state

    @classmethod
    def parse_params(cls, params: Mapping[str, Any]) -> Any:
        """``method_params`` as this method's ``Params``; unknown names, wrong types and bad values are refused
        naming the valid ones (called wherever a method is built, and by the benchmark at load). ``network`` is
        every method's (:func:`network_param`); it may not set a field the method's own params set (MT's dropout)."""
        network = network_param(params, cls.name)
        rest = {k: v for k, v in params.items() if k != NETWORK_PARAM} if isinstance(params, Mapping) else params
        parsed = parse_params(cls.Params, rest, cls.name)
        if network:
            own = set(cls.own_network_fields)
            if own & set(network):
                raise ValueError(f"method '{cls.name}': params.network sets {sorted(own & set(network))}, which the "
                                 f"method's own params set; set them there ({cls.name}'s {', '.join(cls.own_network_fields)})")
        return parsed

    def network_overrides(self) -> dict[str, Any]:
        """NetworkConfig fields (from ``self.params``) where this method's networks differ from the plan's."""
        return {}

    # -- the contract -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        raise NotImplementedError

    def inference_network(self) -> nn.Module:
        """The single network kept for prediction."""
        raise NotImplementedError

    def learning_rate(self, optimizer: str, base: float, step: int, total: int) -> float:
        """The LR of one optimiser at ``step``: poly over the whole run; a method with phases of its own (MPL's
        fine-tune) restarts it there."""
        return poly_lr(base, step, total, self.cfg.poly_exponent)

    def extra_state(self) -> dict[str, Any]:
        """Non-tensor state that a checkpoint must carry (e.g. running averages)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, ctx: StepContext) -> None:
        """Called every ``semiseg.config.EPOCH_LENGTH`` steps (250, nnU-Net's epoch)."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls
