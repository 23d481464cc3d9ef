"""Time to ours' first trials: start ``ours`` on a search-quality task, stop it after a few seconds.

Each run is one ``benchmarks.sq_systems`` process of ``ours`` (as ``benchmarks/search_quality.py``
runs it: its own Ray, its own temp folder, killed at the deadline). Printed per run: seconds from
the process start to the first validation of its first two trials (from the trace files), and how
many worker processes its local Ray started and how many of those Ray ended as idle (from Ray's
logs: a worker that had imported the trial's modules and was ended before a trial took it is
import time spent twice). Then the median first validation over the runs. Runs follow one another
on one machine; run two commits from two worktrees, alternating, to compare them.

Run: .venv/bin/python -m benchmarks.first_trial [--task vae] [--runs 3] [--budget-s 40] [--first-seed 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.search_quality import TASKS, run_system


def main() -> None:
    """Print one line per run and the median."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), default="vae")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=40.0, help="each run is killed after this many seconds")
    parser.add_argument("--first-seed", type=int, default=21, help="the spec seed of the first run (then +1 a run)")
    args = parser.parse_args()
    firsts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="first-trial-") as folder:
        for i in range(args.runs):
            seed = args.first_seed + i
            run = run_system("ours", TASKS[args.task], seed, args.budget_s, Path(folder) / f"run{i}", sys.executable)
            times = run["firsts"][:2]  # read_events sorts them
            firsts += times[:1]
            shown = ", ".join(f"{t:.1f} s" for t in times) or f"none within {args.budget_s:.0f} s"
            print(
                f"run {i + 1} (seed {seed}): first validations {shown}; Ray worker processes started "
                f"{run['ray_workers_started']}, ended as idle {run['ray_workers_ended_idle']}",
                flush=True,
            )
    median = f"{statistics.median(firsts):.1f} s" if firsts else "none"
    print(f"{args.task}: median first validation {median} over {len(firsts)} of {args.runs} runs")


if __name__ == "__main__":
    main()
