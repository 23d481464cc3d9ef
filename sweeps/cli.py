"""The ``sweeps`` command: run, resume, export, train, report, list, ui."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sweeps.core.command import command_name
from sweeps.core.errors import InputError
from sweeps.core.files import CommandError, disk_error_line
from sweeps.core.keys import FAILED, OOM
from sweeps.core.records import metric_text, trial_label
from sweeps.spec.sweep_spec import SpecError
from sweeps.store.sweep_dir import DEFAULT_ROOT, SweepStoreError, check_sweep_name, go_on_options

if TYPE_CHECKING:
    from sweeps.engine.runner import SweepResult
    from sweeps.spec.sweep_spec import SweepSpec

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
UI_PORT = 5000


class _Once(argparse.Action):
    """An option given at most once: argparse keeps the last of two ``--warm-start``, dropping the first unsaid."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, *_: object
    ) -> None:
        given = getattr(namespace, self.dest, None)
        if given is not None:
            parser.error(
                f"{self.option_strings[0]} given twice ({given}, {values}): it takes one earlier sweep (a sweep "
                "warm-started from another passes that one's trials on)"
            )
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """argparse whose error is one line: ``error: sweeps run: <what> ('sweeps run --help' lists the options)``."""

    def error(self, message: str) -> NoReturn:
        """Print the one line and exit 2 (argparse prints a usage block first)."""
        text = " ".join(message.split())
        if "unrecognized arguments: --resume" in text:  # Ray Tune's word for it; here it is a command
            text += "; to go on with an interrupted sweep, run 'sweeps resume SWEEP'"
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {text} ('{self.prog} --help' lists the options)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sweeps", description="Hyperparameter sweeps for PyTorch image models.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a sweep from a YAML spec")
    run.add_argument("spec", help="the sweep spec, e.g. search_spaces/vae_demo.yaml")
    run.add_argument("--trials", type=int, help="number of trials (overrides budget.trials)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value (budget.epochs=3) or fix a parameter (lr=1e-3); repeatable",
    )
    run.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    run.add_argument("--storage", default=DEFAULT_ROOT, help=f"folder for sweep state (default: {DEFAULT_ROOT})")
    run.add_argument("--name", help="sweep name (default: the spec's name and the time)")
    run.add_argument(
        "--warm-start",
        action=_Once,
        metavar="SWEEP",
        help="an earlier sweep (name in --storage, or its folder) of the same metric: its trials are told "
        "to the new study and its best configs run first",
    )
    run.add_argument("--cpus", type=int, help="CPUs local Ray may use (default: all)")
    run.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="Ray cluster to run on: its head's host:port (e.g. 10.0.1.23:6379), 'auto', or 'local' for a new "
        "local Ray (default: $RAY_ADDRESS, which 'ray job submit' sets for its jobs; else a cluster started on "
        "this machine with 'ray start', else a new local Ray)",
    )
    run.add_argument("--check", action="store_true", help="validate the spec and exit")
    resume = sub.add_parser("resume", help="finish a sweep whose driver died (killed, laptop closed)")
    resume.add_argument("sweep", help="sweep name (or its folder)")
    resume.add_argument("--storage", default=DEFAULT_ROOT)
    resume.add_argument("--cpus", type=int, help="CPUs local Ray may use (default: all)")
    resume.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="Ray cluster to run on, as for 'sweeps run' (default: $RAY_ADDRESS, else as Ray finds one)",
    )
    resume.add_argument("--force", action="store_true", help="resume even if the recorded driver process still runs")
    audit = sub.add_parser(
        "audit", help="re-run the trials a heuristic divergence signal stopped, to the end, and judge each stop"
    )
    audit.add_argument("sweep", help="sweep name (or its folder)")
    audit.add_argument("--storage", default=DEFAULT_ROOT)
    audit.add_argument(
        "--top-k", type=int, default=1, help="say whether a re-run would have entered the top k (default 1)"
    )
    audit.add_argument("--cpus", type=int, help="CPUs local Ray may use (default: all)")
    audit.add_argument(
        "--address", default=os.environ.get("RAY_ADDRESS") or None, help="Ray cluster, as for 'sweeps run'"
    )
    export = sub.add_parser("export", help="export a sweep's best config")
    export.add_argument("sweep", help="sweep name (or its folder)")
    export.add_argument("-o", "--output", default="best.yaml", help="file to write (default: best.yaml)")
    export.add_argument("--storage", default=DEFAULT_ROOT)
    export.add_argument("--top-k", type=int, default=1, help="export the k best (best.yaml, best.2.yaml, ...)")
    export.add_argument(
        "--skip-unstable",
        action="store_true",
        help="leave out trials with over 5%% overflowed steps (rescues are never exported)",
    )
    export.add_argument(
        "--trial", help="export this trial (t007 or 7) whatever its end, a stopped one too, instead of the best"
    )
    train = sub.add_parser("train", help="train from an exported config")
    train.add_argument("config", help="a file written by 'sweeps export'")
    train.add_argument("--epochs", type=int, help="train this many epochs instead")
    train.add_argument("--save", help="write the final checkpoint here")
    report = sub.add_parser("report", help="print a sweep's results and write its HTML report")
    report.add_argument("sweep", help="sweep name (or its folder)")
    report.add_argument("--storage", default=DEFAULT_ROOT)
    report.add_argument("--html", help="write the HTML page here too (default: <sweep>/report/report.html)")
    listing = sub.add_parser("list", help="list the sweeps in the storage folder")
    listing.add_argument("--storage", default=DEFAULT_ROOT)
    ui = sub.add_parser("ui", help="open the MLflow UI on the sweeps' tracking store")
    ui.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    ui.add_argument("--port", type=int, help=f"port to serve on (default: {UI_PORT}, else a free one)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--top-k", type=int, default=5, help="trials the comparison link opens on (default: 5)")
    ui.add_argument("--sweep", help="the sweep whose links are printed (default: each experiment's latest)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sweeps`` command; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a command line argparse cannot parse (2, one line)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if os.getcwd() not in sys.path:  # trainers named by import path resolve from here
        sys.path.insert(0, os.getcwd())
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Trial errors reach the user as one line each (live view, summary, MLflow tags with the
    # traceback as an artifact), not as Ray's tracebacks on the console.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    try:
        _refuse_nul(args)
        _refuse_empty(args)
        return int(COMMANDS[args.command](args))
    except InputError as exc:  # a spec's problems, one per line; any other bad input, one line
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CommandError as exc:  # it began, then could not go on (a full disk): one line
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # the disk's, not the command's: one line; any other is a bug, with its traceback
        if (line := disk_error_line(exc)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C outside a sweep's own handling (starting up, a report, an export)
        print("stopped by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED


def _refuse_empty(args: argparse.Namespace) -> None:
    """Refuse an empty ``--tracking-uri`` or ``--storage`` (an unset shell variable): it would mean the default."""
    for option in ("tracking_uri", "storage"):
        value = getattr(args, option, None)
        if isinstance(value, str) and not value.strip():
            raise InputError(f"--{option.replace('_', '-')}: empty; leave it out for the default")


def _refuse_nul(args: argparse.Namespace) -> None:
    """Refuse an argument with a NUL character: no file name, URI, address or name can hold one."""
    for dest, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and "\x00" in text:
                raise InputError(
                    f"{dest.replace('_', '-')} {text!r}: holds a NUL character (\\x00), which no path, URI or name can"
                )


def check_output_file(option: str, path: str, overwrites: Callable[[bytes], bool] | None = None) -> None:
    """Refuse, in one line, a file to write that is empty, a folder, in no folder, or that cannot be written there.

    ``overwrites``: whether an existing file's first bytes are of the kind this command writes
    (an earlier page or export); another file there is refused, not overwritten.
    """
    target = Path(path)
    if not path.strip():
        raise InputError(f"{option}: empty; name a file")
    if target.is_dir():
        raise InputError(f"{option} {path}: is a folder; name a file")
    if not target.parent.is_dir():
        if target.parent.exists():
            raise InputError(f"{option} {path}: {target.parent} is a file, not a folder to write it in")
        raise InputError(f"{option} {path}: no folder {target.parent} to write it in (create it first)")
    if target.exists():
        if overwrites is not None and not overwrites(target.read_bytes()[:64]):
            raise InputError(f"{option} {path}: a file that this command did not write is there; name another")
        if not os.access(target, os.W_OK):
            raise InputError(f"{option} {path}: cannot write it (permission denied)")
        return
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        target.unlink()
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write it ({exc.strerror})") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the spec, run the sweep, print the summary."""
    from sweeps.core.problems import closest_key
    from sweeps.spec.sweep_spec import BUDGET_KEYS, load_spec

    spec = load_spec(args.spec, args.overrides, args.trials)
    named = sorted(name for name in (*spec.fixed, *spec.params) if name not in spec.unnamed_overrides)
    for key in spec.unnamed_overrides:
        note = f"note: --set {key}: not in the spec's fixed or params; the trainer gets it as config[{key!r}]"
        if key in BUDGET_KEYS:  # a function trainer takes any key: this one is more likely the budget's
            note += f" (did you mean --set budget.{key}?)"
        elif (close := closest_key(key, named)) is not None:  # a typo of a key the spec has
            note += f" (did you mean --set {close}?)"
        print(note, file=sys.stderr)
    for key, text in (*spec.unnamed_in_source, *spec.notes):
        print(f"note: {key}: {text}", file=sys.stderr)
    if args.name is not None:
        check_sweep_name(args.name)
    else:  # the name it will get: the spec's and the time
        from sweeps.store.sweep_dir import default_name

        check_sweep_name(default_name(spec.name))
    _check_cpus(args.cpus, args.address)
    from sweeps.engine.preflight import check_sweep_start

    # Before Ray starts and before anything is made: the name, trial storage, the tracking store.
    check_sweep_start(spec, args.storage, args.name, args.tracking_uri)
    if args.warm_start is not None:
        from sweeps.engine.warm_start import check_warm_start, fixed_mismatch_note, warm_start_note

        earlier = check_warm_start(args.storage, args.warm_start, spec)
        for warm_note in (warm_start_note(earlier, spec), fixed_mismatch_note(earlier, spec)):
            if warm_note is not None:
                print(f"note: --warm-start {args.warm_start}: {warm_note}", file=sys.stderr)
    from sweeps.engine.cluster import (
        check_address_format,
        check_local_workers_fit,
        check_ray_address,
        local_concurrency_note,
        local_gpu_note,
    )

    check_address_format(args.address)
    check_local_workers_fit(spec, args.address, args.cpus)
    if (slots := local_concurrency_note(spec, args.address, args.cpus)) is not None:
        print(f"note: budget.concurrency: {slots}", file=sys.stderr)
    if (idle := local_gpu_note(spec, args.address)) is not None:
        print(f"note: budget.gpus_per_trial: {idle}", file=sys.stderr)
    within = "" if spec.budget.time_s is None else f" within {_duration(spec.budget.time_s)}"
    if spec.budget.trial_time_s is not None:
        within += f", each at most {_duration(spec.budget.trial_time_s)}"
    if args.check:  # everything above; a cluster's address is not tried
        print(f"{args.spec}: ok ({len(spec.params)} searched parameters, {spec.budget.trials} trials{within})")
        return 0
    address = check_ray_address(args.address)  # before Ray (and the engine) is imported: seconds, not minutes
    from sweeps.engine.launch import run_sweep

    if args.cpus is not None and address not in (None, "local"):
        print(f"note: --cpus sizes a new local Ray; ignored with --address {address}", file=sys.stderr)
    observed = "; divergence observed only (divergence.mode: observe)" if spec.observing else ""
    print(
        f"sweep {args.name or spec.name}: {spec.budget.trials} trials x {spec.budget.epochs} epochs of {spec.trainer}"
        f"{within}, {spec.mode}imizing {spec.metric}{observed}",
        flush=True,
    )
    # Ray starts inside, while the MLflow store opens
    result = run_sweep(
        spec,
        root=args.storage,
        name=args.name,
        tracking_uri=args.tracking_uri,
        cpus=args.cpus,
        address=address,
        warm_start=args.warm_start,
    )
    return _print_result(result, spec, args.storage, args.cpus)


def _duration(seconds: float) -> str:
    """``budget.time`` as people write it (the units ``as_duration`` reads): ``8h``, ``90m``, ``45s``."""
    from sweeps.core.problems import DURATION_UNITS

    for unit, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1])[:-1]:  # the largest first; not s
        if seconds >= size and (seconds / size) * 10 == int(seconds / size * 10):
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def cmd_resume(args: argparse.Namespace) -> int:
    """Finish a sweep whose driver died: continue or replace its open trials, then summarize."""
    from sweeps.engine.cluster import check_ray_address, start_ray
    from sweeps.engine.resume import check_resumable, resume_sweep
    from sweeps.spec.spec_stamp import edited_since
    from sweeps.spec.sweep_spec import load_spec

    _check_cpus(args.cpus, args.address)
    sweep, meta = check_resumable(args.storage, args.sweep, args.force)  # refuse before Ray starts
    spec = load_spec(sweep.spec_file)
    if edited := edited_since(meta.get("spec_stamp")):
        print(
            f"note: {edited} changed since sweep {sweep.name} started; resume runs the spec it started with "
            f"({sweep.spec_file}); to sweep the edited one: {command_name()} run {edited} --warm-start {sweep.name}",
            file=sys.stderr,
        )
    start_ray(num_cpus=args.cpus, address=check_ray_address(args.address))
    print(f"resuming sweep {sweep.name}: {spec.budget.trials} trials x {spec.budget.epochs} epochs", flush=True)
    result = resume_sweep(args.storage, args.sweep, force=args.force)
    return _print_result(result, spec, args.storage, args.cpus)


def _check_cpus(cpus: int | None, address: str | None) -> None:
    """Refuse ``--cpus`` below 1; note one above this machine's CPUs for a new local Ray."""
    if cpus is None:
        return
    if cpus < 1:
        raise SpecError("--cpus", [("", f"must be >= 1, got {cpus}")])
    from sweeps.engine.cluster import starts_local_ray

    here = os.cpu_count() or 1
    if cpus > here and starts_local_ray(address):  # joining a cluster, --cpus is ignored (and says so)
        print(
            f"note: --cpus {cpus} is more than this machine's {here} CPUs: Ray will run {cpus} CPUs' worth of "
            "trials on them at once, each slower",
            file=sys.stderr,
        )


def _print_result(result: SweepResult, spec: SweepSpec, storage: str, cpus: int | None = None) -> int:
    """The end-of-sweep summary; exit code 130 when interrupted (``cpus``: the run's ``--cpus``)."""
    from sweeps.results.summary import (
        divergence_summary,
        every_trial_failed,
        range_edge_notes,
        stopped_by_user,
        summary_table,
        time_ran_out,
        unstable_best_note,
    )

    state = result.state
    print()
    print(summary_table(state))
    print()
    notes = divergence_summary(state, spec.observing)
    if notes:
        print(notes)
        print()
    print(f"sweep:   {result.sweep.name}  ({result.sweep.path})")
    print(f"MLflow:  {result.tracking_uri}  parent run {result.parent_run_id}")
    print(f"Optuna:  {result.sweep.storage_location}  study {result.sweep.name}")
    if (page := result.sweep.path / "report" / "report.html").is_file():
        print(f"report:  {page}")
    from sweeps.compat.ray_internals import PROCESS_DIED

    raised = sorted(  # a process that died, or that budget.trial_time ended, left no traceback (its reason says so)
        (
            r
            for r in state.trials.values()
            if r.status in (FAILED, OOM) and PROCESS_DIED not in r.reason and r.ray_id not in state.timed_out
        ),
        key=lambda r: r.label,
    )
    if raised:  # where to read what went wrong: the traceback is an artifact of each one's run
        runs = ", ".join(f"{r.label} {r.run_id}" for r in raised)
        print(f"errors:  traceback.txt in the MLflow run of {runs}")
    if ran_out := time_ran_out(state, spec.budget.trials):
        print(f"time:    {ran_out}")
    where = go_on_options(storage)
    sweeps, name = command_name(), shlex.quote(result.sweep.name)  # as pasted into a shell
    failed = every_trial_failed(state)
    if state.best is not None and state.best.value is not None:
        print(f"best:    {state.best.label} {spec.metric}={state.best.value:.6g}")
        print(f"next:    {sweeps} export {name}{where} -o best.yaml && {sweeps} train best.yaml")
        if note := unstable_best_note(state):
            print(note)
        for line in range_edge_notes(spec.params, state.best.sampled):
            print(line)
    elif state.trials and not state.halted and not failed:
        # a user's sweep whose every trial budget.trial_time ended (pruned) ended with no word of a best
        ended = Counter(r.status for r in state.trials.values())
        how = ", ".join(f"{n} {status}" for status, n in sorted(ended.items()))
        print(f"best:    none: no trial completed ({how}); nothing to export")
    if result.interrupted and not state.halted:
        again = go_on_options(storage, cpus)
        more = f"{sweeps} run {shlex.quote(str(result.sweep.spec_file))}{again} --warm-start {name}"
        print(f"stopped: {stopped_by_user(state, spec.budget.trials)}; to go on from it: {more}")
    if state.halted:  # the trainer (or the spec's metric) is wrong: every trial would have failed so
        print(
            f"error: sweep stopped after {state.halted}; every trial would fail so: "
            "fix the trainer or the spec, then run the sweep again",
            file=sys.stderr,
        )
        return 1
    if not result.interrupted and failed:
        print(f"error: {failed}; fix the trainer or the spec, then run the sweep again", file=sys.stderr)
        return 1
    return 130 if result.interrupted else 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Re-run the heuristic stops of a finished sweep to the end; print each verdict."""
    from sweeps.engine.audit import AuditInterrupted, audit_sweep

    if args.top_k < 1:
        raise SpecError("--top-k", [("", f"must be >= 1, got {args.top_k}")])
    _check_cpus(args.cpus, args.address)
    try:
        result = audit_sweep(args.storage, args.sweep, args.top_k, address=args.address, cpus=args.cpus)
    except AuditInterrupted as stopped:
        print(f"interrupted: {stopped}", file=sys.stderr)
        return 130
    if result.stops:
        print(result.text())
    else:
        print(f"{result.sweep}: no trial was stopped (or, observed, flagged) by a heuristic signal")
        if left_out := result.not_rerun():
            print(left_out)
    if result.page is not None:
        print(f"\nreport: {result.page} (with the verdicts)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the best trials' configs."""
    from sweeps.results.export import best_configs, ranked_path, study_shortfall, trial_export, write_export
    from sweeps.store.study import load_study
    from sweeps.store.sweep_dir import open_sweep_dir

    if args.top_k < 1:
        raise SpecError("--top-k", [("", f"must be >= 1, got {args.top_k}")])
    if args.trial is not None and (args.top_k != 1 or args.skip_unstable):
        raise InputError("--trial exports the one trial it names: leave out --top-k and --skip-unstable")
    wanted = _trial_number(args.trial) if args.trial is not None else None
    check_output_file("--output", args.output, overwrites=lambda head: head.startswith(b"# Trial "))
    sweep = open_sweep_dir(args.storage, args.sweep)
    meta = sweep.read_meta()
    if meta.get("status") == "running":
        note = f"note: sweep {sweep.name!r} is still running (or its driver died): this is its best so far"
        print(note, file=sys.stderr)
    study = load_study(sweep)  # read once: the export and what the study may have lost
    if wanted is not None:
        data = trial_export(sweep, wanted, study)
        out = write_export(data, args.output)
        metric, how = data["metric"], data["source"]["status"]
        value = (
            f"{metric['name']}={metric['value']:.6g}" if metric["value"] is not None else f"no final {metric['name']}"
        )
        print(f"wrote {out}: {trial_label(data['source']['trial'])} of {data['source']['sweep']} ({how}), {value}")
        return 0
    configs = best_configs(sweep, args.top_k, args.skip_unstable, study)
    short = study_shortfall(study, meta)
    if short:
        print(f"note: sweep {sweep.name!r}: {short}: the best may be a trial the study lost", file=sys.stderr)
    if 0 < len(configs) < args.top_k:
        print(f"note: --top-k {args.top_k}: sweep {sweep.name!r} has {len(configs)} to export", file=sys.stderr)
    for data in configs:
        out = write_export(data, ranked_path(args.output, data["source"]["rank"]))
        metric = data["metric"]
        print(
            f"wrote {out}: {trial_label(data['source']['trial'])} of {data['source']['sweep']}, "
            f"{metric['name']}={metric['value']:.6g}"
        )
    return 0


def _trial_number(text: str) -> int:
    """``t007``, ``T7`` or ``7`` as 7; an InputError for anything else."""
    digits = text.strip().lower().removeprefix("t")
    if not digits.isdigit():
        raise InputError(f"--trial {text}: name a trial as t007 or 7")
    return int(digits)


def cmd_train(args: argparse.Namespace) -> int:
    """Train from an exported config."""
    from sweeps.trial.from_file import (
        load_run_file,
        multi_worker_source,
        save_refused,
        source_changed_note,
        train_from_file,
        unnamed_config_keys,
    )

    if args.epochs is not None and args.epochs <= 0:
        raise SpecError("--epochs", [("", f"must be >= 1, got {args.epochs}")])
    if args.save is not None:  # before training: a model trained for nothing is lost at the end
        check_output_file("--save", args.save, overwrites=lambda head: head.startswith(b"PK"))  # torch.save: a zip
    data = load_run_file(args.config)
    if args.save is not None and (refused := save_refused(str(data["trainer"]))):
        raise InputError(f"--save: {refused}")
    for key, text in unnamed_config_keys(data):
        print(f"note: {key}: {text}", file=sys.stderr)
    if (workers := multi_worker_source(data)) > 1:
        print(
            f"note: the sweep trained this config on {workers} workers (each its share of every epoch's data, "
            "gradients averaged); sweeps train runs one process, so its steps per epoch, and its metric, can "
            "differ from the sweep's",
            file=sys.stderr,
        )
    source = data.get("source")
    if isinstance(source, dict) and "sweep" in source:  # its provenance names the sweep it came from
        try:
            check_sweep_name(source["sweep"])
        except SweepStoreError as exc:
            raise SpecError(args.config, [("source.sweep", str(exc))]) from None
    if note := source_changed_note(data):
        print(f"note: {note}", file=sys.stderr)
    from sweeps.trial.stops import (
        MetricMissingError,
        ReportCallError,
        ReturnedEarlyError,
        RunCallError,
        TrainerExitError,
    )

    try:
        train_from_file(data, epochs=args.epochs, save=args.save)
    except TrainerExitError as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # Ctrl-C in the trainer's loop (in a trial, a failure)
            raise KeyboardInterrupt from None
        raise
    except MetricMissingError as exc:  # a function trainer declares no metrics: known only once it reports
        raise InputError(f"{args.config}: metric.name: {exc}") from None
    except (ReturnedEarlyError, ReportCallError, RunCallError) as exc:
        raise InputError(f"{args.config}: {exc}") from None
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print the results table and (re)write the HTML report."""
    from sweeps.results.page import searched, verdict_text
    from sweeps.results.report import read_results, terminal_table, write_page
    from sweeps.store.sweep_dir import driver_state, open_sweep_dir

    if args.html:
        check_output_file(
            "--html", args.html, overwrites=lambda head: head.lstrip().lower().startswith(b"<!doctype html")
        )
    sweep = open_sweep_dir(args.storage, args.sweep)
    meta, folder = sweep.read_meta(), sweep.path / "report"
    rows = read_results(folder)
    if not rows and meta.get("status") not in (None, "running"):
        raise SweepStoreError(
            f"sweep {sweep.name!r} ended ({meta['status']}) but its {folder / 'results.parquet'} is gone; every trial "
            f"is still in MLflow ({meta.get('tracking_uri', '')}, parent run {meta.get('parent_run_id', '')}) and "
            f"Optuna ({sweep.storage_location})"
        )
    if not rows and driver_state(meta.get("driver") or {}) == "dead":
        sweeps = command_name()
        raise SweepStoreError(
            f"sweep {sweep.name!r} has no results: its driver is gone before it wrote them; finish it with "
            f"{sweeps} resume {sweep.name} (its trials so far are in MLflow: {sweeps} ui {sweep.name})"
        )
    if not rows:
        raise SweepStoreError(f"sweep {sweep.name!r} has no results yet (it is running or was stopped early)")
    notes_file = folder / "divergence.txt"
    notes = notes_file.read_text() if notes_file.exists() else ""
    print(terminal_table(rows, str(meta["metric"]), searched(meta, rows)))  # the end-of-run table's columns
    if meta.get("time_ran_out"):
        print(f"\ntime:    {meta['time_ran_out']}")
    if meta.get("stopped"):  # as the run's end said it, with the command that goes on from it
        again = go_on_options(args.storage, meta.get("cpus"))
        more = f"{command_name()} run {shlex.quote(str(sweep.spec_file))}{again} --warm-start {sweep.name}"
        print(f"\nstopped: {meta['stopped']}; to go on from it: {more}")
    if notes:
        print()
        print(notes.rstrip("\n"))
    stops, page = write_page(sweep.name, meta, folder, rows)  # with the audit verdicts MLflow holds now
    best = next((row.get(str(meta["metric"])) for row in rows if row.get("best")), None)
    audited = [stop for stop in stops if stop.get("verdict")]
    if audited:
        print()
    for stop in audited:  # sweeps audit's verdicts, as the page shows them
        where = f"{stop.get('signal') or ''} at step {stop.get('step')}".strip()
        print(f"audit:   {stop['trial']} {where}: {verdict_text(stop, best, str(meta.get('mode', 'min')))}")
    if args.html:
        from sweeps.core.files import write_whole
        from sweeps.results.page import linked_from

        text = linked_from(page.read_text(), page.parent)  # its links to plots.html and results.csv, absolute
        write_whole(args.html, lambda part: Path(part).write_text(text))
    print(f"\nreport: {args.html or page}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List sweeps with their status and best value."""
    from sweeps.store.sweep_dir import driver_state, open_sweep_dir

    root = Path(args.storage)
    if root.exists() and not root.is_dir():
        raise InputError(f"--storage {args.storage}: is a file, not the folder that holds the sweeps")
    names = sorted(p.parent.name for p in root.glob("*/sweep.json")) if root.is_dir() else []
    for name in names:
        sweep = open_sweep_dir(root, name)
        try:
            meta = sweep.read_meta()
        except SweepStoreError as exc:  # one damaged sweep.json hid every sweep listed after it
            print(f"{name}  unreadable ({exc})")
            continue
        status = str(meta.get("status", "?"))
        if status == "running" and driver_state(meta.get("driver") or {}) == "dead":
            status = (
                f"stopped (its driver is gone: {command_name()} resume {name}"
                f"{go_on_options(args.storage, meta.get('cpus'))})"
            )
        elif meta.get("halted"):  # a trial failed in a way every trial would
            status = f"stopped (after {str(meta['halted']).split(':', 1)[0]}: every trial would fail so)"
        elif meta.get("time_ran_out"):
            status += " (budget.time ran out)"
        elif meta.get("stopped"):  # as the report says it: by Ctrl-C after 4 of 8 trials
            status += f" ({meta['stopped']})"
        line = f"{name}  {status}  {meta.get('trainer')}  {meta.get('metric')}"
        print(line + _trial_counts(sweep.path / "report", str(meta.get("metric")), str(meta.get("mode", "min"))))
    if not names:
        print(f"no sweeps in {root}")
    return 0


def _trial_counts(report: Path, metric: str, mode: str = "min") -> str:
    """``  8 trials: 3 completed, 4 pruned, 1 diverged; best t003 0.149 (lower is better)`` ('' with no rows).

    From the sweep's report rows. A user read ``best 0.02184`` and ``trial 8`` elsewhere: the trial
    is named as everywhere else, and the direction said.
    """
    from sweeps.results.report import read_results

    rows = read_results(report)
    if not rows:
        return ""
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.get("status", "?"))] = counts.get(str(row.get("status", "?")), 0) + 1
    text = f"  {len(rows)} trials: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    best = [(row.get("trial"), row.get(metric)) for row in rows if row.get("best") is True]
    if not best or not isinstance(best[0][1], (int, float)):
        return text
    better = "lower" if mode == "min" else "higher"
    return text + f"; best {best[0][0]} {metric_text(best[0][1])} ({better} is better)"


