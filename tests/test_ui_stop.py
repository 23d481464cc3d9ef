"""``sweeps ui`` stopped by a signal leaves no MLflow server behind (Linux: reads /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.helpers import ROOT, descendants, free_port, parents
from tests.mlflow_server import wait_healthy

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def alive(pids: set[int]) -> set[int]:
    return pids & set(parents())


@pytest.mark.parametrize(
    ("sig", "twice"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],  # the same handler either way
    ids=["SIGTERM", "SIGINT-twice"],
)
def test_a_signal_to_sweeps_ui_ends_the_mlflow_server_it_started(
    tmp_path: Path, sig: signal.Signals, twice: bool
) -> None:
    """Twice: an impatient second Ctrl-C while the server ends kills it at once, with no traceback."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("ui-stop")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sweeps", "ui", "--tracking-uri", uri, "--port", str(port)]
    ui = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started: set[int] = set()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 180, ui)
        started = descendants(ui.pid)
        assert started, "sweeps ui started no process"
        # once the server answers, a line says so (a user's links were refused for a minute before)
        assert ui.stdout is not None
        printed = []
        for line in ui.stdout:  # the links, then that line
            printed.append(line)
            if line.startswith("ready:"):
                break
        assert printed[-1] == f"ready:   the MLflow UI answers at http://127.0.0.1:{port} (Ctrl-C stops it)\n", printed
        ui.send_signal(sig)  # to sweeps ui alone, as `kill PID` sends it
        if twice:
            time.sleep(0.3)
            ui.send_signal(sig)
        _, err = ui.communicate(timeout=60)
        assert ui.returncode == 0 and "Traceback" not in err, err
        deadline = time.monotonic() + 30
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive(started), f"left running after {sig.name}: {sorted(alive(started))}"
    finally:
        for pid in alive(started | descendants(ui.pid) | {ui.pid}):  # what a failure left (orphans included)
            os.kill(pid, signal.SIGKILL)


def test_a_server_that_ends_on_its_own_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its port taken between the check and its start, ``mlflow ui`` printed an error and ended with status 0.

    ``sweeps ui`` then ended with status 0 too, its links printed above for a server that never ran.
    """
    import socket

    from sweeps.cli import _serve

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)]
        assert _serve([*command, "--host", "127.0.0.1"]) != 0
    assert "error: the MLflow UI server ended (exit status 0)" in capsys.readouterr().err


def test_sweeps_ui_on_a_tracking_server_links_to_the_server_and_starts_nothing(tmp_path: Path) -> None:
    """A team's ``sweeps ui`` with a tracking server printed links to a port of its own, then crashed:
    ``mlflow ui`` cannot open a server's store (its model registry refused the http URI)."""
    from tests.mlflow_server import Server

    server = Server(tmp_path)
    server.start()
    try:
        mlflow.MlflowClient(server.uri).create_experiment(
            "team", tags={"mlflow.experimentKind": "custom_model_development"}
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "sweeps", "ui", "--tracking-uri", server.uri]
        ui = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert ui.returncode == 0, ui.stdout + ui.stderr
    assert f"MLflow UI for {server.uri}: {server.uri}\n" in ui.stdout
    assert f"  team: {server.uri}/#/experiments/1?workflowType=machine_learning" in ui.stdout
    assert "serves these pages itself: nothing started" in ui.stdout and "Traceback" not in ui.stderr
