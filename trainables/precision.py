"""Mixed-precision modes shared by every trainer, one :class:`AmpNetwork` per network.

- ``fp32``: full precision.
- ``bf16``: forward pass under bfloat16 autocast.
- ``fp16`` (apex O1): forward pass under float16 autocast, dynamic loss scale (GradScaler).
- ``fp16-o2`` (apex O2): the model's weights and activations in float16 (batchnorm kept in
  float32), float32 master weights for the optimizer, dynamic loss scale.

``O0``/``O1``/``O2`` are accepted as aliases. The loss scaler's initial scale, growth interval
and minimum (apex's ``min_loss_scale``) are ordinary parameters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables.data_parallel import average_gradients, broadcast_tensors, is_distributed

PRECISIONS = ("fp32", "bf16", "fp16", "fp16-o2")
ALIASES = {
    "o0": "fp32",
    "o1": "fp16",
    "o2": "fp16-o2",
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "amp": "fp16",
}


def canonical_precision(name: str) -> str:
    """Return the canonical precision name for ``name`` (``O1`` -> ``fp16``), or raise ValueError."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRECISIONS:
        accepted = ", ".join([*PRECISIONS, "O0", "O1", "O2"])
        raise ValueError(f"unknown precision {name!r} (accepted: {accepted})")
    return key


def precision_problem(name: str, device: torch.device) -> str | None:
    """Return why ``name`` cannot run on ``device``, or None when it can."""
    try:
        mode = canonical_precision(name)
    except ValueError as exc:
        return str(exc)
    # a GPU this process cannot see (a driver without one, sending trials to GPU nodes): not judged here
    if device.type == "cuda" and torch.cuda.is_available() and mode == "bf16" and not torch.cuda.is_bf16_supported():
        return f"bf16 is not supported on {torch.cuda.get_device_name(device)}"
    if device.type not in ("cpu", "cuda") and mode != "fp32":
        return f"{mode} is not supported on device {device.type!r} (use fp32)"
    return None


@dataclass
class ScalerSettings:
    """Dynamic loss scale settings (used by fp16 and fp16-o2)."""

    init_scale: float = 65536.0
    growth_interval: int = 2000
    min_loss_scale: float = 0.0


@dataclass
class StepStats:
    """One optimizer step: loss scale after it, whether it was skipped, gradient norms."""

    loss_scale: float
    skipped: bool
    grad_norm: float
    first_grad_norm: float = 0.0
    last_grad_norm: float = 0.0


class DynamicLossScaler:
    """Apex-style dynamic loss scale for fp16 master-weight training (O2).

    Halves the scale on an overflow (never below ``min_loss_scale``) and doubles it after
    ``growth_interval`` clean steps, like ``torch.amp.GradScaler``.
    """

    def __init__(self, settings: ScalerSettings) -> None:
        self.scale = float(settings.init_scale)
        self.growth_interval = settings.growth_interval
        self.min_scale = settings.min_loss_scale
        self.good_steps = 0

    def update(self, overflow: bool) -> None:
        """Move the scale after a step."""
        if overflow:
            self.scale = max(self.scale * 0.5, self.min_scale)
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= 2.0
                self.good_steps = 0

    def state_dict(self) -> dict[str, Any]:
        """The scale and the clean-step counter."""
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


def _to_half_keep_norm(model: nn.Module) -> nn.Module:
    model.half()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.float()
    return model


