"""Typed trainer configs: build a config dataclass from loose values, collecting every problem.

Values come from YAML (where ``1e-5`` is a string), from the command line and from Optuna,
so numbers written as strings are accepted wherever a number is expected.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from trainables.protocol import config_problems

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type.

    Attributes:
        problems: one ``(key, message)`` pair per problem found.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))

    def __reduce__(self) -> tuple[type, tuple[list[tuple[str, str]]]]:
        return (type(self), (self.problems,))  # Ray pickles a trial's exception: rebuilt from its problems


def config_defaults(cls: type) -> dict[str, Any]:
    """A config dataclass's fields with a default, as plain values (bool, int, float, str, None, lists, dicts).

    Fields without a default, or whose default is no plain value (an object), are left out.
    """
    defaults: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            value = item.default
        elif item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()
        else:
            continue
        if _plain(value):
            defaults[item.name] = value
    return defaults


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def field_types(cls: type) -> dict[str, Any]:
    """Return ``{field name: resolved type}`` for a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, kind: Any) -> Any:
    """Convert ``value`` to ``kind`` (bool, int, float, str or a Literal), or raise ValueError."""
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        if value in choices:
            return value
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, choices))}{_yaml_bool_hint(value)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"{value!r} is not a boolean")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
        if isinstance(number, (int, float)) and float(number).is_integer():
            return int(number)
        raise ValueError(f"{value!r} is not an integer")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{value!r} is not a string{_yaml_bool_hint(value)}")
    return value


def _yaml_bool_hint(value: Any) -> str:
    """Why a boolean came where a word was meant: YAML reads an unquoted yes/no/on/off as one."""
    if isinstance(value, bool):
        return " (YAML reads an unquoted yes, no, on or off as a boolean: quote the word, e.g. 'off')"
    return ""


def build_config(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build the config dataclass ``cls`` from ``values``.

    Unknown keys, values of the wrong type and the config's own ``problems()`` are all
    collected and raised together as one :class:`ConfigError`.
    """
    types = field_types(cls)
    problems: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            problems.append((prefix + key, f"unknown parameter for {cls.__name__}"))
            continue
        try:
            kwargs[key] = coerce(value, types[key])
        except ValueError as exc:
            problems.append((prefix + key, str(exc)))
    if problems:
        raise ConfigError(problems)
    config = cls(**kwargs)
    problems = [(prefix + key, msg) for key, msg in config_problems(config)]
    if problems:
        raise ConfigError(problems)
    return config
