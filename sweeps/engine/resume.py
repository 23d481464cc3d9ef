"""``sweeps resume``: finish a sweep whose driver died (killed, laptop closed, head node lost).

Ray restores its trial table from ``<sweep>/ray``; what the engine knows about each trial is
rebuilt from the Optuna study and the MLflow runs, which are written before Ray hears of a trial
and when it ends, never from Ray's snapshot (taken every few seconds, so it can be behind):

* a trial that ended in the study stays ended. If Ray's snapshot still calls it unfinished, it is
  not run again; if the driver died before closing its MLflow run, the run is closed now;
* a trial running when the driver died that Ray's snapshot holds with a checkpoint continues
  from that checkpoint, in the same Ray trial, Optuna trial and MLflow run; so does one that had
  not logged an epoch yet (it starts over, nothing recorded is repeated);
* any other trial running when the driver died cannot continue without training again what its
  MLflow run already holds: it started after Ray's last snapshot, or had logged an epoch before
  Ray recorded a checkpoint. It is not run again. It gets the epochs its MLflow run holds past
  what the study was told (its process may have trained on after the driver died); if they reach
  its last epoch it is ``completed``, else it is recorded once as interrupted (Optuna FAIL with
  ``status=interrupted``, MLflow KILLED), does not count toward the budget, and a replacement is
  asked.

So a resumed sweep ends with ``budget.trials`` trials that ended on their own (completed, pruned,
diverged, failed), each one Optuna trial and one MLflow run under the same parent, plus the
interrupted ones, each recorded once. ASHA's rungs start empty again: trials that continue are
judged against results reported after the resume.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.compat.mlflow_internals import last_activity_ms
from sweeps.compat.optuna_internals import running_trial
from sweeps.core.command import command_name
from sweeps.core.keys import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    PRUNED,
    ROLE_RESCUE,
    RUNNING,
    TAG_DIVERGENCE_STEP,
    TAG_DRAWN_BY,
    TAG_EPOCHS,
    TAG_OPTUNA_NUMBER,
    TAG_RAY_TRIAL_ID,
    TAG_REASON,
    TAG_RESCUE_OF,
    TAG_RESUMES,
    TAG_ROLE,
    TAG_SIGNAL,
    TAG_STATUS,
)
from sweeps.core.records import SweepState, TrialRecord
from sweeps.engine.cluster import start_ray
from sweeps.engine.runner import SweepResult, driver_identity, fit_and_finish, sweep_tuner
from sweeps.engine.searcher import OptunaSearcher
from sweeps.spec.sweep_spec import SweepSpec, load_spec
from sweeps.store.study import is_told, load_study, make_sampler
from sweeps.store.sweep_dir import (
    SweepDir,
    SweepStoreError,
    claim_driver,
    driver_state,
    go_on_options,
    open_sweep_dir,
    release_driver,
)
from sweeps.tracking.mlflow_client import retry
from sweeps.tracking.store_check import check_tracking_uri, open_store
from sweeps.tracking.sweep_tracker import SweepTracker

ENDED = {TrialState.COMPLETE: COMPLETED, TrialState.PRUNED: PRUNED, TrialState.FAIL: FAILED}
LOST_REASON = (
    "the sweep's driver died before Ray's saved sweep state listed a checkpoint of this trial (Ray saves that "
    "state every 10 s or more; a checkpoint folder written since is not used); replaced on resume"
)


@dataclass
class ResumePlan:
    """What ``resume`` found: trials that continue, trials recorded as interrupted, runs it closed."""

    continued: list[TrialRecord] = field(default_factory=list)
    interrupted: list[TrialRecord] = field(default_factory=list)
    closed: list[TrialRecord] = field(default_factory=list)
    ended_at: dict[str, int] = field(default_factory=dict)
    """Per closed run's id: when it last logged (ms), its end time (not the resume's)."""
    not_rerun: list[TrialRecord] = field(default_factory=list)
    finished_alone: list[TrialRecord] = field(default_factory=list)
    """Trials that trained to their last epoch after the driver died (their MLflow runs hold every epoch)."""
    ended: int = 0
    replaced_before: int = 0
    """Of ``ended``: trials an earlier resume recorded as interrupted and replaced."""
    ray_state: bool = True
    time_up: bool = False
    """``budget.time`` ran out before this resume: nothing continues and nothing is replaced."""

    def lines(self) -> list[str]:
        """A few lines for the console and the parent run."""
        replaced = f" ({self.replaced_before} of them interrupted and replaced before)" if self.replaced_before else ""
        if self.time_up:  # a resume the next morning said "continue" and "to be replaced", then did neither
            cut = sorted(self.continued + self.interrupted, key=lambda r: r.number)
            going_on = [
                "budget.time ran out before this resume: no trial continues or is replaced",
                f"recorded as interrupted: {_labels(cut)}",
            ]
        else:
            going_on = [
                f"continue from their last checkpoint: {_labels(self.continued)}",
                f"interrupted, to be replaced: {_labels(self.interrupted)}",
            ]
        return [
            f"ended before: {self.ended} trial(s){replaced}",
            f"trained to their last epoch after the driver died: {_labels(self.finished_alone)}",
            going_on[0],
            f"ended after Ray's last snapshot (not run again): {_labels(self.not_rerun)}",
            going_on[1],
            f"MLflow runs closed now: {_labels(self.closed)}",
            *([] if self.ray_state else ["Ray left no trial table: running trials cannot continue"]),
        ]

    def close(self, record: TrialRecord, run: Any) -> None:
        """Close ``record``'s MLflow run now, ended when it last logged (a user read the resume's time as its end)."""
        self.closed.append(record)
        self.ended_at[record.run_id] = last_activity_ms(run)


def _labels(records: list[TrialRecord]) -> str:
    return ", ".join(r.label for r in records) or "none"


def check_resumable(root: str | Path, name: str, force: bool = False) -> tuple[SweepDir, dict[str, Any]]:
    """Find the sweep and refuse one that finished, still runs, or has no Ray experiment to resume."""
    sweep = open_sweep_dir(root, name)
    meta = sweep.read_meta()
    status = meta.get("status")
    if status == COMPLETED:
        raise SweepStoreError(f"sweep {sweep.name!r} already finished ({status}); nothing to resume")
    if status == INTERRUPTED and meta.get("halted"):
        raise SweepStoreError(
            f"sweep {sweep.name!r} stopped after {meta['halted']}; every trial would fail so: "
            f"fix the trainer or the spec, then run it again: {command_name()} run {shlex.quote(str(sweep.spec_file))}"
        )
    if status == INTERRUPTED:
        raise SweepStoreError(
            f"sweep {sweep.name!r} was stopped (Ctrl-C) and its open trials recorded as interrupted; "
            "resume continues a sweep whose driver died. To go on from it, start a sweep that learns from its "
            f"trials: {command_name()} run {shlex.quote(str(sweep.spec_file))}{go_on_options(root, meta.get('cpus'))} "
            f"--warm-start {sweep.name}"
        )
    if status != RUNNING:
        raise SweepStoreError(f"sweep {sweep.name!r} has status {status!r}; only a sweep whose driver died resumes")
    driver = meta.get("driver") or {}
    if not force and _alive(driver):
        raise SweepStoreError(
            f"sweep {sweep.name!r} is still driven by pid {driver.get('pid')} on {driver.get('host')}; "
            "stop it first (or pass --force if that process is not the sweep)"
        )
    claim_driver(sweep)  # held until this process ends: a second resume started a moment later is refused
    ray_dir = ray_experiment(sweep, meta)
    if "://" in str(meta.get("ray_experiment", "")):
        raise SweepStoreError(f"sweep {sweep.name!r} keeps its trials at a URI: resume supports paths only")
    if not (ray_dir / "tuner.pkl").is_file():
        raise SweepStoreError(f"sweep {sweep.name!r} has no Ray experiment in {ray_dir} to resume")
    check_tracking_uri(str(meta.get("tracking_uri") or ""), must_exist=True)  # its runs are there
    return sweep, meta


def _alive(driver: dict[str, Any]) -> bool:
    """Whether the recorded driver process still runs (only checkable on its own host)."""
    return driver_state(driver) == "alive"


def resume_sweep(
    root: str | Path,
    name: str,
    stream: TextIO | None = None,
    force: bool = False,
    say: Callable[[str], object] = print,
) -> SweepResult:
    """Finish sweep ``name`` in ``root`` (see the module's docstring for what happens to each trial)."""
    sweep, meta = check_resumable(root, name, force)
    try:
        return _resume_claimed(sweep, meta, stream, say)
    finally:
        release_driver(sweep)


def _resume_claimed(
    sweep: SweepDir, meta: dict[str, Any], stream: TextIO | None, say: Callable[[str], object]
) -> SweepResult:
    """:func:`resume_sweep` once this process holds the sweep's driver lock."""
    spec = load_spec(sweep.spec_file)
    open_store(str(meta["tracking_uri"]))  # a one-line error if it cannot open
    tracker = SweepTracker.of_sweep(meta)
    study = reopen_study(sweep, spec)
    state = SweepState(metric=spec.metric, mode=spec.mode, deadline=meta.get("deadline"))
    searcher = OptunaSearcher(spec, study, state, tracker, sweep.name)
    ray_dir = ray_experiment(sweep, meta)
    unfinished = _ray_unfinished(ray_dir)
    plan = rebuild(searcher, tracker.trial_runs(), unfinished or {})
    plan.ray_state = unfinished is not None
    plan.time_up = state.time_up()
    _close_runs(tracker, plan.closed, plan.ended_at)
    meta = {**meta, "status": RUNNING, "driver": driver_identity(), "resumes": int(meta.get("resumes", 0)) + 1}
    _reopen_parent(tracker, plan, int(meta["resumes"]))
    sweep.write_meta(meta)
    for line in plan.lines():
        say(f"  {line}")
    start_ray()
    if unfinished is not None:
        searcher.must_restore = True
    tuner = sweep_tuner(spec, sweep, searcher, state, tracker, stream, restore=None if unfinished is None else ray_dir)
    interrupted = fit_and_finish(tuner, spec, sweep, meta, searcher, tracker, stream)
    return SweepResult(sweep, state, tracker.parent_run_id, tracker.uri, interrupted)


def ray_experiment(sweep: SweepDir, meta: dict[str, Any]) -> Path:
    """The folder of the sweep's Ray experiment (its ``trial_storage``, or ``<sweep>/ray``)."""
    return Path(str(meta.get("ray_experiment") or sweep.path / "ray"))


def reopen_study(sweep: SweepDir, spec: SweepSpec) -> optuna.Study:
    """The sweep's study, its sampler seeded anew: a seeded stream would draw the sweep's first configs again."""
    study = load_study(sweep)
    study.sampler = make_sampler(spec, resumed_after=len(study.get_trials(deepcopy=False)))
    return study


def _ray_unfinished(ray_dir: Path) -> dict[str, bool] | None:
    """Trials Ray's last snapshot holds as unfinished, and whether it has a checkpoint of each.

    None when there is no snapshot.
    """
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    if not any(ray_dir.glob("experiment_state-*.json")):
        return None
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that trials have no result.json: MLflow keeps results
    try:
        trials = ExperimentAnalysis(str(ray_dir)).trials
    finally:
        quiet.setLevel(level)
    return {t.trial_id: t.checkpoint is not None for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR)}


