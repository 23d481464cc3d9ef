"""What a trial leaves besides its metrics: curves (drawn before a report that may end it, a warning when they
cannot be), and the live status line's count of trials with precision rescues."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from sweeps.core.keys import DIVERGED_KEY, EPOCH_SECONDS_KEY, FIRST_EPOCH_SECONDS_KEY, TAG_WARNING
from sweeps.core.plan import TrialPlan
from sweeps.core.records import SweepState, TrialRecord
from sweeps.engine.live_view import status_line
from sweeps.results.summary import divergence_summary, unstable_best_note
from sweeps.tracking.curves import CurveHistory
from sweeps.tracking.trial_logger import TrialLogger
from sweeps.trial.epoch_loop import EpochLoop
from tests.function_trainers import MemoryChannel
from tests.helpers import ROOT


def test_the_status_line_counts_rescues_beside_the_budgets_trials() -> None:
    state = SweepState(metric="val_loss", mode="min")
    first, second = TrialRecord(0, "a", "r0", {}, {}), TrialRecord(1, "b", "r1", {}, {})
    rescue = TrialRecord(0, "c", "r2", {}, {}, rescue_of=first)
    for record in (first, second, rescue):
        state.trials[record.ray_id] = record
    state.finish(first, "diverged")
    state.finish(second, "completed")
    assert "trials 2/2 done · running 1" in status_line(state, 2, 0.0)
    state.finish(rescue, "completed")
    line = status_line(state, 2, 0.0)
    assert "trials 2/2 done (+1 rescue) · running 0" in line and "3/2" not in line


def test_a_rescue_is_never_the_sweeps_best() -> None:
    """A user's sweep whose only completed trial was a rescue said ``best: t001r`` and ``next: sweeps export``,
    which then found no trial to export (rescues are never exported)."""
    state = SweepState(metric="val_psnr", mode="max")
    first, second = TrialRecord(0, "a", "r0", {}, {}), TrialRecord(1, "b", "r1", {}, {})
    rescue = TrialRecord(0, "c", "r2", {}, {}, rescue_of=first)
    rescue.value, second.value = 18.6, 12.0
    state.finish(first, "diverged")
    state.finish(rescue, "completed")
    assert state.best is None
    state.finish(second, "completed")
    assert state.best is second


def test_a_best_trial_that_skipped_many_steps_is_said_so_at_the_end() -> None:
    """A user's GAN that never learned (75% of its steps overflowed) was its sweep's best, unremarked."""
    state = SweepState(metric="val_fd", mode="min")
    best, other = TrialRecord(2, "a", "r0", {}, {}), TrialRecord(1, "b", "r1", {}, {})
    best.value, other.value = 0.42, 0.5
    best.steps, best.skipped_steps, other.steps = 12, 9, 12
    for record in (best, other):
        state.finish(record, "completed")
    assert unstable_best_note(state) == (
        "note:    the best, t002, had a loss-scale overflow (an update skipped) on 75% of its training steps "
        "(9 of 12); sweeps export --skip-unstable passes over trials above 5%"
    )
    best.skipped_steps = 0  # an fp16 trial's calibration overflows are not counted
    assert unstable_best_note(state) == ""


def test_the_count_of_divergences_by_signal_says_how_many_were_rescues() -> None:
    state = SweepState(metric="val_loss", mode="min")
    first, second = TrialRecord(0, "a", "r0", {}, {}), TrialRecord(1, "b", "r1", {}, {})
    rescue = TrialRecord(0, "c", "r2", {}, {}, rescue_of=first)
    first.rescue = rescue
    for record in (first, second, rescue):
        state.trials[record.ray_id] = record
        record.signal = "loss_scale" if record is not rescue else "loss_explosion"
    state.finish(first, "diverged")
    state.finish(second, "diverged")
    assert divergence_summary(state).splitlines()[0] == "diverged by signal: loss_scale 2"
    state.finish(rescue, "diverged")
    first_line = divergence_summary(state).splitlines()[0]
    assert first_line == "diverged by signal: loss_explosion 1, loss_scale 2 (3 trials, 1 of them a rescue)"
    lines = divergence_summary(state).splitlines()
    assert lines[1:] == [
        "diverged because of precision (the bf16/fp32 rescue completed): 0",
        "diverged anyway (the rescue diverged too): 1 (t000)",
    ]


class _Events:
    """A logger and a channel writing what happens, in order, to one list."""

    def __init__(self, root: Path) -> None:
        self.events: list[str] = []
        self.logged: dict[str, int] = {}
        self.root, self.folders = root, 0

    # the logger's side
    def resume(self, undelivered: list[tuple[str, float, int, int]]) -> None:
        pass  # a fresh run: the store has nothing of this trial yet

    def add_step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def record_held(self) -> None:
        self.events.append("record held steps")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.events.append(f"epoch {step}")

    def log_texts(self, texts: dict[str, str]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def spool_folder(self) -> Path:
        self.folders += 1
        (self.root / str(self.folders)).mkdir()
        return self.root / str(self.folders)

    def log_spooled(self, path: Path, folder: str | None = None) -> None:
        self.events.append(f"upload {folder}/{path.name}")

    def flush(self, timeout: float = 0.0) -> bool:
        self.events.append(f"flush {timeout:g}")
        return True

    def undelivered(self) -> list[Any]:
        return []

    def warn(self, message: str) -> None:
        self.events.append(f"warn {message}")

    # the channel's side
    def restore(self) -> None:
        return None

    def agree(self, decision: bool) -> bool:
        return decision

    def report(self, result: dict[str, Any], state: Any) -> bool:
        self.events.append("report diverged" if result.get(DIVERGED_KEY) else f"report {result['epoch']}")
        return state is not None


def test_a_diverged_trials_curves_and_steps_are_delivered_before_its_last_report(tmp_path: Path) -> None:
    events = _Events(tmp_path)
    plan = TrialPlan("examples.plain_loop_sweepable:train", "val_loss", 3, report_every_s=0.0)
    loop = EpochLoop(plan, {"lr": 1.0}, logger=events)  # type: ignore[arg-type]
    with contextlib.redirect_stdout(io.StringIO()):
        loop.run(events)
    # Tune may end the process at the last report: nothing may be left to draw or send after it
    assert events.events[-3:] == ["upload curves/curves.png", "flush 900", "report diverged"]


def test_a_diverged_trials_run_holds_its_step_count_at_the_stop(tmp_path: Path) -> None:
    """A user's trial stopped at step 30, in epoch 2: its run said sweep/steps 16 (epoch 1's), results.csv 30."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("stopped", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    logger = TrialLogger(uri, run_id)
    channel = MemoryChannel()
    plan = TrialPlan("examples.plain_loop_sweepable:train", "val_loss", 3, report_every_s=0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        EpochLoop(plan, {"lr": 1.0}, logger).run(channel)
    assert logger.close(timeout=60)
    last = channel.reports[-1]
    assert last[DIVERGED_KEY] and last["sweep/steps"] > 0
    history = client.get_metric_history(run_id, "sweep/steps")
    assert (history[-1].step, history[-1].value) == (last["epoch"], last["sweep/steps"])


def test_a_plot_that_cannot_be_drawn_is_a_warning_in_the_trials_log_and_a_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("curves", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    logger = TrialLogger(uri, run_id)
    loop = EpochLoop(TrialPlan("x:y", "val_loss", 1), {}, logger)
    loop.curves.add(1, {"loss": 1.0})
    loop.log_curves()  # drawn into the logger's own spool folder, no temporary one
    loop.curves.add(2, {"loss": 0.5})

    def broken(self: CurveHistory, folder: Path) -> list[Path]:
        raise FileNotFoundError(2, "No such file or directory", str(folder / "curves.png"))

    monkeypatch.setattr(CurveHistory, "plot", broken)
    with caplog.at_level(logging.WARNING):
        loop.log_curves()
    assert logger.close(timeout=60)
    assert "could not draw curves: FileNotFoundError" in caplog.text
    run = client.get_run(run_id)
    assert run.data.tags[TAG_WARNING].startswith("could not draw curves: FileNotFoundError")
    assert [a.path for a in client.list_artifacts(run_id, "curves")] == ["curves/curves.png"]  # the first plot


def test_a_function_trials_image_is_logged_each_epoch(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("images", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    logger = TrialLogger(uri, run_id)
    plan = TrialPlan("tests.function_trainers:amp_train", "val_loss", 2, report_every_s=0.0)
    EpochLoop(plan, {"device": "cpu"}, logger).run(MemoryChannel())
    assert logger.close(timeout=60)
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert images == ["images/epoch_001.png", "images/epoch_002.png"]
    assert {"loss", "loss/mse", "loss/l1", "model/loss_scale", "output_std"} <= set(client.get_run(run_id).data.metrics)


def test_a_batch_from_sample_grid_is_tiled_and_an_image_that_cannot_be_made_is_a_warning(tmp_path: Path) -> None:
    """``sample_grid`` may return a batch, as ``run.image`` takes one; a bad image never fails the trial."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("grids", artifact_location=(tmp_path / "artifacts").as_uri())
    for trainer, images in (("BatchImageToyTrainer", 2), ("BadImageToyTrainer", 0)):
        run_id = client.create_run(experiment).info.run_id
        logger = TrialLogger(uri, run_id)
        plan = TrialPlan(f"tests.toy_trainer:{trainer}", "val_loss", 2, report_every_s=0.0)
        metrics = EpochLoop(plan, {}, logger).run(MemoryChannel())
        assert logger.close(timeout=60)
        assert "val_loss" in metrics  # both trained to the end
        assert len(client.list_artifacts(run_id, "images")) == images
        warning = client.get_run(run_id).data.tags.get(TAG_WARNING, "")
        if images:
            assert not warning
        else:
            assert warning.startswith("could not save the epoch 1 image: ValueError: an image is (C, H, W)")


def test_an_image_batch_of_other_than_1_or_3_channels_is_refused_saying_what_an_image_is() -> None:
    """A user's sample_grid of 5-channel samples got torch's "The expanded size of the tensor (3) must match"."""
    import torch

    from trainables.images import as_image

    assert tuple(as_image(torch.rand(2, 1, 4, 4)).shape)[0] == 3
    with pytest.raises(ValueError, match=r"^an image is \(C, H, W\) with 1 or 3 channels, .* shape \(2, 5, 4, 4\)$"):
        as_image(torch.rand(2, 5, 4, 4))


def test_a_trial_that_diverges_between_reports_keeps_its_last_finite_value_in_the_sweeps_records() -> None:
    """Epoch 1 validated (1.0) but was not reported (the cadence waits); epoch 2's metric is NaN: a divergence.

    The driver's record (the terminal table, ``results.csv``) shows 1.0, as the trial's MLflow run
    does, not '-'.
    """
    plan = TrialPlan("tests.function_trainers:nan_at_epoch_two", "val_loss", 3, report_every_s=1000.0)
    channel = MemoryChannel()
    EpochLoop(plan, {}).run(channel)
    assert len(channel.reports) == 1 and channel.reports[0][DIVERGED_KEY]  # the one report: the divergence
    state = SweepState(metric="val_loss", mode="min")
    record = TrialRecord(0, "a", "r0", {}, {})
    state.observe(record, channel.reports[0])
    assert record.value == 1.0 and record.epochs == 2


def test_a_would_be_stop_says_the_metric_after_its_epoch_and_whether_the_trial_then_recovered() -> None:
    """A user's VQ-VAE read ``t008 collapse@73 -> completed, rank 6 of 12`` and took it for a right flag.

    Six of the twelve "completed" trials were collapsed models scoring the mean image; t008 had
    recovered from its flag in epoch 2 (0.0620) to 0.0461. The line now says so.
    """
    from sweeps.core.keys import HISTORY_KEY, OBSERVED_SIGNAL_KEY, OBSERVED_STEP_KEY, STEPS_KEY

    state = SweepState(metric="val_mse", mode="min")
    recovered, stuck = TrialRecord(8, "a", "r8", {}, {}), TrialRecord(9, "b", "r9", {}, {})
    for record in (recovered, stuck):
        state.trials[record.ray_id] = record
    flag = {OBSERVED_SIGNAL_KEY: "collapse", OBSERVED_STEP_KEY: 73}
    state.observe(recovered, {"epoch": 1, STEPS_KEY: 64, "val_mse": 0.0689})
    # reported at epoch 3 (report cadence): the flag's step 73 is in epoch 2, read from the history
    history = [(2, 0.0620), (3, 0.0589)]
    state.observe(recovered, {"epoch": 3, STEPS_KEY: 192, "val_mse": 0.0589, HISTORY_KEY: history, **flag})
    state.observe(recovered, {"epoch": 5, STEPS_KEY: 320, "val_mse": 0.0461, **flag})
    state.observe(stuck, {"epoch": 1, STEPS_KEY: 64, "val_mse": 0.0555, **{**flag, OBSERVED_STEP_KEY: 26}})
    state.observe(stuck, {"epoch": 5, STEPS_KEY: 320, "val_mse": 0.0556, **{**flag, OBSERVED_STEP_KEY: 26}})
    for record in (recovered, stuck):
        state.finish(record, "completed")
    lines = divergence_summary(state, observing=True).splitlines()
    assert (
        lines[1] == "  t008 collapse@73 (epoch 2: val_mse=0.062, then better by 0.0159 (26%)) -> completed "
        "val_mse=0.0461, rank 1 of 2 completed"
    )
    assert (
        lines[2] == "  t009 collapse@26 (epoch 1: val_mse=0.0555, then within 1%) -> completed val_mse=0.0556, "
        "rank 2 of 2 completed"
    )


def test_a_best_value_at_an_end_of_its_range_gets_a_note_that_the_best_may_lie_beyond() -> None:
    """A user's best lr_g was 0.000984 in 1e-4..1e-3 and lr_d 0.000101: nothing said the ranges cut them off."""
    from sweeps.results.summary import range_edge_notes
    from sweeps.spec.params import ParamSpec

    params = {
        "lr_g": ParamSpec("lr_g", "float", 1e-4, 1e-3, log=True),
        "lr_d": ParamSpec("lr_d", "float", 1e-4, 1e-3, log=True),
        "beta": ParamSpec("beta", "float", 0.0, 1.0),
        "width": ParamSpec("width", "int", 1, 8),
        "precision": ParamSpec("precision", "categorical", choices=["fp32", "fp16"]),
    }
    best = {"lr_g": 0.000984, "lr_d": 0.000101, "beta": 0.5, "width": 8, "precision": "fp16"}
    assert range_edge_notes(params, best) == [
        "note:    the best lr_g, 0.000984, is at the top of its range (0.0001..0.001): the best may lie above it; "
        "widen the range to see",
        "note:    the best lr_d, 0.000101, is at the bottom of its range (0.0001..0.001): the best may lie below it; "
        "widen the range to see",
        "note:    the best width, 8, is at the top of its range (1..8): the best may lie above it; "
        "widen the range to see",
    ]
    assert range_edge_notes(params, {"lr_g": 3e-4, "width": 4}) == []


def test_the_recorded_commit_is_the_trainers_checkout_s_from_a_folder_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user ran a built-in trainer of a git checkout from a folder outside it: the export said git_commit ''."""
    from sweeps.tracking.provenance import git_commit, trainer_commit

    checkout = git_commit(ROOT)
    if not checkout:
        pytest.skip("the project is not a git checkout here")
    monkeypatch.chdir(tmp_path)  # no git repository here
    assert git_commit() == "" and trainer_commit("vae") == checkout
    assert trainer_commit("no_such_module:Trainer") == ""


def test_the_reports_imports_start_only_once_the_sweeps_end_is_near() -> None:
    """Not at the first result (the trials need the CPUs): once all trials are asked, on a halt, near the deadline."""
    import time

    from sweeps.engine.callbacks import ReportPrewarm

    state = SweepState(metric="val_loss", mode="min")
    counted = ReportPrewarm(state, trials=3)
    for number in range(2):
        state.trials[f"t{number}"] = TrialRecord(number, f"t{number}", f"r{number}", {}, {})
    counted.on_step(1, [])
    assert not counted.started
    state.trials["t2"] = TrialRecord(2, "t2", "r2", {}, {})  # the budget's last trial is asked
    counted.on_step(2, [])
    assert counted.started

    timed = ReportPrewarm(SweepState(metric="val_loss", mode="min", deadline=time.time() + 3600), trials=1000)
    assert not timed.near_end()
    timed.state.deadline = time.time() + ReportPrewarm.LEAD_S - 1
    assert timed.near_end()
    halted = ReportPrewarm(SweepState(metric="val_loss", mode="min", halted="every trial fails alike"), trials=1000)
    assert halted.near_end()


def test_each_report_says_how_long_the_trial_took_to_end_its_first_epoch() -> None:
    """From when the process began the trial, the trainer's build in: with ``budget.time`` the driver asks for
    no trial that could not end a first epoch in the time left (``SweepState.no_time_to_start``)."""
    channel = MemoryChannel()
    plan = TrialPlan("tests.toy_trainer:ToyTrainer", "val_loss", 3, report_every_s=0.0)
    began = time.monotonic()
    EpochLoop(plan, {"epoch_seconds": 0.4}, None).run(channel)
    took = time.monotonic() - began
    assert [r["epoch"] for r in channel.reports] == [1, 2, 3]
    firsts = {r[FIRST_EPOCH_SECONDS_KEY] for r in channel.reports}
    assert len(firsts) == 1, firsts  # the first epoch's, in every report
    (first,) = firsts
    assert 0.4 <= first <= took - 0.8  # its first epoch, not a later one
    assert channel.reports[-1][EPOCH_SECONDS_KEY] >= 0.4
