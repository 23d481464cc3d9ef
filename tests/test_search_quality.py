"""The search-quality benchmark: its curves and figures, and its quick mode end to end (a smoke test, not timed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from benchmarks.search_quality import (
    GRID,
    TASKS,
    curve,
    parse_variant,
    percentile,
    ray_workers,
    read_events,
    summarize,
)
from tests.helpers import ROOT, project_env


def test_curve_is_the_running_best_of_full_trials(tmp_path: Path) -> None:
    task = TASKS["vae"]
    t0 = 1000.0
    rows = {
        "a": [(1, 0.5), (6, 0.2)],  # full at t0 + 6
        "b": [(1, 0.1)],  # stopped after one epoch: never counts
        "c": [(6, None)],  # diverged: never counts
        "d": [(6, 0.05)],  # full, but after the budget
    }
    times = {"a": [2.0, 6.0], "b": [1.0], "c": [3.0], "d": [11.0]}
    epochs = {"a": [1, 6], "b": [1], "c": [6], "d": [6]}
    for name, values in rows.items():
        with (tmp_path / f"{name}.jsonl").open("w") as out:
            for (_, value), t, epoch in zip(values, times[name], epochs[name], strict=True):
                out.write(json.dumps({"t": t0 + t, "epoch": epoch, "value": value}) + "\n")
    events = read_events(tmp_path, task, t0, 10.0)
    assert events["completions"] == [(6.0, 0.2)]
    assert events["trials"] == 3  # d began after the budget
    values = curve(events["completions"], 10.0)
    assert math.isinf(values[0]) and values[-1] == 0.2
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))


def test_maximised_metric_is_negated_and_summary_compares_per_seed() -> None:
    task = TASKS["sr_gan"]
    runs = {
        "ours": {0: {"completions": [(1.0, -25.0)], "trials": 3, "full": 1}},
        "optuna": {0: {"completions": [(5.0, -24.0)], "trials": 4, "full": 1}},
    }
    summary = summarize(task, runs, 10.0)
    assert summary["peers"]["optuna"]["win_rate"] == 1.0
    assert summary["peers"]["optuna"]["reach"] == pytest.approx(round(0.1 * GRID) / GRID)
    assert summary["systems"]["ours"]["at"][0.25][0] == -25.0


def test_ray_workers_are_counted_from_the_runs_ray_logs(tmp_path: Path) -> None:
    logs = tmp_path / "ray" / "session_2026-12-02_13-22-47_119912_10545" / "logs"
    logs.mkdir(parents=True)
    started = "[2026-12-02 13:22:5{},000 I 9 9] (raylet) worker_pool.cc:564: Started worker process with pid 1{}\n"
    (logs / "raylet.out").write_text("".join(started.format(s, s) for s in (4, 5, 8)))
    exit_line = "[2026-12-02 13:22:57,142 I 1 2] Worker exited because it was idle for a long time (timeout: 1000ms)\n"
    (logs / "python-core-worker-aa_10.log").write_text(exit_line)
    (logs / "python-core-worker-bb_12.log").write_text("Core worker is destructed\n")
    (tmp_path / "ray" / "session_latest").symlink_to(logs.parent)  # as Ray makes it: counted once
    assert ray_workers(tmp_path) == {"ray_workers_started": 3, "ray_workers_ended_idle": 1}
    stop = datetime(2026, 12, 2, 13, 22, 56).timestamp()  # the run was stopped then: later lines do not count
    assert ray_workers(tmp_path, until=stop) == {"ray_workers_started": 2, "ray_workers_ended_idle": 0}
    assert ray_workers(tmp_path / "no-ray") == {"ray_workers_started": 0, "ray_workers_ended_idle": 0}


def test_percentile_with_nothing_yet() -> None:
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert math.isinf(percentile([1.0, math.inf], 0.75))
    assert percentile([1.0, 3.0], 0.25) == 1.5


@pytest.mark.integration
def test_a_variant_of_ours_is_named_and_its_spec_keys_typed() -> None:
    name, keys = parse_variant("startup10:search.n_startup_trials=10,asha.brackets=2,search.sampler=random")
    assert name == "ours-startup10"
    assert keys == {"search.n_startup_trials": 10, "asha.brackets": 2, "search.sampler": "random"}
    for bad in ("startup10", ":search.n_startup_trials=10", "startup10:"):
        with pytest.raises(ValueError, match="NAME:KEY=VALUE"):
            parse_variant(bad)


def test_quick_mode_prints_the_table_and_the_verdict(tmp_path: Path) -> None:
    """``--quick`` with a tiny budget and the systems the project's own environment has."""
    rows = tmp_path / "rows.jsonl"
    command = [
        sys.executable,
        "-m",
        "benchmarks.search_quality",
        "--quick",
        "--budget-s",
        "8",
        "--systems",
        "ours,ray_optuna_asha,optuna",
        "--json",
        str(rows),
        "--plot",
        str(tmp_path / "curves.png"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("ours vs best peer: vae: ")
    assert any(line.startswith("task vae: best val_mse") for line in lines)
    for system in ("ours", "ray_optuna_asha", "optuna"):
        assert any(line.startswith(system + " ") for line in lines), system
    assert (tmp_path / "curves.png").stat().st_size > 0
    runs = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(runs) == 6  # 3 systems x 2 seeds
    for run in runs:
        assert run["first_s"] == (run["firsts"][0] if run["firsts"] else None)
        values = curve([tuple(c) for c in run["completions"]], run["budget_s"])
        assert all(b <= a for a, b in zip(values, values[1:], strict=False))


def test_the_gpu_task_is_a_valid_spec_whose_trials_share_the_gpu(tmp_path: Path) -> None:
    import yaml

    import sweeps

    task = TASKS["sr_gan_gpu"]
    raw = task.spec("gpu", 0, {"trials": 8, "epochs": task.epochs}, trace_dir=str(tmp_path))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = sweeps.load_spec(str(path))
    assert spec.budget.gpus_per_trial == task.gpus_per_trial == 1 / task.workers
    assert "precision" not in raw["fixed"]  # searched: fp32, bf16, fp16
    assert TASKS["sr_gan"].spec("cpu", 0, {"trials": 8})["budget"] == {"trials": 8}  # the CPU tasks ask no GPU


def test_every_task_has_the_trainer_its_spec_names() -> None:
    from benchmarks.sq_trainer import trainer_class

    for name, task in TASKS.items():  # the peers build trainer_class(name); ours imports trainer_path
        assert task.trainer_path == f"benchmarks.sq_trainer:{trainer_class(name).__name__}", name
