"""The sweep spec: one YAML file per sweep, validated in full before anything starts.

Every problem is collected and reported at once, each naming its YAML key. Numbers
written as strings (PyYAML reads ``1e-5`` as a string) are accepted wherever a number is.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweeps.core.errors import InputError
from sweeps.core.keys import EPOCHS_FIELD
from sweeps.core.problems import Problems, as_bool, as_duration, as_int, as_number, unknown_key
from sweeps.divergence import DEFAULTS, MODES, SIGNALS, DivergenceSettings
from sweeps.spec.params import (
    MAX_EXACT_INT,
    ParamSpec,
    choice_notes,
    is_number,
    never_drawn,
    parse_params,
    two_choices_not_a_range,
    unknown_parameter,
    untyped,
    whole_bounds_drawn_as_floats,
)
from sweeps.spec.source_names import unnamed_keys
from sweeps.spec.trial_storage_value import storage_problem
from trainables.config import ConfigError, build_config, coerce, config_defaults, field_types
from trainables.precision import canonical_precision
from trainables.protocol import declared_metrics, declared_precisions, is_function_trainer
from trainables.registry import TrainerLoadError, load_trainer

TOP_KEYS = {
    "name", "trainer", "metric", "mode", "seed", "budget", "asha", "search", "divergence", "record", "fixed",
    "params", "trial_storage",
}  # fmt: skip
FUNCTION_PRECISION = "fp32"
"""A function trainer's precision where the spec gives none (``config.precision``, ``run.autocast()``)."""
ENGINE_READS = {"seed", "precision", "device", "init_scale", "growth_interval", "min_loss_scale"}
"""Config keys the engine itself reads for a function trainer (``sweeps.trial.function_run``), named in no loop."""
BUDGET_KEYS = {
    "trials", "time", "trial_time", "epochs", "concurrency", "cpus_per_trial", "gpus_per_trial",
    "workers_per_trial", "retries",
}  # fmt: skip
"""The keys of the spec's ``budget``."""
SECTIONS = {"budget", "asha", "search", "divergence", "record", "fixed", "params"}
"""Top-level keys that hold a mapping: ``--set`` sets their keys, not them (``asha``/``divergence`` also take false)."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(InputError):
    """A sweep spec has one or more problems; ``str()`` lists them all, one per line."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems = list(dict.fromkeys(problems))  # one check and another may find the same
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems]
        super().__init__("\n".join(_one_line(line) for line in lines))

    def __reduce__(self) -> tuple[type, tuple[str, list[tuple[str, str]]]]:
        return (type(self), (self.source, self.problems))  # pickled (Ray): rebuilt from what made it


def _one_line(text: str) -> str:
    """A problem's line with line breaks written out (a key or value given with one stays on its line)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


@dataclass
class Budget:
    """How much to run: trials, epochs per trial, trials at once, resources per trial."""

    trials: int = 10
    time_s: float | None = None
    """``budget.time`` in seconds: the sweep asks for no trial after it and stops the ones still running."""
    trial_time_s: float | None = None
    """``budget.trial_time`` in seconds: each trial's own limit (see ``sweeps.engine.trial_timeout``)."""
    epochs: int = 5
    concurrency: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    """Data-parallel workers per trial (Ray Train); ``cpus_per_trial``/``gpus_per_trial`` are per worker."""
    retries: int = 3
    """Restarts of a trial from its last checkpoint after its process or node died (Ray's max_failures)."""


@dataclass
class Asha:
    """ASHA early stopping over epochs; ``enabled: false`` runs every trial to the end."""

    enabled: bool = True
    grace_period: int = 1
    reduction_factor: float = 3.0
    brackets: int = 1


@dataclass
class Search:
    """The Optuna sampler, its random start-up trials, and how diverged trials are told to it.

    ``diverged_as: infeasible`` (default) tells diverged and out-of-memory trials as infeasible
    (an Optuna constraint), so TPE moves away from them; ``fail`` tells them FAIL, which TPE
    ignores (what plain Ray Tune's OptunaSearch does); it exists to measure the difference.
    ``random_fraction``: the share of TPE's trials drawn uniformly at random instead
    (``sweeps.store.interleaved_sampler``; 0: none). ``multivariate``: TPE models the parameters
    jointly (grouped, for conditional spaces); ``false``: each on its own, as Optuna's default TPE.
    ``cost_aware`` (off by default: the rule set for turning it on was missed, RESULTS' rounds 12, 13):
    in a sweep with ``budget.time``, TPE picks by expected improvement per predicted second of an
    epoch (``sweeps.store.cost_aware_sampler``), learnt from the trials' measured epoch times, the
    cost weighing less as the budget is used.
    """

    sampler: str = "tpe"
    n_startup_trials: int = 5
    diverged_as: str = "infeasible"
    random_fraction: float = 0.2
    multivariate: bool = True
    cost_aware: bool = False


@dataclass
class Record:
    """The best trials' checkpoints for MLflow (within a size limit), and how often trials report.

    A trial reports to the driver (with a checkpoint) at each ASHA rung, at its last epoch, when it
    diverges, and otherwise once ``report_every_s`` seconds have passed since its last report
    (0: every epoch). Every epoch's metrics reach MLflow and Optuna either way; what the setting
    trades is driver round trips against how much a restored trial repeats.
    """

    checkpoints: int = 3
    checkpoint_max_mb: float = 500.0
    report_every_s: float = 10.0
    step_every_s: float = 0.05
    """A trial records a step's diagnostics in MLflow at most this often (0: every step); notable steps,
    each epoch's last step and the steps before a stop always (``sweeps.tracking.trial_logger.TrialLogger``)."""


