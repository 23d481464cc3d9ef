"""The last checkpoint of a sweep's best completed trials, uploaded to their MLflow runs at the sweep's end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune

from sweeps.core.keys import COMPLETED, ENGINE_KEY
from sweeps.core.records import SweepState, TrialRecord
from sweeps.spec.sweep_spec import SweepSpec
from sweeps.tracking.sweep_tracker import SweepTracker


def best_completed(state: SweepState, spec: SweepSpec) -> list[TrialRecord]:
    """The ``record.checkpoints`` best completed trials, best first."""
    sign = 1.0 if spec.mode == "min" else -1.0
    done = [r for r in state.trials.values() if r.status == COMPLETED and r.value is not None]
    return sorted(done, key=lambda r: sign * float(r.value or 0.0))[: spec.record.checkpoints]


def log_best_checkpoints(
    results: Any, state: SweepState, tracker: SweepTracker, spec: SweepSpec, experiment: str
) -> None:
    """Upload the last checkpoint of the best completed trials, each under its size limit.

    ``results``: Tune's results, or None when ``fit()`` raised. A trial that ended after Tune
    stopped (a Ctrl-C: Tune stops taking results, its trials may still finish) has no checkpoint
    in them; its last one is the newest in its trial folder under ``experiment`` (the Ray
    experiment's path or URI), where the trial wrote it before it reported.
    """
    tune_checkpoints = {}
    for result in results or []:
        run_id = (result.config or {}).get(ENGINE_KEY, {}).get("run_id")
        if result.checkpoint is not None:
            tune_checkpoints[run_id] = result.checkpoint
    limit = spec.record.checkpoint_max_mb * 1024 * 1024
    for record in best_completed(state, spec):
        checkpoint = tune_checkpoints.get(record.run_id) or newest_checkpoint(experiment, record.ray_id)
        if checkpoint is None:
            continue
        with checkpoint.as_directory() as folder:
            size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
            if size > limit:
                text = f"checkpoint of {size / 2**20:.1f} MB over the limit"
                tracker.log_text(record.run_id, text, "checkpoint/SKIPPED.txt")
                continue
            tracker.log_artifacts(record.run_id, Path(folder), "checkpoint")


def newest_checkpoint(experiment: str, ray_id: str) -> tune.Checkpoint | None:
    """The newest ``checkpoint_NNNNNN`` folder of trial ``ray_id`` (its folder is ``trial_<id>``); None if none."""
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment)
        found = filesystem.get_file_info(pyarrow.fs.FileSelector(f"{root}/trial_{ray_id}", allow_not_found=True))
    except (OSError, ValueError):  # a store that cannot be read now: no checkpoint, the record stands
        return None
    names = sorted(
        info.base_name
        for info in found
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")
    )
    return tune.Checkpoint(f"{root}/{names[-1]}", filesystem=filesystem) if names else None