def rebuild(searcher: OptunaSearcher, runs: list[Any], unfinished: dict[str, bool]) -> ResumePlan:
    """Fill the searcher's state from its study and the MLflow runs.

    ``unfinished``: the trials Ray's snapshot holds as open, each with whether Ray has a checkpoint.
    """
    study, state, plan = searcher.study, searcher.state, ResumePlan()
    by_id = {run.info.run_id: run for run in runs}
    by_number = {run.data.tags.get(TAG_OPTUNA_NUMBER): run for run in runs}
    for frozen in study.get_trials(deepcopy=False):
        if frozen.state == TrialState.WAITING or is_told(frozen):  # queued, never asked; or told by a warm start
            continue
        attrs = frozen.user_attrs
        run = by_id.get(str(attrs.get("mlflow_run_id"))) or by_number.get(str(frozen.number))
        tags = run.data.tags if run is not None else {}
        ray_id = str(attrs.get("ray_trial_id") or tags.get(TAG_RAY_TRIAL_ID) or f"unstarted-{frozen.number}")
        run_id = run.info.run_id if run is not None else ""
        record = TrialRecord(frozen.number, ray_id, run_id, dict(attrs.get("config") or {}), dict(frozen.params))
        _fill(record, frozen, tags, _logged_value(run, state.metric))
        if not record.epochs and run is not None and state.metric in run.data.metrics:
            # the trial logged epochs its dead driver never heard of: they are in its MLflow run
            record.epochs = searcher.tracker.logged_epochs(run_id, state.metric)
        state.trials[ray_id] = record
        if frozen.state == TrialState.RUNNING:
            trial = running_trial(study, frozen)
            if _continues(ray_id, run, unfinished):
                searcher.continue_trial(record, trial, max(frozen.intermediate_values, default=0))
                plan.continued.append(record)
            else:
                # what the study was told: end_lost takes the epochs past it from the MLflow run (the
                # epochs filled in above from that run would hide them from Optuna and the curves)
                record.epochs = max(frozen.intermediate_values, default=0)
                if searcher.end_lost(record, trial, LOST_REASON) == INTERRUPTED:
                    plan.interrupted.append(record)
                else:  # it trained to its last epoch after its driver died: MLflow holds every epoch
                    plan.finished_alone.append(record)
                if run is not None:
                    plan.close(record, run)
        else:
            status = str(attrs.get("status") or ENDED.get(frozen.state, FAILED))
            state.finish(record, status, tags.get(TAG_REASON) or str(attrs.get("reason", "")))
            plan.ended += 1
            plan.replaced_before += status == INTERRUPTED
            if ray_id in unfinished:
                plan.not_rerun.append(record)
            if run is not None and run.info.status == "RUNNING":
                plan.close(record, run)
        if record.status != INTERRUPTED:
            searcher.count_started()
    _rebuild_rescues(searcher, runs, unfinished, plan)
    return plan


