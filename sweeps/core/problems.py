"""Collecting validation problems, and reading numbers that YAML may have left as strings."""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Collection
from typing import Any


class Problems:
    """An ordered list of ``(key, message)`` problems."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        """Record one problem at ``key``."""
        self.items.append((key, message))

    def extend(self, items: list[tuple[str, str]]) -> None:
        """Record several problems."""
        self.items.extend(items)

    def about(self, key: str) -> bool:
        """Whether a problem is already recorded at ``key`` (a value refused there, so later checks miss it)."""
        return any(k == key for k, _ in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


def as_number(value: Any, key: str, problems: Problems) -> float | None:
    """Return ``value`` as a float (``"1e-5"`` included), or record a problem and return None."""
    if isinstance(value, bool) or value is None:
        shown = {True: "true", False: "false", None: "null (an empty value)"}[value]  # as YAML wrote it
        problems.add(key, f"{shown} is not a number")
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        problems.add(key, f"{value!r} is not a number")
        return None


def as_int(value: Any, key: str, problems: Problems, minimum: int | None = None) -> int | None:
    """Return ``value`` as an int, or record a problem (not an integer, below ``minimum``)."""
    number = as_number(value, key, problems)
    if number is None:
        return None
    if not number.is_integer():
        problems.add(key, f"{value!r} is not an integer")
        return None
    if minimum is not None and number < minimum:
        problems.add(key, f"must be >= {minimum}, got {int(number)}")
        return None
    return int(number)


def as_bool(value: Any, key: str, problems: Problems) -> bool | None:
    """Return ``value`` if it is YAML's true or false, or record a problem and return None."""
    if isinstance(value, bool):
        return value
    problems.add(key, f"must be true or false, got {value!r}")
    return None


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
"""The units a duration may be written in (``90m``, ``8h``); a bare number is seconds."""


def as_duration(value: Any, key: str, problems: Problems) -> float | None:
    """Return ``value`` (``8h``, ``90m``, ``1h30m``, ``2d``, seconds) in seconds (> 0), or record a problem.

    Each unit once, largest first (``30m30m`` and ``30s1m`` are typos, not sums); at most a year.
    """
    text = str(value).strip().lower() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    seconds = _duration_seconds(text)
    if not math.isfinite(seconds) or seconds <= 0:
        problems.add(key, f"must be a duration > 0 such as 90m, 1h30m, 8h or 3600 (seconds), got {value!r}")
        return None
    if seconds > MAX_DURATION_S:
        problems.add(key, f"must be at most a year (365d), got {value!r}")
        return None
    return seconds


MAX_DURATION_S = 365 * 86400.0
"""The longest duration read: beyond a year, a duration is a typo (``99999999d``), not a plan."""

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd])")


def _duration_seconds(text: str) -> float:
    """Seconds in ``text``: a bare number, or number-unit parts (``1h30m``, ``10m 30s``); NaN if unreadable.

    Unreadable also when a unit repeats or comes after a smaller one (``30m30m``, ``30s1m``).
    """
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(_DURATION_PART.sub("", text).split()):
        return math.nan
    sizes = [DURATION_UNITS[unit] for _, unit in parts]
    if any(later >= earlier for earlier, later in itertools.pairwise(sizes)):
        return math.nan
    return sum(float(number) * size for (number, _), size in zip(parts, sizes, strict=True))


def unknown_key(name: object, known: Collection[str]) -> str:
    """The problem with a key a section does not have: the closest known key, if one is close, and all of them."""
    close = closest_key(str(name), sorted(known))
    hint = f"did you mean {close!r}? " if close else ""
    return f"unknown key ({hint}known: {', '.join(sorted(known))})"


def closest_key(name: str, known: list[str], cutoff: float = 0.6) -> str | None:
    """The known key a user most likely meant, or None.

    The only key ``name`` begins or is a word of (``grace`` for ``grace_period``), else difflib's
    closest at least ``cutoff`` alike (a large pool, such as every name in a file, needs a higher one).
    """
    lowered = name.lower()
    if lowered:
        partial = [k for k in known if k.startswith(lowered) or lowered in k.split("_")]
        if len(partial) == 1:
            return partial[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return close[0] if close else None
