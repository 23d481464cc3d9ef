"""``sweeps resume`` after the driver and its local Ray are killed with SIGKILL mid-sweep.

The driver runs in its own session (process group); the test kills that whole group once some
trials have ended and some are running with an epoch done, as when a laptop dies, then resumes
the sweep with the real command and checks every record: the study, the MLflow runs under the
parent, Ray's trial table, the report.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeps.store.study import load_study
from sweeps.store.sweep_dir import SweepDir
from tests.helpers import changed, project_env, run_cli, toy_spec, write_spec

TRIALS, EPOCHS = 8, 4
SPEC = toy_spec(
    "resume",
    budget={"trials": TRIALS, "epochs": EPOCHS, "concurrency": 2},
    asha=False,
    fixed={"epoch_seconds": 0.8, "stagger": True},  # trials side by side end apart: one fresh, one reported
    record={"report_every_s": 0},  # a checkpoint every epoch: the kill falls between two
)


def _env() -> dict[str, str]:
    env = project_env()
    env.pop("RAY_ADDRESS", None)
    return env


def sweeps(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env=_env())


def _progress(journal: Path) -> tuple[int, int, int]:
    """Completed trials; running trials with an epoch reported; running trials with none yet."""
    if not journal.exists():
        return 0, 0, 0
    try:
        trials = load_study(SweepDir(journal.parent.parent, journal.parent.name)).get_trials(deepcopy=False)
    except (KeyError, ValueError):  # the study is not created yet
        return 0, 0, 0
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    reported = sum(bool(t.intermediate_values) for t in running)
    return done, reported, len(running) - reported


def _kill_mid_sweep(tmp_path: Path) -> None:
    """Start ``sweeps run`` in its own process group; SIGKILL the group mid-sweep."""
    log = (tmp_path / "run.log").open("w")
    command = [sys.executable, "-m", "sweeps", "run", "spec.yaml", "--name", "s1", "--address", "local"]
    driver = subprocess.Popen(
        [*command, "--cpus", "2"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    journal = tmp_path / "sweep_runs" / "s1" / "optuna-journal.log"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            # Just after a trial ended and the next was asked: one trial has ended since Ray's last
            # snapshot most likely, one runs with a checkpoint, one has just started.
            done, reported, fresh = _progress(journal)
            if done >= 2 and reported >= 1 and fresh >= 1:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it was killed:\n" + (tmp_path / "run.log").read_text()
        assert time.monotonic() < deadline, "the sweep made no progress"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        log.close()
    time.sleep(2)  # let the killed session's processes go


@pytest.mark.integration
@pytest.mark.slow
def test_resume_after_sigkill(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    _kill_mid_sweep(tmp_path)
    sweep_dir = tmp_path / "sweep_runs" / "s1"
    before = load_study(SweepDir(sweep_dir.parent, "s1")).get_trials()
    running_at_kill = {t.number for t in before if t.state == TrialState.RUNNING}
    ended_at_kill = {t.user_attrs["ray_trial_id"] for t in before if t.state.is_finished()}
    assert running_at_kill and len(before) < TRIALS + 2
    snapshot = {t.trial_id for t in _ray_trials(sweep_dir / "ray")}  # Ray's last, taken every 10 s or so
    with (tmp_path / "spec.yaml").open("a") as spec:  # a user's edit after the kill: the resume says what it runs
        spec.write("# edited after the kill\n")

    resumed = sweeps("resume", "s1", "--address", "local", "--cpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stdout + resumed.stderr
    edited = f"note: {(tmp_path / 'spec.yaml').resolve()} changed since sweep s1 started; resume runs the spec"
    assert edited in resumed.stderr and "--warm-start s1" in resumed.stderr

    # Optuna: the planned number of trials ended on their own; lost ones are recorded once, as interrupted.
    trials = load_study(SweepDir(sweep_dir.parent, "s1")).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    ended = [t for t in trials if t.user_attrs.get("status") != "interrupted"]
    interrupted = [t for t in trials if t.user_attrs.get("status") == "interrupted"]
    assert len(ended) == TRIALS
    assert all(t.state == TrialState.COMPLETE for t in ended)
    assert all(t.state == TrialState.FAIL and t.number in running_at_kill for t in interrupted)
    continued = running_at_kill - {t.number for t in interrupted}

    # MLflow: one child run per Optuna trial under the parent, each closed with the trial's status.
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["status"] == "completed" and meta["resumes"] == 1
    client = MlflowClient(meta["tracking_uri"])
    parent = client.get_run(meta["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.status"] == "completed"
    query = f"tags.`mlflow.parentRunId` = '{meta['parent_run_id']}'"
    runs = client.search_runs([meta["experiment_id"]], query, max_results=1000)
    per_number = Counter(r.data.tags["optuna.trial_number"] for r in runs)
    assert all(n == 1 for n in per_number.values()), per_number
    run_of = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    assert set(run_of) <= {t.number for t in trials} and {t.number for t in ended} <= set(run_of)
    retrained = 0
    for t in ended:
        run = run_of[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.info.status == "FINISHED" and run.data.tags["sweep.status"] == "completed"
        assert run.data.tags["sweep.epochs"] == str(EPOCHS)
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert set(steps) == set(range(1, EPOCHS + 1)), steps
        assert steps[1] == 1, f"t{t.number} was trained from scratch twice"
        if t.number not in continued:  # ended before the kill, or started after the resume: trained once
            assert set(steps.values()) == {1}, f"t{t.number} was trained again: {steps}"
        retrained += sum(n - 1 for n in steps.values())
    for t in interrupted:  # the driver may have died before the trial's run id reached the study
        if t.number in run_of:
            run = run_of[t.number]
            assert run.info.status == "KILLED" and run.data.tags["sweep.status"] == "interrupted"
            steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
            assert set(steps.values()) <= {1}, f"t{t.number} was run again after it was recorded interrupted"

    # Ray: its trial table holds the trials that ran, each once, all ended. The only ones it lacks
    # started and ended between its last snapshot and the kill (the study and MLflow hold them).
    ray_trials = _ray_trials(sweep_dir / "ray")
    ray_ids = Counter(r.trial_id for r in ray_trials)
    ended_ids = {t.user_attrs["ray_trial_id"] for t in ended}
    lost_ids = {t.user_attrs.get("ray_trial_id") for t in interrupted}
    assert all(r.status == "TERMINATED" for r in ray_trials) and set(ray_ids.values()) == {1}
    assert ended_ids - set(ray_ids) <= ended_at_kill - snapshot
    assert set(ray_ids) - ended_ids <= lost_ids  # lost ones never ran again

    # Report and summary, covering every trial.
    results = (sweep_dir / "report" / "results.csv").read_text().strip().splitlines()
    assert len(results) == 1 + len(trials)
    artifacts = {a.path for a in client.list_artifacts(meta["parent_run_id"])}
    assert {"summary.txt", "report", "resume"} <= artifacts
    assert "continue from their last checkpoint" in resumed.stdout and "trials" in resumed.stdout

    print(
        f"\nRESUME-FAULT planned={TRIALS} ended={len(ended)} lost={TRIALS - len(ended)} "
        f"duplicated_runs={sum(n - 1 for n in per_number.values())} running_at_kill={len(running_at_kill)} "
        f"continued={len(continued)} interrupted_and_replaced={len(interrupted)} "
        f"not_rerun={_plan_count(resumed.stdout, 'not run again')} "
        f"epochs_retrained={retrained}"
    )

    again = sweeps("resume", "s1", cwd=tmp_path)
    assert again.returncode == 2 and "already finished" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    missing = sweeps("resume", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no sweep 'nope'" in missing.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_a_resume_after_budget_time_ran_out_says_nothing_continues(tmp_path: Path) -> None:
    """A user's resume the next morning said "continue from their last checkpoint: t000, t001", then
    recorded both interrupted at once: the sweep's time had run out while its driver was dead."""
    write_spec(tmp_path, changed(SPEC, budget={**SPEC["budget"], "time": "1h"}))
    _kill_mid_sweep(tmp_path)
    sweep_dir = SweepDir(tmp_path / "sweep_runs", "s1")
    meta = sweep_dir.read_meta()
    sweep_dir.write_meta({**meta, "deadline": time.time() - 60})  # the hour ran out while the driver was dead
    running = {t.number for t in load_study(sweep_dir).get_trials() if t.state == TrialState.RUNNING}

    resumed = sweeps("resume", "s1", "--address", "local", "--cpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out = resumed.stdout
    assert "budget.time ran out before this resume: no trial continues or is replaced" in out, out
    assert "continue from their last checkpoint" not in out and "to be replaced" not in out, out
    trials = load_study(sweep_dir).get_trials()
    assert len(trials) == len(running) + sum(t.state == TrialState.COMPLETE for t in trials)  # none asked anew
    assert {t.number for t in trials if t.user_attrs.get("status") == "interrupted"} == running
    labels = ", ".join(f"t{n:03d}" for n in sorted(running))
    assert f"recorded as interrupted: {labels}" in out, out


@pytest.mark.integration
@pytest.mark.slow
def test_a_trial_lost_after_the_last_trial_was_asked_is_replaced(tmp_path: Path) -> None:
    """Killed while the budget's last trial ran without a checkpoint: Ray's snapshot says the search is over.

    A user's ``kill -9`` then ``sweeps resume`` said "interrupted, to be replaced: t001" and ended the
    sweep one trial short: Tune restored its search as finished and never asked for the replacement.
    """
    fixed = {"epoch_seconds": 6.0, "sleep_last": True}  # t002 logs its steps to MLflow, then sleeps: not rerun
    spec = changed(SPEC, budget={"trials": 3, "epochs": 2, "concurrency": 2}, fixed=fixed)
    write_spec(tmp_path, spec)
    log = (tmp_path / "run.log").open("w")
    command = [sys.executable, "-m", "sweeps", "run", "spec.yaml", "--name", "s1", "--address", "local", "--cpus", "2"]
    env = {**_env(), "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Ray's snapshot every second, so it sees the search end
    driver = subprocess.Popen(
        command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    journal = tmp_path / "sweep_runs" / "s1" / "optuna-journal.log"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and driver.poll() is None and _progress(journal) != (2, 0, 1):
            time.sleep(0.2)
        assert _progress(journal) == (2, 0, 1), (tmp_path / "run.log").read_text()
        time.sleep(3)  # t002 is in its first 6 s epoch: no checkpoint yet; Ray has snapshot the ended search
        assert _progress(journal) == (2, 0, 1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        log.close()
    time.sleep(2)

    resumed = sweeps("resume", "s1", "--address", "local", "--cpus", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "interrupted, to be replaced: t002" in resumed.stdout
    trials = load_study(SweepDir(tmp_path / "sweep_runs", "s1")).get_trials()
    statuses = [t.user_attrs.get("status") for t in trials]
    assert statuses == ["completed", "completed", "interrupted", "completed"], statuses


def _ray_trials(ray_dir: Path) -> list[Any]:
    """The trials in Ray's experiment snapshot; none when it has not written one."""
    from ray.tune import ExperimentAnalysis

    if not any(ray_dir.glob("experiment_state-*.json")):
        return []
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # no result.json: fine
    return list(ExperimentAnalysis(str(ray_dir)).trials)


def _plan_count(output: str, words: str) -> int:
    line = next(line for line in output.splitlines() if words in line)
    listed = line.split(":", 1)[1].strip()
    return 0 if listed == "none" else len(listed.split(","))


def _first_driver(tmp_path: Path, trials: int, epochs: int) -> tuple[Any, Any, Any, Any]:
    """A sweep's folder, its MLflow store (parent run started) and its first driver's searcher; no Ray."""
    from sweeps.core.records import SweepState
    from sweeps.engine.searcher import OptunaSearcher
    from sweeps.spec.sweep_spec import load_spec
    from sweeps.store.study import create_study
    from sweeps.store.sweep_dir import new_sweep_dir
    from sweeps.tracking.sweep_tracker import SweepTracker

    spec = load_spec(write_spec(tmp_path, changed(SPEC, budget={"trials": trials, "epochs": epochs})))
    sweep = new_sweep_dir(tmp_path / "runs", "s")
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start("resume", "s", "", {})
    first = OptunaSearcher(spec, create_study(sweep, spec), SweepState("val_loss", "min"), tracker, "s")
    return spec, sweep, tracker, first


def test_rebuild_from_study_and_runs(tmp_path: Path) -> None:
    """Each way a trial can be left by a dead driver, rebuilt from a real study and MLflow store (no Ray)."""
    from sweeps.core.records import SweepState
    from sweeps.engine.live_view import status_line
    from sweeps.engine.resume import LOST_REASON, _close_runs, rebuild
    from sweeps.engine.searcher import OptunaSearcher
    from sweeps.store.study import load_study

    spec, sweep, tracker, first = _first_driver(tmp_path, trials=5, epochs=2)
    for ray_id in "abcde":
        assert first.suggest(ray_id) is not None
    for epoch in (1, 2):
        first.on_trial_result("a", {"val_loss": 1.0 / epoch, "training_iteration": epoch})
    first.on_trial_complete("a", {"val_loss": 0.5, "training_iteration": 2})  # its MLflow run left open
    first.on_trial_result("b", {"val_loss": 2.0, "training_iteration": 1})
    tracker.client.log_metric(first.state.trials["d"].run_id, "val_loss", 3.0, step=1)  # logged, not yet in Ray

    study = load_study(sweep)
    again = OptunaSearcher(spec, study, SweepState("val_loss", "min"), tracker, "s")
    # Ray's snapshot: a and b open with a checkpoint, d and e open without one; c unknown to it.
    plan = rebuild(again, tracker.trial_runs(), unfinished={"a": True, "b": True, "d": False, "e": False})
    _close_runs(tracker, plan.closed)

    assert [r.ray_id for r in plan.continued] == ["b", "e"]  # e logged nothing: it may start over
    assert [r.ray_id for r in plan.interrupted] == ["c", "d"]
    assert [r.ray_id for r in plan.not_rerun] == ["a"] and {r.ray_id for r in plan.closed} == {"a", "c", "d"}
    state = again.state
    assert state.trials["a"].status == "completed" and state.trials["a"].value == 0.5
    assert state.best is state.trials["a"]
    assert state.trials["b"].status == "running" and state.trials["b"].epochs == 1
    assert state.trials["d"].value == 3.0  # logged to MLflow before the driver died: in the table and results.csv
    assert state.trials["d"].epochs == 1 and state.trials["c"].epochs == 0  # d's epoch 1 is in its run
    assert study.trials[3].intermediate_values == {1: 3.0}  # and in Optuna (the report's learning curves)
    assert state.trials["c"].value is None
    assert again.reported == {"b": 1, "e": 0} and set(again.live) == {"b", "e"}
    assert again.asked == 3  # c and d do not count toward the budget
    for number in (2, 3):
        lost = study.trials[number]
        assert lost.state == TrialState.FAIL and lost.user_attrs["status"] == "interrupted"
        assert lost.user_attrs["reason"] == LOST_REASON
    runs = {r.data.tags["ray.trial_id"]: r for r in tracker.trial_runs()}
    assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags["sweep.status"] == "completed"
    assert runs["c"].info.status == runs["d"].info.status == "KILLED" and runs["b"].info.status == "RUNNING"
    assert runs["d"].data.tags["sweep.epochs"] == "1"
    # the two interrupted trials are replaced, so they are not among the budget's trials done
    assert "trials 1/5 done · running 2 · completed 1 · interrupted 2" in status_line(state, 5, 0.0)

    assert again.suggest("f") is not None and again.suggest("g") is not None  # the budget: 5 that end on their own
    assert again.suggest("h") == "FINISHED"
    again.on_trial_result("b", {"val_loss": 1.5, "training_iteration": 2})
    again.on_trial_complete("b", {"val_loss": 1.5, "training_iteration": 2})
    b = study.trials[1]
    assert b.state == TrialState.COMPLETE and b.intermediate_values == {1: 2.0, 2: 1.5}
    # a second resume: c and d ended before it, interrupted and replaced by the first (a user read "ended
    # before: 6" as six trials done)
    later = rebuild(OptunaSearcher(spec, study, SweepState("val_loss", "min"), tracker, "s"), tracker.trial_runs(), {})
    assert later.lines()[0] == "ended before: 4 trial(s) (2 of them interrupted and replaced before)"


def test_a_lost_trial_gets_the_epochs_its_run_logged_after_its_driver_died(tmp_path: Path) -> None:
    """A user's kill -9 of the driver: two trials trained on to their last epoch, which MLflow held; resume
    recorded them interrupted after the epochs they had reported, and Optuna and the table lost the last."""
    from sweeps.core.records import SweepState
    from sweeps.engine.resume import LOST_REASON, _close_runs, rebuild
    from sweeps.engine.searcher import OptunaSearcher
    from sweeps.store.study import load_study

    spec, sweep, tracker, first = _first_driver(tmp_path, trials=4, epochs=3)
    for ray_id in "ab":
        assert first.suggest(ray_id) is not None
        for epoch in (1, 2):  # reported, and logged as every epoch is
            first.on_trial_result(ray_id, {"val_loss": 1.0 / epoch, "training_iteration": epoch})
            tracker.client.log_metric(first.state.trials[ray_id].run_id, "val_loss", 1.0 / epoch, step=epoch)
    last = int(time.time() * 1000) - 60_000  # a minute before the resume
    a_run = first.state.trials["a"].run_id
    tracker.client.log_metric(a_run, "val_loss", 0.25, timestamp=last, step=3)  # after the driver died

    study = load_study(sweep)
    again = OptunaSearcher(spec, study, SweepState("val_loss", "min"), tracker, "s")
    plan = rebuild(again, tracker.trial_runs(), unfinished={"a": False, "b": False})  # no checkpoint in Ray's snapshot
    _close_runs(tracker, plan.closed, plan.ended_at)
    # a user read the resume's time as the end of trials that had ended 18 s before it, counted as "ended before"
    assert tracker.client.get_run(a_run).info.end_time == last
    assert plan.ended == 0 and "trained to their last epoch after the driver died: t000" in plan.lines()

    a, b = again.state.trials["a"], again.state.trials["b"]
    assert (a.status, a.epochs, a.value) == ("completed", 3, 0.25)  # it validated its last epoch: nothing to redo
    assert (b.status, b.epochs, b.value, b.reason) == ("interrupted", 2, 0.5, LOST_REASON)
    assert [r.ray_id for r in plan.interrupted] == ["b"] and {r.ray_id for r in plan.closed} == {"a", "b"}
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.25
    assert study.trials[0].intermediate_values == {1: 1.0, 2: 0.5, 3: 0.25}
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].intermediate_values == {1: 1.0, 2: 0.5}
    assert again.asked == 1  # a ended on its own; b is replaced
    runs = {r.data.tags["ray.trial_id"]: r for r in tracker.trial_runs()}
    assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags["sweep.status"] == "completed"
    assert runs["b"].info.status == "KILLED"


def test_a_sweep_stopped_with_ctrl_c_is_not_resumed_and_the_refusal_says_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeps.engine.resume import check_resumable
    from sweeps.store.sweep_dir import SweepStoreError, new_sweep_dir

    monkeypatch.setattr(sys, "argv", ["-m"])  # python -m sweeps with no sweeps on PATH: the command as run
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    sweep = new_sweep_dir(tmp_path / "runs", "stopped")
    sweep.write_meta({"status": "interrupted", "cpus": 2})
    with pytest.raises(SweepStoreError) as info:
        check_resumable(tmp_path / "runs", "stopped")
    message = str(info.value)
    assert "was stopped (Ctrl-C)" in message and "\n" not in message
    runs = tmp_path / "runs"  # the sweep's --storage and --cpus: the command left both out
    command = f"{sys.executable} -m sweeps run {sweep.spec_file} --storage {runs} --cpus 2 --warm-start stopped"
    assert message.endswith(f"start a sweep that learns from its trials: {command}"), message


def test_list_says_when_a_running_sweeps_driver_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's ``kill -9`` of the driver left ``sweeps list`` saying ``running``; only resume could tell.

    The command it gives is the one the user can run: ``python -m sweeps`` where ``sweeps`` is not on PATH.
    """
    import shlex
    import socket

    from sweeps.cli import main
    from sweeps.store.sweep_dir import new_sweep_dir

    monkeypatch.setattr(sys, "argv", ["-m", "list"])  # as `python -m sweeps list` sets it
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    sweeps = f"{shlex.quote(sys.executable)} -m sweeps"

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    here = socket.gethostname()
    for name, pid in (("gone", ended.pid), ("alive", os.getppid())):  # a process that runs, not this one
        new_sweep_dir(tmp_path / "runs", name).write_meta(
            {
                "status": "running",
                "trainer": "vae",
                "metric": "val_mse",
                "driver": {"pid": pid, "host": here},
                "cpus": 1,
            }
        )
    broken = new_sweep_dir(tmp_path / "runs", "broken")  # a damaged sweep.json hid the sweeps listed after it
    broken.meta_file.write_text("{broken")
    assert main(["list", "--storage", str(tmp_path / "runs")]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == "alive  running  vae  val_mse" and listed[1].startswith("broken  unreadable (cannot read ")
    runs = tmp_path / "runs"  # the command repeats the run's --storage and --cpus (a shared machine's share)
    assert listed[2:] == [
        f"gone  stopped (its driver is gone: {sweeps} resume gone --storage {runs} --cpus 1)  vae  val_mse"
    ]
    assert main(["report", "gone", "--storage", str(tmp_path / "runs")]) == 2  # it pointed at nothing to do
    said = capsys.readouterr().err
    assert f"its driver is gone before it wrote them; finish it with {sweeps} resume gone" in said
    assert f"(its trials so far are in MLflow: {sweeps} ui gone)" in said


def test_trials_open_when_tune_stopped_end_as_their_last_result_or_mlflow_run_says(tmp_path: Path) -> None:
    """Ctrl-C or ``budget.time`` stops Tune before it passes some trials' endings on (no Ray here)."""
    import math

    from sweeps.core.records import SweepState
    from sweeps.engine.searcher import OptunaSearcher
    from sweeps.results.summary import time_ran_out
    from sweeps.spec.sweep_spec import load_spec
    from sweeps.store.study import create_study
    from sweeps.store.sweep_dir import new_sweep_dir
    from sweeps.tracking.sweep_tracker import SweepTracker

    spec = load_spec(write_spec(tmp_path, changed(SPEC, budget={"trials": 10, "epochs": 2})))
    sweep = new_sweep_dir(tmp_path / "runs", "s")
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start("open", "s", "", {})
    state = SweepState("val_loss", "min", deadline=1.0)  # budget.time ran out long ago
    searcher = OptunaSearcher(spec, create_study(sweep, spec), state, tracker, "s")
    for ray_id in "abcde":
        searcher.state.deadline = None  # asked before the deadline
        assert searcher.suggest(ray_id) is not None
        state.trials[ray_id].started = ray_id != "e"  # as Tune's on_trial_start says; e was asked ahead of a slot
    state.deadline = 1.0
    searcher.on_trial_result("a", {"val_loss": 0.4, "epoch": 2})  # its last epoch reported, the ending never passed on
    for ray_id, second in (("b", 0.3), ("c", math.nan)):  # epoch 2 logged to MLflow, not yet reported
        searcher.on_trial_result(ray_id, {"val_loss": 0.6, "epoch": 1})
        tracker.client.log_metric(state.trials[ray_id].run_id, "val_loss", 0.6, step=1)
        tracker.client.log_metric(state.trials[ray_id].run_id, "val_loss", second, step=2)
        tracker.client.log_metric(state.trials[ray_id].run_id, "sweep/steps", 20, step=2)  # as every epoch logs it

    ended = searcher.end_open_trials("the sweep stopped before this trial ended")
    trials = state.trials
    assert (trials["a"].status, trials["a"].value) == ("completed", 0.4)
    assert (trials["b"].status, trials["b"].value, trials["b"].epochs) == ("completed", 0.3, 2)
    assert trials["b"].steps == 20  # the report table's steps were 0 for such a trial
    assert trials["c"].status == "interrupted" and trials["c"].reason == "budget.time ran out after epoch 2 of 2"
    assert (
        trials["d"].status == "interrupted"
        and trials["d"].reason == "budget.time ran out before its first epoch ended (of 2)"
    )
    # e's 0-epoch run read as a trial cut short, though it never began
    assert trials["e"].status == "interrupted" and trials["e"].reason == (
        "budget.time ran out before it started (it waited for its process or a free slot)"
    )
    assert time_ran_out(state, 10) == (
        "budget.time ran out after 2 of 10 trials; 2 more cut short by it (interrupted); 1 asked for and never started"
    )
    # a too: its ending was never passed on, so its MLflow run is closed and its line printed with the others
    assert [r.ray_id for r in ended] == ["a", "b", "c", "d", "e"] and state.best is trials["b"]
    told = {t.user_attrs["ray_trial_id"]: t for t in searcher.study.trials}
    assert told["a"].value == 0.4 and told["b"].value == 0.3
    assert told["c"].state == told["d"].state == told["e"].state == TrialState.FAIL


def test_a_second_resume_started_a_moment_after_the_first_is_refused(tmp_path: Path) -> None:
    """A user's two ``sweeps resume`` 0.5 s apart both passed the dead driver's pid check: both ran the sweep,
    every epoch of its trials was logged twice, and one ended in Optuna's ``UpdateFinishedTrialError``."""
    from sweeps.engine.resume import check_resumable
    from sweeps.store.sweep_dir import SweepStoreError, new_sweep_dir

    sweep = new_sweep_dir(tmp_path / "runs", "s")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    sweep.write_meta({"status": "running", "driver": {"pid": ended.pid, "host": "elsewhere"}})  # its driver died
    holder = subprocess.Popen(  # the first resume, its pid not in sweep.json yet
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from sweeps.store.sweep_dir import SweepDir, claim_driver; "
            "claim_driver(SweepDir(Path(sys.argv[1]), 's')); print('held', flush=True); time.sleep(60)",
            str(tmp_path / "runs"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=project_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(SweepStoreError, match=r"^sweep 's' is driven by another process right now .*driver\.lock"):
            check_resumable(tmp_path / "runs", "s")
    finally:
        holder.send_signal(signal.SIGKILL)  # a driver killed outright lets go of the lock with its process
        holder.wait()
    with pytest.raises(SweepStoreError, match="has no Ray experiment"):  # past the lock: the next check
        check_resumable(tmp_path / "runs", "s")
