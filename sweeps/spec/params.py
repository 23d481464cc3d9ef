"""Searched parameters: parsing their spec entries and sampling them through an Optuna trial.

The YAML name of a parameter is its Optuna parameter name, its MLflow param name and its
key in the exported config. A parameter with ``when:`` exists only when each named
parameter has one of the listed values (``init_scale`` only under ``precision: fp16``).
"""

from __future__ import annotations

import decimal
import difflib
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, get_args, get_origin

from sweeps.core.problems import Problems, as_bool, as_int, as_number, unknown_key
from trainables.config import coerce

if TYPE_CHECKING:
    import optuna

KINDS = ("float", "int", "categorical")
EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
MAX_EXACT_INT = 2**53
"""The largest int bound read: Optuna's study stores a drawn int as a float, exact only up to 2**53."""

PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}
PROBE_ALL = 64
"""An int range of at most this many values has each of them checked against the trainer's config."""


@dataclass
class ParamSpec:
    """One searched parameter."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)
    when: dict[str, list[Any]] = field(default_factory=dict)

    def probe_values(self) -> list[tuple[str, Any]]:
        """Values worth checking against the trainer config: each choice, or both bounds.

        An int range of at most :data:`PROBE_ALL` values is checked at each of them (``low+1``,
        ``low+2``, ...): a kernel size searched over 3..5 draws 4, which a trainer that takes odd
        sizes only refuses, and its trials would fail one by one after the sweep started.
        """
        if self.kind == "categorical":
            return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        if self.kind == "int":
            low, high, step = int(self.low), int(self.high), int(self.step or 1)
            values = range(low, high + 1, step)
            if len(values) <= PROBE_ALL:
                return [("low" if v == low else f"low+{v - low}", v) for v in values] + (
                    [("high", high)] if values[-1] != high else []
                )
            return [("low", low), ("high", high)]
        return [("low", float(self.low)), ("high", float(self.high))]

    def active(self, values: dict[str, Any]) -> bool:
        """Whether every condition holds for the values chosen so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when.items())

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution :meth:`suggest` samples from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this parameter from ``trial`` under its own name."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def sample(trial: optuna.Trial, params: dict[str, ParamSpec], fixed: dict[str, Any]) -> dict[str, Any]:
    """Sample every active parameter (conditions see fixed values and earlier samples)."""
    values: dict[str, Any] = {}
    for name, param in params.items():
        if param.active({**fixed, **values}):
            values[name] = param.suggest(trial)
    return values


def _last_on_grid(low: float, high: float, step: float) -> float:
    """The highest value of ``low + k * step`` up to ``high``, as Optuna computes it (in decimal)."""
    span = decimal.Decimal(str(high)) - decimal.Decimal(str(low))
    last = decimal.Decimal(str(low)) + span - span % decimal.Decimal(str(step))
    return type(high)(last) if isinstance(high, int) else float(last)


def two_choices_not_a_range(section: Any) -> list[tuple[str, str]]:
    """Notes for ``x: [0.5, 2.0]``: two numbers, one not whole, read as two choices where a range may be meant."""
    if not isinstance(section, dict):
        return []
    notes = []
    for name, entry in section.items():
        numbers = isinstance(entry, list) and len(entry) == 2 and all(is_number(v) for v in entry)
        if numbers and any(isinstance(v, float) and not v.is_integer() for v in entry):
            low, high = sorted(entry)
            range_ = f"{{low: {low}, high: {high}}}"
            notes.append((f"params.{name}", f"{entry} is two choices, not a range; for a range write {range_}"))
    return notes


