"""A VAE trainer that writes every step (loss, overflow) and every validation to a trace file.

The divergence benchmark runs this same trainer under plain Ray Tune and under ours, and judges
both from the traces, so "onset" and "steps after onset" mean the same thing for each.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from trainables.diagnostics import StepHook
from trainables.vae import VAEConfig, VAETrainer


@dataclass
class TracedConfig(VAEConfig):
    """The VAE's config plus where traces go."""

    trace_dir: str = ""


class TracedVAE(VAETrainer):
    """:class:`VAETrainer` that appends one JSON line per step and per validation to its trace."""

    Config: ClassVar[type] = TracedConfig

    def __init__(self, config: TracedConfig) -> None:
        self._hook: StepHook | None = None
        super().__init__(config)
        self.trace = None
        if config.trace_dir:
            path = Path(config.trace_dir) / f"{uuid.uuid4().hex}.jsonl"
            self.trace = path.open("a", buffering=1)
            head = {
                "start": time.time(),
                "lr": config.lr,
                "precision": config.precision,
                "kernel_size": config.kernel_size,
            }
            self.trace.write(json.dumps(head) + "\n")

    @property  # type: ignore[override]
    def on_step(self) -> StepHook | None:
        """The engine's hook, wrapped so every step is traced first."""
        return self._traced

    @on_step.setter
    def on_step(self, hook: StepHook | None) -> None:
        self._hook = hook

    def _traced(self, step: int, metrics: dict[str, float]) -> None:
        if self.trace is not None:
            loss = metrics["loss"]
            row = {
                "step": step,
                "loss": loss if math.isfinite(loss) else None,
                "skipped": metrics.get("vae/skipped", 0.0),
            }
            self.trace.write(json.dumps(row) + "\n")
        if self._hook is not None:
            self._hook(step, metrics)

    def validate(self) -> dict[str, float]:
        """Validate and trace the result."""
        metrics = super().validate()
        if self.trace is not None:
            value = metrics["val_mse"]
            self.trace.write(
                json.dumps({"epoch": self.epoch, "val_mse": value if math.isfinite(value) else None}) + "\n"
            )
        return metrics

    def __del__(self) -> None:
        if getattr(self, "trace", None) is not None:
            self.trace.close()  # type: ignore[union-attr]
