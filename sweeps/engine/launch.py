"""``sweeps.run_sweep`` and ``sweeps run``'s entry: check the input, begin Ray's start, then import the engine.

This module imports neither Ray Tune nor MLflow nor Optuna, so that a new local Ray starts while
they are imported (``sweeps.engine.cluster.start_ray_soon``): about 1.3 s of CPU here that used to
come before Ray's start, and the workers Ray prestarts import the trial's modules meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sweeps.engine.cluster import start_ray_soon, trial_imports
from sweeps.engine.preflight import check_sweep_start
from sweeps.spec.sweep_spec import SweepSpec

if TYPE_CHECKING:
    from sweeps.engine.runner import SweepResult


def run_sweep(
    spec: SweepSpec,
    root: str | Path = "sweep_runs",
    name: str | None = None,
    tracking_uri: str | None = None,
    stream: TextIO | None = None,
    cpus: int | None = None,
    address: str | None = None,
    warm_start: str | Path | None = None,
) -> SweepResult:
    """Run ``spec`` to its trial budget and return the result (``sweeps.engine.runner.run_sweep``).

    Once the sweep's own inputs pass their checks (the name, trial storage, the tracking store),
    Ray's start begins in the background while the engine is imported; Ray's address is checked
    there, and its error raised before anything is made. With ``warm_start`` (whose earlier sweep
    is checked by the engine), Ray starts after that check, as before.
    """
    if warm_start is None:
        uri = check_sweep_start(spec, root, name, tracking_uri)
        start_ray_soon(cpus, address, trial_imports(uri))
    from sweeps.engine.runner import run_sweep as run_checked

    return run_checked(spec, root, name, tracking_uri, stream, cpus, address, warm_start)