def _norm_hooks(model: nn.Module) -> None:
    """Batchnorm kept in float32 inside a float16 model: its input cast up, its output back to float16.

    Only when its input came in float16: a copy of the model converted back to float32 (an EMA
    made with ``copy.deepcopy(model).float()``, which copies the hooks) runs in float32 throughout.
    """

    def before(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        module.__dict__["_o2_half_input"] = any(torch.is_tensor(a) and a.dtype == torch.float16 for a in args)
        return tuple(a.float() if torch.is_tensor(a) else a for a in args)

    def after(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output.half() if module.__dict__.get("_o2_half_input", True) else output

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(before)
            module.register_forward_hook(after)


class AmpNetwork:
    """One network, its optimizer and its loss scaler, in one precision mode.

    Args:
        model: the network (moved to ``device``; converted to fp16 under fp16-o2).
        make_optimizer: builds the optimizer from a parameter list (the fp32 master copies
            under fp16-o2, the model's own parameters otherwise).
        mode: a precision name or alias.
        device: where the model runs.
        scaler: loss scale settings for fp16 and fp16-o2.
    """

    def __init__(
        self,
        model: nn.Module,
        make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        mode: str,
        device: torch.device,
        scaler: ScalerSettings | None = None,
    ) -> None:
        self.mode = canonical_precision(mode)
        self.device = device
        settings = scaler or ScalerSettings()
        self.min_scale = settings.min_loss_scale
        self.model = model.to(device)
        broadcast_tensors([*self.model.parameters(), *self.model.buffers()])  # every rank starts from rank 0's
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.first_index, self.last_index = _weight_indices(self.params)
        if self.mode == "fp16-o2":
            _to_half_keep_norm(self.model)
            _norm_hooks(self.model)
            self.master = [nn.Parameter(p.detach().clone().float()) for p in self.params]
            self.optimizer = make_optimizer(self.master)
            self.o2_scaler: DynamicLossScaler | None = DynamicLossScaler(settings)
        else:
            self.master = self.params
            self.optimizer = make_optimizer(self.params)
            self.o2_scaler = None
        self.grad_scaler = torch.amp.GradScaler(
            device.type,
            init_scale=settings.init_scale,
            growth_interval=settings.growth_interval,
            enabled=self.mode == "fp16",
        )

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype inputs must have: float16 under fp16-o2, float32 otherwise."""
        return torch.float16 if self.mode == "fp16-o2" else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for this network's forward pass and loss."""
        if self.mode in ("fp32", "fp16-o2"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @property
    def loss_scale(self) -> float:
        """The current loss scale (1.0 where none is used)."""
        if self.o2_scaler is not None:
            return self.o2_scaler.scale
        return float(self.grad_scaler.get_scale()) if self.grad_scaler.is_enabled() else 1.0

    def zero_grad(self) -> None:
        """Clear this network's gradients."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Backward through the (scaled) loss."""
        if self.o2_scaler is not None:
            (loss.float() * self.o2_scaler.scale).backward(retain_graph=retain_graph)
        else:
            self.grad_scaler.scale(loss).backward(retain_graph=retain_graph)

    def step(self, diagnostics: bool = True) -> StepStats:
        """Unscale, measure gradient norms, step (or skip on overflow), update the loss scale."""
        if self.o2_scaler is not None:
            return self._step_o2(diagnostics)
        average_gradients(self.params)  # under a process group: every rank steps on the mean gradient
        self.grad_scaler.unscale_(self.optimizer)
        stats = self._norms(self.params, diagnostics)
        before = self.loss_scale
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if self.grad_scaler.is_enabled() and self.grad_scaler.get_scale() < self.min_scale:
            self.grad_scaler.update(new_scale=self.min_scale)
        stats.loss_scale = self.loss_scale
        stats.skipped = stats.loss_scale < before or (
            self.grad_scaler.is_enabled() and not math.isfinite(stats.grad_norm)
        )
        self._sync_buffers()
        return stats

    def _step_o2(self, diagnostics: bool) -> StepStats:
        assert self.o2_scaler is not None
        inverse = 1.0 / self.o2_scaler.scale
        for p, m in zip(self.params, self.master, strict=True):
            m.grad = None if p.grad is None else p.grad.float() * inverse
        average_gradients(self.master)  # in fp32, after unscaling
        stats = self._norms(self.master, diagnostics)
        overflow = not math.isfinite(stats.grad_norm)
        if not overflow:
            self.optimizer.step()
            with torch.no_grad():
                for p, m in zip(self.params, self.master, strict=True):
                    p.copy_(m.to(p.dtype))
        self.o2_scaler.update(overflow)
        stats.loss_scale, stats.skipped = self.o2_scaler.scale, overflow
        self._sync_buffers()
        return stats

    def _sync_buffers(self) -> None:
        """Under a process group, rank 0's buffers (batchnorm statistics) everywhere, as DDP does."""
        if is_distributed():
            broadcast_tensors(self.model.buffers())

    def _norms(self, params: list[nn.Parameter], diagnostics: bool) -> StepStats:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return StepStats(self.loss_scale, False, 0.0)
        total = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
        stats = StepStats(self.loss_scale, False, total)
        if diagnostics:
            stats.first_grad_norm = _norm(params[self.first_index].grad)
            stats.last_grad_norm = _norm(params[self.last_index].grad)
        return stats

    def last_weight_norm(self) -> float:
        """Norm of the last layer's weight (runaway weights show here first)."""
        return _norm(self.master[self.last_index].detach())

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, master weights and loss scaler."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
        }
        if self.o2_scaler is not None:
            state["master"] = [m.detach().clone() for m in self.master]
            state["o2_scaler"] = self.o2_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        if self.o2_scaler is not None:
            with torch.no_grad():
                for m, saved in zip(self.master, state["master"], strict=True):
                    m.copy_(saved)
            self.o2_scaler.load_state_dict(state["o2_scaler"])


def _weight_indices(params: list[nn.Parameter]) -> tuple[int, int]:
    """Indices of the first and last weight matrices/kernels (biases skipped)."""
    weights = [i for i, p in enumerate(params) if p.dim() >= 2] or list(range(len(params)))
    return weights[0], weights[-1]


def _norm(tensor: torch.Tensor | None) -> float:
    return 0.0 if tensor is None else float(torch.linalg.vector_norm(tensor.float()))
