"""Replay the step metrics a sweep recorded in MLflow through the detector, under other settings.

An observe-mode sweep (``divergence.mode: observe``, ``record.step_every_s: 0``) records every
step's diagnostics on each trial's run and trains every trial to its end; this script feeds those
steps, in order, through a fresh ``DivergenceDetector`` per trial, once at the defaults and once
per ``--variant``, and prints where each would have stopped, beside how the trial ended::

    python -m benchmarks.replay_mlflow --tracking-uri sqlite:///mlflow.db --experiment vqvae \\
        --baseline 0.0556 --variant collapse.relative=0

``--baseline``: the metric of the trivial model (the mean image's MSE, say); a trial whose final
metric beats it by at least 1% *learned*, the others did not (a collapsed model scores the
baseline, give or take a fraction of a percent). A flag on a trial that learned is a false stop.
Steps the sweep thinned out (``record.step_every_s`` above 0) are missing: the replay's streaks
are then counted over the recorded steps only.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.divergence_replay import new_detector, parse_overrides

STEP_KEYS = ("loss", "output_")
"""Step metrics by prefix: the loss and its terms, the output statistics, and every ``<net>/...`` key."""
LEARNED_MARGIN = 0.01


def trial_runs(client: Any, experiments: list[str]) -> list[Any]:
    """Every trial run (``sweep.role=trial``) of the experiments, by sweep and Optuna number."""
    ids = [e.experiment_id for e in client.search_experiments() if not experiments or e.name in experiments]
    runs = client.search_runs(ids, "tags.`sweep.role` = 'trial'", max_results=5000)
    return sorted(runs, key=lambda r: (r.data.tags.get("sweep.name", ""), int(r.data.tags.get("sweep.trial", 0))))


def steps_of(client: Any, run: Any, metric: str) -> list[tuple[int, dict[str, float]]]:
    """The run's recorded step metrics, merged by step, in step order."""
    by_step: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        if key == metric or not (key.startswith(STEP_KEYS) or "/" in key):
            continue
        for point in client.get_metric_history(run.info.run_id, key):
            by_step.setdefault(int(point.step), {})[key] = float(point.value)
    return sorted(by_step.items())


def first_stop(steps: list[tuple[int, dict[str, float]]], make: Any) -> str:
    """``signal@step`` of the detector's first stop over these steps; ``-`` for none."""
    detector = make()
    for step, metrics in steps:
        found = detector.observe(step, metrics)
        if found is not None:
            return f"{found.signal}@{found.step}"
    return "-"


def main() -> None:
    """Print one row per trial: its end, the tool's own flag, and each replayed detector's stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", action="append", default=[], help="an MLflow experiment (default: all)")
    parser.add_argument("--metric", default="val_mse")
    parser.add_argument("--mode", choices=["min", "max"], default="min")
    parser.add_argument("--baseline", type=float, default=None, help="the trivial model's metric")
    parser.add_argument("--variant", action="append", default=[], metavar="SIGNAL.KEY=VALUE[,SIGNAL.KEY=VALUE]")
    args = parser.parse_args()

    from mlflow import MlflowClient

    client = MlflowClient(args.tracking_uri)
    detectors = {"defaults": new_detector({})}
    for variant in args.variant:
        detectors[variant] = new_detector(parse_overrides(variant.split(",")))
    header = ["sweep", "trial", args.metric, "learned", "flagged", *detectors]
    rows = [header]
    counts = {name: [0, 0] for name in detectors}  # stops of trials that learned, of trials that did not
    for run in trial_runs(client, args.experiment):
        value = run.data.metrics.get(args.metric)
        learned = "?"
        if args.baseline is not None and value is not None:
            better = args.baseline - value if args.mode == "min" else value - args.baseline
            learned = "yes" if better >= LEARNED_MARGIN * abs(args.baseline) else "no"
        steps = steps_of(client, run, args.metric)
        tags = run.data.tags
        flag = (
            f"{tags['sweep.would_stop.signal']}@{tags.get('sweep.would_stop.step')}"
            if "sweep.would_stop.signal" in tags
            else "-"
        )
        stops = {name: first_stop(steps, make) for name, make in detectors.items()}
        for name, stop in stops.items():
            if stop != "-" and learned != "?":
                counts[name][0 if learned == "yes" else 1] += 1
        shown = f"{value:.6g}" if value is not None else "-"
        rows.append(
            [
                tags.get("sweep.name", ""),
                f"t{int(tags.get('sweep.trial', 0)):03d}",
                shown,
                learned,
                flag,
                *stops.values(),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if args.baseline is not None:
        print()
        for name, (false, right) in counts.items():
            print(f"{name}: {false} stop(s) of trials that learned, {right} of trials that did not")


if __name__ == "__main__":
    main()
