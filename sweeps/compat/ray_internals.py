"""Ray's private parts the engine uses: trial and Train-worker errors, the autoscaler's ceiling, a restored Tuner."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PROCESS_DIED = (
    "the trial's process died (a crash such as SIGSEGV, a kill, os._exit, or the kernel's OOM killer); "
    "it left no traceback"
)
"""The reason of a trial whose process ended under it: Ray knows no exit code or signal."""


def error_cause(trial: Any) -> BaseException | None:
    """The exception that ended a Ray trial (its cause, unwrapped from Ray's own error); None if unknown.

    A process that died outright is an ``ActorDiedError`` (:func:`process_died`): it left no traceback.
    """
    import ray.cloudpickle as cloudpickle

    error: Any = None
    path = getattr(trial, "pickled_error_file", None)
    if path and Path(path).is_file():
        try:
            with open(path, "rb") as handle:
                error = cloudpickle.load(handle)
        except Exception:  # noqa: BLE001 - an unreadable error file still ends the trial
            error = None
    cause = getattr(error, "cause", None) or error
    return cause if isinstance(cause, BaseException) else None


def process_died(cause: BaseException) -> bool:
    """Whether a trial's error is Ray's word that its process died (no Python exception was raised in it)."""
    return type(cause).__name__ == "ActorDiedError" and "worker process has died" in str(cause)


def max_cluster_resources() -> dict[str, float]:
    """The most CPUs, GPUs, ... the cluster can have: its autoscaler's maximum, else what it has now."""
    import ray

    try:
        from ray._private.state import state

        ceiling = state.get_max_resources_from_cluster_config()  # an autoscaler's maximum
    except Exception:  # noqa: BLE001 - a private API: fall back to what the cluster has
        ceiling = None
    return {k: float(v) for k, v in (ceiling or ray.cluster_resources()).items()}


def replace_tuner_configs(tuner: Any, tune_config: Any, run_config: Any) -> bool:
    """Give a ``Tuner.restore``-d tuner new ``TuneConfig`` and ``RunConfig``; False where Ray has no way.

    ``Tuner.restore`` brings back the objects pickled when the sweep started (with empty state);
    Ray has no public way to pass new ones, so they are set on its internal tuner.
    """
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_tune_config") or not hasattr(internal, "_run_config"):
        return False
    internal._tune_config = tune_config
    internal._run_config = run_config
    return True


def worker_cause(error: BaseException) -> tuple[BaseException, str]:
    """The exception the lowest failed rank raised, and its traceback text, from Ray Train's error."""
    failures = getattr(error, "worker_failures", None)
    if not failures:
        return error, ""
    failure = failures[min(failures)]  # Ray Train wraps it: UserExceptionWithTraceback
    return getattr(failure, "_base_exc", failure), str(getattr(failure, "_traceback_str", ""))


def default_ray_address() -> tuple[str, str] | None:
    """The address Ray's default-address file names, and that file; None where there is no such file.

    ``ray start`` writes the file (``/tmp/ray/ray_current_cluster``, under ``$RAY_TMPDIR`` if set)
    and ``ray stop`` removes it; ``ray.init()`` with no address joins the cluster it names. A
    head that is gone leaves it behind. Without Ray's helpers, the file is looked for where Ray 2
    keeps it.
    """
    import os

    try:
        from ray._common.utils import get_ray_address_file

        path = Path(get_ray_address_file(None))
    except Exception:  # noqa: BLE001 - a private API: look where Ray 2 keeps it
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        path = Path(base) / "ray" / "ray_current_cluster"
    try:
        address = path.read_text().strip()
    except OSError:
        return None
    return (address, str(path)) if address else None


TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
"""Tune's own env vars for every trial actor in Ray 2.60 (``ray.tune.execution.class_cache.DEFAULT_ENV_VARS``).

Known here so that a new local Ray can start with them in its workers' environment before Ray
Tune (about 0.7 s of imports) is imported; :func:`trial_actors_inherit_env` checks them against
Tune's once it is.
"""
_TUNE_ACTOR_ENV: tuple[dict[str, str], set[str]] | None = None
"""Tune's own per-actor env vars and the names it copies from the driver, kept while they are switched off."""


def trial_actors_inherit_env(inherit: bool, workers_env: Mapping[str, str] | None = None) -> bool:
    """Start Tune's trial actors with no runtime env of their own (``inherit``), or give Tune back its own.

    Tune gives each trial actor a runtime env of env vars (``PL_DISABLE_FORK`` and the driver's
    values of a few it names, ``RAY_CHDIR_TO_TRIAL_DIR`` among them). Ray never starts an actor with
    a runtime env of its own in one of the workers it prestarts, so each trial actor waited for a
    new process (1 to 2 s here). On a local Ray the workers inherit the driver's environment, so
    those values reach them anyway: they are put into ``os.environ`` and actors get none. Returns
    whether Tune's actors now inherit (False where its private module moved).

    ``workers_env``: the environment the local Ray started with (its workers' own), when Ray
    started before this was called (:data:`TUNE_ACTOR_ENV` was put into it ahead, so that Ray could
    start before Tune is imported). Should Tune's values differ from it, actors keep Tune's runtime env.
    """
    import os

    global _TUNE_ACTOR_ENV
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # a private module: actors keep Tune's runtime env
        return False
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if not isinstance(defaults, dict) or not isinstance(propagated, (set, frozenset)):
        return False
    if _TUNE_ACTOR_ENV is None:
        _TUNE_ACTOR_ENV = (dict(defaults), set(propagated))
    if inherit and workers_env is not None and any(workers_env.get(k) != v for k, v in _TUNE_ACTOR_ENV[0].items()):
        inherit = False  # the workers started without one of Tune's values: the actors must carry it
    if inherit:
        for key, value in _TUNE_ACTOR_ENV[0].items():
            os.environ.setdefault(key, value)
        class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE = {}, set()
    else:
        class_cache.DEFAULT_ENV_VARS = dict(_TUNE_ACTOR_ENV[0])
        class_cache.ENV_VARS_TO_PROPAGATE = set(_TUNE_ACTOR_ENV[1])
    return inherit


LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch (read by ``ray._private.ray_constants`` at import): ``0`` keeps a local Ray on 127.0.0.1."""


def local_ray_on_loopback() -> bool:
    """Make a new local Ray listen and connect on 127.0.0.1 only, its workers too; False if the user set the switch.

    Without it, a local Ray takes the machine's outward address as its node's: its GCS, raylet and
    workers listen on every interface (reachable from the network, with no token) and talk to
    each other through that address. A sweep's own local Ray needs no other host. Ray reads its
    switch when ``ray._private.ray_constants`` is first imported, which the engine's imports have
    done by now, so the module's value is set as well as the environment the workers inherit. A
    value the user put in the environment is left as it is.
    """
    import os

    if LOOPBACK_SWITCH in os.environ:
        return False
    os.environ[LOOPBACK_SWITCH] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    return True


def search_algorithm(searcher: Any, max_concurrent: int | None) -> Any:
    """Tune's search over ``searcher`` (at most ``max_concurrent`` trials at once), as Tune would wrap it.

    With one difference: restored from a snapshot (``sweeps resume``), it asks the searcher again
    even where the snapshot says the search had ended. A driver that died after the budget's
    last trial was asked leaves a snapshot saying so; the searcher, which replaces trials the
    resume found lost, decides when the search ends.
    """
    from ray.tune.search import ConcurrencyLimiter

    return _resumable_search()(ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher)


@functools.cache
def _resumable_search() -> type:
    """Tune's ``SearchGenerator`` whose restored state never says the search ended (made once, importing Ray Tune)."""
    from ray.tune.search import SearchGenerator

    class ResumableSearch(SearchGenerator):
        def set_state(self, state: dict[str, Any]) -> None:
            super().set_state(state)
            self._finished = False  # private: Tune's flag that the searcher once answered FINISHED

    return ResumableSearch


def end_trial_process(trial: Any) -> bool:
    """Kill a running trial's process so that Tune records it failed and does not restart it.

    Tune's own stop asks the trial's thread to return, which a trial hung inside an epoch never
    does. False when the trial has no process (not started, or already ending).
    """
    import ray

    actor = getattr(getattr(trial, "temporary_state", None), "ray_actor", None)
    if actor is None:
        return False
    trial.max_failures = 0  # Trial.should_recover: no restart from its checkpoint (budget.retries is for crashes)
    ray.kill(actor, no_restart=True)
    return True


SIGTERM_NOTE = "SIGTERM handler is not set because current thread is not the main thread"
"""What ``ray.init`` logs (a warning) when called outside the main thread."""


def exit_on_sigterm() -> None:
    """Exit on SIGTERM (so that Ray's atexit shutdown runs), the handler ``ray.init`` sets in the main thread only.

    Called from another thread (a sweep started from a user's own thread), it sets nothing, as
    ``ray.init`` would not have: Python takes signal handlers from the main thread only.
    """
    import signal
    import sys
    import threading

    def leave(signum: int, frame: object) -> None:
        sys.exit(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, leave)


@contextlib.contextmanager
def quiet_sigterm_note() -> Iterator[None]:
    """Leave out ``ray.init``'s warning that it set no SIGTERM handler (:func:`exit_on_sigterm` set it ahead)."""
    import logging

    def other(record: logging.LogRecord) -> bool:
        return SIGTERM_NOTE not in record.getMessage()

    logger = logging.getLogger("ray._private.worker")
    logger.addFilter(other)
    try:
        yield
    finally:
        logger.removeFilter(other)


def stay_while_ray_runs(poll_s: float = 1.0, grace_s: float = 30.0) -> None:
    """Return once the Ray node this process started is shut down and its processes have ended.

    For the thread that started them (``sweeps.engine.cluster.start_ray_soon``): Ray starts its
    processes with ``PR_SET_PDEATHSIG``, so they get SIGKILL when that thread ends. ``ray.shutdown``
    disconnects first (``ray.is_initialized()`` is False from then on), then sends its processes
    SIGTERM without waiting; a thread that ended at the disconnect killed the dashboard and the log
    monitor in the middle of their exit (return codes -9 where a main-thread start gives 15 and
    -15). Processes that outlive SIGTERM by ``grace_s`` are left to that SIGKILL.
    """
    import time

    from ray._private import worker

    node = worker._global_node
    if node is None:
        return
    started = [info.process for infos in node.all_processes.values() for info in infos]
    while worker._global_node is node:
        time.sleep(poll_s)
    deadline = time.monotonic() + grace_s
    while any(process.poll() is None for process in started) and time.monotonic() < deadline:
        time.sleep(0.1)


class TuneSigint:
    """Whether Tune's own SIGINT handler caught a Ctrl-C in ``Tuner.fit()``, which then returns as if done.

    Tune (``ray.tune.tune._setup_signal_catching``) puts a handler on SIGINT in the main thread,
    unless ``TUNE_DISABLE_SIGINT_HANDLER`` is set, that ends the run and puts back the handler it
    found; unfired, Tune's stays on after ``fit()``. A SIGINT to the driver alone (``kill -INT``,
    ``timeout -s INT``) reaches no trial, so nothing else says the sweep was cut short (a user's
    sweep of 2 of its 8 trials read ``completed``, exit 0, and ``sweeps resume`` refused it).
    """

    def __init__(self) -> None:
        disabled = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") not in ("", "0")
        self.before: Any = None
        if threading.current_thread() is threading.main_thread() and not disabled:
            self.before = signal.getsignal(signal.SIGINT)

    def caught(self) -> bool:
        """Whether the handler found before ``fit()`` is back: Tune's fired."""
        return self.before is not None and signal.getsignal(signal.SIGINT) is self.before

    def restore(self) -> None:
        """Put back the handler found before ``fit()``: an unfired Tune handler would swallow a Ctrl-C after it."""
        if self.before is not None:
            signal.signal(signal.SIGINT, self.before)
