"""What the end-of-sweep report costs: a 12-trial toy sweep, timed around the report.

The sweep: the toy trainer with sample images (``tests.toy_trainer:ImageToyTrainer``), 4 epochs,
ASHA (grace 2, reduction 2: a rung at epoch 2), about one trial in six diverging (NaN loss in
epoch 2), 2 at once, on local Ray; MLflow on SQLite in a temp folder. Timed in the driver, as the sweep runs them:

- ``report``: ``write_report`` (tables, importances, plots, images, ``report.html``);
- ``finish``: all of ``_finish_parent`` (the report, uploading it to the parent run, tags).

Then ``write_report`` again ``--again`` times on the same finished sweep (everything imported and
warm): the median. Run: .venv/bin/python -m benchmarks.report_time [--repeat 1] [--again 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SPEC: dict[str, Any] = {
    "name": "report-time",
    "trainer": "tests.toy_trainer:ImageToyTrainer",
    "metric": {"name": "val_loss", "mode": "min"},
    "seed": 0,
    "budget": {"trials": 12, "epochs": 4, "concurrency": 2},
    "asha": {"grace_period": 2, "reduction_factor": 2},
    "search": {"sampler": "random"},
    "params": {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "width": {"type": "int", "low": 1, "high": 8},
        "mode": {"choices": ["a", "b", "c"]},
        "behavior": {"choices": ["ok", "diverge"], "when": {"mode": "c"}},
    },
}


def timed(target: Any, name: str, into: dict[str, list[float]]) -> Any:
    """``target`` wrapped so that each call's wall seconds go to ``into[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return target(*args, **kwargs)
        finally:
            into.setdefault(name, []).append(time.perf_counter() - started)

    return wrapper


def one_sweep(folder: Path, again: int) -> dict[str, list[float]]:
    """Run the sweep in ``folder``; the report's timings."""
    import os

    from sweeps.engine import runner
    from sweeps.spec.sweep_spec import load_spec

    os.chdir(folder)
    times: dict[str, list[float]] = {}
    calls: list[tuple[Any, ...]] = []
    write_report, finish_parent = runner.write_report, runner._finish_parent

    def remember(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return write_report(*args, **kwargs)

    runner.write_report = timed(remember, "report", times)  # type: ignore[assignment]
    runner._finish_parent = timed(finish_parent, "finish", times)  # type: ignore[assignment]
    try:
        (folder / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
        result = runner.run_sweep(load_spec(folder / "spec.yaml"), root=folder / "runs", stream=io.StringIO())
    finally:
        runner.write_report, runner._finish_parent = write_report, finish_parent  # type: ignore[assignment]
    print(f"  trials: {dict(sorted(result.state.counts.items()))}")
    for _ in range(again):
        started = time.perf_counter()
        write_report(*calls[0])
        times.setdefault("report again", []).append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="sweeps to run")
    parser.add_argument("--again", type=int, default=3, help="write_report calls after each sweep")
    args = parser.parse_args()
    from sweeps.engine.cluster import start_ray

    start_ray(num_cpus=2, address="local")
    every: dict[str, list[float]] = {}
    for repeat in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="report-time-") as folder:
            print(f"sweep {repeat + 1}/{args.repeat}")
            for name, values in one_sweep(Path(folder), args.again).items():
                every.setdefault(name, []).extend(values)
    print("| step | median s | runs |")
    print("|---|---|---|")
    for name in ("report", "finish", "report again"):
        values = every.get(name, [])
        if values:
            print(f"| {name} | {statistics.median(values):.3f} | {len(values)} |")


if __name__ == "__main__":
    main()
