"""Real sweeps: local Ray (2 CPUs), an Optuna study on disk, MLflow on SQLite in a temp dir."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps.cli import _print_result, main
from sweeps.core.outcome import NOT_STARTED
from sweeps.engine.resume import check_resumable
from sweeps.engine.runner import SweepResult, run_sweep
from sweeps.results.export import best_config, study_shortfall, write_export
from sweeps.results.report import read_results
from sweeps.spec.sweep_spec import load_spec
from sweeps.store.study import load_study
from sweeps.store.sweep_dir import SweepStoreError, open_sweep_dir
from sweeps.trial.from_file import load_run_file, train_from_file
from tests.helpers import ROOT, toy_spec, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]

VAE_SPEC = {
    "name": "it-vae",
    "trainer": "vae",
    "metric": {"name": "val_mse", "mode": "min"},
    "seed": 3,
    "budget": {"trials": 6, "epochs": 3, "concurrency": 2},
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "search": {"n_startup_trials": 3},
    "fixed": {"image_size": 16, "train_images": 64, "val_images": 32, "width": 4, "batch_size": 16},
    "params": {
        "lr": {"type": "float", "low": "1e-4", "high": "1e-2", "log": True},
        "kernel_size": {"choices": [3, 5]},
        "kl_weight": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "precision": {"choices": ["fp32", "bf16", "fp16"]},
        "init_scale": {"type": "float", "low": 256, "high": 65536, "log": True, "when": {"precision": "fp16"}},
    },
}


def sweep(workdir: Path, data: dict[str, Any]) -> SweepResult:
    path = write_spec(workdir, data, f"{data['name']}.yaml")
    return run_sweep(load_spec(path), root=workdir / "runs", name=data["name"], stream=io.StringIO())


def runs_of(result: SweepResult) -> tuple[Any, list[Any]]:
    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name(
        result.state.trials and next(iter([result.sweep.read_meta()["spec_name"]]))
    )
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`sweep.name` = '{result.sweep.name}'", max_results=1000
    )
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r.data.tags.get("sweep.role") == "trial"]


def study_of(result: SweepResult) -> optuna.Study:
    return load_study(result.sweep)


def study_of_sweep(workdir: Path, name: str) -> optuna.Study:
    return load_study(open_sweep_dir(workdir / "runs", name))


def test_vae_sweep_records_every_trial_and_export_retrains_within_1pct(workdir: Path) -> None:
    result = sweep(workdir, VAE_SPEC)
    assert (workdir / "mlflow.db").exists()  # the default store, in the working dir
    parent, children = runs_of(result)
    assert len(children) == 6
    client = mlflow.MlflowClient(result.tracking_uri)
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"lr", "kernel_size", "kl_weight", "precision"} <= set(run.data.params)
        assert ("init_scale" in run.data.params) == (run.data.params["precision"] == "fp16")
        status = run.data.tags["sweep.status"]
        assert status in ("completed", "pruned")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")]
        assert steps == list(range(1, int(run.data.tags["sweep.epochs"]) + 1))
        assert (status == "completed") == (len(steps) == 3)
        assert run.info.run_name.startswith(f"t{int(run.data.tags['sweep.trial']):03d} ")
        # Nothing had finished when trial 0 was drawn: TPE's start-up draw, or one of the random share.
        assert run.data.tags["sweep.drawn_by"] in (
            {"startup", "random"} if run.data.tags["sweep.trial"] == "0" else {"startup", "random", "tpe"}
        )
        assert f"precision={run.data.params['precision']}" in run.info.run_name
        trial = study_of(result).trials[int(run.data.tags["sweep.trial"])]
        assert float(run.data.params["lr"]) == trial.params["lr"]  # exactly: what the UI shows is the trial's value
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "images"}
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert images == [f"images/epoch_{e:03d}.png" for e in steps]
        # one checkpoint per epoch was saved; the superseded ones were deleted, the last one kept
        [trial_dir] = (result.sweep.path / "ray").glob(f"trial_{run.data.tags['ray.trial_id']}")
        assert [p.name for p in trial_dir.glob("checkpoint_*")] == [f"checkpoint_{len(steps) - 1:06d}"]
    completed = sorted(
        (r for r in children if r.data.tags["sweep.status"] == "completed"), key=lambda r: r.data.metrics["val_mse"]
    )
    for rank, run in enumerate(completed):  # the best 3 keep their checkpoint
        has_checkpoint = "checkpoint" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert has_checkpoint == (rank < 3)
        assert {"vae/lr", "vae/loss_scale", "vae/grad_norm", "loss/kl"} <= set(run.data.metrics)
    # the results table says how each trial was drawn, as its run's tag does
    drawn = {row["number"]: row["drawn_by"] for row in read_results(result.sweep.path / "report")}
    assert drawn == {int(r.data.tags["sweep.trial"]): r.data.tags["sweep.drawn_by"] for r in children}
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    expected = {"results.parquet", "results.csv", "importances.json", "report.html", "plots.html"}
    assert {f"report/{name}" for name in expected} <= report
    assert {"spec.yaml", "summary.txt", "best_config.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    trials = study_of(result).trials
    assert len(trials) == 6
    by_number = {str(t.number): t for t in trials}
    for run in children:
        trial = by_number[run.data.tags["sweep.trial"]]
        expected = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}[run.data.tags["sweep.status"]]
        assert trial.state == expected
        # only a completed trial has a final value (the MLflow trials view sorts by it: no pruned one among them)
        final = run.data.metrics.get("sweep/final")
        assert final == (run.data.metrics["val_mse"] if expected == TrialState.COMPLETE else None)
        assert trial.params == {k: v for k, v in trial.user_attrs["config"].items() if k in trial.params}
        # what an epoch of its config took, for search.cost_aware: more than nothing, less than the sweep
        assert 0 < trial.user_attrs["epoch_s"] < 60

    exported = write_export(best_config(open_sweep_dir(workdir / "runs", result.sweep.name)), workdir / "best.yaml")
    data = load_run_file(exported)
    assert data["source"]["mlflow_run_id"] in {r.info.run_id for r in children}
    # the parent run's best_config.yaml is that export: `sweeps train` runs it as it is
    on_parent = Path(client.download_artifacts(parent.info.run_id, "best_config.yaml", str(workdir)))
    assert load_run_file(on_parent) == data
    metrics = train_from_file(data, stream=io.StringIO())
    assert metrics["val_mse"] == pytest.approx(data["metric"]["value"], rel=0.01)


def test_trials_cut_by_asha_are_pruned_in_optuna_mlflow_and_the_summary(workdir: Path) -> None:
    result = sweep(workdir, toy_spec("it-prune", budget__trials=8))
    _, children = runs_of(result)
    mlflow_pruned = {r.data.tags["sweep.trial"] for r in children if r.data.tags["sweep.status"] == "pruned"}
    optuna_pruned = {str(t.number) for t in study_of(result).trials if t.state == TrialState.PRUNED}
    state_pruned = {str(r.number) for r in result.state.trials.values() if r.status == "pruned"}
    assert mlflow_pruned and mlflow_pruned == optuna_pruned == state_pruned
    assert len(children) == 8 and result.state.counts.get("completed", 0) + len(state_pruned) == 8
    for trial in study_of(result).trials:
        if trial.state == TrialState.PRUNED:
            assert max(trial.intermediate_values) < 4
        else:  # epoch 3 is no rung: reported with epoch 4, and still an intermediate value of its own
            assert sorted(trial.intermediate_values) == [1, 2, 3, 4]


def test_a_metric_never_produced_stops_the_sweep_after_the_first_failure(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # every trial would fail so: the rest of the budget is not burnt on it
    data = toy_spec("it-nometric", budget__trials=6, budget__concurrency=2, metric={"name": "val_psnr", "mode": "max"})
    result = sweep(workdir, data)
    parent, children = runs_of(result)
    assert 1 <= len(children) <= 4  # the two running and at most one asked ahead; never the six
    client = mlflow.MlflowClient(result.tracking_uri)
    failed = [run for run in children if run.data.tags["sweep.status"] == "failed"]
    assert failed and {run.data.tags["sweep.status"] for run in children} <= {"failed", "interrupted"}
    for run in failed:
        assert run.info.status == "FAILED"
        assert "metric 'val_psnr' not produced" in run.data.tags["sweep.reason"]
        assert "traceback.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert re.fullmatch(r"t00\d failed: MetricMissingError: metric 'val_psnr' not produced .*", result.state.halted)
    assert parent.data.tags["sweep.halted"] == result.state.halted
    meta = result.sweep.read_meta()
    assert meta["status"] == "interrupted" and meta["halted"] == result.state.halted and result.interrupted
    assert _print_result(result, load_spec(workdir / "it-nometric.yaml"), str(workdir / "runs")) == 1
    assert "every trial would fail so: fix the trainer or the spec" in capsys.readouterr().err
    with pytest.raises(SweepStoreError, match="stopped after t00.* run it again: .*sweeps run "):
        check_resumable(workdir / "runs", "it-nometric")
    assert main(["list", "--storage", str(workdir / "runs")]) == 0
    assert re.search(r"it-nometric  stopped \(after t00\d failed: every trial would fail so\)", capsys.readouterr().out)


def test_a_sweep_whose_every_trial_failed_exits_1_and_one_that_found_something_exits_0(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a user's own trainer with a data folder that is not there: every trial failed, and the sweep exited 0
    data = toy_spec("it-allfail", trainer="tests.function_trainers:missing_data", budget__trials=3, asha=False)
    result = sweep(workdir, data)
    assert {r.status for r in result.state.trials.values()} == {"failed"} and not result.interrupted
    assert _print_result(result, load_spec(workdir / "it-allfail.yaml"), str(workdir / "runs")) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: all 3 trials failed \(t000: FileNotFoundError: data_dir '/no/such/dir' does not", err)
    # some trials failing (a region of the space) and the others training: the sweep found something
    data = toy_spec("it-somefail", trainer="tests.function_trainers:fails_above", budget__trials=4, asha=False)
    data["params"]["lr"] = {"choices": [0.001, 0.1]}
    data["search"] = {"sampler": "random"}
    result = sweep(workdir, data)
    statuses = sorted(r.status for r in result.state.trials.values())
    assert "failed" in statuses and "completed" in statuses, statuses
    assert _print_result(result, load_spec(workdir / "it-somefail.yaml"), str(workdir / "runs")) == 0
    assert "error:" not in capsys.readouterr().err


def test_a_loop_numbering_its_reports_from_zero_stops_the_sweep_after_the_first_failure(workdir: Path) -> None:
    data = toy_spec("it-fromzero", trainer="tests.function_trainers:reports_from_zero", budget__trials=6)
    data["budget"]["concurrency"] = 2
    result = sweep(workdir, data)
    _, children = runs_of(result)
    assert 1 <= len(children) <= 4  # the two running and at most one asked ahead; never the six
    assert re.fullmatch(
        r"t00\d failed: ReportCallError: run.report\(epoch, \.\.\.\): epoch counts .*", result.state.halted
    )
    assert result.interrupted


def test_a_time_budget_ends_the_sweep_on_time_and_its_running_trials_are_interrupted_by_it(workdir: Path) -> None:
    data = toy_spec("it-time", budget__trials=40, budget__concurrency=2, budget__time="20s", asha={"enabled": False})
    data["fixed"] = {"epoch_seconds": 2.5}  # 10 s a trial: trials are running when the time runs out
    started = time.monotonic()
    out = io.StringIO()
    result = run_sweep(
        load_spec(write_spec(workdir, data, "t.yaml")), root=workdir / "runs", name="it-time", stream=out
    )
    took = time.monotonic() - started
    assert 20 <= took < 55  # its setup, then 20 s, then the running trials stopped and everything recorded
    ended = {record.status for record in result.state.trials.values()}
    assert ended <= {"completed", "interrupted"}
    assert 2 <= len(result.state.trials) < 40
    cut = [r for r in result.state.trials.values() if r.status == "interrupted" and not r.never_started]
    assert cut and all(
        re.fullmatch(r"budget\.time ran out (after epoch \d of 4|before its first epoch ended \(of 4\))", r.reason)
        for r in cut
    ), cut
    assert all(r.started for r in result.state.trials.values() if r.epochs)  # Tune's on_trial_start marked them
    waiting = [r for r in result.state.trials.values() if r.never_started]  # asked ahead of a slot
    assert all(r.reason.startswith("budget.time ran out before it started") for r in waiting), waiting
    assert all(r.steps > 0 for r in result.state.trials.values() if r.epochs)  # those whose last report never came too
    lines = out.getvalue().splitlines()  # a line for each trial as it ends, those the deadline ended too
    assert all(any(line.startswith(f"  {r.label:<5} interrupted ") for line in lines) for r in cut), lines
    meta = result.sweep.read_meta()
    assert meta["status"] == "completed" and not result.interrupted  # the budget it was given, used
    assert meta["deadline"] == result.state.deadline and result.state.time_up()
    # fewer trials than budget.trials, all in the study: not a damaged journal (every time-limited export said so)
    assert meta["trials_asked"] == len(result.state.trials) and study_shortfall(study_of(result), meta) == ""
    parent, children = runs_of(result)
    assert len(children) == len(result.state.trials) and parent.info.status == "FINISHED"
    # the record says the time ended it, not a short budget: the run's end said so, the report and list did not
    done = sum(1 for r in result.state.trials.values() if r.status == "completed")
    said = f"budget.time ran out after {done} of 40 trials; {len(cut)} more cut short by it (interrupted)"
    said += f"; {len(waiting)} asked for and never started" if waiting else ""
    if result.state.stopped_asking_left_s is not None:  # the searcher stopped asking before the deadline
        stop = meta["time_ran_out"][len(said) :]
        assert re.fullmatch(
            r"; none started in its last \d\.\d s, less than the fastest trial needed to end its first epoch "
            r"\(\d\.\d s\)",
            stop,
        ), meta["time_ran_out"]
        said += stop
    assert meta["time_ran_out"] == said and parent.data.tags["sweep.time_ran_out"] == said
    assert said.capitalize() in (result.sweep.path / "report" / "report.html").read_text()
    summary = mlflow.MlflowClient(result.tracking_uri).download_artifacts(
        parent.info.run_id, "summary.txt", str(workdir)
    )
    assert f"time:    {said}" in Path(summary).read_text()
    capsys = io.StringIO()
    with contextlib.redirect_stdout(capsys):
        assert main(["report", "it-time", "--storage", str(workdir / "runs")]) == 0
        assert main(["list", "--storage", str(workdir / "runs")]) == 0
    printed = capsys.getvalue()
    assert f"time:    {said}" in printed and "it-time  completed (budget.time ran out)  " in printed, printed


def test_no_trial_starts_that_could_not_end_its_first_epoch_before_budget_time_runs_out(workdir: Path) -> None:
    """A trial asked for with less time left than any trial had needed for its first epoch trained it past the
    deadline (or was cut by the grace, unrecorded): the sweep now stops asking and ends when its trials do."""
    data = toy_spec("it-late", budget={"trials": 10, "epochs": 1, "time": "20s", "concurrency": 1}, asha=False)
    data["fixed"] = {"epoch_seconds": 10.0}  # when t000 ends, under 10 s are left: nothing more is asked
    started = time.monotonic()
    result = sweep(workdir, data)
    took = time.monotonic() - started
    state = result.state
    # t000, and t001 if Tune asked for it ahead of the slot while t000 ran (before any epoch had ended)
    assert 1 <= len(state.trials) <= 2 and {r.status for r in state.trials.values()} == {"completed"}, state.trials
    assert state.fastest_first_epoch_s is not None and 10 <= state.fastest_first_epoch_s < 20
    left = state.stopped_asking_left_s
    assert left is not None and left < state.fastest_first_epoch_s, (left, took)
    assert took < 25 + 10 * len(state.trials)  # its setup and the trials; before, one more trained 10 s past it
    said = result.sweep.read_meta()["time_ran_out"]
    assert said.startswith("budget.time ran out after ") and " none started in its last " in said, said


def test_no_trial_trains_an_epoch_that_begins_after_budget_time_ran_out(workdir: Path) -> None:
    """Tune began each trial it had asked for ahead of a free slot as the slot freed, after the deadline too, and it
    trained a first epoch past it. Now none does: it ends untrained, counted with those never begun."""
    traces = workdir / "traces"
    traces.mkdir()
    # no budget.concurrency: Tune asks for trials ahead of the 2 slots of the test's Ray
    data = toy_spec("it-ahead", budget={"trials": 30, "epochs": 2, "time": "20s"}, asha=False)
    data["fixed"] = {"epoch_seconds": 3.0, "stagger": True, "trace_dir": str(traces)}  # epochs of 1.9 to 4.5 s
    result = sweep(workdir, data)
    deadline = result.state.deadline
    assert deadline is not None
    begun = [float(line.split()[3]) for f in traces.iterdir() for line in f.read_text().splitlines()]
    assert begun and max(begun) < deadline, (max(begun) - deadline, begun)  # every epoch began before it
    records = list(result.state.trials.values())
    untrained = [r for r in records if r.never_started]
    assert all(r.status == "interrupted" and r.reason == NOT_STARTED for r in untrained), untrained
    assert all(r.epochs for r in records if not r.never_started)
    said = result.sweep.read_meta()["time_ran_out"]
    assert said.startswith("budget.time ran out after ") and (
        not untrained or f"; {len(untrained)} asked for and never started" in said
    ), said


@pytest.mark.slow
def test_a_trial_in_an_epoch_when_the_time_runs_out_ends_that_epoch(workdir: Path) -> None:
    """A user's trials were stopped 10 s after ``budget.time`` ran out, 9 steps from the end of a 15 s epoch, which
    was lost: the docs say each running trial stops at the end of the epoch it is in."""
    data = toy_spec("it-epoch", budget={"trials": 1, "epochs": 4, "time": "40s"}, asha=False)
    # epoch 1 ends before the deadline (the trial starts within 12 s of the sweep); epoch 2 16 to 24 s after it
    data["fixed"] = {"epoch_seconds": 28.0}
    (record,) = sweep(workdir, data).state.trials.values()
    assert (record.status, record.epochs) == ("interrupted", 2), record
    assert record.reason == "budget.time ran out after epoch 2 of 4"
    (trial,) = study_of_sweep(workdir, "it-epoch").trials
    assert set(trial.intermediate_values) == {1, 2}


def test_a_trial_over_its_time_stops_at_its_epochs_end_and_a_hung_one_is_ended(workdir: Path) -> None:
    """``budget.trial_time``: a slow trial is pruned at the epoch's end; a hung one is killed, failed, not restarted."""
    slow = toy_spec("it-slow", budget={"trials": 1, "epochs": 4, "trial_time": "2s"}, asha=False)
    slow["fixed"] = {"epoch_seconds": 1.5}  # epoch 1 ends at 1.5 s, epoch 2 at 3 s: past the limit
    result = sweep(workdir, slow)
    (record,) = result.state.trials.values()
    assert (record.status, record.epochs) == ("pruned", 2)
    assert record.reason == "budget.trial_time (2 s) ran out after epoch 2 of 4"
    out = io.StringIO()  # a user's sweep whose every trial budget.trial_time ended said nothing of a best
    with contextlib.redirect_stdout(out):
        assert _print_result(result, load_spec(workdir / "it-slow.yaml"), str(workdir / "runs")) == 0
    assert "best:    none: no trial completed (1 pruned); nothing to export\n" in out.getvalue()
    (trial,) = study_of_sweep(workdir, "it-slow").trials
    assert trial.state == TrialState.PRUNED and set(trial.intermediate_values) == {1, 2}

    hung = toy_spec("it-hung", budget={"trials": 1, "epochs": 4, "trial_time": "2s", "retries": 3}, asha=False)
    hung["fixed"] = {"epoch_seconds": 0.5, "behavior": "hang"}
    started = time.monotonic()
    result = sweep(workdir, hung)
    assert time.monotonic() - started < 90  # 2 s + 10 s of grace, not the hour epoch 2 sleeps
    (record,) = result.state.trials.values()
    assert (record.status, record.epochs, record.restarts) == ("failed", 1, 0)
    assert record.reason.startswith(
        "budget.trial_time (2 s) ran out and the epoch the trial was in had not ended 10 s later"
    )
    _, (run,) = runs_of(result)
    assert run.data.tags["sweep.status"] == "failed" and run.info.status == "FAILED"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _print_result(result, load_spec(workdir / "it-hung.yaml"), str(workdir / "runs"))
    assert "errors:" not in printed.getvalue()  # a killed process left no traceback.txt to point to
    printed = io.StringIO()  # the same sweep, had Ctrl-C stopped it: the summary says so and how to go on
    with contextlib.redirect_stdout(printed):
        code = _print_result(dataclasses.replace(result, interrupted=True), load_spec(workdir / "it-hung.yaml"), "r")
    assert code == 130 and "stopped: by Ctrl-C after 1 of 1 trials; to go on from it: " in printed.getvalue()
    assert printed.getvalue().rstrip().endswith(" --storage r --warm-start it-hung")  # the sweep is found there
    printed = io.StringIO()  # a storage folder with a space: the printed command, pasted, read "ü" as an argument
    with contextlib.redirect_stdout(printed):
        _print_result(dataclasses.replace(result, interrupted=True), load_spec(workdir / "it-hung.yaml"), "st ü")
    assert printed.getvalue().rstrip().endswith(" --storage 'st ü' --warm-start it-hung")
    assert [
        m.step for m in mlflow.MlflowClient(result.tracking_uri).get_metric_history(run.info.run_id, "val_loss")
    ] == [1]