def _logged_value(run: Any, metric: str) -> float | None:
    """The last finite value of ``metric`` the trial's MLflow run holds (None: no run, or none finite)."""
    value = run.data.metrics.get(metric) if run is not None else None
    return value if value is not None and math.isfinite(value) else None


def _fill(record: TrialRecord, frozen: FrozenTrial, tags: dict[str, str], logged: float | None) -> None:
    """Epochs, metric value, step counts and divergence details as the trial left them.

    The value is the study's; ``logged`` (its MLflow run's) when the study has none: a value the
    trial logged before the driver that died heard of it.
    """
    values = frozen.intermediate_values
    if values:
        record.epochs = max(values)
        last = values[record.epochs]
        record.value = last if math.isfinite(last) else None
    if frozen.state == TrialState.COMPLETE and frozen.value is not None and math.isfinite(frozen.value):
        record.value = frozen.value
    if record.value is None:
        record.value = logged
    record.steps = int(frozen.user_attrs.get("steps", 0))
    record.skipped_steps = round(float(frozen.user_attrs.get("skipped_share", 0.0)) * record.steps)
    _fill_tags(record, tags)


def _fill_tags(record: TrialRecord, tags: dict[str, str]) -> None:
    if tags.get(TAG_EPOCHS, "").isdigit():
        record.epochs = int(tags[TAG_EPOCHS])
    record.signal = tags.get(TAG_SIGNAL, "")
    record.drawn_by = tags.get(TAG_DRAWN_BY, "")
    step = tags.get(TAG_DIVERGENCE_STEP, "")
    record.diverged_at = int(step) if step.isdigit() else None


