"""Kill the node under a running trial, several times over: what is lost, repeated, restarted.

Each round runs ``tests/cluster_sweep.py`` in its own process: a local Ray cluster (a head with no
CPUs, three one-CPU worker nodes), a sweep of three toy trials of five 1-second epochs with trial
storage at a ``file://`` URI, and the node under the first trial to reach its third epoch removed.
Prints one row per round, counted from MLflow, Optuna and Ray's experiment state.

Run: .venv/bin/python -m benchmarks.node_failure [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = (
    "planned", "mlflow_runs", "optuna_trials", "lost", "duplicated_runs", "repeated_values", "restarted",
    "killed_in_epoch", "resumed_at_epoch", "recovery_s", "cluster_s", "total_s",
)  # fmt: skip


def one_round(folder: Path) -> dict[str, object]:
    """Run the scenario once in ``folder`` and measure it."""
    from tests.cluster_sweep import measure

    ray_tmp = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmp),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    try:
        command = [sys.executable, "-m", "tests.cluster_sweep", str(folder), (folder / "shared").as_uri()]
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return measure(folder)


def main() -> None:
    """Print a table row per round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| round | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as folder:
            row = one_round(Path(folder))
        print(f"| {number} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    main()
