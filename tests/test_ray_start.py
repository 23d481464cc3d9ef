"""A local Ray started in the background while the engine is imported (``sweeps.engine.cluster.start_ray_soon``).

Each case runs in a process of its own (its own new local Ray, 1 CPU), never the test session's Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import project_env

pytestmark = pytest.mark.integration

STARTED_SOON = """
import atexit, os, sys, time
import ray
from sweeps.engine.cluster import start_ray, start_ray_soon

start_ray_soon(num_cpus=1, address="local")
import ray.tune  # the engine's imports, meanwhile
start_ray()
from ray._private import ray_constants
from ray._private.worker import _global_node
gcs = _global_node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process.pid
time.sleep(3)  # the thread that started Ray has long finished starting it

@ray.remote
def answer():
    return os.environ.get("PL_DISABLE_FORK")

if sys.argv[1:] == ["wait"]:  # before the line the test waits for: its SIGTERM may come right after
    atexit.register(print, "exit handlers ran", flush=True)  # as Ray's own shutdown does at exit
print("gcs", gcs, "answer", ray.get(answer.remote(), timeout=60), flush=True)
if sys.argv[1:] == ["wait"]:
    time.sleep(300)  # until the test's SIGTERM
"""


def started_soon(*args: str) -> subprocess.Popen[str]:
    """A process that starts a local Ray with ``start_ray_soon`` and prints its GCS's pid once a task ran."""
    env = project_env()
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-c", STARTED_SOON, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_script(script: str) -> str:
    """Run ``script`` in a Python process of its own (no ``$RAY_ADDRESS``); its output, once it exited 0."""
    env = project_env()
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done.stdout


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_ray_started_in_the_background_outlives_the_start_and_runs_tasks() -> None:
    """Ray's GCS and raylet die with the *thread* that started them (``PR_SET_PDEATHSIG``): started from
    a thread that then ended, the driver lost its GCS ("Failed to connect to GCS within 60 seconds").
    Tune's own env var reaches the workers, and Ray's warning about its SIGTERM handler is left out."""
    proc = started_soon()
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    assert "answer 1" in out, out
    assert "SIGTERM handler is not set" not in err, err[-2000:]


def test_sigterm_ends_a_ray_started_in_the_background() -> None:
    """``ray.init`` sets its SIGTERM handler (exit, so that Ray's atexit shutdown ends its processes) only
    in the main thread; ``start_ray_soon`` sets it instead: a driver sent SIGTERM runs its exit handlers
    (the engine's ``finally`` blocks too) and leaves no GCS behind."""
    proc = started_soon("wait")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "answer 1" in line, line + (proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
        gcs = int(line.split()[1])
        assert alive(gcs)
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        assert "exit handlers ran" in rest, f"exit code {proc.returncode}: {rest} {err[-2000:]}"
        deadline = time.time() + 30
        while alive(gcs) and time.time() < deadline:
            time.sleep(0.5)
        assert not alive(gcs), "the GCS outlived its driver's SIGTERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


SHUT_DOWN = """
import time, ray
from ray._private import worker
from sweeps.engine.cluster import start_ray, start_ray_soon

start_ray_soon(num_cpus=1, address="local")
start_ray()
started = {kind: [info.process for info in infos] for kind, infos in worker._global_node.all_processes.items()}
ray.shutdown()
deadline = time.time() + 30
while any(p.poll() is None for ps in started.values() for p in ps) and time.time() < deadline:
    time.sleep(0.2)
for kind, processes in sorted(started.items()):
    print(kind, *[p.poll() for p in processes])
"""


def test_ray_shut_down_ends_its_processes_as_a_main_thread_start_does() -> None:
    """``ray.shutdown`` disconnects, then sends SIGTERM without waiting: the starting thread must not end at
    the disconnect, or ``PR_SET_PDEATHSIG`` kills the dashboard and log monitor mid-exit (return code -9;
    15 and -15 when Ray was started from the main thread)."""
    codes = dict(line.split(" ", 1) for line in run_script(SHUT_DOWN).splitlines())
    assert codes["dashboard"] != "-9" and codes["log_monitor"] != "-9", codes


def test_a_sweep_started_from_a_thread_of_its_own_starts_ray_in_the_background_too() -> None:
    """Python sets signal handlers from the main thread only: a caller in a thread of its own (a
    notebook's or a web app's) gets Ray started, with no SIGTERM handler set, as ``ray.init`` does there."""
    script = (
        "import threading, ray\n"
        "from sweeps.engine.cluster import start_ray, start_ray_soon\n"
        "def sweep():\n"
        "    start_ray_soon(num_cpus=1, address='local')\n"
        "    start_ray()\n"
        "    print('answer', ray.get(ray.remote(lambda: 1).remote(), timeout=60), flush=True)\n"
        "thread = threading.Thread(target=sweep)\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    assert "answer 1" in run_script(script)


def test_a_bad_address_given_to_the_background_start_is_raised_by_start_ray() -> None:
    """The background start's error (one line) reaches the caller at its next ``start_ray``."""
    script = (
        "from sweeps.engine.cluster import RayAddressError, start_ray, start_ray_soon\n"
        "start_ray_soon(address='127.0.0.1:1')\n"
        "try:\n    start_ray()\nexcept RayAddressError as exc:\n    print('refused:', exc)\n"
    )
    assert "refused: no Ray cluster answers at 127.0.0.1:1" in run_script(script)


def test_the_sweep_entry_imports_neither_tune_nor_mlflow_nor_optuna() -> None:
    """``sweeps.run_sweep`` and ``sweeps run`` begin Ray's start before those imports (about 1.3 s here):
    the module they enter through must not import them itself."""
    script = (
        "import sys, sweeps\n"
        "assert sweeps.run_sweep.__module__ == 'sweeps.engine.launch', sweeps.run_sweep.__module__\n"
        "print(sorted(m for m in ('ray.tune', 'mlflow', 'optuna') if m in sys.modules))\n"
    )
    assert run_script(script).strip() == "[]"
