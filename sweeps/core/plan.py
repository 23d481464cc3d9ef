"""The trial plan: everything the driver hands a trial besides the trainer's parameters, with its defaults.

The driver puts it in each Ray trial's config under :data:`sweeps.core.keys.ENGINE_KEY` as a
plain dict (:meth:`TrialPlan.as_config`), so Ray's records and a resumed sweep's restored configs
hold nothing but built-in types; the trial reads it back with :meth:`TrialPlan.from_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialPlan:
    """What one trial runs and where it records: trainer, metric, epochs, resources, reports, detector."""

    trainer: str
    """Built-in trainer name or ``module:Class`` import path."""
    metric: str
    """The metric the sweep optimizes; every report carries it."""
    epochs: int
    tracking_uri: str = ""
    run_id: str = ""
    """The trial's MLflow run, created by the driver before the trial starts ('' records nothing)."""
    label: str = ""
    """The trial's name as the sweep shows it (``t003``, ``t003r`` for a rescue); '' outside a sweep."""
    threads: int = 1
    """Torch intra-op threads (the trial's CPUs)."""
    workers: int = 1
    """Ray Train workers; more than one makes it a multi-worker trial."""
    cpus: float = 1.0
    """CPUs of each worker."""
    gpus: float = 0.0
    """GPUs of each worker."""
    spec_text: str = ""
    """The sweep spec as YAML, logged with the trial's provenance."""
    report_epochs: list[int] = field(default_factory=list)
    """Epochs at which the trial always reports (ASHA's rungs); the last epoch always reports too."""
    report_every_s: float = 0.0
    """Between those, report when this many seconds passed since the last report (0: every epoch)."""
    step_every_s: float = 0.0
    """Record a step's diagnostics in MLflow at most this often (seconds; 0: every step), see ``TrialLogger``."""
    deadline: float = 0.0
    """When the sweep's ``budget.time`` runs out (a ``time.time()``; 0: none): the epoch ending then is the last."""
    start_by: float = 0.0
    """Begun by Tune after this (a ``time.time()``; 0: none), the trial ends untrained: the deadline less the fastest
    first epoch of the sweep's trials when it was asked for (it could not end one before the deadline)."""
    trial_time_s: float = 0.0
    """``budget.trial_time`` (seconds; 0: none): the epoch that ends this long after the trial started is its last."""
    divergence: dict[str, Any] = field(default_factory=dict)
    """The detector's settings (fields of ``DivergenceSettings``); empty for its defaults."""

    def as_config(self) -> dict[str, Any]:
        """The plan as the plain dict a Ray trial config carries."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> TrialPlan:
        """Read a plan back from a trial config's engine entry; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})
