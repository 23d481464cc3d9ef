"""Per-step diagnostics every trainer emits, under shared names the engine watches.

Names (``trainables.protocol.STEP_CONTRACT``): ``loss`` (the main network's total),
``loss/<term>`` for each loss term, and per network ``<net>/lr`` (the learning rate),
``<net>/loss_scale``, ``<net>/skipped``, ``<net>/grad_norm``, ``<net>/grad_norm_first``,
``<net>/grad_norm_last``, ``<net>/weight_norm_last``; GANs add ``d/real_mean`` and
``d/fake_mean``; ``output_mean``, ``output_std`` and ``output_spread`` describe the generated images.

The built-in trainers fill them from their :class:`~trainables.precision.AmpNetwork`
(:func:`network_metrics`); a loop of one's own, with a plain optimizer and perhaps a
``GradScaler``, gets them from :func:`loss_metrics` and a :class:`StepProbe` (what a function
trainer's ``run.step`` uses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from trainables.precision import AmpNetwork, StepStats
from trainables.protocol import StepHook

__all__ = ["EpochAverages", "StepHook", "StepProbe", "loss_metrics", "network_metrics", "output_metrics"]


def network_metrics(name: str, net: AmpNetwork, stats: StepStats, full: bool) -> dict[str, float]:
    """One network's step diagnostics; the per-layer ones only when ``full``."""
    metrics = {
        f"{name}/lr": float(net.optimizer.param_groups[0]["lr"]),
        f"{name}/loss_scale": stats.loss_scale,
        f"{name}/skipped": float(stats.skipped),
        f"{name}/grad_norm": stats.grad_norm,
    }
    if full:
        metrics[f"{name}/grad_norm_first"] = stats.first_grad_norm
        metrics[f"{name}/grad_norm_last"] = stats.last_grad_norm
        metrics[f"{name}/weight_norm_last"] = net.last_weight_norm()
    return metrics


def output_metrics(output: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation of a batch of generated images, and how much they differ from each other.

    Collapse shows as a constant output (``output_std`` 0) or, when the output keeps some colour or
    pattern, as the same output for every sample of the batch: ``output_spread``, the standard
    deviation across the batch of each value, averaged, is then 0 (sent for a batch of 2 or more
    images, ``(N, C, H, W)``: a single ``(C, H, W)`` image has no batch to compare). Both deviations
    are unbiased (``torch.std``'s); one device sync for the three.
    """
    detached = output.detach()
    batched = detached.dim() >= 4 and detached.shape[0] >= 2
    if detached.device.type == "cpu":
        values = _cpu_moments(detached, batched)
    else:  # a GPU's reductions are fast as they are (and MPS has no float64)
        floats = detached.float()
        values = [floats.mean(), floats.std()] + ([floats.std(dim=0).mean()] if batched else [])
    return dict(zip(("output_mean", "output_std", "output_spread"), torch.stack(values).tolist(), strict=False))


def _cpu_moments(output: torch.Tensor, batched: bool) -> list[torch.Tensor]:
    """``[mean, std]`` and, when ``batched``, the mean over values of their std across the batch.

    Two passes in float64 over one copy, worked in place: on a CPU ``torch.std(dim=0)`` took 1.3 ms
    for a batch of 16 images of 3 x 32 x 32 and 15 ms for 8 of 3 x 128 x 128, 4 to 8 times this
    (``benchmarks/output_metrics.py``). In float64 a sum of up to 2**29 float32 (or float16,
    bfloat16) values is exact, so the mean of a constant output is that constant and its deviations
    exactly 0, as the collapse signal needs; an output near float32's largest value does not
    overflow either.
    """
    # float32 values, as for a GPU (of a float64 output too), held in float64: a copy, changed below,
    # laid out contiguous whatever the output's (channels_last, permuted), so that the views below hold
    wide = output.float().to(torch.float64, memory_format=torch.contiguous_format, copy=True)
    flat = wide.view(wide.shape[0], -1) if batched else wide.view(1, -1)
    per_value = flat.mean(dim=0)
    mean = per_value.mean()
    every = wide.view(-1).sub_(mean)
    values = [mean, torch.dot(every, every).div_(every.numel() - 1).sqrt_()]
    if batched:
        flat.sub_(per_value.sub_(mean))  # each value less its own mean across the batch
        values.append(flat.square_().sum(dim=0).div_(flat.shape[0] - 1).sqrt_().mean())
    return values


class EpochAverages:
    """Running means of step metrics over an epoch (what ``train_epoch`` returns)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float]) -> None:
        """Add one step's metrics."""
        self.count += 1
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self, prefix: str = "train_") -> dict[str, float]:
        """Epoch means, keys prefixed (``loss`` -> ``train_loss``)."""
        return {prefix + key.replace("/", "_"): value / max(self.count, 1) for key, value in self.sums.items()}