def test_a_raising_trial_fails_alone(workdir: Path) -> None:
    spec = toy_spec("it-raise", budget__trials=4, asha={"enabled": False}, params__fail_at_epoch={"choices": [0, 2]})
    result = sweep(workdir, spec)
    _, children = runs_of(result)
    for run in children:
        failing = run.data.params["fail_at_epoch"] == "2"
        assert run.data.tags["sweep.status"] == ("failed" if failing else "completed")
        if failing:
            assert run.data.tags["sweep.reason"].startswith("ValueError: toy failure at epoch 2")
        _, printed = run.data.tags["sweep.prints"].split(":", 1)  # where its prints went: this Ray's worker log
        assert Path(printed).is_file() and printed.endswith(".out") and "/logs/worker-" in printed
        # a worker's log holds the trials it ran one after another: each begins with a line naming it
        label = f"t{int(run.data.tags['optuna.trial_number']):03d}"
        assert f"==== sweeps: {label} starts (MLflow run {run.info.run_id}) ====" in Path(printed).read_text()
    states = {t.state for t in study_of(result).trials}
    assert states <= {TrialState.COMPLETE, TrialState.FAIL} and len(study_of(result).trials) == 4


def test_diverged_trials_are_recorded_infeasible_and_rescued_at_bf16(workdir: Path) -> None:
    spec = {
        "name": "it-diverge",
        "trainer": "vae",
        "metric": {"name": "val_mse", "mode": "min"},
        "seed": 1,
        "budget": {"trials": 3, "epochs": 2, "concurrency": 2},
        "asha": False,
        "search": {"sampler": "random"},
        "divergence": {"rescue": True},
        "record": {"report_every_s": 0},  # a checkpoint every epoch, so one from before the onset exists
        # fp16 with a huge loss: the loss scale collapses (bf16 copes); lr 1e6 diverges at any precision.
        "fixed": {**VAE_SPEC["fixed"], "batch_size": 4, "precision": "fp16", "kl_weight": 1e8},
        "params": {"lr": {"choices": [1e-3, 1e6]}},
    }
    result = sweep(workdir, spec)
    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("it-diverge")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    originals = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    rescues = {r.data.tags["sweep.rescue_of"]: r for r in runs if r.data.tags.get("sweep.role") == "rescue"}
    assert len(originals) == 3 and len(rescues) == 3
    for run in originals:
        tags = run.data.tags
        assert tags["sweep.status"] == "diverged" and tags["sweep.signal"] == "loss_scale"
        assert "loss scale" in tags["sweep.reason"] and int(tags["sweep.divergence_step"]) <= 20
        rescue = rescues[run.info.run_id]
        assert tags["sweep.rescued_by"] == rescue.info.run_id
        assert rescue.data.params["precision"] == "bf16" and rescue.data.params["lr"] == run.data.params["lr"]
        expected = "completed" if float(run.data.params["lr"]) < 1 else "diverged"
        assert rescue.data.tags["sweep.status"] == expected
        steps = client.get_metric_history(run.info.run_id, "vae/loss_scale")
        assert len(steps) == int(tags["sweep.divergence_step"])  # every step up to the stop is recorded
        ray_dirs = list((result.sweep.path / "ray").glob(f"*{tags['ray.trial_id']}*"))
        assert ray_dirs and list(ray_dirs[0].glob("checkpoint_*"))  # the checkpoint before the stop is kept
    study = study_of(result)
    assert len(study.trials) == 3  # rescues run outside the study
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE and trial.constraints == {"diverged": 1.0}
    text = Path(client.download_artifacts(result.parent_run_id, "summary.txt", str(workdir))).read_text()
    assert "diverged because of precision" in text and "loss_scale 3" in text


