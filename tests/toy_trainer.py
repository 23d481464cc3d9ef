"""Tiny trainers for engine tests: deterministic metrics that depend on the config, no real model.

``ToyTrainer`` declares no metrics, so a spec naming a metric it lacks fails on the first report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class ToyConfig:
    lr: float = 0.01
    width: int = 4
    mode: str = "a"
    seed: int = 0
    fail_at_epoch: int = 0


class ToyTrainer:
    Config: ClassVar[type] = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        self.epoch = 0

    def train_epoch(self) -> dict[str, float]:
        self.epoch += 1
        if self.config.fail_at_epoch and self.epoch >= self.config.fail_at_epoch:
            raise ValueError(f"toy failure at epoch {self.epoch}")
        return {"train_loss": self._loss()}

    def _loss(self) -> float:
        distance = abs(math.log10(self.config.lr) + 2.0)
        return distance + 1.0 / self.epoch + 0.01 * self.config.width

    def validate(self) -> dict[str, float]:
        return {"val_loss": self._loss()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
