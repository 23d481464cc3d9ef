"""``divergence.mode: observe``: the detector records what it would have stopped, and stops nothing."""

from __future__ import annotations

import io
import math
import pickle
import re
from pathlib import Path

import pytest
import yaml

from sweeps.core.keys import COMPLETED, DIVERGED, OBSERVED_REASON_KEY, OBSERVED_SIGNAL_KEY, OBSERVED_STEP_KEY
from sweeps.core.outcome import Ending, decide_outcome
from sweeps.divergence import DivergenceDetector, DivergenceSettings
from sweeps.spec.sweep_spec import SpecError, validate_spec
from sweeps.tracking.curves import CurveHistory
from sweeps.trial.epoch_loop import DivergedError, StepWatch

TOY = {
    "name": "observe",
    "trainer": "tests.toy_trainer:ToyTrainer",
    "metric": "val_loss",
    "budget": {"trials": 2, "epochs": 3, "concurrency": 2},
    "asha": False,
    "search": {"sampler": "random"},
    "divergence": {"mode": "observe"},
    "fixed": {"lr": 0.01},
    "params": {"behavior": {"choices": ["ok", "diverge"]}},
}


def watch(mode: str) -> StepWatch:
    counts = {"sweep/steps": 0.0, "sweep/skipped_steps": 0.0}
    return StepWatch(DivergenceDetector(DivergenceSettings(mode=mode)), counts, None, CurveHistory())


def test_in_stop_mode_a_nan_loss_stops_at_once() -> None:
    hook = watch("stop")
    hook(1, {"loss": 0.5})
    with pytest.raises(DivergedError):
        hook(2, {"loss": math.nan})


def test_in_observe_mode_the_first_signal_is_kept_and_training_goes_on() -> None:
    hook = watch("observe")
    hook(1, {"loss": 0.5})
    assert hook.result() == {}
    hook(2, {"loss": math.nan})
    for step in range(3, 30):
        hook(step, {"loss": math.nan if step < 10 else 0.4})
    assert hook.counts["sweep/steps"] == 29
    result = hook.result()
    assert result[OBSERVED_SIGNAL_KEY] == "non_finite" and result[OBSERVED_STEP_KEY] == 2
    assert "not finite" in result[OBSERVED_REASON_KEY]


def test_an_observed_signal_with_a_non_finite_end_is_a_divergence_and_a_healthy_end_completes() -> None:
    seen = {OBSERVED_SIGNAL_KEY: "loss_explosion", OBSERVED_STEP_KEY: 12, OBSERVED_REASON_KEY: "smoothed loss up"}
    bad = decide_outcome(Ending({"val_loss": math.nan, **seen}, epochs=4, value=0.3), "val_loss", 4)
    assert (bad.status, bad.signal, bad.step) == (DIVERGED, "loss_explosion", 12)
    assert "observed, not stopped" in bad.reason
    good = decide_outcome(Ending({"val_loss": 0.2, **seen}, epochs=4, value=0.2), "val_loss", 4)
    assert good.status == COMPLETED


def test_an_observed_signal_is_reported_when_a_non_finite_metric_then_ends_the_trial() -> None:
    """A user's NaN-gradient trials in observe mode: tagged would-stop in MLflow, missing from the summary."""
    from tests.test_function_trainer import run_loop

    _, channel = run_loop("tests.function_trainers:nan_steps_then_nan_metric", {}, divergence={"mode": "observe"})
    last = channel.reports[-1]
    assert last["sweep/diverged"] and last["epoch"] == 2
    assert (last[OBSERVED_SIGNAL_KEY], last[OBSERVED_STEP_KEY]) == ("non_finite", 3)


def test_the_mode_is_checked_with_the_spec() -> None:
    assert validate_spec({**TOY}, "s.yaml", []).divergence.mode == "observe"
    with pytest.raises(SpecError, match=r"divergence.mode: must be one of stop, observe, got 'watch'"):
        validate_spec({**TOY, "divergence": {"mode": "watch"}}, "s.yaml", [])


