"""A real `mlflow server` on loopback goes away for 30 s mid-sweep: no metric step is lost."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from sweeps.engine.runner import SweepResult, run_sweep
from sweeps.spec.sweep_spec import load_spec
from tests.helpers import trial_runs, write_spec
from tests.mlflow_server import Server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]

OUTAGE_S = 30


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    running.start()
    yield running
    running.stop()


@pytest.mark.slow
def test_server_down_for_30s_mid_sweep_loses_no_metric_step(server: Server, tmp_path: Path) -> None:
    spec_data = {
        "name": "remote",
        "trainer": "vae",
        "metric": "val_mse",
        "budget": {"trials": 3, "epochs": 4, "concurrency": 2},
        "asha": False,
        "record": {"step_every_s": 0},  # every step recorded: none may be lost
        "fixed": {"image_size": 16, "train_images": 384, "val_images": 32, "width": 4, "batch_size": 8},
        "params": {"lr": {"low": 1e-4, "high": 1e-3, "log": True}},
    }
    spec = load_spec(write_spec(tmp_path, spec_data))
    outcome: dict[str, SweepResult] = {}

    def sweep() -> None:
        outcome["result"] = run_sweep(
            spec, root=tmp_path / "runs", name="remote", tracking_uri=server.uri, stream=io.StringIO()
        )

    thread = threading.Thread(target=sweep)
    thread.start()
    client = mlflow.MlflowClient(server.uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until trials are logging step metrics
        runs = trial_runs(client, "1")
        if runs and any(client.get_metric_history(r.info.run_id, "loss") for r in runs):
            break
        time.sleep(0.5)
    server.stop()
    time.sleep(OUTAGE_S)
    server.start()
    thread.join(timeout=900)
    assert not thread.is_alive()

    result = outcome["result"]
    assert result.state.counts == {"completed": 3}
    runs = trial_runs(client, "1")
    assert len(runs) == 3
    steps_per_epoch = 384 // 8
    for run in runs:
        assert run.data.tags["sweep.status"] == "completed"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        assert steps == list(range(1, 4 * steps_per_epoch + 1)), f"{run.info.run_name}: {len(steps)} steps"
        epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_mse"))
        assert epochs == [1, 2, 3, 4]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "environment.json", "images", "curves"} <= artifacts
