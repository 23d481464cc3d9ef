"""A real `mlflow server` on loopback goes away for 30 s mid-sweep: no metric step is lost."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from sweeps.runner import SweepResult, run_sweep
from sweeps.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]

OUTAGE_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``mlflow server`` with a SQLite backend and proxied artifacts, on 127.0.0.1 only."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination", str(folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self.log = (folder / "server.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    running.start()
    yield running
    running.stop()


def test_server_down_for_30s_mid_sweep_loses_no_metric_step(server: Server, tmp_path: Path) -> None:
    spec_data = {
        "name": "remote",
        "trainer": "vae",
        "metric": "val_mse",
        "budget": {"trials": 3, "epochs": 4, "concurrency": 2},
        "asha": False,
        "fixed": {"image_size": 16, "train_images": 384, "val_images": 32, "width": 4, "batch_size": 8},
        "params": {"lr": {"low": 1e-4, "high": 1e-3, "log": True}},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_data))
    spec = load_spec(tmp_path / "spec.yaml")
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
        runs = client.search_runs(["1"], "tags.`sweep.role` = 'trial'")
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
    runs = client.search_runs(["1"], "tags.`sweep.role` = 'trial'")
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
