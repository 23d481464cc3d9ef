"""The epochs at which trials report: exactly the rungs Ray's ASHA compares at, none without ASHA."""

from __future__ import annotations

from typing import Any

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler

from sweeps.engine.scheduler import rung_epochs
from tests.helpers import minimal_toy_spec, spec_from_dict


@pytest.mark.parametrize(
    ("asha", "epochs"),
    [
        ({"grace_period": 1, "reduction_factor": 2}, 4),
        ({"grace_period": 1, "reduction_factor": 3}, 30),
        ({"grace_period": 2, "reduction_factor": 2, "brackets": 3}, 40),
        ({"grace_period": 10, "reduction_factor": 2}, 10),
    ],
)
def test_trials_report_at_every_epoch_ray_asha_compares(asha: dict[str, Any], epochs: int) -> None:
    spec = spec_from_dict(minimal_toy_spec("cadence", budget={"epochs": epochs}, asha=asha))
    ray_asha = AsyncHyperBandScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=spec.asha.grace_period,
        reduction_factor=spec.asha.reduction_factor,
        brackets=spec.asha.brackets,
    )
    milestones = {m for bracket in ray_asha._brackets for m, _ in bracket._rungs if m < epochs}
    assert rung_epochs(spec) == sorted(milestones)


def test_no_rungs_without_asha() -> None:
    spec = spec_from_dict(minimal_toy_spec("cadence", budget={"epochs": 10}, asha={"enabled": False}))
    assert rung_epochs(spec) == []


def test_a_rung_of_failed_trials_only_stops_nothing_and_prints_no_numpy_warning() -> None:
    """A failed trial's last report has a NaN metric; a rung holding only such is no cut-off (and no warning)."""
    import warnings

    from ray.tune.experiment import Trial

    from sweeps.core.records import SweepState
    from sweeps.engine.scheduler import make_scheduler

    spec = spec_from_dict(minimal_toy_spec("nan-rung", budget={"epochs": 4}, asha={"reduction_factor": 2}))
    asha = make_scheduler(spec, SweepState(metric="val_loss", mode="min"))
    asha.set_search_properties("val_loss", "min")  # what Tune does with the TuneConfig's metric
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        actions = []
        for name in ("a", "b"):
            trial = Trial("__fake", trial_id=name, stub=True)
            asha.on_trial_add(None, trial)
            actions.append(asha.on_trial_result(None, trial, {"epoch": 1, "val_loss": float("nan")}))
    assert actions == ["CONTINUE", "CONTINUE"]
    assert [str(w.message) for w in caught if "All-NaN" in str(w.message)] == []
