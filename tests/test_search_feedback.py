"""What the search hears of a diverged trial: ASHA ranks it last at its rung, TPE moves away from it."""

from __future__ import annotations

import math

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from sweeps.core.keys import DIVERGED_KEY
from sweeps.core.records import SweepState
from sweeps.engine.scheduler import RecordingASHA
from sweeps.store.study import make_sampler
from tests.helpers import spec_from_dict


def asha_after(first: list[dict[str, float]], last: float) -> tuple[str, SweepState]:
    """Feed ``first`` as epoch-1 results of one trial each, then ``last``; return the last decision."""
    state = SweepState("val_mse", "min")
    asha = RecordingASHA(
        state, time_attr="training_iteration", metric="val_mse", mode="min", max_t=4, grace_period=1, reduction_factor=2
    )
    trials = [Trial("unit", stub=True) for _ in range(len(first) + 1)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    for trial, result in zip(trials, first, strict=False):
        asha.on_trial_result(None, trial, {"training_iteration": 1, **result})
    return asha.on_trial_result(None, trials[-1], {"training_iteration": 1, "val_mse": last}), state


def test_asha_ranks_a_diverged_trial_last_at_its_rung() -> None:
    healthy = [{"val_mse": 0.030}, {"val_mse": 0.020}]
    diverged = {"val_mse": math.nan, DIVERGED_KEY: 1.0}
    # Without the diverged trial, 0.028 is in the worse half of {0.030, 0.020} and is cut ...
    assert asha_after(healthy, 0.028)[0] == TrialScheduler.STOP
    # ... with it counted as the worst of the rung, 0.028 is in the better half and goes on.
    action, state = asha_after([diverged, *healthy], 0.028)
    assert action == TrialScheduler.CONTINUE
    # A trial worse than every healthy one is still cut, and a diverged trial is never called pruned.
    action, state = asha_after([diverged, *healthy, {"val_mse": 0.025}], 0.05)
    assert action == TrialScheduler.STOP
    assert len(state.pruned) == 1


@pytest.mark.parametrize("told", ["infeasible", "fail"])
def test_tpe_moves_away_from_trials_told_infeasible(told: str) -> None:
    """With no constraints function, TPE reads the constraint each trial carries.

    x < 0.5 "diverges" (told the best value of all, 0.0, so only the constraint marks it); above
    it the value is x, best at the edge. Told infeasible, TPE samples
    mostly x >= 0.5 (the best trials sit at the edge, so some samples still fall just below it);
    told FAIL, it never hears of x < 0.5 and, finding nothing there, samples only there.
    """
    spec = spec_from_dict(
        {
            "name": "unit",
            "trainer": "vae",
            "metric": {"name": "val_mse", "mode": "min"},
            "seed": 0,
            "budget": {"trials": 60, "epochs": 1},
            "search": {"n_startup_trials": 10, "random_fraction": 0},  # TPE's own choices only
            "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
        },
        "<unit>",
    )
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constraints_func is None  # Optuna 5: constraints come from Trial.set_constraint
    study = optuna.create_study(sampler=sampler)
    below = []
    for number in range(60):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        if x >= 0.5:
            study.tell(trial, x)
        elif told == "infeasible":
            trial.set_constraint("diverged", 1.0)
            study.tell(trial, 0.0)  # a good value: only the constraint says it is not
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if number >= 30:
            below.append(x < 0.5)
    share = sum(below) / len(below)
    if told == "infeasible":
        assert share <= 0.5, share
    else:
        assert share >= 0.9, share