def test_observing_with_asha_on_notes_that_asha_may_cut_a_flagged_trial_before_its_end() -> None:
    assert validate_spec({**TOY}, "s.yaml", []).notes == ()  # asha: false
    notes = dict(validate_spec({**TOY, "asha": {"grace_period": 1}}, "s.yaml", []).notes)
    assert "set asha.enabled: false to train every trial to the end" in notes["divergence.mode"]
    assert "divergence.mode" not in dict(validate_spec({**TOY, "asha": {}, "divergence": {}}, "s.yaml", []).notes)


@pytest.mark.integration
def test_an_observed_sweep_stops_nothing_and_records_the_would_be_stops(ray_session: None, workdir: Path) -> None:
    from mlflow import MlflowClient

    from sweeps.engine.runner import run_sweep
    from sweeps.results.report import result_rows, would_stop_epoch
    from sweeps.results.summary import divergence_summary
    from sweeps.spec.sweep_spec import load_spec

    (workdir / "spec.yaml").write_text(yaml.safe_dump(TOY))
    spec = load_spec(workdir / "spec.yaml", overrides=["budget.trials=4"])
    result = run_sweep(spec, root=workdir / "runs", name="observe", stream=io.StringIO())

    records = list(result.state.trials.values())
    assert {r.status for r in records} == {COMPLETED}  # the NaN steps of epoch 2 stopped nothing
    flagged = [r for r in records if r.params["behavior"] == "diverge"]
    assert flagged and all(r.would_stop == "non_finite@6" and r.epochs == 3 for r in flagged)
    assert all(not r.would_stop for r in records if r.params["behavior"] == "ok")
    client = MlflowClient(result.tracking_uri)
    for record in flagged:
        tags = client.get_run(record.run_id).data.tags
        assert tags["sweep.would_stop.signal"] == "non_finite" and tags["sweep.would_stop.step"] == "6"
        assert tags["sweep.status"] == COMPLETED
    summary = divergence_summary(result.state)
    assert f"would have stopped (observe mode): {len(flagged)}" in summary
    # step 6 of 5-step epochs: epoch 2, its val_loss (the NaN steps harmed nothing), then better at the end
    recovered = r"non_finite@6 \(epoch 2: val_loss=[0-9.]+, then better by [0-9.e-]+ \(\d+%\)\) -> completed"
    assert re.search(recovered, summary), summary
    rows = {row["trial"]: row for row in result_rows(result.state)}  # the learning curves' cross: epoch 2's NaNs
    assert {would_stop_epoch(rows[r.label]) for r in flagged} == {2}
    assert {would_stop_epoch(row) for row in rows.values() if not row["would_stop"]} == {0}


@pytest.mark.integration
def test_a_would_be_stop_is_kept_when_the_trials_process_then_dies(ray_session: None, workdir: Path) -> None:
    """A user's flagged trial was then killed (hung, ``budget.trial_time``): its would-be stop left the summary."""
    from sweeps.engine.runner import run_sweep
    from sweeps.results.summary import divergence_summary
    from sweeps.spec.sweep_spec import load_spec

    data = {**TOY, "budget": {"trials": 1, "epochs": 3, "retries": 0}, "params": {"behavior": ["diverge_die"]}}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(data))
    result = run_sweep(load_spec(workdir / "spec.yaml"), root=workdir / "runs", name="dies", stream=io.StringIO())
    (record,) = result.state.trials.values()
    assert record.status == "failed" and record.would_stop == "non_finite@6"
    assert "t000 non_finite@6 -> failed" in divergence_summary(result.state)


def test_an_observed_sweep_where_no_signal_fired_says_so() -> None:
    from sweeps.core.records import SweepState, TrialRecord
    from sweeps.results.summary import divergence_summary

    state = SweepState(metric="val_loss", mode="min")
    state.trials["a"] = TrialRecord(0, "a", "r0", {}, {}, status=COMPLETED, value=0.3, epochs=3)
    said = divergence_summary(state, observing=True)
    assert said == "would have stopped (observe mode): 0 (the detector watched every step; no signal fired)"
    assert divergence_summary(state) == ""  # a sweep that stops on divergence has nothing to say here
    assert validate_spec(dict(TOY), "spec.yaml", []).observing
    assert not validate_spec({**TOY, "divergence": {}}, "spec.yaml", []).observing
    assert not validate_spec({**TOY, "divergence": False}, "spec.yaml", []).observing