def cmd_ui(args: argparse.Namespace) -> int:
    """Run ``mlflow ui`` on the tracking store (Ctrl-C stops it), after printing where to click.

    Per experiment: its page; and for its latest sweep (or ``--sweep``), the sweep's trials best
    first, and its top ``--top-k`` trials compared on the swept parameters against the metric.
    """
    from sweeps.tracking.mlflow_client import resolve_tracking_uri, ui_url
    from sweeps.tracking.store_check import check_tracking_uri

    if args.top_k < 1:
        raise SpecError("--top-k", [("", f"must be >= 1, got {args.top_k}")])
    if args.sweep is not None:
        check_sweep_name(args.sweep)
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri, must_exist=True)  # a store to read: never an empty one made here
    served = uri.startswith(("http://", "https://"))  # a tracking server is its own UI: nothing to start
    port = 0 if served else _ui_port(args.host, args.port)
    server = uri.rstrip("/") if served else f"http://{args.host}:{port}"
    links = [(e, i, _sweep_links(uri, i, server, args.top_k, args.sweep)) for e, i in _experiments(uri)]
    if args.sweep is not None and not any(lines for _, _, lines in links):
        raise InputError(f"--sweep {args.sweep}: no sweep of that name in {uri} ('sweeps list' names them)")
    print(f"MLflow UI for {uri}: {server}", flush=True)
    for experiment, experiment_id, lines in links:
        print(f"  {experiment}: {ui_url(server, experiment_id)}", flush=True)
        for line in lines:
            print(f"    {line}", flush=True)
    if served:  # `mlflow ui` cannot open a server's store: it crashed, after links to a port nothing served
        print("the tracking server serves these pages itself: nothing started", flush=True)
        return 0
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(port),
    ]
    return _serve(command, ready=(args.host, port))


