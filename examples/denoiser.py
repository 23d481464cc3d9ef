"""The loop of ``plain_loop.py`` adapted to the trainer protocol: a sweep can now tune it.

Each optimizer step goes to ``on_step`` with the step contract's names (``loss``, ``model/lr``,
``model/grad_norm``, ``model/weight_norm_last``, ...), so a diverging trial is stopped within
steps. ``plain_loop_sweepable.py`` is the same loop kept as it is, as a function trainer.

Use it from a spec as ``trainer: examples.denoiser:DenoiserTrainer``
(see ``search_spaces/denoiser_example.yaml``).
"""

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import procedural_images
from trainables.diagnostics import StepProbe, loss_metrics
from trainables.protocol import StepHook
from trainables.runtime import restore_rng, rng_state


@dataclass
class DenoiserConfig:
    """The loop's constants become fields; their names are the sweep's parameter names."""

    lr: float = 1e-3
    width: int = 16
    noise: float = 0.1
    seed: int = 0


class DenoiserTrainer:
    """One epoch of the plain loop per ``train_epoch``; validation as it was."""

    Config: ClassVar[type] = DenoiserConfig
    metrics: ClassVar[tuple[str, ...]] = ("val_loss",)

    def __init__(self, config: DenoiserConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.train, self.val = procedural_images(256, 32, seed=0), procedural_images(64, 32, seed=1)
        w = config.width
        self.model = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 3, 3, padding=1),
        )  # fmt: skip
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.on_step: StepHook | None = None  # set by the sweep: each step's diagnostics, watched for divergence
        self.probe = StepProbe("model", self.optimizer)  # lr, gradient and weight norms (the step contract)
        self.step = 0

    def train_epoch(self) -> dict[str, float]:
        """The loop's inner ``for`` over batches."""
        total = 0.0
        for start in range(0, len(self.train), 32):
            x = self.train[start : start + 32]
            loss = F.mse_loss(self.model(x + self.config.noise * torch.randn_like(x)), x)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.step += 1
            if self.on_step is not None:  # None outside a sweep
                self.on_step(self.step, {**loss_metrics(loss), **self.probe()})
            total += loss.item()
        return {"train_loss": total / (len(self.train) // 32)}

    def validate(self) -> dict[str, float]:
        """The loop's validation, returned instead of printed."""
        with torch.no_grad():
            noisy = self.val + self.config.noise * torch.randn_like(self.val)
            return {"val_loss": F.mse_loss(self.model(noisy), self.val).item()}

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: model, optimizer and the RNG."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        self.step = int(state.get("step", 0))
