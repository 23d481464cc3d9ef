"""The epoch loop's report cadence: at each rung, at the last epoch, and once the report interval has passed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sweeps.core.failures import ends_the_sweep, failure_reason
from sweeps.core.plan import TrialPlan
from sweeps.spec.sweep_spec import SpecError
from sweeps.trial.epoch_loop import ReportCadence, save_checkpoint
from sweeps.trial.stops import CheckpointSaveError
from tests.helpers import minimal_toy_spec, spec_from_dict


def test_report_cadence_reports_rungs_last_epoch_and_after_the_interval() -> None:
    cadence = ReportCadence(TrialPlan("toy", "val_loss", 8, report_epochs=[1, 2, 4], report_every_s=0.3))
    assert [e for e in range(1, 9) if cadence.due(e)] == [1, 2, 4, 8]
    time.sleep(0.35)
    assert cadence.due(5)
    cadence.reported()
    assert not cadence.due(6)
    every_epoch = ReportCadence(TrialPlan("toy", "val_loss", 3))
    assert all(every_epoch.due(e) for e in range(1, 4))


def test_report_interval_must_not_be_negative() -> None:
    with pytest.raises(SpecError, match=r"record.report_every_s: must be >= 0"):
        spec_from_dict(minimal_toy_spec("cadence", budget={"epochs": 4}, record={"report_every_s": -1}))
    spec = spec_from_dict(minimal_toy_spec("cadence", budget={"epochs": 4}, record={"report_every_s": "1e-1"}))
    assert spec.record.report_every_s == pytest.approx(0.1)


def test_step_interval_must_not_be_negative_and_reaches_the_trial_plan() -> None:
    from sweeps.engine.searcher import trial_plan

    with pytest.raises(SpecError, match=r"record.step_every_s: must be >= 0 \(0: every step\), got -0.5"):
        spec_from_dict(minimal_toy_spec("steps", record={"step_every_s": -0.5}))
    assert spec_from_dict(minimal_toy_spec("steps")).record.step_every_s == pytest.approx(0.05)
    spec = spec_from_dict(minimal_toy_spec("steps", record={"step_every_s": "0"}))
    assert spec.record.step_every_s == 0.0
    assert trial_plan(spec, "sqlite:///x.db", "run", "").step_every_s == 0.0


def test_a_state_dict_that_cannot_be_pickled_fails_saying_where_and_ends_the_sweep(tmp_path: Path) -> None:
    """A user's state_dict held a lambda: the trial failed after training with pickle's bare AttributeError."""
    state = {"trainer": {"schedule": lambda step: 0.1}, "epoch": 1, "counts": {}, "undelivered": []}
    with pytest.raises(CheckpointSaveError, match=r"^the trainer's state_dict\(\) cannot be saved .*lambda") as info:
        save_checkpoint(state, tmp_path)  # type: ignore[arg-type]
    assert ends_the_sweep(failure_reason(info.value))  # every trial would fail so
    assert save_checkpoint({**state, "trainer": {"w": 1}}, tmp_path).is_file()  # type: ignore[arg-type]
