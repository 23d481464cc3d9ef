"""Warm start: an earlier sweep's trials told to a new sweep's study, and its best configs tried first.

``sweeps run SPEC --warm-start SWEEP``. Each trial of the earlier sweep that ended with something to
say (completed, pruned with its epochs' values, diverged or out of memory as infeasible) and lies in
the new spec's space is added to the new study as it ended, so TPE models from the first trial on.
A trial lies in the space when the new spec's fixed values are its own and each parameter the new
spec searches (where its condition holds) had a value in range, or none at all: a parameter the
earlier sweep neither searched nor fixed is told unknown (TPE learns it from the new trials) and is
drawn in the best configs queued. Failed and interrupted trials say nothing and are left out. The
earlier sweep's best completed configs (up to :data:`TOP`) are queued: they are the new sweep's
first trials, trained again under the new code and spec; then its interrupted trials (running
when it was stopped), so that a sweep stopped with Ctrl-C goes on with them.

Told trials carry the user attribute :data:`WARM_ATTR` (the sweep they ran in). They are the study's
and not this sweep's: no MLflow run, no row in the report, never exported, and ``sweeps resume``
skips them. Being first in the study, they take its first numbers: the new sweep's trials are
numbered after them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.compat.optuna_internals import in_distribution
from sweeps.core.keys import EPOCHS_FIELD, INTERRUPTED
from sweeps.core.records import trial_label
from sweeps.results.export import ranked
from sweeps.spec.params import precision_as_spelled
from sweeps.spec.sweep_spec import SweepSpec
from sweeps.store.study import QUEUED_ATTR, WARM_ATTR, load_study, make_sampler
from sweeps.store.sweep_dir import SweepDir, SweepStoreError, open_sweep_dir

TOP = 3
"""How many of the earlier sweep's best completed configs are queued (never more than the trial budget)."""

EPOCHS_ATTR = "warm_start_epochs"
"""On a told trial: the epochs it trained in its own sweep (a later warm start from this one compares them)."""

ENGINE_KEYS = frozenset({"seed", EPOCHS_FIELD})
"""Keys the engine puts in every config: a seed or epochs that differ leave a trial in the space."""

UNKNOWN = object()
"""A value this sweep gives a key that is not known here (a function trainer declares no defaults)."""


@dataclass(frozen=True)
class WarmStart:
    """What a warm start did: trials told, trials left out (by why), configs queued first."""

    source: str
    told: int
    queued: int
    skipped: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    """Parameters told trials had no value of (the earlier sweep did not search them), with how many."""
    rerun: int = 0
    """The earlier sweep's interrupted trials queued after its best (a sweep stopped by Ctrl-C goes on with them)."""
    relayed: dict[str, int] = field(default_factory=dict)
    """Of the told trials: those the earlier sweep was itself told by a warm start, by the sweep they ran in."""

    def line(self) -> str:
        """One line for the sweep's header, e.g. ``warm start from s1: told 12 trials, its best 3 first``."""
        left = sum(self.skipped.values())
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        skipped = f"; left out {left} ({why})" if left else ""
        told = f"{self.told} trial{'' if self.told == 1 else 's'}"
        if self.unknown:
            lacking = ", ".join(f"{n} without {name}" for name, n in sorted(self.unknown.items()))
            told += f" ({lacking}, drawn anew)"
        if self.relayed:  # a warm start from a warm-started sweep: its told trials come along, named
            ran = ", ".join(f"{n} in {name}" for name, n in sorted(self.relayed.items()))
            told += f" (of them, run in the sweep it warm-started from: {ran})"
        first = f"its best {self.queued} first"
        if self.rerun:
            interrupted = f"its {self.rerun} interrupted trial{'' if self.rerun == 1 else 's'}"
            first = f"{first}, then {interrupted} again" if self.queued else f"{interrupted} first"
        return f"warm start from {self.source}: told {told}, {first}{skipped}"


