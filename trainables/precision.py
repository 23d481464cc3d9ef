"""Mixed-precision modes shared by every trainer.

``fp32`` trains in full precision; ``bf16`` runs the forward pass under bfloat16 autocast;
``fp16`` runs it under float16 autocast with a dynamic loss scale (``torch.amp.GradScaler``),
which is what apex calls opt level O1. ``O0`` and ``O1`` are accepted as aliases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
ALIASES = {"o0": "fp32", "o1": "fp16", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def canonical_precision(name: str) -> str:
    """Return the canonical precision name for ``name`` (``O1`` -> ``fp16``), or raise ValueError."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRECISIONS:
        accepted = ", ".join([*PRECISIONS, "O0", "O1"])
        raise ValueError(f"unknown precision {name!r} (accepted: {accepted})")
    return key


def precision_problem(name: str, device: torch.device) -> str | None:
    """Return why ``name`` cannot run on ``device``, or None when it can."""
    try:
        mode = canonical_precision(name)
    except ValueError as exc:
        return str(exc)
    if device.type == "cuda" and mode == "bf16" and not torch.cuda.is_bf16_supported():
        return f"bf16 is not supported on {torch.cuda.get_device_name(device)}"
    return None


@dataclass
class StepStats:
    """What one optimizer step did: the loss scale after it, whether it was skipped, grad norm."""

    loss_scale: float
    skipped: bool
    grad_norm: float


class Precision:
    """Autocast and loss scaling for one precision mode on one device."""

    def __init__(
        self, mode: str, device: torch.device, init_scale: float = 65536.0, growth_interval: int = 2000
    ) -> None:
        self.mode = canonical_precision(mode)
        self.device = device
        self.scaler = torch.amp.GradScaler(
            device.type,
            init_scale=init_scale,
            growth_interval=growth_interval,
            enabled=self.mode == "fp16",
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager for the forward pass and the loss."""
        if self.mode == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> StepStats:
        """Backward, unscale, measure the gradient norm, step and update the loss scale."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(optimizer)
        self.scaler.update()
        scale_after = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        grad_norm = float(norm)
        skipped = scale_after < scale_before
        return StepStats(loss_scale=scale_after, skipped=skipped, grad_norm=grad_norm)

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (empty when no scaler is in use)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the loss scaler's state."""
        if state:
            self.scaler.load_state_dict(state)
