"""``benchmarks/replay_mlflow.py``: a sweep's recorded steps, read back from a real MLflow store, replayed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from benchmarks.divergence_replay import new_detector
from benchmarks.replay_mlflow import first_stop, steps_of, trial_runs


def _store(tmp_path: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("vq", artifact_location=(tmp_path / "art").as_uri())
    for number, late in ((0, False), (1, True)):
        tags = {"sweep.role": "trial", "sweep.name": "s", "sweep.trial": str(number)}
        run = client.create_run(experiment, tags=tags).info.run_id
        for step in range(1, 121):
            # trial 0: one output for every input from its first steps; trial 1: from step 41 to 95, then not
            zero = step >= 3 if not late else 41 <= step <= 95
            client.log_metric(run, "loss", 0.5, step=step)
            client.log_metric(run, "output_spread", 0.0 if zero else 0.1, step=step)
            client.log_metric(run, "output_std", 0.2, step=step)
        client.log_metric(run, "val_mse", 0.0556 if not late else 0.03, step=3)
    return uri, client


def test_the_replay_reads_each_trials_steps_and_finds_where_each_detector_stops(tmp_path: Path) -> None:
    uri, client = _store(tmp_path)
    early, late = trial_runs(client, ["vq"])
    steps = steps_of(client, early, "val_mse")
    assert [s for s, _ in steps] == list(range(1, 121)) and set(steps[0][1]) == {"loss", "output_spread", "output_std"}
    assert first_stop(steps, new_detector({})) == "collapse@22"  # 20 steps from step 3
    late_steps = steps_of(client, late, "val_mse")
    assert first_stop(late_steps, new_detector({})) == "-"  # 55 steps after 40 of learning: under 1.5 x 40 = 60
    assert first_stop(late_steps, new_detector({"collapse": {"relative": 0.0}})) == "collapse@60"

    printed = subprocess.run(
        [sys.executable, "-m", "benchmarks.replay_mlflow", "--tracking-uri", uri, "--baseline", "0.0556",
         "--variant", "collapse.relative=0"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "defaults: 0 stop(s) of trials that learned, 1 of trials that did not" in printed
    assert "collapse.relative=0: 1 stop(s) of trials that learned, 1 of trials that did not" in printed
