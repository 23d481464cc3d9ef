"""A real ``mlflow server`` process on loopback, for tests."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port


def wait_healthy(server: str, seconds: float, process: subprocess.Popen[Any] | None = None) -> None:
    """Wait until the MLflow server at ``server`` answers ``/health``; fail after ``seconds``, or at
    once if ``process`` (what starts it) has ended."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{server}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, process.args))} ended before its server answered")
        time.sleep(0.5)
    raise RuntimeError(f"the MLflow server at {server} did not answer /health within {seconds:g} s")


class Server:
    """``mlflow server`` with a SQLite backend and proxied artifacts, on 127.0.0.1 only."""

    def __init__(self, folder: Path, backend: str = "") -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", backend or f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination", str(folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self.log = (folder / "server.log").open("ab")
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=self.log)
        wait_healthy(self.uri, 90)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
