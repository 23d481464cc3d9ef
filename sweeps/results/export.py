"""Export a sweep's best trials as files ``sweeps train`` runs with no edits, with provenance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from sweeps.core.files import write_whole
from sweeps.core.keys import COMPLETED
from sweeps.core.records import UNSTABLE_SHARE, trial_label
from sweeps.store.study import is_told, load_study
from sweeps.store.sweep_dir import SweepDir, SweepStoreError


def ranked(study: optuna.Study, skip_unstable: bool = False) -> list[FrozenTrial]:
    """A study's completed, feasible trials that ran in its sweep (none a warm start told), best first."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not any(v > 0 for v in t.constraints.values()) and t.value is not None and not is_told(t)
    ]
    if skip_unstable:
        trials = [t for t in trials if float(t.user_attrs.get("skipped_share", 0.0)) <= UNSTABLE_SHARE]
    reverse = study.direction.name == "MAXIMIZE"
    return sorted(trials, key=lambda t: float(t.value or 0.0), reverse=reverse)


def best_configs(
    sweep: SweepDir, top_k: int = 1, skip_unstable: bool = False, study: optuna.Study | None = None
) -> list[dict[str, Any]]:
    """The ``top_k`` best trials' complete configs, each with where and how it was made.

    ``study``: the sweep's study when the caller has opened it already (else it is opened here).
    """
    meta = sweep.read_meta()
    study = load_study(sweep) if study is None else study
    trials = ranked(study, skip_unstable)
    if not trials:
        which = "stable completed" if skip_unstable else "completed"
        short = study_shortfall(study, meta)
        raise SweepStoreError(f"sweep {sweep.name!r} has no {which} trial to export" + (f": {short}" if short else ""))
    return [_export(sweep, meta, trial, rank) for rank, trial in enumerate(trials[:top_k], start=1)]


def trial_export(sweep: SweepDir, number: int, study: optuna.Study | None = None) -> dict[str, Any]:
    """Trial ``number``'s complete config, whatever its end (a stopped one too, to train it to the end by hand).

    A user re-running a stopped trial hand-edited the best trial's export. A trial with no final
    value exports none (``sweeps train`` then compares nothing) and says how it ended.
    """
    meta = sweep.read_meta()
    study = load_study(sweep) if study is None else study
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number and not is_told(t)]
    if not found or "config" not in found[0].user_attrs:
        ran = sum(1 for t in study.get_trials(deepcopy=False) if not is_told(t) and "config" in t.user_attrs)
        raise SweepStoreError(
            f"sweep {sweep.name!r} has no trial {trial_label(number)} (its trials: t000 to {trial_label(ran - 1)})"
        )
    trial = found[0]
    data = _export(sweep, meta, trial, 0)
    ranks = {t.number: rank for rank, t in enumerate(ranked(study), start=1)}
    data["source"]["rank"] = ranks.get(number)  # None (null): a trial that did not complete has no rank
    data["source"]["status"] = str(trial.user_attrs.get("status", "")) or trial.state.name.lower()
    ended = data["source"]["status"] == COMPLETED and trial.state == TrialState.COMPLETE
    if not ended or trial.value is None or not math.isfinite(float(trial.value)):
        data["metric"]["value"] = None  # no final value (a stopped trial's last is an earlier epoch's): none to compare
    return data


def study_shortfall(study: optuna.Study, meta: dict[str, Any]) -> str:
    """What is missing when a finished sweep's Optuna study holds fewer trials than it ran ("" if none).

    Optuna's journal skips a record cut short, so a damaged journal reads as a smaller study; the
    sweep's MLflow runs still hold every trial.
    """
    ran = sum(1 for t in study.get_trials(deepcopy=False) if not is_told(t) and t.state != TrialState.WAITING)
    # the trials it asked for (budget.time can end a sweep before its budget.trials: a user's every time-limited
    # sweep read "damaged"); the budget where an older sweep did not record them
    planned = int(meta.get("trials_asked") or meta.get("trials") or 0)
    if meta.get("status") != "completed" or ran >= planned:
        return ""
    return (
        f"its Optuna study holds {ran} of the {planned} trials it ran (the journal is damaged or cut short); "
        f"every trial is still in MLflow ({meta.get('tracking_uri', '')}, parent run {meta.get('parent_run_id', '')})"
    )


def best_config(sweep: SweepDir) -> dict[str, Any]:
    """The best trial's export (see :func:`best_configs`)."""
    return best_configs(sweep)[0]


def _export(sweep: SweepDir, meta: dict[str, Any], trial: FrozenTrial, rank: int) -> dict[str, Any]:
    config = dict(trial.user_attrs["config"])
    defaults = meta.get("trainer_defaults") or {}  # the Config's other fields, as they were when it ran
    config.update({key: value for key, value in defaults.items() if key not in config})
    return {
        "trainer": meta["trainer"],
        "epochs": int(meta["epochs"]),
        "threads": int(meta.get("threads", 1)),
        "metric": {"name": meta["metric"], "mode": meta["mode"], "value": float(trial.value or 0.0)},
        "config": config,
        "source": {
            "sweep": sweep.name,
            "rank": rank,
            "trial": trial.number,
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id", ""),
            "tracking_uri": meta.get("tracking_uri", ""),
            "optuna_storage": sweep.storage_location,
            "seed": config.get("seed", meta.get("seed")),
            "precision": config.get("precision", "fp32"),
            "workers": int(meta.get("workers", 1)),  # its trials' workers: sweeps train runs one
            "skipped_share": float(trial.user_attrs.get("skipped_share", 0.0)),
            "git_commit": meta.get("git_commit", ""),
            "version": meta.get("version", ""),
            **({"files": dict(meta["trainer_files"])} if meta.get("trainer_files") else {}),
        },
    }


def write_export(data: dict[str, Any], path: str | Path) -> Path:
    """Write an exported config with a header saying where it came from and how to use it."""
    out = Path(path)
    text = export_text(data, out.name)
    write_whole(out, lambda part: part.write_text(text))
    return out


def export_text(data: dict[str, Any], file_name: str) -> str:
    """An exported config as the file ``file_name`` holds it: a header (where from, how to use), then YAML."""
    source, metric = data["source"], data["metric"]
    rank = source.get("rank", 1)
    if metric.get("value") is None:  # an exported trial that did not complete
        how = f"{source.get('status') or 'no final value'}, no final {metric['name']}"
    else:
        how = (
            f"{'rank ' + str(rank) if rank else 'unranked'}: {metric['name']}={metric['value']:.6g} ({metric['mode']})"
        )
    header = f"# Trial {trial_label(source['trial'])} of sweep {source['sweep']} ({how}).\n"
    header += f"# Train from it: sweeps train {file_name}\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def best_export_text(sweep: SweepDir, meta: dict[str, Any], study: optuna.Study, file_name: str) -> str | None:
    """The best trial's export as ``sweeps export`` would write it to ``file_name`` (None: nothing completed)."""
    trials = ranked(study)
    return export_text(_export(sweep, meta, trials[0], 1), file_name) if trials else None


def ranked_path(path: str | Path, rank: int) -> Path:
    """``best.yaml`` for rank 1, ``best.2.yaml`` for rank 2, ..."""
    out = Path(path)
    return out if rank == 1 else out.with_name(f"{out.stem}.{rank}{out.suffix}")
