"""Export a sweep's best trial as a file ``sweeps train`` runs with no edits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from optuna.trial import TrialState

from sweeps.store import SweepDir, SweepStoreError
from sweeps.study import load_study


def best_config(sweep: SweepDir) -> dict[str, Any]:
    """The best completed trial's complete config (fixed and sampled values) and its origin."""
    meta = sweep.read_meta()
    study = load_study(sweep)
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not completed:
        raise SweepStoreError(f"sweep {sweep.name!r} has no completed trial to export")
    best = study.best_trial
    return {
        "trainer": meta["trainer"],
        "epochs": int(meta["epochs"]),
        "threads": int(meta.get("threads", 1)),
        "metric": {"name": meta["metric"], "mode": meta["mode"], "value": float(best.value or 0.0)},
        "config": dict(best.user_attrs["config"]),
        "source": {
            "sweep": sweep.name,
            "trial": best.number,
            "mlflow_run_id": best.user_attrs.get("mlflow_run_id", ""),
            "tracking_uri": meta.get("tracking_uri", ""),
            "optuna_storage": sweep.storage_uri,
        },
    }


def write_export(data: dict[str, Any], path: str | Path) -> Path:
    """Write an exported config with a header saying where it came from and how to use it."""
    out = Path(path)
    source, metric = data["source"], data["metric"]
    header = (
        f"# Best trial of sweep {source['sweep']}: trial {source['trial']}, "
        f"{metric['name']}={metric['value']:.6g} ({metric['mode']}).\n"
        f"# Train from it: sweeps train {out.name}\n"
    )
    out.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return out