def whole_bounds_drawn_as_floats(section: Any, types: dict[str, Any]) -> list[tuple[str, str]]:
    """Notes for ``kernel_size: {low: 3, high: 7}`` with no ``type`` and no config field to say int: floats are drawn.

    A user's function trainer got ``kernel_size`` 5.195 and every trial failed in ``nn.Conv2d``.
    """
    if not isinstance(section, dict) or types:
        return []
    notes = []
    for name, entry in section.items():
        if not isinstance(entry, dict) or "type" in entry or "choices" in entry:
            continue
        low, high = entry.get("low"), entry.get("high")
        if all(is_number(v) and isinstance(v, int) for v in (low, high)):
            why = f"low and high are whole numbers, but with no type a float is drawn between {low} and {high}"
            notes.append((f"params.{name}", f"{why}; add type: int for whole numbers, or type: float to keep floats"))
    return notes


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float (not a bool, which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def never_drawn(params: dict[str, ParamSpec], fixed: dict[str, Any]) -> list[tuple[str, str]]:
    """Parameters whose condition names a fixed value it does not allow: (key, why), for a note.

    Not an error: ``--set precision=fp32`` on a spec whose ``init_scale`` is drawn only under fp16
    is the usual way to pin a precision, and the parameter is then rightly never drawn.
    """
    notes = []
    for name, param in params.items():
        for parent, allowed in param.when.items():
            if parent in fixed and fixed[parent] not in allowed:
                shown = allowed[0] if len(allowed) == 1 else allowed
                why = f"never drawn: drawn only when {parent} is {shown!r}, fixed to {fixed[parent]!r}"
                notes.append((f"params.{name}", why))
                break
    return notes


def parse_params(
    section: Any, types: dict[str, Any], fixed: dict[str, Any], problems: Problems
) -> dict[str, ParamSpec]:
    """Parse the ``params`` mapping; return parameters ordered so conditions come first."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        problems.add("params", "must be a mapping of parameter name to distribution")
        return {}
    parsed: dict[str, ParamSpec] = {}
    conditions: dict[str, dict[str, list[Any]]] = {}
    for name, entry in section.items():
        key = f"params.{name}"
        if types and name not in types:
            problems.add(key, unknown_parameter(str(name), types))
            continue
        if name in fixed:
            problems.add(key, "is also in fixed; a parameter is either fixed or searched")
            continue
        param = _parse_one(str(name), entry, types.get(name), problems)
        if param is not None:
            parsed[str(name)] = param
        if isinstance(entry, dict) and isinstance(entry.get("when"), dict):
            conditions[str(name)] = {str(k): v if isinstance(v, list) else [v] for k, v in entry["when"].items()}
    for name, when in conditions.items():
        if "precision" in when:  # `when: {precision: O2}` with choices [fp32, fp16-o2]: one precision, two spellings
            options = parsed["precision"].choices if "precision" in parsed else [fixed.get("precision")]
            when["precision"] = precision_as_spelled(when["precision"], options)
            if name in parsed:
                parsed[name].when["precision"] = when["precision"]
        _check_conditions(name, when, parsed, section, fixed, problems)
    return _ordered(parsed, problems)


def _alias_hint(name: str, choice: Any) -> str:
    """For a precision alias the trainer's own type refuses (``O1`` for a ``Literal["fp16", ...]`` field)."""
    from trainables.precision import canonical_precision

    if name != "precision" or str(choice) not in ("O0", "O1", "O2"):
        return ""
    return f" (the trainer's precision field takes no alias: write {canonical_precision(str(choice))})"


def precision_as_spelled(allowed: list[Any], options: list[Any]) -> list[Any]:
    """Each precision in ``allowed`` as ``options`` spell it (``O2`` as ``fp16-o2``), so it matches one of them.

    A value that is no precision, or one ``options`` do not hold, stays as it is.
    """
    from trainables.precision import canonical_precision

    def canonical(value: Any) -> str | None:
        try:
            return canonical_precision(str(value))
        except ValueError:
            return None

    spelled = {canonical(option): option for option in options if canonical(option) is not None}
    return [spelled.get(canonical(value), value) for value in allowed]


def _parse_one(name: str, entry: Any, kind_hint: Any, problems: Problems) -> ParamSpec | None:
    key = f"params.{name}"
    if isinstance(entry, list):
        entry = {"type": "categorical", "choices": entry}
    if isinstance(entry, (int, float, str, bool)):
        problems.add(key, f"is one value ({_yaml_text(entry)}): every trial gets it from fixed:, not params:")
        return None
    if not isinstance(entry, dict):
        problems.add(key, "must be a mapping (type, low, high, log, step, choices, when) or a list of choices")
        return None
    misspelt: set[str] = set()  # keys the entry holds misspelt: "missing" would say it twice
    for extra in entry:
        if extra not in PARAM_KEYS:
            problems.add(f"{key}.{extra}", unknown_key(extra, PARAM_KEYS))
            misspelt.update(k for k in difflib.get_close_matches(str(extra), sorted(PARAM_KEYS), n=1) if k not in entry)
    bounds = [b for b in ("low", "high") if b in entry]
    if "choices" in entry and bounds:  # one of them would be ignored without a word
        problems.add(key, f"has both choices and {'/'.join(bounds)}: give choices (a list) or low and high (a range)")
        return None
    kind = entry.get("type") or ("categorical" if "choices" in entry else "int" if kind_hint is int else "float")
    if kind == "categorical" and bounds:
        problems.add(key, f"type categorical takes choices, not {'/'.join(bounds)} (those are for int or float)")
        return None
    if kind not in KINDS:
        problems.add(f"{key}.type", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        return None
    when = _parse_when(entry.get("when"), key, problems)
    if kind == "categorical":
        return _categorical(name, entry, kind_hint, when, problems)
    takes = {int: "an int", str: "a str", bool: "a bool"}.get(kind_hint)  # the trainer's field, when it says
    if get_origin(kind_hint) is Literal:
        takes = "one of " + ", ".join(map(str, get_args(kind_hint)))
    if takes and not (kind_hint is int and kind == "int"):  # a float drawn for an int field fails its trial
        problems.add(f"{key}.type", f"{kind} cannot be drawn for the trainer's field {name}, which is {takes}")
        return None
    return _numeric(name, kind, entry, when, problems, misspelt)


def _categorical(
    name: str, entry: dict[str, Any], kind_hint: Any, when: dict[str, list[Any]], problems: Problems
) -> ParamSpec | None:
    key = f"params.{name}.choices"
    choices = entry.get("choices")
    if not isinstance(choices, list) or not choices:
        problems.add(key, "must be a non-empty list")
        return None
    converted = []
    for i, choice in enumerate(choices):
        if not isinstance(choice, (str, int, float, bool)):
            problems.add(f"{key}[{i}]", f"{choice!r} is not a number, string or boolean")
            continue
        try:
            converted.append(coerce(choice, kind_hint) if kind_hint is not None else untyped(choice))
        except ValueError as exc:
            problems.add(f"{key}[{i}]", str(exc) + _alias_hint(name, choice))
    if len(set(map(repr, converted))) != len(converted):
        problems.add(key, "has duplicate choices")
    elif alike := _equal_choices(converted):
        problems.add(
            key,
            f"choices {', '.join(map(_yaml_text, alike[:-1]))} and {_yaml_text(alike[-1])} are equal in Python, so "
            "Optuna records one as the other: keep one",
        )
    elif alike := _equal_choices(converted, key=str):  # [3, "3"]: the advice above once said to quote one
        problems.add(
            key,
            f"choices {', '.join(map(_yaml_text, alike[:-1]))} and {_yaml_text(alike[-1])} read the same in MLflow, "
            "the tables and the results (each records the text): keep one",
        )
    return ParamSpec(name=name, kind="categorical", choices=converted, when=when)


def _yaml_text(value: Any) -> str:
    """A choice as the spec writes it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
"""A string that reads as a number (``'3'``, ``'0.5'``)."""


def choice_notes(params: dict[str, ParamSpec], types: dict[str, Any]) -> list[tuple[str, str]]:
    """Notes for choices that likely say something else than meant: one choice alone; numbers quoted as text.

    A user's ``kernel_size: ["3", "5"]`` reached a function trainer as text and every trial failed in
    ``nn.Conv2d``; ``kernel_size: [7]`` was counted as a searched parameter (``lr: 0.01`` is an error).
    A trainer whose config field types the parameter converts the text itself: no note then.
    """
    notes = []
    for name, param in params.items():
        if param.kind != "categorical" or not param.choices:
            continue
        key = f"params.{name}"
        if len(param.choices) == 1:
            only = _yaml_text(param.choices[0])
            notes.append((key, f"one choice ({only}): every trial gets it; a fixed value belongs under fixed:"))
        elif name not in types and all(isinstance(c, str) and NUMBER_TEXT.fullmatch(c.strip()) for c in param.choices):
            listed = ", ".join(repr(c) for c in param.choices)
            notes.append(
                (key, f"choices {listed} are quoted: the trainer gets text, not numbers; unquote them for numbers")
            )
    return notes


def _equal_choices(choices: list[Any], key: Callable[[Any], Any] = lambda choice: choice) -> list[Any]:
    """The first choices that compare equal (``1`` and ``True``, ``0`` and ``0.0``), by ``key`` if given; [] if none.

    Optuna finds a choice by ``==``: a sweep with ``choices: [1, true]`` ran trials with ``True``
    that its study recorded as ``1``, so TPE and a warm start learned from the wrong value. With
    ``key=str``: choices whose text is the same (``3`` and ``'3'``), alike in every record.
    """
    for i, first in enumerate(choices):
        same = [other for other in choices[i + 1 :] if key(other) == key(first)]
        if same:
            return [first, *same]
    return []


def _numeric(
    name: str,
    kind: str,
    entry: dict[str, Any],
    when: dict[str, list[Any]],
    problems: Problems,
    misspelt: Collection[str] = (),
) -> ParamSpec | None:
    key = f"params.{name}"
    before = len(problems)
    read = as_int if kind == "int" else as_number
    low = read(entry.get("low"), f"{key}.low", problems) if "low" in entry else None
    high = read(entry.get("high"), f"{key}.high", problems) if "high" in entry else None
    for bound, value in (("low", low), ("high", high)):
        if bound not in entry and bound not in misspelt:
            article = "an" if kind == "int" else "a"
            problems.add(f"{key}.{bound}", f"missing ({article} {kind} parameter needs low and high)")
        elif value is not None and not math.isfinite(value):
            problems.add(f"{key}.{bound}", f"must be finite, got {value}")
        elif value is not None and kind == "int" and abs(value) > MAX_EXACT_INT:
            problems.add(f"{key}.{bound}", f"must be within +-2**53 ({MAX_EXACT_INT}), got {entry[bound]}")
    log = as_bool(entry.get("log", False), f"{key}.log", problems) or False
    step = read(entry["step"], f"{key}.step", problems) if entry.get("step") is not None else None
    if step is not None and not (math.isfinite(step) and step > 0):
        problems.add(f"{key}.step", f"must be a finite number > 0, got {step}")
        step = None  # the grid checks below would divide by it
    if step is not None and log:
        problems.add(f"{key}.step", "cannot be combined with log: true")
    if low is not None and high is not None:
        if low > high:
            problems.add(key, f"low ({low}) > high ({high})")
        elif low == high:
            problems.add(key, f"low = high = {low}: nothing to search; put it under fixed: instead")
        elif step is not None and step > high - low:
            problems.add(f"{key}.step", f"{step} is wider than the range {low}..{high}: only {low} could be drawn")
        elif step is not None and (last := _last_on_grid(low, high, step)) != high:
            problems.add(
                f"{key}.step",
                f"{step} does not divide the range {low}..{high}: {high} could never be drawn (Optuna stops at "
                f"{last}); make high {last}, or a step that divides the range",
            )
        if log and low <= 0:
            problems.add(f"{key}.low", f"log scale needs low > 0, got {low}")
    if len(problems) > before or low is None or high is None:
        return None
    return ParamSpec(name=name, kind=kind, low=low, high=high, log=log, step=step, when=when)


def untyped(value: Any) -> Any:
    """A value of a parameter with no declared type (a function trainer's), as YAML 1.2 reads it.

    PyYAML reads an unquoted ``1e-3`` as the string ``'1e-3'``; with no config field to say it is
    a number, it would reach the trainer as a string. Such a string is a number here.
    """
    if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _parse_when(value: Any, key: str, problems: Problems) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        problems.add(f"{key}.when", "must be a mapping of parameter name to a value or list of values")
        return {}
    return {str(k): v if isinstance(v, list) else [v] for k, v in value.items()}


def _check_conditions(
    name: str,
    when: dict[str, list[Any]],
    parsed: dict[str, ParamSpec],
    section: dict[str, Any],
    fixed: dict[str, Any],
    problems: Problems,
) -> None:
    for parent, allowed in when.items():
        key = f"params.{name}.when.{parent}"
        never = f"so {name} would never be drawn"
        if parent == name:
            problems.add(key, "a parameter cannot depend on itself")
        elif not allowed:
            problems.add(key, f"lists no value, {never}")
        elif parent in parsed and parsed[parent].kind == "categorical":
            missing = [v for v in allowed if v not in parsed[parent].choices]
            if missing:
                problems.add(key, f"{missing} not among the choices of {parent!r}")
        elif parent in parsed and parsed[parent].kind == "float":
            problems.add(key, f"{parent!r} is drawn from a float range, which never gives exactly {allowed}, {never}")
        elif parent in parsed:  # an int range
            spec = parsed[parent]
            grid = range(int(spec.low), int(spec.high) + 1, int(spec.step or 1))
            if not any(isinstance(v, int) and v in grid for v in allowed):
                problems.add(key, f"{allowed} never drawn from {parent!r} ({int(spec.low)}..{int(spec.high)}), {never}")
        elif parent not in section and parent not in fixed and not problems.about(f"fixed.{parent}"):
            problems.add(key, f"names an unknown parameter {parent!r}")


def _ordered(parsed: dict[str, ParamSpec], problems: Problems) -> dict[str, ParamSpec]:
    """Topological order: a parameter comes after every parameter its condition names."""
    ordered: dict[str, ParamSpec] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered or name not in parsed:
            return
        if name in visiting:
            problems.add(f"params.{name}.when", "conditions form a cycle")
            return
        visiting.add(name)
        for parent in parsed[name].when:
            visit(parent)
        visiting.discard(name)
        ordered[name] = parsed[name]

    for name in parsed:
        visit(name)
    return ordered


def unknown_parameter(name: str, fields: Any) -> str:
    """The problem with a name the trainer's config does not have: the closest field, or all of them."""
    known = sorted(str(f) for f in fields)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown parameter for this trainer (did you mean {close[0]!r}?)"
    return f"unknown parameter for this trainer (its fields: {', '.join(known)})"