@dataclass
class SweepSpec:
    """A validated sweep spec. ``raw`` is the mapping it was built from, overrides applied."""

    name: str
    trainer: str
    metric: str
    mode: str
    seed: int
    budget: Budget
    asha: Asha
    search: Search
    divergence: DivergenceSettings
    record: Record
    fixed: dict[str, Any]
    params: dict[str, ParamSpec]
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = "<spec>"
    trainer_fields: tuple[str, ...] = ()
    trainer_defaults: dict[str, Any] = field(default_factory=dict)
    """A class trainer's ``Config`` defaults (``trainables.config.config_defaults``), kept with the sweep so that
    an exported config names every value its trial ran with, whatever the defaults become later."""
    trial_storage: str | None = None
    """Where trials write checkpoints and Ray its records (a URI or a path every node reaches);
    None: inside the sweep's folder on the driver."""
    function_trainer: bool = False
    """The trainer is a function ``train(config, run)`` (its config takes any parameter, and the seed)."""
    trainer_precisions: tuple[str, ...] | None = None
    """The precisions the trainer runs (``trainables.protocol.declared_precisions``); None: it does not say."""
    unnamed_overrides: tuple[str, ...] = ()
    """``--set`` keys a trainer without declared fields (a function) gets that the spec named nowhere."""
    unnamed_in_source: tuple[tuple[str, str], ...] = ()
    """A function trainer's ``fixed`` and ``params`` keys that its source never names, each with its note
    (``sweeps.spec.source_names``): most likely a misspelt key the loop never reads."""
    notes: tuple[tuple[str, str], ...] = ()
    """What ``run`` and ``--check`` note, ``(key, text)``: a ``--set`` value outside the searched choices;
    a searched parameter a fixed value keeps from ever being drawn (``params.never_drawn``)."""

    @property
    def observing(self) -> bool:
        """The detector only watches (``divergence.mode: observe``): it records would-be stops and stops nothing."""
        return self.divergence.enabled and self.divergence.mode == "observe"

    def resolve(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A trial's complete trainer parameters: fixed values, sampled values, the seed and the epochs.

        The seed goes to a class trainer whose ``Config`` has a ``seed`` field, and always to a
        function trainer (``config.seed``), as does its precision (fp32 unless given);
        ``budget.epochs`` to a class trainer whose ``Config`` has an ``epochs`` field (what a
        schedule over the whole run needs; a function has ``run.epochs``).
        """
        params = {**self.fixed, **sampled}
        if ("seed" in self.trainer_fields or self.function_trainer) and "seed" not in params:
            params["seed"] = self.seed
        if self.function_trainer and "precision" not in params:  # what `run` trains at: logged, exported
            params["precision"] = FUNCTION_PRECISION
        if EPOCHS_FIELD in self.trainer_fields:
            params[EPOCHS_FIELD] = self.budget.epochs
        return params


class _KeyGivenTwice(yaml.constructor.ConstructorError):
    """A mapping names one key twice (not a syntax error, but as much a mistake)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                again = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if again:
                raise _KeyGivenTwice(
                    "while reading a mapping", node.start_mark, f"key {key!r} given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str = "spec file") -> Any:
    """Read a YAML file (``what`` names it in an error), raising SpecError with the line of a syntax error."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(source, [("", f"cannot read {what}: {reason}")]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "YAML error" if isinstance(exc, _KeyGivenTwice) else "YAML syntax error"
        raise SpecError(source, [("", f"{kind} at {where}{problem}")]) from None


def _override_value(text: str) -> Any:
    """A ``--set`` value as YAML reads it (``3`` is a number), or the text as written."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(
    raw: dict[str, Any],
    overrides: list[str],
    trainer_fields: set[str],
    named_nowhere: list[str] | None = None,
    notes: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    """Apply ``key=value`` overrides in place; return the problems with malformed ones.

    A dotted key (``budget.epochs=3``) sets that path; a top-level spec key sets it (a section
    only as ``asha=false`` or ``divergence=false``, its others by their keys); any other key is a
    trainer parameter and becomes fixed, leaving the search space (a searched float or int must
    get a number). A trainer without declared fields (a function) takes any key: those the spec's
    ``fixed`` and ``params`` did not name are appended to ``named_nowhere`` (a typo is no error).
    A value outside the choices the spec searches for that key is allowed (a value to try), and
    noted in ``notes`` (most likely a typo the trainer would fail on in every trial).
    """
    problems: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append((f"--set {item}", "expected key=value"))
            continue
        value = _override_value(text)
        if "." in key:
            node = raw
            *parents, leaf = key.split(".")
            for part in parents:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[leaf] = value
        elif key in SECTIONS and not (key in ("asha", "divergence") and isinstance(value, bool)):
            problems.append((f"--set {key}", f"is a section of the spec: set its keys, e.g. --set {key}.KEY=VALUE"))
        elif key in TOP_KEYS:
            raw[key] = value
        elif key in trainer_fields or not trainer_fields:
            declared = _declared_number(raw.get("params"), key)
            if declared and not _numberlike(value):
                problems.append((f"--set {key}", f"{text.strip()!r} is not a number (params.{key} is searched as one)"))
                continue
            entry = raw["params"].get(key) if isinstance(raw.get("params"), dict) else None
            choices = entry if isinstance(entry, list) else entry.get("choices") if isinstance(entry, dict) else None
            if notes is not None and isinstance(choices, list) and choices and value not in choices:
                shown = ", ".join(str(c) for c in choices)
                notes.append((f"--set {key}={text.strip()}", f"not among the values the spec searches ({shown})"))
            number = as_number(value, "", Problems())
            if isinstance(entry, dict) and entry.get("log") is True and number is not None and not number > 0:
                said = f"must be > 0 (params.{key} is searched on a log scale), got {text.strip()}"
                problems.append((f"--set {key}", said))
                continue
            if notes is not None and isinstance(entry, dict) and number is not None:
                notes.extend((f"--set {key}={text.strip()}", note) for note in _outside_range(entry, key, number))
            when = entry.get("when") if isinstance(entry, dict) else None
            if notes is not None and isinstance(when, dict) and when:  # fixed, it reaches every trial
                drawn = " and ".join(f"{parent} is {_one_of(values)}" for parent, values in when.items())
                said = f"params.{key} is drawn only when {drawn}; fixed, every trial gets it (and records it)"
                notes.append((f"--set {key}={text.strip()}", said))
            fixed = raw.get("fixed")
            raw["fixed"] = fixed = fixed if isinstance(fixed, dict) else {}
            params = raw.get("params")
            if named_nowhere is not None and not trainer_fields and key not in fixed:
                if not (isinstance(params, dict) and key in params):
                    named_nowhere.append(key)
            fixed[key] = value
            if isinstance(raw.get("params"), dict):
                raw["params"].pop(key, None)
        else:
            problems.append((f"--set {key}", unknown_parameter(key, trainer_fields)))
    return problems


def _one_of(values: Any) -> str:
    """A condition's values as a note says them: ``unet`` or ``unet or resnet``."""
    return " or ".join(str(v) for v in values) if isinstance(values, list) else str(values)


def _outside_range(entry: dict[str, Any], key: str, number: float) -> list[str]:
    """Notes for a ``--set`` number a searched range would not draw: a fraction of an int, a value past a bound.

    A user's ``--set n_step=6.5`` of an int searched over 2..10, and ``--set lr=0.5`` of 1e-4..1e-2,
    went to the trainer without a word (a value outside searched choices gets a note).
    """
    low, high = (as_number(entry.get(bound), "", Problems()) for bound in ("low", "high"))
    if low is None or high is None or "choices" in entry:
        return []
    integral = entry.get("type") == "int" or (
        "type" not in entry
        and all(isinstance(entry.get(b), int) and not isinstance(entry.get(b), bool) for b in ("low", "high"))
    )
    notes = []
    if integral and not float(number).is_integer():
        notes.append(f"not a whole number: params.{key} is searched as an int")
    if not low <= number <= high:
        notes.append(f"outside the range the spec searches ({entry.get('low')}..{entry.get('high')})")
    return notes


def _declared_number(params: Any, key: str) -> bool:
    """Whether the spec searches ``key`` as a number: ``type: float``/``int``, numbers as bounds or as every choice."""
    entry = params.get(key) if isinstance(params, dict) else None
    if not isinstance(entry, dict):
        return False
    if entry.get("type") in ("float", "int"):
        return True
    choices = entry.get("choices")
    if isinstance(choices, list) and choices:
        return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
    return "choices" not in entry and any(_numberlike(entry.get(b)) for b in ("low", "high"))


def _numberlike(value: Any) -> bool:
    """A number, or text that reads as one (YAML reads ``1e-5`` as text): what ``as_number`` takes."""
    return as_number(value, "", Problems()) is not None


def load_spec(path: str | Path, overrides: list[str] | None = None, trials: int | None = None) -> SweepSpec:
    """Read, override and validate a spec file; raise SpecError listing every problem."""
    raw = read_yaml(path)
    source = str(path)
    if not isinstance(raw, dict):
        raise SpecError(source, [("", "the spec must be a YAML mapping (key: value lines)")])
    raw = copy.deepcopy(raw)
    raw.setdefault("name", Path(path).stem)
    if trials is not None:
        given = [item for item in overrides or [] if item.partition("=")[0].strip() == "budget.trials"]
        if given and _override_value(given[-1].partition("=")[2]) != trials:
            raise SpecError("--trials", [("", f"{trials} and --set {given[-1].strip()} disagree; give one")])
        raw["budget"] = raw.get("budget") if isinstance(raw.get("budget"), dict) else {}
        raw["budget"]["trials"] = trials
    return validate_spec(raw, source, overrides or [])


def validate_spec(raw: dict[str, Any], source: str, overrides: list[str]) -> SweepSpec:
    """Validate a spec mapping (after overrides) and build a :class:`SweepSpec`."""
    problems = Problems()
    for item in overrides:  # `--set trainer=...` first: the trainer's fields tell the other overrides apart
        key, sep, text = item.partition("=")
        if sep and key.strip() == "trainer":
            raw["trainer"] = _override_value(text)
    trainer_cls = _trainer(raw.get("trainer"), problems)
    function = trainer_cls is not None and is_function_trainer(trainer_cls)
    types = field_types(trainer_cls.Config) if trainer_cls is not None and not function else {}
    named_nowhere: list[str] = []
    notes: list[tuple[str, str]] = []
    problems.extend(apply_overrides(raw, overrides, set(types), named_nowhere, notes))
    for key in raw:
        if key not in TOP_KEYS:
            problems.add(str(key), unknown_key(key, TOP_KEYS))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.add("name", f"{name!r} must be letters, digits, '.', '_' or '-'")
    metric, mode = _metric(raw, trainer_cls, problems)
    if (note := _direction_note(raw, metric)) is not None:
        notes.append(("metric", note))
    seed = as_int(raw.get("seed", 0), "seed", problems) or 0
    if not 0 <= seed < 2**32:  # what NumPy and Optuna's samplers take
        problems.add("seed", f"must be from 0 to 2**32 - 1, got {seed}")
        seed = 0
    budget = _budget(raw.get("budget", {}), problems)
    if budget.time_s is not None and budget.time_s < SHORT_TIME_S:
        notes.append(("budget.time", f"{budget.time_s:g} s: {SHORT_TIME_WHY}; trials may end before they validate"))
    given = raw.get("budget")
    if budget.time_s is not None and isinstance(given, dict) and "trials" not in given:  # 10 trials may end it first
        more = "set budget.trials high to use all the time"
        notes.append(("budget.time", f"the sweep also ends after budget.trials ({budget.trials}) trials; {more}"))
    if budget.time_s is not None and budget.trial_time_s is not None and budget.trial_time_s >= budget.time_s:
        notes.append(("budget.trial_time", "is not shorter than budget.time, which ends every trial first"))
    asha = _asha(raw.get("asha", {}), budget, problems)
    search = _search(raw.get("search", {}), problems)
    divergence = _divergence(raw.get("divergence", {}), problems)
    if divergence.enabled and divergence.mode == "observe" and asha.enabled:
        cut = "ASHA may still cut a flagged trial at a rung, before its end shows whether the flag was right"
        notes.append(("divergence.mode", f"observe: {cut}; set asha.enabled: false to train every trial to the end"))
    record = _record(raw.get("record", {}), problems)
    trial_storage = _trial_storage(raw.get("trial_storage"), problems)
    fixed = _fixed(raw.get("fixed", {}), types, problems)
    _check_gpu_device(fixed, budget, problems)
    params = parse_params(raw.get("params", {}), types, fixed, problems)
    if function:
        _check_scaler_settings(fixed, params, problems)
    if trainer_cls is not None and not function:
        _check_epochs_field(types, fixed, params, budget.epochs, problems)
        _check_configs(trainer_cls, fixed, params, seed, budget.epochs, problems)
    precisions = _precisions(trainer_cls, raw.get("trainer"), fixed, params, divergence, problems)
    if (half := _half_on_cpu_note(fixed, params, budget)) is not None:
        notes.append(half)
    if problems:
        raise SpecError(source, problems.items)
    unnamed: list[tuple[str, str]] = []
    if function:
        own = [k for k in [*fixed, *params] if k not in ENGINE_READS]
        sections = {**{k: "fixed" for k in fixed}, **{k: "params" for k in params}}
        found = unnamed_keys(trainer_cls, own)
        _refuse_misspelt_engine_keys(
            [k for k, _ in found], {**sections, **dict.fromkeys(named_nowhere, "--set")}, source
        )
        unnamed = [(f"{sections[k]}.{k}", note) for k, note in found if k not in named_nowhere]
    return SweepSpec(
        name=str(name),
        trainer=str(raw["trainer"]),
        metric=metric,
        mode=mode,
        seed=seed,
        budget=budget,
        asha=asha,
        search=search,
        divergence=divergence,
        record=record,
        fixed=fixed,
        params=params,
        raw=raw,
        source=source,
        trainer_fields=tuple(types),
        trainer_defaults=config_defaults(trainer_cls.Config) if trainer_cls is not None and not function else {},
        trial_storage=trial_storage,
        function_trainer=function,
        trainer_precisions=precisions,
        unnamed_overrides=tuple(named_nowhere),
        unnamed_in_source=tuple(unnamed),
        notes=tuple(
            notes
            + never_drawn(params, fixed)
            + two_choices_not_a_range(raw.get("params"))
            + whole_bounds_drawn_as_floats(raw.get("params"), types)
            + choice_notes(params, types)
        ),
    )


def _refuse_misspelt_engine_keys(keys: list[str], sections: dict[str, str], source: str) -> None:
    """A key the loop never names that is one the engine reads, misspelt (``precison``): an error, not a note.

    As written neither uses it: every trial would run at the engine's default (fp32, the spec's seed).
    """
    problems = []
    for key in keys:
        close = difflib.get_close_matches(key, sorted(ENGINE_READS), n=1, cutoff=0.85)  # a typo, not a prefix
        if close:
            meant = close[0]
            where = f"--set {key}" if sections[key] == "--set" else f"{sections[key]}.{key}"
            said = f"did you mean {meant!r}? The engine reads {meant!r}, and the loop never names {key!r}"
            problems.append((where, f"{said}: as written, neither would use the value"))
    if problems:
        raise SpecError(source, problems)


def _trainer(value: Any, problems: Problems) -> Any:
    if value is None:
        problems.add("trainer", "missing (a built-in name such as 'vae', module:Class or module:function)")
        return None
    try:
        return load_trainer(str(value))
    except TrainerLoadError as exc:
        problems.add("trainer", str(exc))
        return None


def _metric(raw: dict[str, Any], trainer_cls: Any, problems: Problems) -> tuple[str, str]:
    value = raw.get("metric")
    mode = raw.get("mode", "min")
    if isinstance(value, dict):
        _unknown(value, {"name", "mode"}, "metric", problems)
        if "mode" in raw and "mode" in value and raw["mode"] != value["mode"]:  # which one was meant?
            problems.add("mode", f"{raw['mode']}, but metric.mode is {value['mode']}: give the direction once")
        mode = value.get("mode", mode)
        value = value.get("name")
    if value is None or value == "":
        problems.add("metric", "missing: the validation metric to optimize, e.g. 'val_loss'")
        value = ""
    elif not isinstance(value, str):
        problems.add(
            "metric", f"{value!r} is not a metric's name: give one, e.g. 'val_loss', or {{name: val_loss, mode: min}}"
        )
        value = ""
    if mode not in ("min", "max"):
        problems.add("metric.mode", f"must be 'min' or 'max', got {mode!r}")
    if value and (undeclared := undeclared_metric(value, trainer_cls, raw.get("trainer"))):
        problems.add("metric", undeclared)
    return value, str(mode)


SHORT_TIME_S = 30.0
SHORT_TIME_WHY = "on 2 CPUs a sweep's first validation came 10-12 s after its start"
"""A ``budget.time`` under ``SHORT_TIME_S`` gets a note: little of it is left for training."""

HIGHER_IS_BETTER = re.compile(r"psnr|ssim|acc|accuracy|iou|dice|f1|auc|recall|precision|bleu|score|reward")
"""The ends of metric names that are better when higher: PSNR, SSIM, accuracy, IoU, ..."""


def _direction_note(raw: dict[str, Any], metric: str) -> str | None:
    """A note when the spec leaves ``mode`` at its default ``min`` for a metric that reads as better when higher."""
    given = "mode" in raw or (isinstance(raw.get("metric"), dict) and "mode" in raw["metric"])
    words = re.split(r"[^a-z0-9]+", metric.lower())
    if given or not words or not HIGHER_IS_BETTER.fullmatch(words[-1]):
        return None
    fix = f"metric: {{name: {metric}, mode: max}}"
    return f"{metric} is minimized (mode: min, the default); if higher is better, write {fix}"


def undeclared_metric(name: str, trainer_cls: Any, trainer: Any) -> str | None:
    """Why ``trainer`` (named so in the file) will not report metric ``name``: None if it may (or does not declare)."""
    declared = declared_metrics(trainer_cls)
    if declared and name not in declared:
        return f"{name!r} is not produced by trainer {trainer!r} (it reports: {', '.join(declared)})"
    return None


def _section(value: Any, key: str, problems: Problems, switch: bool = False) -> dict[str, Any]:
    """``value`` as a section's mapping; ``switch``: a section that ``true``/``false`` also turns on or off."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(key, f"must be a mapping{' or true/false' if switch else ''}, got {value!r}")
        return {}
    return value


def _unknown(section: dict[str, Any], known: set[str], key: str, problems: Problems) -> None:
    for name in section:
        if name not in known:
            problems.add(f"{key}.{name}", unknown_key(name, known))


def _budget(value: Any, problems: Problems) -> Budget:
    section = _section(value, "budget", problems)
    _unknown(section, BUDGET_KEYS, "budget", problems)
    budget = Budget()
    budget.trials = as_int(section.get("trials", budget.trials), "budget.trials", problems, minimum=1) or 1
    if section.get("time") is not None:
        budget.time_s = as_duration(section["time"], "budget.time", problems)
    if section.get("trial_time") is not None:
        budget.trial_time_s = as_duration(section["trial_time"], "budget.trial_time", problems)
    budget.epochs = as_int(section.get("epochs", budget.epochs), "budget.epochs", problems, minimum=1) or 1
    if section.get("concurrency") is not None:
        budget.concurrency = as_int(section["concurrency"], "budget.concurrency", problems, minimum=1)
    cpus = as_number(section.get("cpus_per_trial", 1), "budget.cpus_per_trial", problems)
    gpus = as_number(section.get("gpus_per_trial", 0), "budget.gpus_per_trial", problems)
    if cpus is not None and cpus <= 0:
        problems.add("budget.cpus_per_trial", f"must be > 0, got {cpus}")
    if gpus is not None and gpus < 0:
        problems.add("budget.gpus_per_trial", f"must be >= 0, got {gpus}")
    budget.cpus_per_trial, budget.gpus_per_trial = cpus or 1.0, gpus or 0.0
    workers = as_int(section.get("workers_per_trial", 1), "budget.workers_per_trial", problems, minimum=1)
    budget.workers_per_trial = workers or 1
    if budget.workers_per_trial > 1 and 0 < budget.gpus_per_trial < 1:
        problems.add(
            "budget.gpus_per_trial",
            f"must be a whole number of GPUs per worker with workers_per_trial > 1 "
            f"(NCCL needs a GPU per rank), got {budget.gpus_per_trial}",
        )
    retries = as_int(section.get("retries", budget.retries), "budget.retries", problems, minimum=0)
    budget.retries = retries if retries is not None else budget.retries
    return budget


def _trial_storage(value: Any, problems: Problems) -> str | None:
    if value is None:
        return None
    problem = storage_problem(value)
    if problem:
        problems.add("trial_storage", problem)
        return None
    return str(value)


def _asha(value: Any, budget: Budget, problems: Problems) -> Asha:
    if value is False:
        return Asha(enabled=False)
    section = _section({} if value is True else value, "asha", problems, switch=True)  # true: on, at its defaults
    _unknown(section, {"enabled", "grace_period", "reduction_factor", "brackets"}, "asha", problems)
    asha = Asha(enabled=bool(section.get("enabled", True)))
    grace = as_int(section.get("grace_period", 1), "asha.grace_period", problems, minimum=1)
    epochs_ok = not any(key == "budget.epochs" for key, _ in problems.items)  # else budget.epochs is a stand-in
    if grace is not None and grace > budget.epochs and epochs_ok:
        problems.add("asha.grace_period", f"{grace} is more than budget.epochs ({budget.epochs})")
    factor = as_number(section.get("reduction_factor", 3), "asha.reduction_factor", problems)
    if factor is not None and factor <= 1:
        problems.add("asha.reduction_factor", f"must be > 1, got {factor}")
    asha.grace_period = grace or 1
    asha.reduction_factor = factor or 3.0
    asha.brackets = as_int(section.get("brackets", 1), "asha.brackets", problems, minimum=1) or 1
    return asha


def _search(value: Any, problems: Problems) -> Search:
    section = _section(value, "search", problems)
    known = {"sampler", "n_startup_trials", "diverged_as", "random_fraction", "multivariate", "cost_aware"}
    _unknown(section, known, "search", problems)
    diverged_as = section.get("diverged_as", "infeasible")
    if diverged_as not in ("infeasible", "fail"):
        problems.add("search.diverged_as", f"must be 'infeasible' or 'fail', got {diverged_as!r}")
    search = Search()
    sampler = section.get("sampler", "tpe")
    if sampler not in ("tpe", "random"):
        problems.add("search.sampler", f"must be 'tpe' or 'random', got {sampler!r}")
    search.sampler = str(sampler)
    startup = as_int(section.get("n_startup_trials", 5), "search.n_startup_trials", problems, minimum=0)
    search.n_startup_trials = startup if startup is not None else 5
    search.diverged_as = str(diverged_as)
    fraction = as_number(section.get("random_fraction", search.random_fraction), "search.random_fraction", problems)
    if fraction is not None and not 0 <= fraction < 1:
        problems.add("search.random_fraction", f"must be >= 0 and < 1, got {fraction}")
    elif fraction is not None:
        search.random_fraction = float(fraction)
    multivariate = as_bool(section.get("multivariate", search.multivariate), "search.multivariate", problems)
    search.multivariate = search.multivariate if multivariate is None else multivariate
    cost_aware = as_bool(section.get("cost_aware", search.cost_aware), "search.cost_aware", problems)
    search.cost_aware = search.cost_aware if cost_aware is None else cost_aware
    return search


def _record(value: Any, problems: Problems) -> Record:
    section = _section(value, "record", problems)
    _unknown(section, {"checkpoints", "checkpoint_max_mb", "report_every_s", "step_every_s"}, "record", problems)
    record = Record()
    count = as_int(section.get("checkpoints", record.checkpoints), "record.checkpoints", problems, minimum=0)
    size = as_number(section.get("checkpoint_max_mb", record.checkpoint_max_mb), "record.checkpoint_max_mb", problems)
    every = as_number(section.get("report_every_s", record.report_every_s), "record.report_every_s", problems)
    if every is not None and every < 0:
        problems.add("record.report_every_s", f"must be >= 0 (0: every epoch), got {every}")
    record.checkpoints = count if count is not None else record.checkpoints
    record.checkpoint_max_mb = size if size is not None else record.checkpoint_max_mb
    record.report_every_s = every if every is not None and every >= 0 else record.report_every_s
    steps = as_number(section.get("step_every_s", record.step_every_s), "record.step_every_s", problems)
    if steps is not None and steps < 0:
        problems.add("record.step_every_s", f"must be >= 0 (0: every step), got {steps}")
    record.step_every_s = steps if steps is not None and steps >= 0 else record.step_every_s
    return record


def _divergence(value: Any, problems: Problems) -> DivergenceSettings:
    if value is False:
        return DivergenceSettings(enabled=False)
    section = _section({} if value is True else value, "divergence", problems, switch=True)  # true: on, at its defaults
    _unknown(section, {"enabled", "rescue", "mode", *SIGNALS}, "divergence", problems)
    settings = DivergenceSettings(enabled=bool(section.get("enabled", True)), rescue=bool(section.get("rescue", False)))
    mode = section.get("mode", "stop")
    if mode in MODES:
        settings.mode = str(mode)
    else:
        problems.add("divergence.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    for signal in SIGNALS:
        entry = section.get(signal, {})
        if entry is False:
            settings.signals.pop(signal)
            continue
        entry = _section(entry, f"divergence.{signal}", problems)
        _unknown(entry, set(DEFAULTS[signal]), f"divergence.{signal}", problems)
        for key, raw_value in entry.items():
            if key in DEFAULTS[signal]:
                number = as_number(raw_value, f"divergence.{signal}.{key}", problems)
                wrong = None if number is None else _threshold_problem(key, number)
                if wrong:
                    problems.add(f"divergence.{signal}.{key}", wrong)
                elif number is not None:
                    settings.signals[signal][key] = number
    return settings


COUNTS = {"consecutive", "window", "steps", "scaled_steps", "warmup"}
"""Divergence settings that count steps: whole numbers, at least 1 (``calibration`` may be 0)."""


def _threshold_problem(key: str, number: float) -> str | None:
    """What is wrong with a divergence setting's value (None: nothing); a value that would stop every trial is wrong."""
    if not math.isfinite(number):
        return f"must be a finite number, got {number}"
    if key in COUNTS | {"calibration"} and not number.is_integer():
        return f"counts steps: a whole number, got {number:g}"
    if key in COUNTS and number < 1:
        return f"counts steps: at least 1, got {number:g}"
    if key in ("share", "max_share") and not 0 < number <= 1:
        return f"a share of the steps: above 0 and at most 1, got {number:g}"
    if key == "factor" and number < 1:
        return f"must be >= 1 (a value over {number:g} x where it started holds on every step), got {number:g}"
    if number < 0:
        return f"must be >= 0, got {number:g}"
    return None


def _fixed(value: Any, types: dict[str, Any], problems: Problems) -> dict[str, Any]:
    section = _section(value, "fixed", problems)
    fixed: dict[str, Any] = {}
    for key, item in section.items():
        if types and key not in types:
            problems.add(f"fixed.{key}", unknown_parameter(str(key), types))
            continue
        try:
            fixed[str(key)] = coerce(item, types[key]) if types else untyped(item)
        except ValueError as exc:
            problems.add(f"fixed.{key}", str(exc))
            continue
        value = fixed[str(key)]
        if isinstance(value, float) and not math.isfinite(value):
            problems.add(f"fixed.{key}", f"must be a finite number, got {value}")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
            # as a searched int's bounds: ``width: 1e22`` passed the check and failed in the trial
            problems.add(f"fixed.{key}", f"must be within +-2**53 ({MAX_EXACT_INT}), got {item}")
    return fixed


SCALER_SETTINGS = ("init_scale", "growth_interval", "min_loss_scale")
"""What ``run.scaler()`` reads from a function trainer's config, each as a number."""


def _check_scaler_settings(fixed: dict[str, Any], params: dict[str, ParamSpec], problems: Problems) -> None:
    """Each value of a scaler setting a function trainer is given must be a number: ``'2**8'`` failed every trial."""
    values = [(f"fixed.{key}", fixed[key]) for key in SCALER_SETTINGS if key in fixed]
    for key in SCALER_SETTINGS:
        if key in params and params[key].kind == "categorical":
            values += [(f"params.{key}.choices[{i}]", v) for i, v in enumerate(params[key].choices)]
    for where, value in values:
        if not is_number(value):
            problems.add(where, f"run.scaler() reads it as a number, got {value!r}")
        elif (not math.isfinite(value) or value < 0) and not problems.about(where):
            problems.add(where, f"must be a finite number >= 0, got {value!r}")


def _check_gpu_device(fixed: dict[str, Any], budget: Budget, problems: Problems) -> None:
    """A GPU device needs a GPU reserved: a trial that reserves none sees none (``sweeps.trial.gpu_visibility``)."""
    device = str(fixed.get("device", ""))
    if device.startswith("cuda") and budget.gpus_per_trial <= 0:
        problems.add(
            "fixed.device",
            f"{device}, but budget.gpus_per_trial is 0 and a trial that reserves no GPU sees none; "
            "set budget.gpus_per_trial (1: a GPU each, 0.25: four trials to a GPU)",
        )


def _check_epochs_field(
    types: dict[str, Any], fixed: dict[str, Any], params: dict[str, ParamSpec], epochs: int, problems: Problems
) -> None:
    """A class trainer's ``epochs`` field is the budget's (:data:`EPOCHS_FIELD`): not searched, not fixed apart."""
    if EPOCHS_FIELD not in types:
        return
    fill = f"the engine sets the trainer's {EPOCHS_FIELD!r} field to budget.epochs"
    if EPOCHS_FIELD in params:
        problems.add(f"params.{EPOCHS_FIELD}", f"{fill}; search the epochs by running sweeps with other budget.epochs")
    elif EPOCHS_FIELD in fixed and fixed[EPOCHS_FIELD] != epochs:
        problems.add(
            f"fixed.{EPOCHS_FIELD}",
            f"{fixed[EPOCHS_FIELD]!r} differs from budget.epochs ({epochs}): {fill}; set budget.epochs instead",
        )


def _check_configs(
    trainer_cls: Any, fixed: dict[str, Any], params: dict[str, ParamSpec], seed: int, epochs: int, problems: Problems
) -> None:
    """Build the trainer config for the fixed values and for each searched value on its own."""
    base = {**fixed}
    fields = field_types(trainer_cls.Config)
    if "seed" in fields and "seed" not in base:
        base["seed"] = seed
    if EPOCHS_FIELD in fields:
        base[EPOCHS_FIELD] = epochs
    try:
        build_config(trainer_cls.Config, base)
    except ConfigError as exc:
        for key, msg in exc.problems:
            problems.add(f"fixed.{key}", msg)
        return
    for name, param in params.items():
        for label, value in param.probe_values():
            try:
                build_config(trainer_cls.Config, {**base, name: value})
            except ConfigError as exc:
                inside = label.startswith("low+")  # a value between the bounds: the first one refused says it
                hint = "; every int from low to high can be drawn (a step, or choices, keeps to some)" if inside else ""
                for key, msg in exc.problems:
                    where = f"params.{name}.{label}" if key == name else f"params.{name}.{label} (with {key})"
                    problems.add(where, msg + hint)
                if inside:
                    break


def unrun_precision(trainer: Any, name: Any, value: Any, supported: tuple[str, ...] | None) -> str | None:
    """Why ``trainer`` (which declares ``supported``) would not run precision ``value``; None when it would.

    A function, or a class that declares what it runs, takes canonical names only; a class that
    declares nothing may take its own (a Literal field of its Config says so already).
    """
    try:
        precision = canonical_precision(str(value))
    except ValueError as exc:
        return str(exc) if is_function_trainer(trainer) or supported is not None else None
    if supported is not None and precision not in supported:
        return (
            f"trainer {name!r} does not run {value!r} (it runs: {', '.join(supported)}; "
            "a trainer declares more in a `precisions` attribute)"
        )
    return None


def _same_precision(choices: list[Any]) -> tuple[Any, Any, str] | None:
    """The first two choices that name one precision (``O1`` and ``fp16``), with its name; None if none."""
    seen: dict[str, Any] = {}
    for choice in choices:
        try:
            precision = canonical_precision(str(choice))
        except ValueError:
            continue
        if precision in seen:
            return seen[precision], choice, precision
        seen[precision] = choice
    return None


HALF_ON_CPU_WHY = (
    "CPUs run float16 many times slower than fp32 or bf16 (an epoch of the vae trainer 20x, a user's "
    "normalizing flow 50x, on 2 CPUs), so such trials take most of the time; fp16 pays off on GPUs"
)


def _half_on_cpu_note(fixed: dict[str, Any], params: dict[str, ParamSpec], budget: Budget) -> tuple[str, str] | None:
    """A note when trials that reserve no GPU are to run fp16 (autocast or O2): slow enough on a CPU to eat the time."""
    if budget.gpus_per_trial > 0:
        return None
    if "precision" in params:
        key, asked = "params.precision", params["precision"].choices
    else:
        key, asked = "fixed.precision", [fixed["precision"]] if "precision" in fixed else []
    half = []
    for value in asked:
        try:
            if canonical_precision(str(value)) in ("fp16", "fp16-o2"):
                half.append(str(value))
        except ValueError:  # not a precision of ours (a function trainer's own meaning): no note
            return None
    if not half:
        return None
    return key, f"{', '.join(half)} on trials with no GPU (budget.gpus_per_trial 0): {HALF_ON_CPU_WHY}"


def _precisions(
    trainer: Any,
    name: Any,
    fixed: dict[str, Any],
    params: dict[str, ParamSpec],
    divergence: DivergenceSettings,
    problems: Problems,
) -> tuple[str, ...] | None:
    """The precisions the trainer runs; each precision the spec asks for must be one of them.

    A ``divergence.rescue`` re-runs a trial at bf16 (or fp32) only where the trainer runs it, so a
    trainer that does not say what it runs cannot be rescued.
    """
    if trainer is None:
        return None
    try:
        supported = declared_precisions(trainer)
    except ValueError as exc:
        problems.add("trainer", f"precisions: {exc}")
        return None
    asked = [("fixed.precision", fixed["precision"])] if "precision" in fixed else []
    if "precision" in params:
        asked += [(f"params.precision.{label}", value) for label, value in params["precision"].probe_values()]
    for key, value in asked:
        problem = unrun_precision(trainer, name, value, supported)
        if problem and key not in {k for k, _ in problems.items}:  # not twice: a Literal field may have said it
            problems.add(key, problem)
    if "precision" in params and (same := _same_precision(params["precision"].choices)):
        problems.add(
            "params.precision.choices",
            f"{same[0]!r} and {same[1]!r} are one precision ({same[2]}): keep one, or TPE draws it twice as often",
        )
    if divergence.enabled and divergence.rescue:
        if supported is None:
            problems.add(
                "divergence.rescue",
                f"trainer {name!r} does not say which precisions it runs (a `precisions` attribute), "
                "so a rescue could run one it ignores",
            )
        elif "bf16" not in supported and "fp32" not in supported:
            problems.add("divergence.rescue", f"trainer {name!r} runs neither bf16 nor fp32 to rescue a trial at")
        elif "fp16" not in supported and "fp16-o2" not in supported:
            problems.add(
                "divergence.rescue",
                f"trainer {name!r} runs no fp16 (it runs: {', '.join(supported)}), so no trial can need a rescue; "
                "declare the precisions it runs in a `precisions` attribute, or leave rescue out",
            )
    return supported
