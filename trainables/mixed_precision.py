"""Mixed precision for a training loop of one's own: the forward pass's autocast and a loss scaler per precision.

What a function trainer gets from ``run.autocast()`` and ``run.scaler(model, optimizer)``, usable
without a sweep too. The loop is written once, the GradScaler way, and runs every precision:

.. code-block:: python

    scaler = loss_scaler(precision, device, model, optimizer)   # before the first step
    with autocast(precision, device):
        loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()

- ``fp32``: no autocast; the scaler is a disabled ``GradScaler`` (``scale`` returns the loss,
  ``step`` steps the optimizer).
- ``bf16``: bfloat16 autocast; no loss scale.
- ``fp16`` (apex O1): float16 autocast; a dynamic loss scale (``GradScaler`` with apex's
  ``min_loss_scale`` floor).
- ``fp16-o2`` (apex O2): the model's weights and activations in float16 (batchnorm in float32),
  its inputs cast to float16 and outputs back to float32; float32 master weights, which the
  scaler puts in the optimizer in place of the model's parameters; a dynamic loss scale.

Each scaler keeps ``last_skipped``: whether the last ``update`` followed an overflowed (skipped)
step, which the step diagnostics report as ``<net>/skipped``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from trainables.precision import DynamicLossScaler, ScalerSettings, _norm_hooks, _to_half_keep_norm, canonical_precision

HALF_MAX = float(torch.finfo(torch.float16).max)
"""The largest float16: a model's float16 copy of an unscaled gradient is clamped to it, never inf."""


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's context: bfloat16 or float16 autocast for bf16 and fp16, nothing for fp32 and fp16-o2."""
    mode = canonical_precision(precision)
    if mode in ("fp32", "fp16-o2"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


class LossScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` with apex's ``min_loss_scale`` floor and ``last_skipped``."""

    def __init__(self, device: str, settings: ScalerSettings, enabled: bool) -> None:
        super().__init__(
            device, init_scale=settings.init_scale, growth_interval=settings.growth_interval, enabled=enabled
        )
        self.min_scale = settings.min_loss_scale
        self.last_skipped = False

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Move the scale as GradScaler does (never below the floor); remember whether the step was skipped."""
        if not self.is_enabled():
            return
        # GradScaler's record of this step's overflow (cleared by update); a fallen scale where it has none
        states = getattr(self, "_per_optimizer_states", {})
        found = [v for state in states.values() for v in state.get("found_inf_per_device", {}).values()]
        before = self.get_scale()
        super().update(new_scale)
        if self.min_scale > 0 and self.get_scale() < self.min_scale:
            super().update(new_scale=self.min_scale)
        self.last_skipped = any(float(v) > 0 for v in found) if found else self.get_scale() < before


class MasterWeightScaler:
    """apex O2 for a loop of one's own, behind GradScaler's methods (``scale``, ``step``, ``update``, ...).

    Converts ``model`` to float16 (batchnorm kept in float32; inputs cast to float16 and outputs
    to float32 by hooks), gives ``optimizer`` float32 master copies of the parameters in their
    place (so build the optimizer first and create this before its first step), and on each step
    moves the model's scaled float16 gradients to the masters unscaled, steps them unless they
    overflowed, and copies them back into the model.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, settings: ScalerSettings) -> None:
        if optimizer.state:
            raise ValueError("fp16-o2: create the scaler before the optimizer's first step")
        _to_half_keep_norm(model)
        _norm_hooks(model)
        # only while the model is float16: a float32 copy of it (an EMA) keeps these hooks and runs as it is
        model.register_forward_pre_hook(lambda module, args: _cast(args, torch.float16) if _half(module) else None)
        model.register_forward_hook(lambda module, _a, output: _cast(output, torch.float32) if _half(module) else None)
        self.params: list[nn.Parameter] = []
        self.master: list[nn.Parameter] = []
        for group in optimizer.param_groups:
            half = list(group["params"])
            masters = [nn.Parameter(p.detach().clone().float(), requires_grad=p.requires_grad) for p in half]
            self.params += half
            self.master += masters
            group["params"] = masters
        self.dynamic = DynamicLossScaler(settings)
        self.given: list[tuple[torch.Tensor | None, int | None]] = []
        """The float16 gradients ``unscale_`` gave the model, with their version (a change shows)."""
        self.unscaled = False
        self.overflow = False
        self.last_skipped = False

    def is_enabled(self) -> bool:
        """A loss scale is always in use."""
        return True

    def get_scale(self) -> float:
        """The current loss scale."""
        return self.dynamic.scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss in float32 times the scale, to backward through."""
        return loss.float() * self.dynamic.scale

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Move the model's gradients to the master weights, unscaled (once per step).

        The model's gradients become a float16 copy of the unscaled ones, so a loop that reads or
        clips ``model.parameters()`` between ``unscale_`` and ``step`` (``clip_grad_norm_``, as it
        would without O2) sees the real gradients, and what it changes there reaches the masters.
        """
        if self.unscaled:
            return
        inverse = 1.0 / self.dynamic.scale
        self.given = []
        for p, m in zip(self.params, self.master, strict=True):
            m.grad = None if p.grad is None else p.grad.float() * inverse
            p.grad = None if m.grad is None else m.grad.clamp(-HALF_MAX, HALF_MAX).to(p.dtype)
            self.given.append((p.grad, None if p.grad is None else p.grad._version))
        grads = [m.grad for m in self.master if m.grad is not None]
        total = float(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)) if grads else 0.0
        self.overflow = not math.isfinite(total)
        self.unscaled = True

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step the master weights unless the gradients overflowed; copy them into the model.

        A model gradient the loop changed after ``unscale_`` (clipped, in place or replaced)
        replaces its master's gradient first.
        """
        self.unscale_(optimizer)
        for p, m, (grad, version) in zip(self.params, self.master, self.given, strict=True):
            if p.grad is not grad or (grad is not None and grad._version != version):
                m.grad = _changed_master_grad(p.grad, m.grad)
        if not self.overflow:
            optimizer.step()
            with torch.no_grad():
                for p, m in zip(self.params, self.master, strict=True):
                    p.copy_(m.to(p.dtype))

    def update(self, new_scale: float | None = None) -> None:
        """Halve the scale after an overflow, grow it after enough clean steps (or set ``new_scale``).

        Clears the model's gradients: the next backward starts from none, whatever the loop zeroes
        (its optimizer holds the masters).
        """
        self.dynamic.update(self.overflow)
        if new_scale is not None:
            self.dynamic.scale = float(new_scale)
        self.last_skipped, self.unscaled = self.overflow, False
        for p in self.params:
            p.grad = None
        self.given = []

    def state_dict(self) -> dict[str, Any]:
        """The loss scale and the master weights."""
        return {"scaler": self.dynamic.state_dict(), "master": [m.detach().clone() for m in self.master]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.dynamic.load_state_dict(state["scaler"])
        with torch.no_grad():
            for m, saved in zip(self.master, state["master"], strict=True):
                m.copy_(saved)


def _changed_master_grad(changed: torch.Tensor | None, master: torch.Tensor | None) -> torch.Tensor | None:
    """The master's gradient after the loop changed the model's float16 copy of it into ``changed``.

    A copy scaled as a whole (``clip_grad_norm_``) scales the float32 master by the same factor,
    read off the copy, so no precision is lost to float16; any other change is taken as it is.
    """
    if changed is None or master is None:
        return None if changed is None else changed.float()
    now = changed.float()
    square = float((master * master).sum())
    factor = float((now * master).sum()) / square if square > 0 else math.nan
    if math.isfinite(factor):
        scaled = (master * factor).clamp(-HALF_MAX, HALF_MAX).to(changed.dtype).float()
        if torch.allclose(now, scaled, rtol=1e-2, atol=float(now.abs().max()) * 1e-3):
            return master * factor
    return now


def _half(module: nn.Module) -> bool:
    """Whether ``module`` holds float16 weights (its batchnorm, kept in float32, aside)."""
    return any(p.dtype == torch.float16 for p in module.parameters())


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if torch.is_tensor(value) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def loss_scaler(
    precision: str,
    device: torch.device | str,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    settings: ScalerSettings | None = None,
) -> LossScaler | MasterWeightScaler:
    """The loss scaler for ``precision``: a disabled GradScaler (fp32, bf16), a dynamic one (fp16), or apex O2's.

    fp16-o2 needs the ``model`` and its ``optimizer`` (it converts the one and re-points the other).
    """
    mode = canonical_precision(precision)
    settings = settings or ScalerSettings()
    if mode == "fp16-o2":
        if model is None or optimizer is None:
            raise ValueError("fp16-o2 needs the model and its optimizer: run.scaler(model, optimizer)")
        return MasterWeightScaler(model, optimizer, settings)
    return LossScaler(torch.device(device).type, settings, enabled=mode == "fp16")