def check_warm_start(root: str | Path, name: str, spec: SweepSpec) -> SweepDir:
    """The earlier sweep to warm-start from, checked before anything starts; raise a one-line error.

    It must exist (a name in ``root`` or a sweep's folder), have a study, and optimise the same
    metric in the same direction as ``spec``.
    """
    earlier = open_sweep_dir(root, name)
    study = load_study(earlier)
    metric = str(study.user_attrs.get("metric", ""))
    mode = "min" if study.direction == optuna.study.StudyDirection.MINIMIZE else "max"
    if (metric, mode) != (spec.metric, spec.mode):
        raise SweepStoreError(
            f"--warm-start {name}: that sweep optimised {metric or '?'} ({mode}), this spec {spec.metric} "
            f"({spec.mode}); a warm start needs the same metric and direction"
        )
    return earlier


def warm_start_note(earlier: SweepDir, spec: SweepSpec) -> str | None:
    """A note when the earlier sweep's trials trained another number of epochs than ``spec``'s.

    Its own trials trained its epochs; the ones a warm start told it, their own sweep's (a chain of
    warm starts passed a 3-epoch sweep's trials into a 4-epoch one with no note).
    """
    own = meta_of(earlier).get("epochs")
    try:
        trials = load_study(earlier).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    except SweepStoreError:  # no study yet: its own epochs are all there is to go by
        trials = []
    then = Counter(epochs for trial in trials if (epochs := trained_epochs(trial, earlier, own)) is not None)
    if not trials and isinstance(own, int):
        then[own] += 1
    if not then or set(then) == {spec.budget.epochs}:
        return None
    told = f"this sweep's train {spec.budget.epochs}: their values are told as they were reached, and its best "
    told += "configs are trained again at this sweep's epochs"
    if len(then) == 1:
        return f"its trials trained {next(iter(then))} epochs, {told}"
    trained = ", ".join(f"{n} trained {epochs}" for epochs, n in sorted(then.items()))
    return f"of its trials (with those a warm start told it), {trained} epochs; {told}"


def meta_of(sweep: SweepDir) -> dict[str, Any]:
    """The sweep's ``sweep.json``, or {} where it has none to read."""
    try:
        return sweep.read_meta()
    except SweepStoreError:
        return {}


def trained_epochs(trial: FrozenTrial, sweep: SweepDir, own: object) -> int | None:
    """The epochs ``trial`` of ``sweep``'s study trained: ``own`` (the sweep's), or for a told trial its sweep's."""
    if WARM_ATTR not in trial.user_attrs:
        epochs = own
    elif EPOCHS_ATTR in trial.user_attrs:
        epochs = trial.user_attrs[EPOCHS_ATTR]
    else:  # told before the epochs were kept: its sweep's meta, where that sweep is still beside this one
        try:
            epochs = meta_of(open_sweep_dir(sweep.path.parent, str(trial.user_attrs[WARM_ATTR]))).get("epochs")
        except SweepStoreError:
            return None
    return epochs if isinstance(epochs, int) else None


