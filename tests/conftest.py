from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import project_env


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
