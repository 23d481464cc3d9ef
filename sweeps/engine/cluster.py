"""The Ray cluster a sweep runs on: starting or joining it, and what fits on it.

Trials ask Tune for their own CPUs and GPUs; a multi-worker trial's Tune trial asks for nothing
(its Ray Train workers hold the resources), so the number of such trials at once is bounded by
the worker groups the cluster holds.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from sweeps.compat.ray_internals import (
    TUNE_ACTOR_ENV,
    default_ray_address,
    exit_on_sigterm,
    local_ray_on_loopback,
    max_cluster_resources,
    quiet_sigterm_note,
    stay_while_ray_runs,
    trial_actors_inherit_env,
)
from sweeps.core.errors import InputError
from sweeps.core.failures import failure_reason
from sweeps.spec.sweep_spec import Budget, SpecError, SweepSpec

# Ray's own per-trial CSV/JSON/TensorBoard loggers duplicate what MLflow records; its console
# output is replaced by our live view; trainers see the user's working directory. A reused trial
# actor waits for the previous trial's thread, which ends only once its MLflow records are
# delivered (TrialLogger.close): Ray's 2 s default fails the next trial when the server is remote
# or slow ("Trainable runner reuse requires reset_config()"), and Tune tells no callback of it.
ENGINE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "900",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}
GCS_TIMEOUT_S = 3.0
"""How long a Ray cluster's head (its GCS port) has to accept a connection before ``ray.init`` is tried."""
LOCAL_HINT = "pass --address local for a new local Ray"
PRESTARTED_IDLE_MS = 60_000
"""How long a new local Ray's idle workers may wait before Ray ends them (Ray's default: 1 s).

With the default, Ray ended the workers it had prestarted (and that had imported the trial's
modules) whenever Tune asked for its first trial actors more than a second after Ray started (a
slow or busy machine: the driver takes 5 to 10 s there to open the store and set Tune up); each
trial then waited for a new process that imported everything again (raylet log: "Worker exited
because it was idle for a long time"; first validation 37 s instead of 25 s on a slow 2-core
machine). Only a new local Ray whose workers preload gets this setting; a cluster keeps its own.
"""


class RayAddressError(InputError):
    """The Ray cluster to join does not answer, or its address is not one."""


_starting: Future[None] | None = None
"""A start of Ray begun by :func:`start_ray_soon`; the next :func:`start_ray` waits for it."""


def start_ray_soon(num_cpus: int | None = None, address: str | None = None, preload: Sequence[str] = ()) -> None:
    """Begin :func:`start_ray` in a background thread and return at once; the next ``start_ray`` waits for it.

    For a caller about to import the engine (Ray Tune, MLflow, Optuna: about 1.3 s of CPU here): a
    local Ray's processes start meanwhile, and the workers it prestarts begin importing the trial's
    modules that much sooner. Call it only once the sweep's input has been checked: nothing undoes
    a started Ray but the process's end. Its error (``RayAddressError``) is raised by the next
    ``start_ray``. Ray sets its SIGTERM handler (exit, so that its atexit shutdown runs) only in the
    main thread, so it is set here.
    """
    global _starting
    import ray

    if _starting is not None or ray.is_initialized():
        return
    exit_on_sigterm()
    _starting = Future()
    threading.Thread(target=_start_and_stay, args=(_starting, num_cpus, address, preload), daemon=True).start()


def _start_and_stay(done: Future[None], num_cpus: int | None, address: str | None, preload: Sequence[str]) -> None:
    """Start Ray, tell ``done``, then stay until Ray's processes have ended: they end with this thread.

    Ray starts its GCS, raylet and monitors with ``PR_SET_PDEATHSIG``, which the kernel sends when
    the *thread* that started them ends (a first try, in a pool's thread, lost the GCS as the
    thread ended: "Failed to connect to GCS within 60 seconds").
    """
    try:
        _start_ray(num_cpus, address, preload)
    except BaseException as exc:  # noqa: BLE001 - raised again by start_ray, in the caller's thread
        done.set_exception(exc)
        return
    done.set_result(None)
    stay_while_ray_runs()


