"""The outcome rules of a trial's ending, as plain data in and out: no Ray, Optuna or MLflow."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.core.failures import failure_reason
from sweeps.core.keys import (
    COMPLETED,
    DIVERGED,
    DIVERGED_KEY,
    FAILED,
    FAILED_KEY,
    INTERRUPTED,
    NOT_STARTED_KEY,
    OOM,
    PRUNED,
    REASON_KEY,
    SIGNAL_KEY,
    STEP_KEY,
)
from sweeps.core.outcome import (
    NOT_STARTED,
    TELL_COMPLETE,
    TELL_FAIL,
    TELL_INFEASIBLE,
    TELL_PRUNED,
    Ending,
    Outcome,
    decide_outcome,
    fresh_intermediate_values,
    study_verdict,
    wants_rescue,
)
from sweeps.core.plan import TrialPlan

DONE = {"val_loss": 0.5, "epoch": 4}


def decide(ending: Ending) -> Outcome:
    return decide_outcome(ending, "val_loss", epochs_budget=4)


def test_a_trial_that_reported_its_last_epoch_completed() -> None:
    assert decide(Ending(DONE, epochs=4, value=0.5)) == Outcome(COMPLETED)


def test_a_raised_error_is_failed_with_its_reason_and_out_of_memory_is_oom() -> None:
    failed = {FAILED_KEY: 1.0, REASON_KEY: "ValueError: bad kernel"}
    assert decide(Ending(failed, epochs=1, value=0.4)) == Outcome(FAILED, "ValueError: bad kernel")
    oom = {FAILED_KEY: 1.0, REASON_KEY: "OutOfMemoryError: CUDA out of memory"}
    assert decide(Ending(oom)).status == OOM
    assert (
        decide(Ending({FAILED_KEY: 1.0, REASON_KEY: "RuntimeError: DefaultCPUAllocator: out of memory"})).status == OOM
    )


def test_a_dead_process_takes_rays_reason_or_a_default() -> None:
    assert decide(Ending(DONE, error=True, error_reason="RayActorError: died")) == Outcome(
        FAILED, "RayActorError: died"
    )
    assert decide(Ending(None, error=True)) == Outcome(FAILED, "the trial process failed")
    # Ray's error wins over what the last report said: the report came before the process died
    assert decide(Ending({FAILED_KEY: 1.0, REASON_KEY: "x"}, error=True, error_reason="y")).reason == "y"


def test_a_divergence_carries_its_signal_and_step() -> None:
    result = {DIVERGED_KEY: 1.0, SIGNAL_KEY: "loss_scale", REASON_KEY: "scale below floor", STEP_KEY: 37}
    outcome = decide(Ending(result, epochs=1, value=0.9))
    assert outcome == Outcome(DIVERGED, "loss_scale: scale below floor (step 37)", "loss_scale", 37)


def test_asha_stops_are_pruned_and_other_early_ends_are_interrupted() -> None:
    assert decide(Ending({"val_loss": 0.5, "epoch": 1}, pruned=True, epochs=1, value=0.5)) == Outcome(
        PRUNED, "stopped by ASHA after epoch 1"
    )
    assert decide(Ending(None)) == Outcome(INTERRUPTED, "stopped before it reported")
    assert decide(Ending({"val_loss": 0.5}, epochs=2, value=0.5)) == Outcome(INTERRUPTED, "stopped after epoch 2 of 4")


def test_a_trial_begun_after_budget_time_ran_out_is_interrupted_untrained_not_failed() -> None:
    """Its only report holds no finite metric (Tune wants the key), which would otherwise read as a failure."""
    ending = Ending({"val_loss": math.nan, "epoch": 0, NOT_STARTED_KEY: 1.0}, epochs=0, value=None)
    assert decide(ending) == Outcome(INTERRUPTED, NOT_STARTED)
    assert NOT_STARTED.startswith("budget.time ran out before it started")


def test_a_trial_without_a_finite_metric_failed() -> None:
    assert decide(Ending({"val_loss": math.nan}, epochs=4, value=None)) == Outcome(
        FAILED, "no finite val_loss reported"
    )


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ValueError("bad kernel"), "ValueError: bad kernel"),
        (ValueError("\n\n  config is wrong\nmore detail"), "ValueError: config is wrong"),  # not "ValueError: "
        (
            RuntimeError('Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "fc.weight".'),
            'RuntimeError: Error(s) in loading state_dict for Net: Missing key(s) in state_dict: "fc.weight".',
        ),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (AssertionError("x" * 6000), "AssertionError: " + "x" * 4984),
    ],
)
def test_a_failure_is_one_line_that_says_something(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason


def test_a_file_not_found_by_a_relative_path_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's trials read myconfig.yaml beside the spec, but ran where `sweeps run` started."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as relative:
        open("myconfig.yaml")  # noqa: SIM115
    assert failure_reason(relative.value) == (
        f"FileNotFoundError: [Errno 2] No such file or directory: 'myconfig.yaml' (looked for in {tmp_path})"
    )
    with pytest.raises(FileNotFoundError) as absolute:
        open(tmp_path / "x.yaml")  # noqa: SIM115
    assert failure_reason(absolute.value).endswith("x.yaml'")


def test_failure_wins_over_divergence_and_divergence_over_asha() -> None:
    both = {FAILED_KEY: 1.0, DIVERGED_KEY: 1.0, REASON_KEY: "ValueError: x"}
    assert decide(Ending(both)).status == FAILED
    diverged = {DIVERGED_KEY: 1.0, SIGNAL_KEY: "non_finite", STEP_KEY: 3}
    assert decide(Ending(diverged, pruned=True)).status == DIVERGED


@pytest.mark.parametrize(
    ("status", "signal", "precision", "enabled", "is_rescue", "wanted"),
    [
        (DIVERGED, "loss_scale", "fp16", True, False, True),
        (DIVERGED, "loss_scale", "fp16-o2", True, False, True),
        (DIVERGED, "loss_scale", "fp16", False, False, False),  # rescue off
        (DIVERGED, "loss_scale", "fp16", True, True, False),  # a rescue is not rescued again
        (DIVERGED, "loss_scale", "bf16", True, False, False),  # not fp16's own failure
        (DIVERGED, "loss_explosion", "fp16", True, False, False),  # lr, not precision
        (COMPLETED, "", "fp16", True, False, False),
    ],
)
def test_rescue_rules(status: str, signal: str, precision: str, enabled: bool, is_rescue: bool, wanted: bool) -> None:
    assert wants_rescue(status, signal, precision, enabled=enabled, is_rescue=is_rescue) is wanted


def test_how_optuna_is_told() -> None:
    assert study_verdict(COMPLETED, "infeasible") == TELL_COMPLETE
    assert study_verdict(PRUNED, "infeasible") == TELL_PRUNED
    assert study_verdict(DIVERGED, "infeasible") == TELL_INFEASIBLE
    assert study_verdict(OOM, "infeasible") == TELL_INFEASIBLE
    assert study_verdict(DIVERGED, "failed") == TELL_FAIL
    assert study_verdict(FAILED, "infeasible") == TELL_FAIL
    assert study_verdict(INTERRUPTED, "infeasible") == TELL_FAIL


def test_only_new_finite_epochs_become_intermediate_values() -> None:
    history = [(1, 0.9), (2, 0.8), (3, math.nan), (4, 0.6)]
    assert fresh_intermediate_values(history, last_reported=1) == [(2, 0.8), (4, 0.6)]
    assert fresh_intermediate_values(history, last_reported=4) == []


def test_a_plan_round_trips_through_a_trial_config_and_ignores_unknown_keys() -> None:
    plan = TrialPlan("vae", "val_mse", 4, tracking_uri="sqlite:///x.db", run_id="r1", report_epochs=[1, 3])
    assert TrialPlan.from_config(plan.as_config()) == plan
    assert TrialPlan.from_config({**plan.as_config(), "from_a_newer_version": 1}) == plan
    assert TrialPlan.from_config({"trainer": "vae", "metric": "val_mse", "epochs": 2}).threads == 1


def test_the_rules_import_neither_ray_optuna_mlflow_nor_torch() -> None:
    code = (
        "import sys; import sweeps.core.outcome, sweeps.core.plan, sweeps.core.records; "
        "print(sorted(m for m in ('ray', 'optuna', 'mlflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
