"""A node dies under a running trial; trial storage elsewhere than the sweep folder; bad storage.

The cluster test runs ``tests/cluster_sweep.py`` in its own process: a local Ray cluster of a head
with no CPUs and three one-CPU worker nodes (a raylet each), with trial storage at a ``file://``
URI outside the sweep folder, and the node under a trial in its third epoch killed. What the
sweep recorded is then read from MLflow, Optuna and Ray's own experiment state.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
from optuna.trial import TrialState

from sweeps.cli import main
from sweeps.store.study import load_study
from sweeps.store.sweep_dir import SweepDir
from tests.cluster_sweep import EPOCHS
from tests.helpers import ROOT, minimal_toy_spec, project_env, trial_runs, write_spec


@pytest.mark.integration
@pytest.mark.slow
def test_a_trial_whose_node_dies_restarts_from_its_checkpoint_on_another_node(tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # stands for s3://...: reached by URI, not the sweep folder
    ray_tmp = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))  # Ray's socket paths must stay short
    env = project_env(RAY_TMPDIR=str(ray_tmp))  # this cluster's address file is its own: nothing else attaches to it
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.cluster_sweep", str(tmp_path), shared.as_uri()],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    outcome = json.loads((tmp_path / "outcome.json").read_text())

    # The trial restarted on another node and went on from its checkpoint, not from epoch 1.
    killed = outcome["killed"]
    lines = [line.split() for line in outcome["traces"][killed["trace"]]]
    epochs, nodes = [int(e) for e, *_ in lines], [n for _, n, *_ in lines]
    first_after = next(i for i, node in enumerate(nodes) if node != killed["node_id"])
    # On the killed node: epochs 1.. up to the one it was in when the node went; removing a node takes a
    # while, so under load the trial can begin one more epoch there before it dies (CI saw 1-4 for 3).
    last_on_killed = epochs[first_after - 1]
    assert epochs[:first_after] == list(range(1, last_on_killed + 1)) and last_on_killed >= killed["epoch"]
    resumed = epochs[first_after]
    assert 1 < resumed <= last_on_killed  # the epoch after the last checkpoint Ray had
    assert epochs[first_after:] == list(range(resumed, EPOCHS + 1))
    assert set(nodes[first_after:]) == {nodes[first_after]} and nodes[first_after] != killed["node_id"]

    # Ray: every trial ended without error, one failure (the node) in all.
    assert {t["status"] for t in outcome["ray"].values()} == {"TERMINATED"}
    assert sorted(t["failures"] for t in outcome["ray"].values()) == [0, 0, 1]
    restarted = next(tid for tid, t in outcome["ray"].items() if t["failures"])
    assert outcome["state"][restarted]["restarts"] == 1
    assert {r["status"] for r in outcome["state"].values()} == {"completed"}

    # Ray's records and checkpoints are in the trial storage, none in the sweep folder.
    sweep = Path(outcome["sweep"])
    assert outcome["ray_experiment"] == f"{shared.as_uri()}/nodes"
    assert list((shared / "nodes").glob(f"trial_{restarted}/checkpoint_*"))
    assert not (sweep / "ray").exists() and (sweep / "optuna-journal.log").is_file()

    # MLflow: one run per trial, the restarted one continued: each epoch and step logged once.
    client = mlflow.MlflowClient(outcome["tracking_uri"])
    experiment = client.get_experiment_by_name("nodes")
    runs = trial_runs(client, experiment.experiment_id)
    assert len(runs) == 3
    for run in runs:
        assert run.data.tags["sweep.status"] == "completed" and run.info.status == "FINISHED"
        epochs_logged = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        steps_logged = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(epochs_logged) == list(range(1, EPOCHS + 1)), epochs_logged
        assert sorted(steps_logged) == list(range(1, 5 * EPOCHS + 1)), collections.Counter(steps_logged)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "curves", "config.yaml"} <= artifacts  # checkpoints read back from the URI
    again = next(r for r in runs if r.info.run_id == outcome["state"][restarted]["run_id"])
    assert again.data.tags["sweep.restarts"] == "1" and "Actor" in again.data.tags["sweep.restart_reason"]
    assert "sweep.reason" not in again.data.tags

    # Optuna: every trial once, complete, each epoch's value once; the step count went on.
    study = load_study(SweepDir(sweep.parent, "nodes"))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
        assert trial.user_attrs["steps"] == 5 * EPOCHS


def test_storage_nobody_can_write_is_one_line_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, minimal_toy_spec("bad-storage", metric="val_loss"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    runs, db = tmp_path / "runs", tmp_path / "mlflow.db"
    for storage, fragment in [
        (f"{blocker}/sweeps", "cannot write there"),
        (f"{blocker.as_uri()}/sweeps", "cannot write there"),
        ("s4://bucket/sweeps", "unknown scheme 's4://'"),
        ("file://relative/sweeps", "needs an absolute path"),
    ]:
        args = ["run", str(spec), "--set", f"trial_storage={storage}", "--storage", str(runs)]
        assert main([*args, "--tracking-uri", f"sqlite:///{db}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and fragment in err, err
    assert not runs.exists() and not db.exists()  # no sweep folder, no MLflow run