def _announce_when_answering(host: str, port: int, child: subprocess.Popen[bytes], limit_s: float = 300.0) -> None:
    """Print one line once the server accepts connections (a user's links were refused for a minute before)."""

    def wait() -> None:
        deadline = time.monotonic() + limit_s
        while child.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1):
                    print(f"ready:   the MLflow UI answers at http://{host}:{port} (Ctrl-C stops it)", flush=True)
                    return
            except OSError:
                time.sleep(0.25)

    threading.Thread(target=wait, name="ui-ready", daemon=True).start()


class _Stopped(Exception):
    """SIGTERM or SIGINT reached ``sweeps ui``."""


def _serve(command: list[str], ready: tuple[str, int] | None = None) -> int:
    """Run ``command`` until SIGINT/SIGTERM, then end it and every process it started (0); or until it ends (error).

    ``mlflow ui`` starts a server that starts workers; run in a session of its own, they all go
    with it, so neither Ctrl-C nor a ``kill`` of ``sweeps ui`` leaves a server behind.
    """
    child = subprocess.Popen(command, env=os.environ.copy(), start_new_session=True)
    if ready is not None:
        _announce_when_answering(*ready, child)

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()  # a server ends only when stopped: ending on its own, it failed (a port taken since)
        print(f"error: the MLflow UI server ended (exit status {code}); what it printed is above", file=sys.stderr)
        return code or 1
    except (_Stopped, KeyboardInterrupt):

        def kill_now(signum: int, frame: object) -> None:  # a second Ctrl-C while it ends: no more waiting
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

        for sig in previous:
            signal.signal(sig, kill_now)
        _end_session(child)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _end_session(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to ``child``'s session (its process group), SIGKILL after 15 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue
        try:  # the server's workers may outlive it by a moment
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(1)


def _ui_port(host: str, port: int | None) -> int:
    """The port the UI serves on: ``port`` if free (else an error), or 5000 if free, else a free one."""
    if port is not None and not 0 < port < 65536:
        raise SpecError("--port", [("", f"must be 1 to 65535, got {port}")])
    wanted = port or UI_PORT
    if _can_listen(host, wanted):
        return wanted
    free = _can_listen(host, 0)
    if port is not None:
        raise InputError(
            f"port {port} on {host} is in use (another MLflow UI?): stop what serves there, or pass another "
            f"--port (port {free} is free)"
        )
    print(f"note: port {UI_PORT} on {host} is in use; serving on port {free}", file=sys.stderr, flush=True)
    return free


def _can_listen(host: str, port: int) -> int:
    """The port a socket bound to ``host:port`` gets (a free one for 0); 0 if ``port`` is in use."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise InputError(f"--host {host!r}: not an address of this machine ({exc})") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is free
        try:
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return 0
            raise InputError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
        return int(sock.getsockname()[1])


def _sweep_links(uri: str, experiment_id: str, server: str, top_k: int, sweep: str | None) -> list[str]:
    """Lines with the links to a sweep's views in the UI (none when the experiment has no such sweep)."""
    from sweeps.tracking.ui_views import sweep_views

    try:
        views = sweep_views(uri, experiment_id, top_k, sweep)
    except Exception as exc:  # noqa: BLE001 - the UI still starts; the experiment's link is printed
        return [f"(no sweep links: {exc})"]
    if views is None:
        return []
    swept = ", ".join(views.params) or "the parameters"
    lines = [f"sweep {views.sweep}, its trials by {views.metric}: {views.trials_url(server)}"]
    if views.top == 0:
        return [*lines, f"(no top trials to compare: no trial of it completed with a {views.metric})"]
    return [*lines, f"its top {views.top} compared on {swept} against {views.metric}: {views.top_url(server)}"]


def _experiments(uri: str) -> list[tuple[str, str]]:
    """Names and ids of the store's experiments that hold sweeps."""
    from sweeps.tracking.mlflow_client import client

    try:
        found = client(uri).search_experiments()
    except Exception:  # noqa: BLE001 - the UI can still start on an empty or new store
        return []
    return [(e.name, e.experiment_id) for e in found if e.tags.get("mlflow.experimentKind")]


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "audit": cmd_audit,
    "export": cmd_export,
    "train": cmd_train,
    "report": cmd_report,
    "list": cmd_list,
    "ui": cmd_ui,
}


if __name__ == "__main__":
    sys.exit(main())