def start_ray(num_cpus: int | None = None, address: str | None = None, preload: Sequence[str] = ()) -> None:
    """Start local Ray (all cores unless told) quietly, or connect to ``address``; no-op if started.

    ``address`` is what ``ray.init`` takes: ``host:port`` of a running cluster's head (GCS), ``auto``,
    or ``local`` (always a new local Ray). Without it, Ray's own default applies: ``$RAY_ADDRESS``,
    else a cluster started on this machine with ``ray start``, else a new local Ray. ``num_cpus``
    sizes a new local Ray only; a running cluster keeps its own resources.

    A new local Ray's workers inherit this process's environment, so trial actors need no runtime
    env of their own and start in the workers Ray prestarts, which import the ``preload`` modules
    while they wait (the first validation came 0.4 to 2 s sooner here), and are kept while idle for up
    to :data:`PRESTARTED_IDLE_MS`. On a cluster the engine's env
    vars travel as the job's runtime env, and every trial actor starts a new process. A new local
    Ray listens and connects on 127.0.0.1 only (``local_ray_on_loopback``) unless the user set Ray's
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` themselves. A start begun by :func:`start_ray_soon` is
    waited for (its error raised) instead.
    """
    global _starting
    pending, _starting = _starting, None
    if pending is not None:
        pending.result()
    _start_ray(num_cpus, address, preload)


def _start_ray(num_cpus: int | None, address: str | None, preload: Sequence[str]) -> None:
    """:func:`start_ray`'s work, in whichever thread: Ray Tune need not be imported yet."""
    import ray

    os.environ.update(ENGINE_ENV)
    if ray.is_initialized():
        return
    address = check_ray_address(address)
    # Trainers named by import path (my_pkg.module:Class) resolve from the working directory.
    paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    new_local = starts_local_ray(address)
    if new_local:
        local_ray_on_loopback()
        for key, value in TUNE_ACTOR_ENV.items():  # its workers' environment: Tune's own, before Tune is imported
            os.environ.setdefault(key, value)
    elif num_cpus is not None and address is None:  # an explicit --address has had its note from the CLI
        print(
            f"note: --cpus sizes a new local Ray; ignored: joining the Ray cluster {_joined_by_default()}",
            file=sys.stderr,
            flush=True,
        )
    preloading = new_local and preload and "RAY_preload_python_modules" not in os.environ  # a user's own wins
    workers_env = dict(os.environ)  # a new local Ray's workers inherit it
    try:
        with quiet_sigterm_note():
            ray.init(
                address=address,
                num_cpus=num_cpus if new_local else None,  # Ray refuses a size for a cluster it joins
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                runtime_env=None if new_local else {"env_vars": {**ENGINE_ENV, "PYTHONPATH": os.environ["PYTHONPATH"]}},
                _system_config=_preloading_config(preload) if preloading else None,
            )
    except ConnectionError as exc:  # e.g. 'auto' with no cluster on this machine, or a head that just went away
        where = f"at {address}" if address not in (None, "auto") else "on this machine"
        raise RayAddressError(f"cannot join a Ray cluster {where}: {failure_reason(exc)}; {LOCAL_HINT}") from None
    trial_actors_inherit_env(new_local, workers_env)


def trial_imports(uri: str) -> tuple[str, ...]:
    """The modules a one-worker trial's process imports before its first step, for idle workers to import ahead.

    The trial module (torch, Ray Tune, the engine) and the MLflow store of ``uri``: 3 to 4 s of CPU
    here, paid once per worker process.
    """
    store = {"sqlite": "sqlalchemy_store", "http": "rest_store", "https": "rest_store", "file": "file_store"}
    scheme = uri.split(":", 1)[0]
    found = store.get(scheme)
    return ("sweeps.trial.one_worker", *([f"mlflow.store.tracking.{found}"] if found else []))


def _preloading_config(preload: Sequence[str]) -> dict[str, object]:
    """Ray's system config for a new local Ray whose prestarted workers import ``preload`` and wait for trials."""
    return {"preload_python_modules": list(preload), "idle_worker_killing_time_threshold_ms": PRESTARTED_IDLE_MS}


