"""Runs a sweep: the one place that constructs Ray Tune's ``Tuner``."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from ray import tune

from sweeps.compat.ray_internals import TuneSigint, replace_tuner_configs, search_algorithm
from sweeps.core.keys import (
    COMPLETED,
    GIT_COMMIT_TAG,
    INTERRUPTED,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_HALTED,
    TAG_TIME_RAN_OUT,
    best_metric_tag,
    count_tag,
    diverged_by_tag,
)
from sweeps.core.records import SweepState
from sweeps.engine.best_checkpoints import log_best_checkpoints
from sweeps.engine.callbacks import CheckpointPruner, ReportPrewarm, TrackingCallback
from sweeps.engine.cluster import (
    check_workers_fit,
    cluster_slots,
    start_ray,
    trial_concurrency,
    trial_imports,
    trial_resources,
)
from sweeps.engine.live_view import LiveView, event_line
from sweeps.engine.preflight import check_sweep_start
from sweeps.engine.scheduler import make_scheduler, rung_epochs
from sweeps.engine.searcher import OptunaSearcher
from sweeps.engine.sweep_stop import SweepStop, deadline_grace
from sweeps.engine.trial_timeout import TrialTimeout
from sweeps.engine.warm_start import check_warm_start, tell_earlier_trials
from sweeps.results.export import best_export_text
from sweeps.results.report import result_rows, write_report
from sweeps.results.summary import divergence_summary, stopped_by_user, summary_table, time_ran_out
from sweeps.spec.params import never_drawn
from sweeps.spec.spec_stamp import spec_stamp
from sweeps.spec.sweep_spec import SweepSpec
from sweeps.store.study import create_study
from sweeps.store.sweep_dir import (
    SweepDir,
    SweepStoreError,
    claim_driver,
    default_name,
    new_sweep_dir,
    release_driver,
)
from sweeps.store.trial_storage import resolve_trial_storage
from sweeps.tracking.provenance import source_digests, trainer_commit
from sweeps.tracking.store_check import open_store
from sweeps.tracking.sweep_tracker import SweepTracker
from sweeps.tracking.ui_views import NOTE_TAG, TOP_K, parent_note, save_views
from sweeps.trial.one_worker import run_trial
from sweeps.version import __version__


@dataclass
class SweepResult:
    """What a finished (or interrupted) sweep leaves: its folder, trials and parent run."""

    sweep: SweepDir
    state: SweepState
    parent_run_id: str
    tracking_uri: str
    interrupted: bool = False


def run_sweep(
    spec: SweepSpec,
    root: str | Path = "sweep_runs",
    name: str | None = None,
    tracking_uri: str | None = None,
    stream: TextIO | None = None,
    cpus: int | None = None,
    address: str | None = None,
    warm_start: str | Path | None = None,
) -> SweepResult:
    """Run ``spec`` to its trial budget and return the result; records survive an interrupt.

    Ray is started here unless it runs already (``cpus`` and ``address`` as :func:`start_ray` takes
    them), while the MLflow store opens. ``warm_start``: an earlier sweep (a name in ``root`` or its
    folder) whose trials are told to the new study and whose best configs run first
    (``sweeps.engine.warm_start``).

    Bad input (a sweep name, the tracking URI or its store, the Ray address, trial storage) is
    refused with a one-line ``InputError`` before anything is made; a start that fails after the
    sweep's folder was made removes it and the parent run again.
    """
    check_workers_fit(spec)  # budget.workers_per_trial: before anything is recorded
    uri = check_sweep_start(spec, root, name, tracking_uri)
    earlier = check_warm_start(root, str(warm_start), spec) if warm_start is not None else None
    start_ray_and_store(uri, cpus, address)
    tracker = SweepTracker(uri)
    sweep = new_sweep_dir(root, name or default_name(spec.name), unique=name is None)
    claim_driver(sweep)  # a sweeps resume of it while this process runs is refused, whatever its pid says
    try:
        spec_text = yaml.safe_dump(spec.raw, sort_keys=False)
        sweep.spec_file.write_text(spec_text)
        parent = tracker.start(spec.name, sweep.name, spec_text, _parent_params(spec, sweep))
        storage_path, experiment = ray_location(spec, sweep)
        meta = {**_meta(spec, sweep, uri, tracker), "ray_experiment": f"{storage_path}/{experiment}"}
        if cpus is not None:  # the commands that go on from it say --cpus too (a shared machine's share)
            meta["cpus"] = cpus
        if meta["git_commit"]:  # MLflow's UI shows the code's commit on the run
            tracker.set_tags(parent, {GIT_COMMIT_TAG: str(meta["git_commit"])})
        study = create_study(sweep, spec)
        if earlier is not None:
            warm = tell_earlier_trials(study, earlier, spec)
            print(warm.line(), file=stream or sys.stdout, flush=True)
            meta["warm_start"] = {"sweep": str(earlier.path), "told": warm.told, "queued": warm.queued}
            tags = {"sweep.warm_start": earlier.name, "sweep.warm_start.told": str(warm.told)}
            if earlier_parent := earlier.read_meta().get("parent_run_id"):  # the run it started from, by its id
                tags["sweep.warm_start.parent_run_id"] = str(earlier_parent)
            tracker.set_tags(parent, tags)
        state = SweepState(metric=spec.metric, mode=spec.mode)
        if spec.budget.time_s is not None:  # from the start: a resumed sweep ends at the same time
            state.deadline = meta["deadline"] = time.time() + spec.budget.time_s
        sweep.write_meta(meta)
        searcher = OptunaSearcher(spec, study, state, tracker, sweep.name)
        tuner = sweep_tuner(spec, sweep, searcher, state, tracker, stream)
    except BaseException:
        release_driver(sweep)
        _undo_start(sweep, tracker)
        raise
    try:
        interrupted = fit_and_finish(tuner, spec, sweep, meta, searcher, tracker, stream)
    finally:
        release_driver(sweep)
    return SweepResult(sweep, state, parent, uri, interrupted)


def start_ray_and_store(uri: str, cpus: int | None = None, address: str | None = None) -> None:
    """Start (or join) Ray while the MLflow store opens in a thread; raise the store's one-line error if any.

    Opening a new SQLite store creates MLflow's tables (about 2 s here), which needs no Ray, and
    starting a local Ray mostly waits on its processes: side by side, a sweep reaches its first
    trial sooner.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="open-store") as pool:
        store = pool.submit(open_store, uri)
        start_ray(num_cpus=cpus, address=address, preload=trial_imports(uri))
        store.result()


