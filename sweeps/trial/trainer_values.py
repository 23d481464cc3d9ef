"""What a trainer hands the sweep, as the sweep takes it: metrics as floats, step numbers as ints.

Shared by a function trainer's ``run.step``/``run.report`` and a class trainer's ``on_step``,
``train_epoch`` and ``validate``: a one-value tensor or a NumPy number is taken as the number it
holds; anything else is a :class:`~sweeps.trial.stops.RunCallError` naming the call, one line.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from sweeps.trial.stops import RunCallError


def as_float(name: str, value: Any, call: str = "run.report") -> float:
    """``value`` as a float: a number (NumPy's too) or a one-element tensor; else a RunCallError naming ``call``."""
    if torch.is_tensor(value) and value.numel() == 1:
        return float(value.detach().float().item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise RunCallError(f"{call}: {name} is {kind_of(value)}, not a number")


def metric_floats(metrics: dict[str, Any], call: str = "on_step") -> dict[str, float]:
    """Metrics as floats (tensors of one value, NumPy numbers, bools); a RunCallError naming ``call`` for any other.

    What a class trainer's ``on_step``, ``train_epoch`` and ``validate`` give: ``on_step({"loss":
    loss})`` with the loss tensor itself was read as a loss that is not a number, so not finite
    (every trial stopped at its first step as ``non_finite``), and a ``validate()`` value of NumPy's
    float32 never reached MLflow.
    """
    if all(type(value) is float for value in metrics.values()):
        return metrics
    return {
        key: float(value) if isinstance(value, bool) else as_float(key, value, call) for key, value in metrics.items()
    }


def step_number(step: Any, call: str = "on_step") -> int:
    """A step number as an int (NumPy integers, one-value tensors, whole floats); a RunCallError for any other.

    A class trainer's ``on_step(np.int64(step), ...)`` or ``on_step(torch.tensor(step), ...)`` went
    to MLflow as bytes, which the store refused on every retry: the trial never reported again and
    the sweep hung without a word.
    """
    if type(step) is int:
        return step
    value: Any = step.item() if torch.is_tensor(step) and step.numel() == 1 else step
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(float(value))
    raise RunCallError(f"{call}: step must be a whole number (the optimizer steps so far), got {kind_of(step)}")


def kind_of(value: Any) -> str:
    """What ``value`` is, in words: ``a str``, ``a tensor of 16 values (shape [16])``."""
    if torch.is_tensor(value):
        return f"a tensor of {value.numel()} values (shape {list(value.shape)})"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
