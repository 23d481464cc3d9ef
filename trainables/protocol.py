"""The trainer protocol: what the sweep engine needs from a training loop, and the optional hooks it uses.

A trainer is any class with a ``Config`` dataclass (every field has a default, and the
field names are the parameter names a sweep spec uses), a constructor taking that config,
one epoch of training, validation, and a state dict that resumes training exactly.

Optional hooks, each declared here and looked for nowhere else:

- ``metrics`` (class attribute, :class:`DeclaresMetrics`): the names ``validate`` returns, so a
  spec naming another metric is rejected before a sweep starts.
- ``on_step`` (attribute, :class:`ObservesSteps`): the engine sets it to a :data:`StepHook`; the
  trainer calls it after every optimizer step with the step number and the step's diagnostics
  (names in ``trainables.diagnostics``). This is what lets the divergence detector stop a trial
  within steps, and what draws the per-step curves.
- ``sample_grid()`` (:class:`SamplesImages`): an image grid tensor ``(C, H, W)`` in ``[0, 1]``,
  logged each epoch as ``images/epoch_NNN.png``.
- ``device`` (attribute): where the trainer runs (``"cpu"``, ``"cuda:0"``), recorded with the
  trial's environment (:func:`trainer_device`).
- ``Config.problems()`` (:class:`ChecksItself`): ``[(field, message), ...]`` for values that are
  each valid but wrong together; a sweep refuses such a config before it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

StepHook = Callable[[int, dict[str, float]], None]
"""Called by a trainer after every optimizer step with the step number and its diagnostics."""


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


@runtime_checkable
class ObservesSteps(Protocol):
    """A trainer that calls ``on_step(step, diagnostics)`` after each optimizer step (None: no hook set)."""

    on_step: StepHook | None


@runtime_checkable
class SamplesImages(Protocol):
    """A trainer that can show what it generates."""

    def sample_grid(self) -> Any:
        """A grid of sample outputs as a ``(C, H, W)`` tensor in ``[0, 1]``."""
        ...


@runtime_checkable
class DeclaresMetrics(Protocol):
    """A trainer class that names the metrics ``validate`` returns."""

    metrics: ClassVar[tuple[str, ...]]


@runtime_checkable
class ChecksItself(Protocol):
    """A config that reports combinations of values that cannot train."""

    def problems(self) -> list[tuple[str, str]]:
        """``[(field, message), ...]``; empty when the config is fine."""
        ...


def declared_metrics(trainer_cls: type) -> tuple[str, ...]:
    """The metrics a trainer class declares (:class:`DeclaresMetrics`); empty when it declares none."""
    return tuple(getattr(trainer_cls, "metrics", None) or ())


def config_problems(config: Any) -> list[tuple[str, str]]:
    """What a config's own ``problems()`` finds (:class:`ChecksItself`); nothing when it has no such check."""
    return list(config.problems()) if isinstance(config, ChecksItself) else []


def trainer_device(trainer: Any) -> str:
    """The device a trainer says it runs on (its ``device`` attribute); '' when it does not say."""
    device = getattr(trainer, "device", None)
    return str(device) if device is not None else ""
