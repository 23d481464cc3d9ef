"""Per-step diagnostics every trainer emits, under shared names the engine watches.

Names: ``loss`` (the main network's total), ``loss/<term>`` for each loss term, and per network
``<net>/lr`` (the learning rate), ``<net>/loss_scale``, ``<net>/skipped``, ``<net>/grad_norm``,
``<net>/grad_norm_first``,
``<net>/grad_norm_last``, ``<net>/weight_norm_last``; GANs add ``d/real_mean`` and
``d/fake_mean``; ``output_mean`` and ``output_std`` describe the generated images.
"""

from __future__ import annotations

import torch

from trainables.precision import AmpNetwork, StepStats
from trainables.protocol import StepHook

__all__ = ["EpochAverages", "StepHook", "network_metrics", "output_metrics"]


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
    """Mean and standard deviation of generated images (collapse shows as a constant output)."""
    detached = output.detach().float()
    return {"output_mean": float(detached.mean()), "output_std": float(detached.std())}


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
