"""Replay the divergence corpus through the detector offline: judge thresholds without training.

Reads ``benchmarks/corpus/*.parquet`` (written by ``benchmarks/divergence_corpus.py``: every
trial ran to its last epoch with the detector observing only, and is labelled ``diverged`` or
``healthy`` by how it ended), feeds each trial's steps through a fresh ``DivergenceDetector`` and
counts what the detector would have done:

- ``stops``: trials the detector stopped; ``heur``: those stopped by a heuristic signal
  (``loss_explosion``, ``grad_explosion``, ``collapse``, ``runaway_weights``; not ``loss_scale``
  or ``non_finite``);
- ``false``: stopped, but healthy at the end; ``false/healthy``: the same as a share of the
  healthy trials; ``false top-q``: false stops among the top quartile of their loop (rank <=
  ceil(n / 4), by final metric among all of the loop's trials);
- ``missed``: diverged trials never stopped;
- ``after onset``: steps that diverged trials run from their onset on (to the stop, or to the
  end when missed), as a share of all steps run (every trial up to its stop or its end);
- ``median delay``: median over stopped diverged trials of (stop step - onset step).

**Onset** (defined here once, from the trace alone): a step is *bad* when its loss is not finite,
or its loss magnitude is above ``ONSET_FACTOR`` (1) x the magnitude of the trial's first finite
loss (the untrained model's loss: it is computed before the first update), or any network's step
was skipped (an fp16 overflow). A diverged trial's onset is the first step of the run of bad steps
that lasts to its end; a diverged trial whose last step is not bad has no onset (``no onset``:
it ended no better than untrained but its loss never stayed above where it started; it counts in
``missed`` when not stopped, and not in ``after onset`` or ``median delay``).

**With ASHA** (the two right-hand columns): a sweep runs the detector *and* ASHA, so a stop costs
the sweep something only when ASHA would have let the trial finish. ``asha_ends`` models ASHA at
the engine's defaults (grace period 1 epoch, reduction factor 3, rungs at epochs 1, 3, 9, ... below
the last) synchronously over the loop's trials, from their per-epoch metric alone (the detector's
stops ignored): at each rung a trial goes on when its metric is not worse than the
``(1 - 1/3)`` percentile of the trials that reached the rung (Ray's ``nanpercentile`` cutoff;
a non-finite metric is cut). Ray's ASHA is asynchronous (the first trials at a rung always go on),
so the model cuts somewhat more than a real sweep does. ``false kept``: false stops of trials ASHA
would have run to their last epoch; ``after onset+A``: steps after onset as a share of all steps
run when each trial ends at the earlier of the detector's stop and ASHA's cut.

Split: thresholds are tuned on ``TUNED`` loops only; ``HELD_OUT`` loops are only reported (but
they were looked at, as the detector's failures were studied on them); ``FRESH`` loops were
written after the defaults were fixed and replayed once, after (``divergence_corpus.FRESH``);
``FRESH_2`` loops were written after the detector's last change and replayed once, after;
``FRESH_3`` likewise, on 2026-12-05.

Run: ``python -m benchmarks.divergence_replay [--split tuned|held-out|fresh|fresh-2|fresh-3|all] [--old]
[--set loss_explosion.factor=50 ...] [--list] [--gate-on-validation]``. ``--old`` also prints the
table for the detector as it was before issue 13 (``benchmarks/divergence_v1.py``, its defaults);
``--list`` prints every stopped or missed trial of the loops shown; ``--gate-on-validation``
replays a what-if (:func:`gated_replay`), not the detector as it is.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy

from benchmarks.divergence_corpus import CORPUS, FRESH, FRESH_2, FRESH_3, read

TUNED = ("vae", "sr_gan", "denoiser", "ae_warm_restarts")
HELD_OUT = ("translation_gan", "gan_own", "sr_onecycle")
HEURISTIC = ("loss_explosion", "grad_explosion", "collapse", "runaway_weights")
ONSET_FACTOR = 1.0
ASHA_GRACE = 1
ASHA_FACTOR = 3.0

Detector = Callable[[], Any]


def step_dicts(trial: dict[str, Any]) -> Iterable[tuple[int, dict[str, float]]]:
    """The trial's steps as ``(step, metrics)``, as the detector saw them during training."""
    trace: dict[str, list[float | None]] = trial["trace"]
    keys = [k for k, v in trace.items() if v is not None]
    for i, step in enumerate(trial["steps"]):
        yield step, {k: value for k in keys if (value := trace[k][i]) is not None}


