"""The trainer protocol: what the sweep engine needs from a training loop.

A trainer is any class with a ``Config`` dataclass (every field has a default, and the
field names are the parameter names a sweep spec uses), a constructor taking that config,
one epoch of training, validation, and a state dict that resumes training exactly.
It may declare ``metrics``, the names ``validate`` returns, so a spec naming another
metric is rejected before a sweep starts.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class Trainer(Protocol):
    """One training run, driven an epoch at a time."""

    Config: ClassVar[type]

    def __init__(self, config: Any) -> None: ...

    def train_epoch(self) -> dict[str, float]:
        """Train for one epoch and return its training metrics."""
        ...

    def validate(self) -> dict[str, float]:
        """Evaluate on the validation set and return its metrics."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: models, optimizers, scaler, RNG states, counters."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...
