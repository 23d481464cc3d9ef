"""The trial-recording benchmark runs end to end and still times the engine's parts (their names moved before)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_trial_recording_prints_every_mode_and_the_parts_it_times(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.trial_recording", "--repeats", "1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    for mode in ("bare", "loop", "loop+mlflow"):
        assert mode in rows, out
    # every wrapped part ran: a renamed method would leave its row out (or fail the run)
    for part in ("sender: log metrics", "each step: detector", "each report: checkpoint", "each epoch: the epoch"):
        assert part in out, out
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # its store and artifacts in its own temp folder