def onset_of(trial: dict[str, Any]) -> int | None:
    """Index of a diverged trial's onset (see the module docstring), or None."""
    if trial["label"] != "diverged":
        return None
    trace = trial["trace"]
    losses = trace.get("loss") or [None] * len(trial["steps"])
    skips = [v for k, v in trace.items() if k.endswith("skipped") and v is not None]
    level = next((abs(v) for v in losses if v is not None and math.isfinite(v)), math.inf)
    onset = None
    for i in range(len(trial["steps"]) - 1, -1, -1):
        loss = losses[i]
        skipped = any(s[i] for s in skips if s[i] is not None)
        bad = loss is None or not math.isfinite(loss) or abs(loss) > ONSET_FACTOR * level or skipped
        if not bad:
            break
        onset = i
    return onset


def asha_ends(trials: list[dict[str, Any]], grace: int = ASHA_GRACE, factor: float = ASHA_FACTOR) -> list[int]:
    """Per trial, the index of the last step ASHA would let it run (see the module docstring)."""
    ends = [len(t["steps"]) - 1 for t in trials]
    alive = list(range(len(trials)))
    epochs = max(int(t["epochs"]) for t in trials) if trials else 0
    rung = grace
    while rung < epochs and alive:
        signed: dict[int, float] = {}
        for i in alive:
            val = trials[i]["val"][rung - 1] if len(trials[i]["val"]) >= rung else None
            ok = val is not None and math.isfinite(val)
            signed[i] = (val if trials[i]["mode"] == "max" else -val) if ok else -math.inf
        finite = [v for v in signed.values() if math.isfinite(v)]
        cutoff = float(numpy.percentile(finite, 100 * (1 - 1 / factor))) if finite else math.inf
        kept = []
        for i in alive:
            if signed[i] < cutoff:
                ends[i] = min(ends[i], rung * int(trials[i]["steps_per_epoch"]) - 1)
            else:
                kept.append(i)
        alive = kept
        rung = int(rung * factor)
    return ends


def replay(trial: dict[str, Any], make: Detector) -> tuple[int | None, Any]:
    """Index of the step at which the detector stops the trial (None: never) and its Divergence."""
    detector = make()
    for i, (step, metrics) in enumerate(step_dicts(trial)):
        found = detector.observe(step, metrics)
        if found is not None:
            return i, found
    return None, None


def no_better_than_untrained(trial: dict[str, Any], epoch: int) -> bool:
    """Whether the trial's metric after ``epoch`` (from 1) is not finite or no better than its untrained model's."""
    vals = trial["val"]
    val = vals[epoch - 1] if epoch <= len(vals) else None
    if val is None or not math.isfinite(val):
        return True
    untrained = trial["untrained"]
    if untrained is None or not math.isfinite(untrained):
        return False
    return bool(val >= untrained if trial["mode"] == "min" else val <= untrained)