def check_ray_address(address: str | None, timeout: float = GCS_TIMEOUT_S) -> str | None:
    """The address to give ``ray.init``, checked before Ray starts; raise RayAddressError (one line) if none answers.

    A cluster's head answers when its GCS port accepts a TCP connection within ``timeout``. An
    address given (``--address``, ``$RAY_ADDRESS``) that does not answer is an error. With no
    address, Ray joins the cluster its default-address file names (written by ``ray start``);
    when that head is gone, a new local Ray starts instead, with a note saying so and that
    ``ray stop`` clears the file. With ``auto``, such a file is an error (a cluster was asked for).
    """
    if address == "local":
        return address
    env = os.environ.get("RAY_ADDRESS") or None
    wanted = (env or address) if address in (None, "auto") else address
    if wanted not in (None, "auto"):
        origin = "$RAY_ADDRESS" if wanted == env else "--address"
        host, port = _host_port(wanted, origin)
        if not _answers(host, port, timeout):
            raise RayAddressError(
                f"no Ray cluster answers at {wanted} ({origin}) within {timeout:g} s: start it ('ray start --head' "
                f"on its head node) or fix the address, or {LOCAL_HINT}"
            )
        return address
    found = default_ray_address()
    if found is None:
        return address  # None: a new local Ray; auto: Ray looks for one on this machine
    named, file = found
    try:
        answers = _answers(*_host_port(named, file), timeout)
    except RayAddressError:
        answers = False
    if answers:
        return address
    stale = f"Ray's default-address file {file} names {named} (from an earlier 'ray start'), where no Ray answers"
    if address is None:
        print(f"note: {stale}; starting a new local Ray ('ray stop' clears the file)", file=sys.stderr, flush=True)
        return "local"
    raise RayAddressError(f"--address auto: {stale}: run 'ray stop' to clear it, or {LOCAL_HINT}")


def _joined_by_default() -> str:
    """Which cluster ``ray.init()`` with no address joins: ``$RAY_ADDRESS``'s, else the default-address file's."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return f"at {env} ($RAY_ADDRESS)"
    found = default_ray_address()
    return f"at {found[0]} (named by {found[1]}, from 'ray start')" if found else "on this machine"


def starts_local_ray(address: str | None) -> bool:
    """Whether ``ray.init(address)``, with an address :func:`check_ray_address` returned, starts a new local Ray."""
    if address == "local":
        return True
    return address is None and not os.environ.get("RAY_ADDRESS") and default_ray_address() is None


def _host_port(address: str, origin: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``[v6]:port`` or ``ray://host:port``."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise RayAddressError(
            f"Ray address {address!r} ({origin}) is not HOST:PORT (e.g. 10.0.1.23:6379), 'auto' or 'local'"
        )
    return host, int(port)


def _answers(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout``."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
"""What the Tune trial itself asks for: nothing that workers need (Ray wants some resource)."""


def trial_resources(budget: Budget) -> dict[str, float]:
    """Tune's resource request per trial: the trial's own, or the driver's when workers train."""
    if budget.workers_per_trial <= 1:
        return {"cpu": budget.cpus_per_trial, "gpu": budget.gpus_per_trial}
    return dict(DRIVER_RESOURCES)


def trial_concurrency(budget: Budget) -> int | None:
    """Trials at once: the spec's, else (with workers) as many worker groups as the cluster holds now.

    A Tune trial with workers holds no resources itself, so Tune alone would start every trial at
    once; this bounds them by the CPUs (and GPUs) the cluster has when the sweep starts.
    """
    if budget.concurrency is not None or budget.workers_per_trial <= 1:
        return budget.concurrency
    return cluster_slots(budget)