def ran_with(trial: FrozenTrial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's config, its precision spelt as ``spec`` spells it (``O1`` as ``fp16``: one precision)."""
    config = dict(trial.user_attrs.get("config") or {}) or dict(trial.params)
    if "precision" in config:
        param = spec.params.get("precision")
        options = param.choices if param is not None else [spec.fixed.get("precision")]
        config["precision"] = precision_as_spelled([config["precision"]], options)[0]
    return config


def fixed_difference(trial: FrozenTrial, spec: SweepSpec) -> tuple[str, Any, Any] | None:
    """The first of ``spec``'s fixed values the trial ran with another value of: ``(key, its value, spec's)``."""
    config = ran_with(trial, spec)
    for key, value in spec.fixed.items():
        if key in config and config[key] != value:
            return key, config[key], value
    return None


def fixed_mismatch_note(earlier: SweepDir, spec: SweepSpec) -> str | None:
    """A note when trials of ``earlier`` cannot be told because they ran with another value of a key.

    A fixed value that does not change training (a print flag) would otherwise cancel the warm start
    with only a count in the header to say so; so would a parameter searched there and left to the
    trainer's default here (all trials it made different), or a trainer default changed since.
    """
    trials = load_study(earlier).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    defaults_then = dict(meta_of(earlier).get("trainer_defaults") or {})
    if not trials:
        return None
    told = sum(not isinstance(point_in_space(t, spec, defaults_then), str) for t in trials)
    fixed = Counter(d for t in trials if (d := fixed_difference(t, spec)) is not None)
    if fixed and not told:
        (key, theirs, ours), count = fixed.most_common(1)[0]
        return (
            f"none of its trials can be told: {count} of {len(trials)} ran with {key}={theirs!r}, where this spec "
            f"fixes {ours!r}; if {key} does not change training, add --set {key}={theirs} to warm-start from them"
        )
    unset = Counter(
        (d[0], "no value from this spec" if d[2] is UNKNOWN else f"{d[2]!r}")
        for t in trials
        if (d := unset_difference(t, spec)) is not None
    )
    if unset:
        (key, here), count = unset.most_common(1)[0]
        return (
            f"{count} of its {len(trials)} trials left out: they ran with {key} set, where this sweep trains with "
            f"{here}; search or fix {key} in this spec to tell them"
        )
    changed = Counter(name for t in trials if (name := default_difference(defaults_then, t, spec)) is not None)
    if changed:
        key, count = changed.most_common(1)[0]
        then, now = defaults_then[key], spec.trainer_defaults[key]
        return (
            f"{count} of its {len(trials)} trials left out: the trainer's default {key} was {then!r} when it ran, "
            f"{now!r} now; if {key} does not change training, add --set {key}={then} to warm-start from them"
        )
    return None


def unset_difference(trial: FrozenTrial, spec: SweepSpec) -> tuple[str, Any, Any] | None:
    """A value the trial ran with that ``spec`` neither searches nor fixes, where this sweep trains another.

    ``(key, its value, this sweep's)``; this sweep's is the trainer's default (:data:`UNKNOWN` when
    the trainer declares none: a function's). A user removed a searched loss weight from the spec: the
    earlier trials, trained at 0.67 and 0.25, were told as if at the default 0.1 this sweep trains.
    """
    base = spec.resolve({})
    for key, value in ran_with(trial, spec).items():
        if key in spec.params or key in spec.fixed or key in ENGINE_KEYS:
            continue
        ours = base.get(key, spec.trainer_defaults.get(key, UNKNOWN))
        if ours is UNKNOWN or ours != value:
            return key, value, ours
    return None


def default_difference(defaults_then: dict[str, Any], trial: FrozenTrial, spec: SweepSpec) -> str | None:
    """A trainer default that changed since the earlier sweep ran, that neither its trial nor ``spec`` sets.

    A user changed ``n_train`` from 192 to 128 in the trainer's code: the earlier trials were told
    with no word, and the re-run of its best scored worse.
    """
    config = ran_with(trial, spec)
    for key, then in defaults_then.items():
        if key in config or key in spec.params or key in spec.fixed or key in ENGINE_KEYS:
            continue
        if key in spec.trainer_defaults and spec.trainer_defaults[key] != then:
            return key
    return None


def point_in_space(
    trial: FrozenTrial, spec: SweepSpec, defaults_then: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """The trial's values of ``spec``'s searched parameters and their distributions, or why it is not in the space.

    ``defaults_then``: the trainer's defaults when the earlier sweep ran (its ``trainer_defaults``).
    """
    config = ran_with(trial, spec)
    if (difference := fixed_difference(trial, spec)) is not None:
        return f"fixed {difference[0]} differs"
    if (unset := unset_difference(trial, spec)) is not None:
        return f"{unset[0]} set there, not here"
    if defaults_then and (changed := default_difference(defaults_then, trial, spec)) is not None:
        return f"trainer default {changed} changed"
    params: dict[str, Any] = {}
    distributions: dict[str, Any] = {}
    for name, param in spec.params.items():
        if not param.active({**spec.fixed, **params}) or name not in config:
            continue  # not in its space here; or a parameter new to this spec: unknown, drawn where queued
        distribution = param.distribution()
        if not in_distribution(distribution, config[name]):
            return f"{name} outside this space"
        params[name], distributions[name] = config[name], distribution
    if spec.params and not params:
        return "no value of any parameter searched here"
    return params, distributions


def unknown_in(params: dict[str, Any], spec: SweepSpec) -> list[str]:
    """The parameters ``spec`` searches (where their condition holds) that a told point has no value of."""
    return [
        name for name, param in spec.params.items() if name not in params and param.active({**spec.fixed, **params})
    ]


def tell_earlier_trials(study: optuna.Study, earlier: SweepDir, spec: SweepSpec) -> WarmStart:
    """Add ``earlier``'s trials that lie in ``spec``'s space to ``study`` and queue its best configs."""
    old = load_study(earlier)
    meta = meta_of(earlier)
    defaults_then = dict(meta.get("trainer_defaults") or {})
    told: list[FrozenTrial] = []
    skipped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    relayed: Counter[str] = Counter()
    for trial in old.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        point = point_in_space(trial, spec, defaults_then)
        if isinstance(point, str):
            skipped[point] += 1
            continue
        params, distributions = point
        unknown.update(unknown_in(params, spec))
        origin = str(trial.user_attrs.get(WARM_ATTR, earlier.name))
        relayed.update([origin] if origin != earlier.name else [])
        epochs = trained_epochs(trial, earlier, meta.get("epochs"))
        told.append(
            optuna.trial.create_trial(
                state=trial.state,
                value=trial.value,  # a pruned trial keeps its last epoch's value, as Optuna tells it
                params=params,
                distributions=distributions,
                intermediate_values=dict(trial.intermediate_values),
                constraints=trial.constraints or None,
                user_attrs={
                    WARM_ATTR: origin,
                    "status": str(trial.user_attrs.get("status", "")),
                    **({EPOCHS_ATTR: epochs} if epochs is not None else {}),
                },
            )
        )
    unfinished = len(old.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    if unfinished:  # nothing to tell of them: they reached no value
        skipped["failed or interrupted"] = unfinished
    study.add_trials(told)
    study.sampler = make_sampler(spec, stream=f"warm:{earlier.name}")  # not the earlier sweep's start-up draws again
    queued = queue_best(study, old, earlier.name, spec, defaults_then)
    rerun = queue_interrupted(study, old, earlier.name, spec, defaults_then)
    return WarmStart(earlier.name, len(told), queued, dict(skipped), dict(unknown), rerun, dict(relayed))


def queue_best(
    study: optuna.Study, old: optuna.Study, source: str, spec: SweepSpec, defaults_then: dict[str, Any] | None = None
) -> int:
    """Queue the earlier sweep's best feasible completed configs in the space (its own trials, not ones it was told)."""
    queued: list[dict[str, Any]] = []
    for trial in ranked(old):  # best first, as export ranks them
        point = point_in_space(trial, spec, defaults_then)
        if isinstance(point, str) or point[0] in queued:
            continue
        queued.append(point[0])
        study.enqueue_trial(point[0], user_attrs={QUEUED_ATTR: f"{source} {trial_label(trial.number)}"})
        if len(queued) >= min(TOP, spec.budget.trials):
            break
    return len(queued)


def queue_interrupted(
    study: optuna.Study, old: optuna.Study, source: str, spec: SweepSpec, defaults_then: dict[str, Any] | None = None
) -> int:
    """Queue, after its best, the earlier sweep's trials that were interrupted (running when it was stopped).

    They never reached an end, so nothing of them is told; trained again, they are judged. Only
    those in the space and not queued already, within the trial budget.
    """
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    seen = [dict(t.system_attrs.get("fixed_params") or {}) for t in waiting]  # where Optuna keeps a queued config
    room = spec.budget.trials - len(waiting)
    queued = 0
    for trial in old.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if queued >= room or trial.user_attrs.get("status") != INTERRUPTED or WARM_ATTR in trial.user_attrs:
            continue
        point = point_in_space(trial, spec, defaults_then)
        if isinstance(point, str) or point[0] in seen:
            continue
        seen.append(point[0])
        study.enqueue_trial(point[0], user_attrs={QUEUED_ATTR: f"{source} {trial_label(trial.number)} (interrupted)"})
        queued += 1
    return queued