def gated_replay(trial: dict[str, Any], make: Detector) -> tuple[int | None, Any]:
    """:func:`replay` with heuristic signals gated on validation (``--gate-on-validation``, a what-if).

    A heuristic signal does not stop the trial when it fires: it stops it at the end of the first
    epoch from then on whose metric is no better than the untrained model's (the label's own
    test of "diverged"); never, if no such epoch comes. The other signals stop at once. After a
    heuristic signal the detector starts afresh, so later signals are still seen.
    """
    detector = make()
    per_epoch = int(trial["steps_per_epoch"])
    pending = None
    for i, (step, metrics) in enumerate(step_dicts(trial)):
        found = detector.observe(step, metrics)
        if found is not None:
            if found.signal not in HEURISTIC:
                return i, found
            pending = pending or found
            detector = make()
        if pending is not None and (i + 1) % per_epoch == 0 and no_better_than_untrained(trial, (i + 1) // per_epoch):
            return i, pending
    return None, None


Replayer = Callable[[dict[str, Any], Detector], tuple[int | None, Any]]


def judge(
    trials: list[dict[str, Any]], make: Detector, replayer: Replayer = replay
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The table's figures for ``trials`` and one record per trial."""
    records = []
    for trial, asha_end in zip(trials, asha_ends(trials), strict=True):
        stop, found = replayer(trial, make)
        onset = onset_of(trial)
        length = len(trial["steps"])
        ran = length if stop is None else stop + 1
        ran_asha = min(ran, asha_end + 1)
        after = after_asha = 0
        if onset is not None:
            after = max(0, ran - onset)
            after_asha = max(0, ran_asha - onset)
        records.append(
            {
                "loop": trial["loop"],
                "trial": trial["trial"],
                "lr": trial["lr"],
                "precision": trial["precision"],
                "label": trial["label"],
                "rank": trial["rank"],
                "n": trial["n"],
                "top": trial["rank"] <= math.ceil(trial["n"] / 4),
                "final": trial["final"],
                "stop": stop,
                "signal": found.signal if found is not None else "",
                "reason": found.reason if found is not None else "",
                "onset": onset,
                "length": length,
                "ran": ran,
                "after": after,
                "asha_full": asha_end == length - 1,
                "ran_asha": ran_asha,
                "after_asha": after_asha,
            }
        )
    return figures(records), records


def figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and shares over ``records``."""
    diverged = [r for r in records if r["label"] == "diverged"]
    healthy = [r for r in records if r["label"] == "healthy"]
    stopped = [r for r in records if r["stop"] is not None]
    false = [r for r in stopped if r["label"] == "healthy"]
    delays = [r["stop"] - r["onset"] for r in diverged if r["stop"] is not None and r["onset"] is not None]
    steps = sum(r["ran"] for r in records)
    steps_asha = sum(r["ran_asha"] for r in records)
    return {
        "trials": len(records),
        "diverged": len(diverged),
        "no_onset": sum(r["onset"] is None for r in diverged),
        "stops": len(stopped),
        "heuristic": sum(r["signal"] in HEURISTIC for r in stopped),
        "false": len(false),
        "false_share": len(false) / len(healthy) if healthy else 0.0,
        "false_top": sum(r["top"] for r in false),
        "missed": sum(r["stop"] is None for r in diverged),
        "steps": steps,
        "after_onset": sum(r["after"] for r in diverged) / steps if steps else 0.0,
        "median_delay": statistics.median(delays) if delays else math.nan,
        "false_kept": sum(r["asha_full"] for r in false),
        "after_asha": sum(r["after_asha"] for r in diverged) / steps_asha if steps_asha else 0.0,
    }


COLUMNS = [
    ("loop", 16, "{}"),
    ("trials", 6, "{}"),
    ("diverged", 8, "{}"),
    ("no_onset", 8, "{}"),
    ("stops", 5, "{}"),
    ("heuristic", 9, "{}"),
    ("false", 5, "{}"),
    ("false_share", 13, "{:.1%}"),
    ("false_top", 11, "{}"),
    ("missed", 6, "{}"),
    ("steps", 6, "{}"),
    ("after_onset", 11, "{:.2%}"),
    ("median_delay", 12, "{:.1f}"),
    ("false_kept", 10, "{}"),
    ("after_asha", 13, "{:.2%}"),
]
HEADERS = {
    "no_onset": "no onset",
    "heuristic": "heur",
    "false_share": "false/healthy",
    "false_top": "false top-q",
    "after_onset": "after onset",
    "median_delay": "median delay",
    "false_kept": "false kept",
    "after_asha": "after onset+A",
}


def table(
    title: str,
    loops: Iterable[str],
    corpus: dict[str, list[dict[str, Any]]],
    make: Detector,
    replayer: Replayer = replay,
) -> list[str]:
    """Lines of one table: a row per loop and one for all of them; also the per-trial records."""
    lines = [title, " ".join(HEADERS.get(name, name).rjust(width) for name, width, _ in COLUMNS)]
    everything: list[dict[str, Any]] = []
    for loop in loops:
        if loop not in corpus:
            lines.append(f"{loop:>16} (no corpus file)")
            continue
        row, records = judge(corpus[loop], make, replayer)
        everything += records
        lines.append(_row({"loop": loop, **row}))
    lines.append(_row({"loop": "all", **figures(everything)}))
    table.records = everything  # type: ignore[attr-defined]
    return lines


def _row(row: dict[str, Any]) -> str:
    return " ".join(fmt.format(row[name]).rjust(width) for name, width, fmt in COLUMNS)


def listing(records: list[dict[str, Any]]) -> list[str]:
    """One line per trial that was stopped, or diverged and was missed."""
    lines = []
    for r in records:
        if r["stop"] is None and r["label"] == "healthy":
            continue
        what = "MISSED" if r["stop"] is None else ("FALSE" if r["label"] == "healthy" else "stop")
        lines.append(
            f"  {what:6} {r['loop']:>16} #{r['trial']:<3} lr {r['lr']:.3g} {r['precision']:>4} {r['label']:8} "
            f"rank {r['rank']:>2}/{r['n']} onset {r['onset']} stop {r['stop']} of {r['length']} "
            f"{'(ASHA keeps it) ' if r['asha_full'] else ''}{r['signal']}: {r['reason']}"
        )
    return lines


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, float]]:
    """``signal.key=value`` pairs as ``{signal: {key: value}}``; ``signal=off`` switches it off (``=on``: as is)."""
    found: dict[str, dict[str, float]] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        signal, _, key = name.partition(".")
        if value == "off":
            found[signal] = {}
            continue
        if value == "on":
            continue
        found.setdefault(signal, {})[key] = float(value)
    return found


def new_detector(overrides: dict[str, dict[str, float]]) -> Detector:
    """A factory for the current detector with these overrides on its defaults."""
    from sweeps.divergence import DEFAULTS, DivergenceDetector, DivergenceSettings

    signals = {k: dict(v) for k, v in DEFAULTS.items()}
    for signal, values in overrides.items():
        if not values:
            signals.pop(signal, None)
        else:
            signals[signal].update(values)
    return lambda: DivergenceDetector(DivergenceSettings(signals={k: dict(v) for k, v in signals.items()}))


def old_detector() -> Detector:
    """A factory for the detector as it was before issue 13, at its defaults."""
    from benchmarks.divergence_v1 import DivergenceDetector

    return DivergenceDetector


def load(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every loop's trials in ``folder``."""
    return {path.stem: read(path) for path in sorted(folder.glob("*.parquet"))}


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--split", choices=["tuned", "held-out", "fresh", "fresh-2", "fresh-3", "all"], default="tuned")
    parser.add_argument("--old", action="store_true", help="also the detector before issue 13, at its defaults")
    parser.add_argument("--set", action="append", default=[], metavar="SIGNAL.KEY=VALUE")
    parser.add_argument("--list", action="store_true", help="every stopped or missed trial")
    parser.add_argument(
        "--gate-on-validation",
        action="store_true",
        help="what-if: a heuristic signal stops only at an epoch end whose metric is no better than untrained",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    corpus = load(args.corpus)
    splits = {
        "tuned": [("TUNED", TUNED)],
        "held-out": [("HELD-OUT", HELD_OUT)],
        "fresh": [("FRESH", FRESH)],
        "fresh-2": [("FRESH-2", FRESH_2)],
        "fresh-3": [("FRESH-3", FRESH_3)],
    }
    chosen = [row for rows in splits.values() for row in rows] if args.split == "all" else splits[args.split]
    chosen = [(split, tuple(n for n in loops if n in corpus)) for split, loops in chosen]  # traces not made yet: none
    detectors = [("new", new_detector(parse_overrides(args.set)))]
    if args.old:
        detectors = [("old", old_detector()), *detectors]
    for split, loops in chosen:
        for name, make in detectors:
            what = "current detector" if name == "new" else "detector before issue 13"
            if name == "new" and args.set:
                what += " with " + ", ".join(args.set)
            replayer = gated_replay if args.gate_on_validation and name == "new" else replay
            if replayer is gated_replay:
                what += ", heuristic signals gated on validation"
            print("\n".join(table(f"{split} loops, {what}:", loops, corpus, make, replayer)))
            if args.list:
                print("\n".join(listing(table.records)))  # type: ignore[attr-defined]
            print()
    print(f"replayed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