def loss_metrics(loss: Any) -> dict[str, float]:
    """``loss`` as step metrics, fetched with one device sync.

    A number or tensor is ``loss``; a dict of terms is ``loss/<term>`` each and ``loss`` their sum.
    """
    if isinstance(loss, dict):
        names = [str(name) for name in loss]
        values = _floats(list(loss.values()))
        return {"loss": math.fsum(values), **{f"loss/{name}": value for name, value in zip(names, values, strict=True)}}
    return {"loss": _floats([loss])[0]}


def _floats(values: list[Any]) -> list[float]:
    tensors = [v.detach().float().reshape(()) for v in values if torch.is_tensor(v)]
    fetched = iter(torch.stack(tensors).tolist() if tensors else [])
    return [float(next(fetched)) if torch.is_tensor(v) else float(v) for v in values]


class StepProbe:
    """One network's step diagnostics in a loop of one's own: learning rate, gradient and weight norms, loss scale.

    Built once per network from its optimizer (or its model), then called after each optimizer
    step. With an optimizer, the gradient norms are those of the gradients it applied at its last
    ``step()`` since the previous call (read by a step pre-hook: a ``GradScaler``'s ``step`` has
    unscaled them by then, and a GAN's discriminator keeps the norms of its own step, not of the
    gradients the generator's backward pass leaves in it). Where it did not step since (a
    ``GradScaler`` skipped an overflow), and with a model only, they are read as they are at the
    call (call ``run.step`` before the next ``zero_grad``), except at the first call of a probe
    built with ``unread_first`` (one of several networks, built at that call: another network's
    backward pass may have left gradients in its parameters since its step). ``skipped`` is the
    scaler's own ``last_skipped`` where it keeps one (``run.scaler()``'s do), else a loss scale
    that fell or a non-finite gradient under an enabled scaler; never when the optimizer did step
    since the last call (a scaler shared by a GAN's two networks fell for the other one's
    overflow). At a probe's first call, built at that call, the hook saw no step: the scale is
    compared with the scaler's initial one, and an optimizer that keeps state (Adam and the like
    make it at their first step) has stepped. :meth:`close` takes the hook off the optimizer.
    """

    def __init__(self, net: str, optimizer: Any = None, model: Any = None, unread_first: bool = False) -> None:
        self.net, self.optimizer, self.model = net, optimizer, model
        params: Iterable[Any] = ()
        if optimizer is not None:
            params = (p for group in optimizer.param_groups for p in group["params"])
        elif model is not None:
            params = model.parameters()
        self.params = [p for p in params if p.requires_grad]
        weights = [i for i, p in enumerate(self.params) if p.dim() >= 2] or list(range(len(self.params)))
        self.first, self.last = (weights[0], weights[-1]) if weights else (-1, -1)
        self.scale: float | None = None
        self.applied: list[torch.Tensor] | None = None
        """The gradient norms (total, first, last layer) at the optimizer's last step since the last call."""
        self.stepped = False
        """Whether the optimizer stepped since the last call (its step pre-hook ran)."""
        self.unread = unread_first
        self.hook = None
        if self.params and callable(getattr(optimizer, "register_step_pre_hook", None)):
            self.hook = optimizer.register_step_pre_hook(self._at_step)

    def _at_step(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before ``optimizer.step()``: keep the norms of the gradients it is about to apply."""
        self.stepped = True
        given = args[1:] if args and args[0] is optimizer else args  # torch passes the optimizer itself first
        if given or kwargs.get("closure") is not None:  # a closure computes the gradients inside the step (LBFGS)
            self.applied = None
            return
        self.applied = self._grad_norms()

    def _grad_norms(self) -> list[torch.Tensor] | None:
        """The norms of the gradients as they are now (total, first, last layer); None when there is none."""
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not present:
            return None
        per_grad = list(_norms([self.params[i].grad.detach() for i in present]))  # one kernel for all
        index = {param: at for at, param in enumerate(present)}
        zero = torch.zeros((), device=per_grad[0].device)
        total = torch.linalg.vector_norm(torch.stack(per_grad))
        return [total, *(per_grad[index[i]] if i in index else zero for i in (self.first, self.last))]

    def close(self) -> None:
        """Take the step hook off the optimizer (a probe that is replaced, or no longer used)."""
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    def __call__(self, scaler: Any = None) -> dict[str, float]:
        """The step's ``<net>/...`` diagnostics (those it has what to derive them from)."""
        net, metrics = self.net, {}
        if self.optimizer is not None:
            lr = self.optimizer.param_groups[0]["lr"]
            metrics[f"{net}/lr"] = float(lr.item() if torch.is_tensor(lr) else lr)
        grad_norm: float | None = None
        if self.params:
            grads = self.applied
            if grads is None and not self.unread:
                grads = self._grad_norms()
            norms = [torch.linalg.vector_norm(self.params[self.last].detach().float()), *(grads or [])]
            values = torch.stack([n.float().reshape(()).to(norms[0].device) for n in norms]).tolist()
            metrics[f"{net}/weight_norm_last"] = values[0]
            if grads is not None:
                grad_norm = values[1]
                metrics[f"{net}/grad_norm"] = grad_norm
                metrics[f"{net}/grad_norm_first"], metrics[f"{net}/grad_norm_last"] = values[2], values[3]
        if scaler is not None:
            enabled = scaler.is_enabled()
            scale = float(scaler.get_scale()) if enabled else 1.0
            skipped = getattr(scaler, "last_skipped", None)
            stepped = self.stepped
            if self.scale is None and not stepped:  # the first call: the hook was not on for the step before it
                stepped = bool(getattr(self.optimizer, "state", None))  # Adam and the like keep state once stepped
            if skipped is None:
                overflowed = enabled and grad_norm is not None and not math.isfinite(grad_norm)
                before = self.scale if self.scale is not None else _initial_scale(scaler) if enabled else None
                skipped = (before is not None and scale < before) or overflowed
            self.scale = scale
            metrics[f"{net}/loss_scale"] = scale
            metrics[f"{net}/skipped"] = float(bool(skipped) and not stepped)
        self.applied, self.stepped, self.unread = None, False, False
        return metrics


def _initial_scale(scaler: Any) -> float | None:
    """The scale a ``GradScaler`` started from (its ``init_scale``, or one a checkpoint restored); None if unknown.

    At a probe's first call it is what the scale fell from when the first step overflowed: a
    user's GAN with one ``GradScaler`` for both networks had its generator's skipped first step
    recorded as taken.
    """
    initial = getattr(scaler, "_init_scale", None)  # torch's GradScaler keeps it under this private name
    return float(initial) if isinstance(initial, int | float) else None


def _norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor, in float32: one fused kernel where torch has it."""
    same = all(t.dtype == tensors[0].dtype and t.device == tensors[0].device for t in tensors)
    foreach = getattr(torch, "_foreach_norm", None)
    if foreach is not None and same and tensors[0].dtype == torch.float32:
        return list(foreach(tensors))
    return [torch.linalg.vector_norm(t.float()) for t in tensors]
