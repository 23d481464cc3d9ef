"""Train from an exported config (``sweeps train best.yaml``): the same epoch loop a trial runs."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import torch

from sweeps.core.files import CommandError, write_whole
from sweeps.core.keys import DIVERGED_KEY, EPOCH, EPOCHS_FIELD, REASON_KEY, REPORT_PREFIX
from sweeps.core.plan import TrialPlan
from sweeps.core.problems import Problems, as_int, unknown_key
from sweeps.core.records import metric_text
from sweeps.spec.params import untyped
from sweeps.spec.source_names import unnamed_keys
from sweeps.spec.sweep_spec import ENGINE_READS, SpecError, read_yaml, undeclared_metric, unrun_precision
from sweeps.tracking.provenance import changed_sources, source_digests
from sweeps.trial.epoch_loop import CheckpointState, EpochLoop
from trainables.config import ConfigError, build_config, field_types
from trainables.protocol import declared_precisions, is_function_trainer
from trainables.registry import TrainerLoadError, load_trainer


def load_run_file(path: str | Path) -> dict[str, Any]:
    """Read and check an exported config; raise SpecError listing every problem.

    A class trainer's values are checked against its config fields; a function trainer's are read
    as a spec's are (an unquoted ``1e-5``, which PyYAML reads as a string, is a number).
    """
    data = read_yaml(path, "exported config (the file 'sweeps export' wrote)")
    problems = Problems()
    if not isinstance(data, dict):
        raise SpecError(str(path), [("", "an exported config must be a YAML mapping")])
    if "config" not in data and {"params", "budget", "fixed"} & set(data):
        raise SpecError(
            str(path),
            [("", "is a sweep spec, not an exported config: run it with 'sweeps run', or train from 'sweeps export'")],
        )
    for key in data:
        if key not in EXPORTED_KEYS:
            problems.add(str(key), unknown_key(key, EXPORTED_KEYS))
    if not isinstance(data.get("config"), dict):
        problems.add("config", "missing: the mapping of trainer parameters")
    as_int(data.get("epochs"), "epochs", problems, minimum=1)
    if "threads" in data:
        as_int(data["threads"], "threads", problems, minimum=1)
    metric = _metric_name(data, problems)
    try:
        if not data.get("trainer"):
            raise TrainerLoadError("missing: the trainer the sweep ran (e.g. vae, or my_pkg.my_module:train)")
        trainer_cls = load_trainer(str(data.get("trainer")))
        if metric and (undeclared := undeclared_metric(metric, trainer_cls, data["trainer"])):
            problems.add("metric.name", undeclared)
        if isinstance(data.get("config"), dict):
            _check_engine_fields(trainer_cls, data, problems)
        if isinstance(data.get("config"), dict) and not is_function_trainer(trainer_cls):
            build_config(trainer_cls.Config, data["config"], prefix="config.")
        elif isinstance(data.get("config"), dict):  # no config fields to type the values: read as a spec's are
            data["config"] = {key: untyped(value) for key, value in data["config"].items()}
            if "seed" in data["config"]:  # the one value the engine itself gives a function trainer
                as_int(data["config"]["seed"], "config.seed", problems)
    except TrainerLoadError as exc:
        problems.add("trainer", str(exc))
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise SpecError(str(path), problems.items)
    return data


def unnamed_config_keys(data: dict[str, Any]) -> list[tuple[str, str]]:
    """A function trainer's config keys its source never names (a note each, as ``sweeps run`` gives them).

    ``data``: a config :func:`load_run_file` has checked. A class trainer's keys are checked
    against its fields there instead: nothing here.
    """
    trainer = load_trainer(str(data["trainer"]))
    if not is_function_trainer(trainer):
        return []
    own = [key for key in data["config"] if key not in ENGINE_READS]
    return [(f"config.{key}", note) for key, note in unnamed_keys(trainer, own)]


def _check_engine_fields(trainer: Any, data: dict[str, Any], problems: Problems) -> None:
    """A hand-edited config's precision the trainer does not run, or ``epochs`` apart from the file's own.

    ``precision: fp8`` ran into the trainer and ended in a traceback (``KeyError: 'fp8'``); a
    class's ``config.epochs`` is the engine's to set, from the file's ``epochs`` (or ``--epochs``).
    """
    config = data["config"]
    if "precision" in config:
        try:
            problem = unrun_precision(trainer, data["trainer"], config["precision"], declared_precisions(trainer))
        except ValueError as exc:  # the trainer's own `precisions` attribute is wrong
            problem = f"the trainer's precisions: {exc}"
        if problem:
            problems.add("config.precision", problem)
    epochs = config.get(EPOCHS_FIELD)
    has_epochs = not is_function_trainer(trainer) and EPOCHS_FIELD in field_types(trainer.Config)
    if has_epochs and epochs not in (None, data.get("epochs")):
        problems.add(
            f"config.{EPOCHS_FIELD}",
            f"{epochs!r} is not the file's epochs ({data.get('epochs')!r}): the trainer's {EPOCHS_FIELD!r} field is "
            "set to those (or to --epochs); change epochs at the top instead",
        )


EXPORTED_KEYS = ("trainer", "epochs", "threads", "metric", "config", "source")
"""The top-level keys ``sweeps export`` writes."""


def _metric_name(data: dict[str, Any], problems: Problems) -> str:
    """The exported metric's name ('' when there is none), ``metric: NAME`` taken as ``metric: {name: NAME}``."""
    metric = data.get("metric")
    if metric is None:
        return ""
    if isinstance(metric, str):
        data["metric"] = metric = {"name": metric}
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str) or not metric["name"]:
        problems.add("metric", "must be a mapping with the metric's name (name: val_loss), as 'sweeps export' wrote it")
        return ""
    if metric.get("mode", "min") not in ("min", "max"):
        problems.add("metric.mode", f"{metric['mode']!r} is not min or max")
    value = metric.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        problems.add("metric.value", f"{value!r} is not a number (the value the sweep recorded)")
    return str(metric["name"])