def sweep_tuner(
    spec: SweepSpec,
    sweep: SweepDir,
    searcher: OptunaSearcher,
    state: SweepState,
    tracker: SweepTracker,
    stream: TextIO | None = None,
    restore: Path | None = None,
) -> tune.Tuner:
    """The sweep's Tuner: a new one, or (``restore``: its Ray experiment folder) the one a dead driver left."""
    configs = _engine_configs(spec, sweep, searcher, state, tracker, stream)
    if restore is None:
        return tune.Tuner(sweep_trainable(spec), **configs)
    tuner = tune.Tuner.restore(str(restore), sweep_trainable(spec), resume_unfinished=True)
    # Tuner.restore brings back the objects pickled when the sweep started, with empty state
    if not replace_tuner_configs(tuner, configs["tune_config"], configs["run_config"]):
        raise SweepStoreError("resume needs the driver on the cluster (Ray Client is not supported)")
    return tuner


def configs_tuner(
    spec: SweepSpec, sweep: SweepDir, trainable: Any, configs: list[dict[str, Any]], name: str, state: SweepState
) -> tune.Tuner:
    """A Tuner that runs each of ``configs`` once (as ``{"trial": config}``), as many at once as the sweep ran.

    A trial that hangs past ``budget.trial_time`` is ended as in the sweep (``state.timed_out`` says which).
    """
    limit = spec.budget.trial_time_s
    return tune.Tuner(
        tune.with_resources(trainable, trial_resources(spec.budget)),
        param_space={"trial": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=trial_concurrency(spec.budget)),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(sweep.path),
            verbose=0,
            callbacks=[TrialTimeout(state, limit)] if limit else [],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _undo_start(sweep: SweepDir, tracker: SweepTracker) -> None:
    """Remove what a start that failed made: the parent run (if created) and the sweep's folder."""
    if tracker.parent_run_id:
        try:
            tracker.client.delete_run(tracker.parent_run_id)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
    shutil.rmtree(sweep.path, ignore_errors=True)


def ray_location(spec: SweepSpec, sweep: SweepDir) -> tuple[str, str]:
    """Where Ray keeps the sweep's trial records and checkpoints: ``(storage_path, experiment name)``.

    ``trial_storage`` (a URI or a shared path) when the spec sets it, else the sweep's own folder.
    """
    if spec.trial_storage:
        return resolve_trial_storage(spec.trial_storage), sweep.name
    return str(sweep.path), "ray"


def sweep_trainable(spec: SweepSpec) -> Any:
    """Ray's trainable for the sweep's trials, one-worker or multi-worker, with each trial's CPUs and GPUs."""
    if spec.budget.workers_per_trial > 1:  # Ray Train workers, driven by a light Tune trial
        from sweeps.trial.multi_worker import run_multi_worker_trial  # imports Ray Train: only when used

        return tune.with_resources(run_multi_worker_trial, trial_resources(spec.budget))

    return tune.with_resources(run_trial, trial_resources(spec.budget))


def _engine_configs(
    spec: SweepSpec,
    sweep: SweepDir,
    searcher: OptunaSearcher,
    state: SweepState,
    tracker: SweepTracker,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """The ``tune_config`` and ``run_config`` of a sweep's Tuner (a new one, or one restored by ``resume``).

    ``num_samples`` is unbounded: the searcher ends the search itself once the budget is met (on
    resume, interrupted trials are replaced, so the number of Ray trials is not known in advance).
    """
    storage_path, experiment = ray_location(spec, sweep)
    return {
        "tune_config": tune.TuneConfig(
            search_alg=search_algorithm(searcher, trial_concurrency(spec.budget)),
            scheduler=make_scheduler(spec, state),
            metric=spec.metric,
            mode=spec.mode,
            num_samples=-1,
            reuse_actors=spec.budget.workers_per_trial == 1,  # a stopped multi-worker trial's actor must end
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        "run_config": tune.RunConfig(
            name=experiment,
            storage_path=storage_path,
            verbose=0,
            stop=SweepStop(state, deadline_grace(spec.budget.time_s)),
            callbacks=[
                LiveView(state, spec.budget.trials, stream, epochs=spec.budget.epochs),
                TrackingCallback(state, tracker),
                CheckpointPruner(),
                ReportPrewarm(state, spec.budget.trials),
                *([TrialTimeout(state, spec.budget.trial_time_s)] if spec.budget.trial_time_s else []),
            ],
            # Every checkpoint is kept by Tune; CheckpointPruner deletes the superseded ones safely.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            # A trial whose process or node dies restarts from its last checkpoint; exceptions
            # raised in the trial end it at once (sweeps.trial reports them as a final result).
            failure_config=tune.FailureConfig(max_failures=spec.budget.retries),
        ),
    }


def fit_and_finish(
    tuner: Any,
    spec: SweepSpec,
    sweep: SweepDir,
    meta: dict[str, object],
    searcher: OptunaSearcher,
    tracker: SweepTracker,
    stream: TextIO | None = None,
) -> bool:
    """Run ``tuner`` to the end, then close open trials and the parent run; True if interrupted.

    ``stream``: where the live view writes (stdout when None).
    """
    state = searcher.state
    interrupted = False
    meta = {**meta, "searched": drawn_params(spec), "rungs": rung_epochs(spec)}  # for the report
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(_pending_trials(spec))  # read when fit() starts

    results = None
    sigint = TuneSigint()
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # a SIGINT to the driver alone (`kill -INT`) reaches no trial: Tune's handler ends fit() as if done
        interrupted = interrupted or (results is not None and sigint.caught())
        sigint.restore()
        closed = _close_open_trials(searcher, tracker, stream)  # none left open unless Tune was stopped early
        interrupted = interrupted or bool(state.halted) or (closed and not state.out_of_time())
        try:
            log_best_checkpoints(results, state, tracker, spec, "/".join(ray_location(spec, sweep)))
        except Exception as exc:  # noqa: BLE001 - a failed upload must not leave the parent run open
            tracker.log_text(tracker.parent_run_id, f"checkpoints not uploaded: {exc!r}", "checkpoints_error.txt")
        if state.halted:
            meta["halted"] = state.halted
        meta["time_ran_out"] = time_ran_out(state, spec.budget.trials)  # '' once a resume ends it within its time
        meta["stopped"] = stopped_by_user(state, spec.budget.trials) if interrupted and not state.halted else ""
        # the trials it ran: budget.time may end a sweep before its budget.trials (export compares the study with it)
        meta["trials_asked"] = sum(1 for r in state.trials.values() if r.rescue_of is None)
        _finish_parent(tracker, state, sweep, meta, interrupted, searcher.study, spec.observing)
    return interrupted


def _pending_trials(spec: SweepSpec) -> int:
    """Trials Tune may ask for ahead of a free slot: one per slot, so no slot waits on a suggestion.

    With a concurrency limit, Tune uses that; without one, Tune asks a searcher for one trial at
    a time, so the slots the cluster has now are counted.
    """
    return spec.budget.concurrency or cluster_slots(spec.budget)


def _trial_name(trial: object) -> str:
    """Ray's name and folder for a trial: its id (Ray's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"  # type: ignore[attr-defined]


def drawn_params(spec: SweepSpec) -> list[str]:
    """The parameters the sweep searches, less those a fixed value keeps from ever being drawn (``--set``)."""
    never = {key.split(".", 1)[1] for key, _ in never_drawn(spec.params, spec.fixed)}
    return [name for name in spec.params if name not in never]


def _parent_params(spec: SweepSpec, sweep: SweepDir) -> dict[str, object]:
    return {
        "trainer": spec.trainer,
        "metric": spec.metric,
        "mode": spec.mode,
        "seed": spec.seed,
        "trials": spec.budget.trials,
        "epochs": spec.budget.epochs,
        "searched": ",".join(drawn_params(spec)),
        **{f"fixed.{key}": value for key, value in spec.fixed.items()},
    }


def _meta(spec: SweepSpec, sweep: SweepDir, uri: str, tracker: SweepTracker) -> dict[str, object]:
    return {
        "name": sweep.name,
        "spec_name": spec.name,
        "trainer": spec.trainer,
        "metric": spec.metric,
        "mode": spec.mode,
        "seed": spec.seed,
        "epochs": spec.budget.epochs,
        "trials": spec.budget.trials,
        "threads": max(1, int(spec.budget.cpus_per_trial)),
        "workers": spec.budget.workers_per_trial,
        "trainer_defaults": spec.trainer_defaults,
        "tracking_uri": uri,
        "experiment_id": tracker.experiment_id,
        "parent_run_id": tracker.parent_run_id,
        "optuna_storage": sweep.storage_location,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": trainer_commit(spec.trainer),
        "trainer_files": source_digests(spec.trainer),  # sweeps train compares its export's with the code then
        "spec_stamp": spec_stamp(spec.source),  # a resume says when the file was edited since
        "version": __version__,
        "status": "running",
        "driver": driver_identity(),
    }


def driver_identity() -> dict[str, object]:
    """Which process drives the sweep (``sweeps resume`` refuses a sweep whose driver still runs)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _close_open_trials(searcher: OptunaSearcher, tracker: SweepTracker, stream: TextIO | None = None) -> bool:
    """End the trials still open when Tune returned and close their runs; True if any was interrupted.

    Each gets its line, as a trial that ends while Tune runs does (``budget.time``'s last trials
    ended here, unannounced).
    """
    ended = searcher.end_open_trials("the sweep stopped before this trial ended")
    out = stream or sys.stdout
    for record in ended:
        tracker.finish_trial(record)
        out.write(event_line(record, searcher.state.metric) + "\n")
    out.flush()
    return any(record.status == INTERRUPTED for record in ended)


def _finish_parent(
    tracker: SweepTracker,
    state: SweepState,
    sweep: SweepDir,
    meta: dict[str, object],
    interrupted: bool,
    study: object,
    observe: bool = False,
) -> None:
    """Write the summary and report to the sweep's folder and parent run, then close it (``observe``: observe mode)."""
    notes = divergence_summary(state, observe)
    ended = [
        f"{label} {meta[key]}"
        for key, label in (("time_ran_out", "time:   "), ("stopped", "stopped:"))
        if meta.get(key)
    ]
    ended += [f"halted:  {state.halted}"] if state.halted else []
    said = "\n".join(ended) + "\n\n" if ended else ""  # why it ended, as the run's last lines said it
    tracker.log_text(tracker.parent_run_id, summary_table(state) + "\n\n" + said + notes, "summary.txt")
    status = INTERRUPTED if interrupted else COMPLETED
    meta = {**meta, "status": status}
    try:
        write_report(sweep.name, meta, result_rows(state), notes, study, sweep.path / "report")  # type: ignore[arg-type]
        tracker.log_artifacts(tracker.parent_run_id, sweep.path / "report", "report")  # one upload, with samples/
    except Exception as exc:  # noqa: BLE001 - the report must not cost the sweep its record
        tracker.log_text(tracker.parent_run_id, f"report failed: {exc!r}", "report/error.txt")
    tags = {count_tag(status): str(n) for status, n in state.counts.items()}
    tags.update({diverged_by_tag(signal): str(n) for signal, n in state.diverged_by.items()})
    if state.halted:
        tags[TAG_HALTED] = state.halted[:5000]
    if meta.get("time_ran_out"):
        tags[TAG_TIME_RAN_OUT] = str(meta["time_ran_out"])
    if state.best is not None and state.best.value is not None:
        tags[TAG_BEST_TRIAL] = str(state.best.number)
        tags[TAG_BEST_RUN_ID] = state.best.run_id
        tags[best_metric_tag(state.metric)] = f"{state.best.value:.6g}"
        best = best_export_text(sweep, meta, study, "best_config.yaml")  # type: ignore[arg-type]
        if best is not None:  # the export of the best: `sweeps train best_config.yaml` runs it
            tracker.log_text(tracker.parent_run_id, best, "best_config.yaml")
    tags.update(_ui_views(tracker, state, sweep, meta))
    tracker.finish_run(tracker.parent_run_id, status, "", tags)
    sweep.write_meta(meta)


def _ui_views(tracker: SweepTracker, state: SweepState, sweep: SweepDir, meta: dict[str, object]) -> dict[str, str]:
    """Save the sweep's MLflow UI views (its trials; the top ones compared); the parent's description linking them."""
    done = [r for r in state.trials.values() if r.status == COMPLETED and r.value is not None and r.rescue_of is None]
    top = sorted(done, key=lambda r: (1.0 if state.mode == "min" else -1.0) * float(r.value or 0.0))[:TOP_K]
    searched = [str(name) for name in meta.get("searched") or []]  # type: ignore[attr-defined]
    best = state.best
    found = (
        f"Best: {best.label}, {state.metric} = {best.value:.6g}."
        if best and best.value is not None
        else "No trial completed."
    )
    try:
        where = (tracker.uri, tracker.experiment_id, sweep.name)
        views = save_views(*where, state.metric, state.mode, searched, [r.run_id for r in top])
    except Exception as exc:  # noqa: BLE001 - links are a convenience; the sweep's record stands without them
        tracker.log_text(tracker.parent_run_id, f"UI views not saved: {exc!r}", "ui_views_error.txt")
        return {}
    return {NOTE_TAG: parent_note(views, found)}
