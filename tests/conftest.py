from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import LOOPBACK_RAY, project_env

# Every Ray the tests start binds and connects on loopback only: this process's, and the CLI's in
# subprocesses, which inherit the variable. Without it Ray takes this machine's outward address
# (eth0) as the node's, even for a local Ray. Ray reads it when it is imported, so it is set
# before anything imports ray. It also makes `ray start` refuse worker nodes: the namespace
# scripts run `ray up` with the RAY_* variables removed (scripts/onprem_e2e.client_environment).
os.environ.update(LOOPBACK_RAY)

SLOW_SWITCH = "SWEEPS_SLOW"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked `slow` (each over about 40 s) unless SWEEPS_SLOW=1; `.ci/run` sets it."""
    if os.environ.get(SLOW_SWITCH) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow (over about 40 s): set {SLOW_SWITCH}=1 to run it; .ci/run does")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real local Ray with 2 CPUs for every integration test."""
    import ray

    from sweeps.engine.cluster import start_ray

    # Trial processes import test trainers (tests.toy_trainer) by path.
    os.environ["PYTHONPATH"] = project_env()["PYTHONPATH"]
    start_ray(num_cpus=2, address="local")  # never attach to a cluster another process started here
    yield
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temp dir so the default ``sqlite:///mlflow.db`` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