def multi_worker_source(data: dict[str, Any]) -> int:
    """How many workers each of the sweep's trials ran on (its export's ``source.workers``; 1 when it does not say).

    A user's DDP trial (2 workers, 8 steps an epoch each) was trained again by ``sweeps train`` in one
    process (16 steps an epoch) and came out 0.2% apart, with nothing said.
    """
    source = data.get("source")
    workers = source.get("workers", 1) if isinstance(source, dict) else 1
    return workers if isinstance(workers, int) and not isinstance(workers, bool) else 1


def source_changed_note(data: dict[str, Any]) -> str | None:
    """A note when the trainer's source files differ from those the sweep ran (the export's ``source.files``)."""
    then = (data.get("source") or {}).get("files") if isinstance(data.get("source"), dict) else None
    if not isinstance(then, dict) or not then:
        return None
    changed = changed_sources({str(k): str(v) for k, v in then.items()}, source_digests(str(data["trainer"])))
    if not changed:
        return None
    run = (data.get("source") or {}).get("mlflow_run_id") or "the trial's"
    return (
        f"the trainer's source changed since the sweep ran it ({', '.join(changed)}): the metric may differ from "
        f"the sweep's; the files it ran are the source/ artifacts of MLflow run {run}"
    )


def save_refused(trainer: str) -> str:
    """Why ``--save`` cannot work for ``trainer``, known before training ('' when it may).

    A function trainer keeps state only through ``run.checkpoint``: when none of its own source
    files names ``checkpoint``, it never calls it, and a user's 54 s of training ended "not saved".
    """
    from sweeps.spec.source_names import names_in_trainer_source

    loaded = load_trainer(trainer)
    if not is_function_trainer(loaded):  # a class trainer's state_dict() is its state
        return ""
    found = names_in_trainer_source(loaded, siblings=False)  # what it runs, not every script beside it
    if found is None or "checkpoint" in found[1]:  # no source to read, or it may call run.checkpoint
        return ""
    return (
        f"{trainer} keeps no state to save: its source never calls run.checkpoint "
        "(call run.checkpoint({'model': model, 'optimizer': optimizer}) in it, or leave out --save)"
    )