def _continues(ray_id: str, run: Any, unfinished: dict[str, bool]) -> bool:
    """Whether Ray will continue the trial without repeating what its MLflow run holds."""
    if ray_id not in unfinished:
        return False
    return unfinished[ray_id] or run is None or not run.data.metrics


def _rebuild_rescues(searcher: OptunaSearcher, runs: list[Any], unfinished: dict[str, bool], plan: ResumePlan) -> None:
    """Precision rescues live in MLflow only (they are outside the study); queue the ones never started."""
    state = searcher.state
    by_run = {r.run_id: r for r in state.trials.values()}
    for run in runs:
        tags = run.data.tags
        original = by_run.get(tags.get(TAG_RESCUE_OF, ""))
        if tags.get(TAG_ROLE) != ROLE_RESCUE or original is None:
            continue
        precision = run.data.params.get("precision", "fp32")
        ray_id = tags.get(TAG_RAY_TRIAL_ID, f"rescue-{original.number}")
        params, sampled = {**original.params, "precision": precision}, {**original.sampled, "precision": precision}
        record = TrialRecord(original.number, ray_id, run.info.run_id, params, sampled, rescue_of=original)
        original.rescue = record
        state.trials[ray_id] = record
        _fill_tags(record, tags)
        record.value = _logged_value(run, state.metric)
        if run.info.status != "RUNNING":
            state.finish(record, tags.get(TAG_STATUS, FAILED), tags.get(TAG_REASON, ""))
        elif _continues(ray_id, run, unfinished):
            plan.continued.append(record)
        else:
            state.finish(record, INTERRUPTED, LOST_REASON)
            plan.interrupted.append(record)
            plan.close(record, run)
    for record in sorted(state.trials.values(), key=lambda r: r.number):
        if record.rescue is None:
            searcher.rescue_if_wanted(record)


def _close_runs(tracker: SweepTracker, records: list[TrialRecord], ended_at: dict[str, int] | None = None) -> None:
    """End the MLflow runs of trials that ended (or were lost) while no driver could close them.

    ``ended_at``: each run's end time (ms) by its id, when it last logged; now where none is given.
    """
    for record in records:
        tracker.finish_trial(record, (ended_at or {}).get(record.run_id))


def _reopen_parent(tracker: SweepTracker, plan: ResumePlan, resumes: int) -> None:
    """Mark the parent run running again and keep what this resume found as an artifact."""
    parent = tracker.parent_run_id
    retry(lambda: tracker.client.update_run(parent, status="RUNNING"), "reopen parent run")
    retry(lambda: tracker.client.set_tag(parent, TAG_STATUS, RUNNING), "tag parent run")
    retry(lambda: tracker.client.set_tag(parent, TAG_RESUMES, str(resumes)), "tag parent run")
    tracker.log_text(parent, "\n".join(plan.lines()) + "\n", f"resume/resume_{resumes}.txt")