def cluster_slots(budget: Budget) -> int:
    """How many trials (each with its workers, CPUs and GPUs) the Ray cluster holds now; at least 1."""
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0.0) // (budget.workers_per_trial * max(budget.cpus_per_trial, 1e-3))]
    if budget.gpus_per_trial > 0:
        fits.append(total.get("GPU", 0.0) // (budget.workers_per_trial * budget.gpus_per_trial))
    return max(1, int(min(fits)))


def check_local_workers_fit(spec: SweepSpec, address: str | None, cpus: int | None) -> None:
    """Before Ray starts: raise SpecError (one line) when a trial could never start on a new local Ray.

    Its workers need more CPUs or GPUs than the machine has (a ``cuda`` device needs a GPU
    reserved, which the spec checks).

    ``address`` as given (``--address``); no cluster is contacted. A cluster, or a new local Ray
    this cannot be sure of, is checked once joined (:func:`check_workers_fit`, which knows the
    autoscaler's ceiling). The CPUs counted are ``cpus`` or this machine's, the most Ray can see.
    """
    if not starts_local_ray(address):
        return
    import torch

    have = {"CPU": float(cpus or os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    _refuse_if_short(spec, have, where="a new local Ray on this machine has")


def local_concurrency_note(spec: SweepSpec, address: str | None, cpus: int | None) -> str | None:
    """A note when ``budget.concurrency`` asks for more trials at once than a new local Ray here can hold."""
    wanted = spec.budget.concurrency
    if wanted is None or not starts_local_ray(address):
        return None
    have = float(cpus or os.cpu_count() or 1)
    per_trial = spec.budget.workers_per_trial * max(spec.budget.cpus_per_trial, 1e-3)
    fits = max(1, int(have // per_trial))
    if wanted <= fits:
        return None
    return (
        f"{wanted} trials at once, but a new local Ray on this machine holds {fits} ({have:g} CPUs, "
        f"{per_trial:g} a trial): the others wait for a free slot"
    )


def local_gpu_note(spec: SweepSpec, address: str | None, gpus: int | None = None) -> str | None:
    """A note when a new local Ray here has GPUs but the trials reserve none: they then train on the CPU.

    ``gpus``: this machine's GPUs (None: as torch counts them).
    """
    if spec.budget.gpus_per_trial > 0 or not starts_local_ray(address):
        return None
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if not gpus:
        return None
    return (
        f"0 on a machine with {gpus} GPU{'' if gpus == 1 else 's'}: the trials reserve none, so they see none "
        "and train on the CPU; set it (1: a GPU each, 0.25: four trials to a GPU)"
    )


def check_address_format(address: str | None) -> None:
    """Raise RayAddressError (one line) for an ``--address`` that is not HOST:PORT, 'auto' or 'local'; no connection."""
    if address not in (None, "auto", "local"):
        _host_port(address, "--address")


def _refuse_if_short(spec: SweepSpec, ceiling: dict[str, float], where: str) -> None:
    """Raise SpecError when one trial's workers need more of a resource named in ``ceiling`` than it holds."""
    budget = spec.budget
    for name, each in (("CPU", budget.cpus_per_trial), ("GPU", budget.gpus_per_trial)):
        need, have = budget.workers_per_trial * each, ceiling.get(name)
        if have is None or need <= have:
            continue
        if budget.workers_per_trial > 1:
            key = "budget.workers_per_trial"
            text = f"{budget.workers_per_trial} workers x {each:g} {name} need {need:g} {name}s; {where} {have:g}"
        else:  # no trial could ever start: Ray would wait for it forever
            key = f"budget.{name.lower()}s_per_trial"
            text = f"a trial needs {need:g} {name}{'' if need == 1 else 's'}; {where} {have:g}"
        raise SpecError(spec.source, [(key, text)])


def check_workers_fit(spec: SweepSpec) -> None:
    """Raise SpecError (one line) when one trial's workers can never fit on the Ray cluster.

    Ray Train would otherwise wait for them forever. The cluster's ceiling is its autoscaler's
    maximum where it has one, else what it has now. Starts local Ray if none is running.
    """
    budget = spec.budget
    if budget.workers_per_trial <= 1:  # on a cluster, nodes may join later: a one-worker trial waits for them
        return
    start_ray()
    most = max_cluster_resources()
    ceiling = {name: most.get(name, 0.0) for name in ("CPU", "GPU")}  # a resource it lacks: none of it
    _refuse_if_short(spec, ceiling, where="the Ray cluster has at most")