def test_trials_ending_every_way_each_have_one_run_with_status_and_artifacts(workdir: Path) -> None:
    spec = toy_spec(
        "it-every",
        budget__trials=12,
        search={"sampler": "random"},
        seed=37,  # every behavior drawn, five "ok" (seed 5 drew no "raise" once "nan_val" joined)
        asha={"grace_period": 2, "reduction_factor": 2},  # every behavior happens before any cut
        params__behavior={"choices": ["ok", "diverge", "raise", "oom", "nan_val"]},
        params__lr={"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    )
    result = sweep(workdir, spec)
    parent, children = runs_of(result)
    assert len(children) == 12  # exactly one child run per trial, all under the one parent
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    client = mlflow.MlflowClient(result.tracking_uri)
    expected = {
        "diverge": {"diverged"},
        "nan_val": {"diverged"},  # a NaN validation at epoch 2: diverged, not ranked by epoch 1's value
        "raise": {"failed"},
        "oom": {"oom"},
        "ok": {"completed", "pruned"},
    }
    seen, behaviors = set(), set()
    for run in children:
        status = run.data.tags["sweep.status"]
        seen.add(status)
        behaviors.add(run.data.params["behavior"])
        assert status in expected[run.data.params["behavior"]], run.data.params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "spec.yaml", "environment.json", "source"} <= artifacts
        assert ("traceback.txt" in artifacts) == (status in ("failed", "oom"))
        if status in ("failed", "oom", "diverged"):
            assert run.data.tags["sweep.reason"]
        if status == "oom":
            assert run.data.tags["sweep.reason"].startswith("OutOfMemoryError: CUDA out of memory")
        if status != "oom" and status != "failed":
            assert "curves" in artifacts
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        if status in ("completed", "pruned"):  # fast steps thinned: the first and each epoch's last (5 a epoch)
            assert steps[0] == 1 and {5 * e for e in range(1, int(run.data.tags["sweep.epochs"]) + 1)} <= set(steps)
        else:  # stopped: every step that led there, the first epoch's 5 at least
            assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 5
        if run.data.params["behavior"] == "nan_val":  # the epoch that stopped it is recorded, NaN and all
            assert steps == list(range(1, 11)) and "val_loss not finite at epoch 2" in run.data.tags["sweep.reason"]
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")]
            assert [s for s, _ in sorted(history)] == [1, 2] and math.isnan(sorted(history)[1][1])
    assert seen == {"completed", "pruned", "diverged", "failed", "oom"}
    assert behaviors == set(expected)
    states = {t.user_attrs["status"]: t.state for t in study_of(result).trials}
    assert states["oom"] == states["diverged"] == TrialState.COMPLETE  # infeasible, not ignored
    assert states["failed"] == TrialState.FAIL and states["pruned"] == TrialState.PRUNED
    # a trial that raised in epoch 2 keeps epoch 1 (validated, never reported: reports come every 10 s)
    for trial in study_of(result).trials:
        if trial.user_attrs["status"] in ("failed", "oom"):
            record = next(r for r in result.state.trials.values() if r.number == trial.number)
            assert set(trial.intermediate_values) == {1} and record.epochs == 1 and record.steps >= 5
            assert record.value == trial.intermediate_values[1]


def test_a_trial_whose_process_dies_keeps_the_epochs_it_validated_before(workdir: Path) -> None:
    """``os._exit`` in epoch 2, epoch 1 unreported (reports come every 10 s): a user saw ``epochs 0``, no value."""
    spec = toy_spec(
        "it-dies",
        budget={"trials": 1, "epochs": 3, "concurrency": 1, "retries": 0},
        asha=False,
        fixed={"behavior": "os_exit"},
    )
    result = sweep(workdir, spec)
    (record,) = result.state.trials.values()
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(record.run_id, "val_loss")
    assert [m.step for m in history] == [1]  # sent as epoch 1 ended, before the process was gone
    assert record.status == "failed" and record.epochs == 1 and record.value == history[0].value
    assert record.reason.startswith("ActorDiedError: the trial's process died (a crash such as SIGSEGV, a kill")
    (trial,) = study_of(result).trials
    assert trial.state == TrialState.FAIL and trial.intermediate_values == {1: history[0].value}


def test_each_trial_starts_in_the_sweeps_folder_whatever_the_trial_before_it_did(workdir: Path) -> None:
    """Tune reuses a trial process; a user's trial that moved to another folder moved the next trial too."""
    cwd_file = workdir / "cwd.txt"
    spec = toy_spec(
        "it-cwd", budget={"trials": 3, "epochs": 1, "concurrency": 1}, asha=False, fixed={"cwd_file": str(cwd_file)}
    )
    sweep(workdir, spec)
    started = cwd_file.read_text().splitlines()  # where the test session's Ray started its workers
    assert started == [started[0]] * 3 and started[0] != "/"


@pytest.mark.parametrize("name", ["sr_gan_demo", "translation_gan_demo"])
def test_a_short_sweep_of_each_gan_trainer(workdir: Path, name: str) -> None:
    data = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    data["name"] = f"it-{name}"
    data["budget"] = {"trials": 2, "epochs": 2, "concurrency": 2}
    data["fixed"].update({"image_size": 16, "train_images": 32, "val_images": 16, "batch_size": 8})
    result = sweep(workdir, data)
    assert result.state.counts.get("completed", 0) + result.state.counts.get("pruned", 0) == 2
    _, children = runs_of(result)
    client = mlflow.MlflowClient(result.tracking_uri)
    for run in children:
        assert {"g/loss_scale", "d/grad_norm", "d/real_mean", "d/fake_mean"} <= set(run.data.metrics)
        assert "images" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_loops_own_fluent_mlflow_runs_go_to_the_sweeps_store_not_a_new_one_beside_it(workdir: Path) -> None:
    """Trials creating MLflow's default ./mlflow.db at once raced on its tables: 3 of 4 failed."""
    spec = {
        "name": "it-fluent",
        "trainer": "tests.function_trainers:logs_to_mlflow_itself",
        "metric": {"name": "val_loss", "mode": "min"},
        "budget": {"trials": 2, "epochs": 1, "concurrency": 2},
        "asha": False,
        "params": {"lr": {"choices": [0.1, 0.2]}},
    }
    store = workdir / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'm.db'}"
    result = run_sweep(
        load_spec(write_spec(workdir, spec)), root=workdir / "runs", tracking_uri=uri, stream=io.StringIO()
    )
    assert result.state.counts == {"completed": 2}
    mine = mlflow.MlflowClient(uri).search_runs(["0"])  # MLflow's Default experiment, in the sweep's store
    assert sorted(r.info.run_name for r in mine) == ["mine-t000", "mine-t001"] and not (workdir / "mlflow.db").exists()