class PrintChannel:
    """The loop's channel in ``sweeps train``: each epoch printed, nothing checkpointed, never stopped."""

    def __init__(self, metric: str, total: int, out: TextIO) -> None:
        self.metric, self.total, self.out = metric, total, out
        self.stopped = ""
        """Why the loop stopped before its last epoch (a metric that is not finite), else empty."""

    def restore(self) -> CheckpointState | None:
        """A fresh start."""
        return None

    def agree(self, decision: bool) -> bool:
        """One process agrees with itself."""
        return decision

    def report(self, result: dict[str, Any], state: Callable[[], CheckpointState] | None) -> bool:
        """Print the epoch's metric, its validation metrics, then every other value the trainer reported; go on.

        A user training a loss-scale stop to its end reported ``loss_scale`` and ``overflows`` and saw
        only ``val_*``. The engine's own keys (``sweep/...``) are left out.
        """
        reported = {k: v for k, v in result.items() if k != EPOCH and not k.startswith(REPORT_PREFIX)}
        first = sorted(reported, key=lambda k: (k != self.metric, not k.startswith("val")))  # stable: else as reported
        shown = {k: reported[k] for k in first if isinstance(reported[k], int | float)}
        text = "  ".join(f"{k}={metric_text(v)}" for k, v in shown.items())
        self.out.write(f"epoch {result[EPOCH]}/{self.total}  {text}\n")
        self.out.flush()
        if result.get(DIVERGED_KEY):
            self.stopped = f"stopped at epoch {result[EPOCH]} of {self.total}: {result.get(REASON_KEY, 'diverged')}"
        return True


def train_from_file(
    data: dict[str, Any], epochs: int | None = None, save: str | Path | None = None, stream: TextIO | None = None
) -> dict[str, float]:
    """Train the exported config for its epochs; print each epoch; return the last metrics.

    Raises CommandError when the training stopped before its last epoch (a metric not finite), or
    when ``save`` is asked of a function trainer that keeps no state (it never calls ``run.checkpoint``).
    """
    out = stream or sys.stdout
    metric = str((data.get("metric") or {}).get("name") or "")
    total = int(epochs or data["epochs"])
    # The sweep's loop without a driver: every epoch reported (printed), no detector stopping it.
    plan = TrialPlan(str(data["trainer"]), metric, total, threads=int(data.get("threads", 1)))
    plan.divergence = {"enabled": False}
    loop = EpochLoop(plan, dict(data["config"]))
    channel = PrintChannel(metric, total, out)
    metrics = loop.run(channel)
    if channel.stopped:  # a user's run printed `val_mse=nan` at epoch 2 of 5 and exited 0, saying nothing
        raise CommandError(channel.stopped + ("; nothing saved" if save else ""))
    unsaved = ""
    if save:
        state = loop.trainer_state() if loop.trainer_state is not None else None
        if state is None:  # a function trainer that keeps no checkpoint (run.checkpoint)
            unsaved = f"not saved: {data['trainer']} keeps no state to save (it never calls run.checkpoint)"
        else:
            config = {**data["config"], **({EPOCHS_FIELD: total} if EPOCHS_FIELD in data["config"] else {})}
            write_whole(save, partial(torch.save, {"trainer": state, "config": config, "epoch": total}))
            out.write(f"saved {save}\n")
    recorded = (data.get("metric") or {}).get("value")
    if metric in metrics and isinstance(recorded, (int, float)) and total == int(data["epochs"]):
        gap = abs(metrics[metric] - recorded)  # in the metric's own unit too: a percent of dB says little
        share = gap / max(abs(recorded), 1e-12) * 100
        out.write(
            f"{metric}={metrics[metric]:.6g}; the sweep recorded {recorded:.6g} ({gap:.3g} apart, {share:.2f}%)\n"
        )
    elif metric in metrics and not math.isfinite(metrics[metric]):
        out.write(f"{metric} is not finite\n")
    if unsaved:  # asked for and not written: a user's script went on to load a file that was never there
        raise CommandError(unsaved)
    return metrics
