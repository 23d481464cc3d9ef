"""The Ray cluster a sweep runs on: starting or joining it, and what fits on it.

Trials ask Tune for their own CPUs and GPUs; a multi-worker trial's Tune trial asks for nothing
(its Ray Train workers hold the resources), so the number of such trials at once is bounded by
the worker groups the cluster holds.
"""

from __future__ import annotations

import logging
import os

from sweeps.compat.ray_internals import max_cluster_resources
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


def start_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Start local Ray (all cores unless told) quietly, or connect to ``address``; no-op if started.

    ``address`` is what ``ray.init`` takes: ``host:port`` of a running cluster's head (GCS), ``auto``,
    or ``local`` (always a new local Ray). Without it, Ray's own default applies: ``$RAY_ADDRESS``,
    else a cluster started on this machine with ``ray start``, else a new local Ray. ``num_cpus``
    sizes a new local Ray only; a running cluster keeps its own resources.
    """
    import ray

    os.environ.update(ENGINE_ENV)
    if ray.is_initialized():
        return
    # Trainers named by import path (my_pkg.module:Class) resolve from the working directory.
    paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(
        address=address,
        num_cpus=num_cpus if address in (None, "local") else None,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": {**ENGINE_ENV, "PYTHONPATH": os.environ["PYTHONPATH"]}},
    )


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


def check_workers_fit(spec: SweepSpec) -> None:
    """Raise SpecError (one line) when one trial's workers can never fit on the Ray cluster.

    Ray Train would otherwise wait for them forever. The cluster's ceiling is its autoscaler's
    maximum where it has one, else what it has now. Starts local Ray if none is running.
    """
    budget = spec.budget
    if budget.workers_per_trial <= 1:
        return
    start_ray()
    ceiling = max_cluster_resources()
    for name, each in (("CPU", budget.cpus_per_trial), ("GPU", budget.gpus_per_trial)):
        need, have = budget.workers_per_trial * each, ceiling.get(name, 0.0)
        if need > have:
            raise SpecError(
                spec.source,
                [
                    (
                        "budget.workers_per_trial",
                        f"{budget.workers_per_trial} workers x {each:g} {name} need {need:g} {name}s; "
                        f"the Ray cluster has at most {have:g}",
                    )
                ],
            )