def test_a_plain_loop_kept_as_a_function_sweeps_and_its_diverging_trial_stops_within_steps(workdir: Path) -> None:
    spec = {
        "name": "it-function",
        "trainer": "examples.plain_loop_sweepable:train",  # examples/plain_loop.py with 14 lines changed
        "metric": {"name": "val_loss", "mode": "min"},
        "seed": 2,  # the random sampler then draws each lr once
        "budget": {"trials": 3, "epochs": 2, "concurrency": 2},
        "asha": False,
        "search": {"sampler": "random"},
        "params": {"lr": {"choices": [1e-3, 3e-3, 1.0]}},  # 1.0 diverges
    }
    result = sweep(workdir, spec)
    _, children = runs_of(result)
    client = mlflow.MlflowClient(result.tracking_uri)
    assert sorted(float(r.data.params["lr"]) for r in children) == [1e-3, 3e-3, 1.0]
    for run in children:
        tags, lr = run.data.tags, float(run.data.params["lr"])
        assert run.data.params["seed"] == "2"  # the seed reaches a function trainer's config
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "spec.yaml", "source", "environment.json", "curves"} <= artifacts
        # no GPU reserved (budget.gpus_per_trial 0): the trial sees none, on a machine with GPUs too
        environment = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/environment.json"))
        assert environment["cuda_visible_devices"] == "" and environment["device"] == "cpu"
        assert {"loss", "model/lr", "model/grad_norm", "model/weight_norm_last"} <= set(run.data.metrics)
        if lr == 1.0:
            assert tags["sweep.status"] == "diverged" and tags["sweep.signal"] == "loss_explosion"
            # stopped within steps, well before the trial's 16 (the detector waits for 6 of 8 steps over its line)
            assert int(tags["sweep.divergence_step"]) < 16
            assert len(client.get_metric_history(run.info.run_id, "loss")) == int(tags["sweep.divergence_step"])
        else:
            assert tags["sweep.status"] == "completed"
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
            steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss")}
            assert {1, 8, 16} <= steps <= set(range(1, 17))  # thinned, each epoch's last step kept
            assert "checkpoint" in artifacts  # run.checkpoint's state, as a class trainer's
    study = study_of(result)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3
    assert [t.constraints for t in study.trials if float(t.params["lr"]) == 1.0] == [{"diverged": 1.0}]
    # export and retrain: the same loop, the same seed, the same metric
    data = load_run_file(
        write_export(best_config(open_sweep_dir(workdir / "runs", result.sweep.name)), workdir / "b.yaml")
    )
    out = io.StringIO()
    assert train_from_file(data, save=workdir / "model.pt", stream=out)["val_loss"] == data["metric"]["value"]
    assert "saved" in out.getvalue() and (workdir / "model.pt").exists()


