"""MLflow's private parts the engine uses: the step of each metric's latest value in a run."""

from __future__ import annotations

from typing import Any


def latest_steps(run: Any) -> dict[str, int]:
    """``{metric key: step of its latest value}`` in ``run`` (an ``mlflow.entities.Run``).

    ``run.data.metrics`` holds the latest values without their steps; the metric objects behind
    it carry them. Without those (another MLflow), every key counts as logged up to step 0.
    """
    objects = getattr(run.data, "_metric_objs", None)
    if objects is None:
        return {key: 0 for key in run.data.metrics}
    return {m.key: int(m.step) for m in objects}