def test_an_observed_trial_whose_output_was_still_collapsed_at_its_end_says_so() -> None:
    """A user's observe sweep: 8 all-zero trials read "-> completed val_mse=0.085265, rank 1 of 12 completed"."""
    from sweeps.core.keys import COLLAPSED_AT_END_KEY, OBSERVED_SIGNAL_KEY, OBSERVED_STEP_KEY
    from sweeps.core.records import SweepState, TrialRecord
    from sweeps.results.summary import divergence_summary

    state = SweepState(metric="val_mse", mode="min")
    state.trials["a"] = record = TrialRecord(0, "a", "r0", {}, {})
    stuck = "all-zero output for its last 16 steps, to the end of its training"
    report = {"epoch": 4, "val_mse": 0.085265, OBSERVED_SIGNAL_KEY: "collapse", OBSERVED_STEP_KEY: 16}
    state.observe(record, {**report, COLLAPSED_AT_END_KEY: stuck})
    record.status = COMPLETED
    assert record.collapsed_at_end == stuck
    assert divergence_summary(state).endswith("rank 1 of 1 completed, its output still collapsed at its end")


def test_in_observe_mode_a_later_signal_no_step_undoes_is_kept_after_a_first_that_may_recover() -> None:
    """A user's observed trial: 6 overflows in a row at step 7 (may recover), then its loss scale fell below its
    floor and its loss went NaN; it read "then better by 4%, completed", the later damage nowhere."""
    from sweeps.core.keys import OBSERVED_LATER_KEY
    from sweeps.core.records import SweepState, TrialRecord
    from sweeps.results.summary import divergence_summary

    hook = watch("observe")
    scale = 65536.0
    for step in range(1, 41):
        skipped = step > 4  # four good steps after calibration, then an overflow at every step
        scale = scale / 2 if skipped else scale
        hook(step, {"loss": 0.5, "g/loss_scale": scale, "g/skipped": float(skipped)})
    result = hook.result()
    assert (result[OBSERVED_SIGNAL_KEY], result[OBSERVED_STEP_KEY]) == ("loss_scale", 10)
    later = result[OBSERVED_LATER_KEY]
    assert later.startswith("loss_scale@") and "floor" in later and int(later.split("@")[1].split(":")[0]) > 10

    state = SweepState(metric="val_psnr", mode="max")
    state.trials["a"] = record = TrialRecord(6, "a", "r6", {}, {})
    state.observe(record, {"epoch": 4, "val_psnr": 22.381, **result})
    record.status = COMPLETED
    assert divergence_summary(state).endswith(f"; later {later.split(':')[0]}, which no later step undoes")


def test_a_trial_resumed_from_a_checkpoint_keeps_its_first_would_be_stop() -> None:
    """A resumed observe-mode trial forgot the stop it was flagged for before its checkpoint: it was
    flagged again at a later step (its run's tags overwritten) or reported none."""
    hook = watch("observe")
    hook(1, {"loss": 0.5})
    hook(2, {"loss": math.nan})
    for step in range(3, 12):
        hook(step, {"loss": 0.4})
    saved = pickle.loads(pickle.dumps(hook.state()))  # as the checkpoint file holds it
    resumed = watch("observe")
    resumed.load_state(saved)
    for step in range(12, 20):
        resumed(step, {"loss": math.nan if step > 15 else 0.4})  # a second non-finite spell after the restore
    result = resumed.result()
    assert (result[OBSERVED_SIGNAL_KEY], result[OBSERVED_STEP_KEY]) == ("non_finite", 2), result
    assert "not finite" in result[OBSERVED_REASON_KEY]