@pytest.mark.integration
def test_a_trial_begun_with_less_time_left_than_the_fastest_first_epoch_ends_untrained(
    ray_session: None, workdir: Path
) -> None:
    """A trial asked for ahead of a free slot when a first epoch had ended may begin seconds before the deadline,
    too late to end an epoch by it (the searcher judges only when it asks): it ends untrained, as one begun after."""
    from ray import tune

    from sweeps.core.keys import ENGINE_KEY, NOT_STARTED_KEY
    from sweeps.core.plan import TrialPlan
    from sweeps.trial.one_worker import run_trial

    traces = workdir / "traces"
    traces.mkdir()
    now = time.time()
    plan = TrialPlan("tests.toy_trainer:ToyTrainer", "val_loss", 2, deadline=now + 60, start_by=now - 1)
    tuner = tune.Tuner(
        run_trial,
        param_space={ENGINE_KEY: plan.as_config(), "trace_dir": str(traces)},
        run_config=tune.RunConfig(storage_path=str(workdir / "ray"), verbose=0),
    )
    (result,) = list(tuner.fit())
    assert result.error is None, result.error
    assert result.metrics[NOT_STARTED_KEY] == 1.0 and result.metrics["epoch"] == 0, result.metrics
    assert not list(traces.iterdir())  # no epoch began
