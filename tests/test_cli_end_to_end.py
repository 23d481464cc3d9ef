"""The README's flow through the real command: run a sweep, export the best, train it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.helpers import run_cli, write_spec

pytestmark = pytest.mark.integration

SPEC = {
    "name": "cli",
    "trainer": "vae",
    "metric": "val_mse",
    "budget": {"trials": 3, "epochs": 2, "concurrency": 2},
    "asha": False,
    "fixed": {"image_size": 16, "train_images": 64, "val_images": 32, "width": 4, "batch_size": 16},
    "params": {"lr": {"low": "1e-4", "high": "1e-2", "log": True}, "kernel_size": [3, 5]},
}


def test_run_export_train(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    run = run_cli("run", "spec.yaml", "--name", "s1", "--cpus", "2", "--set", "precision=bf16", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "trials 3/3" in run.stdout and "Traceback" not in run.stdout + run.stderr
    assert re.search(r"^\*t\d{3}\s+completed", run.stdout, re.M)  # summary table marks the best
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "sweep_runs" / "s1" / "optuna-journal.log").exists()
    assert run.stdout.startswith("sweep s1: 3 trials x 2 epochs of vae")  # the name given, not the spec's
    listed = run_cli("list", cwd=tmp_path)
    line = r"s1  completed  vae  val_mse  3 trials: 3 completed; best t00\d [\d.e-]+ \(lower is better\)\n"
    assert re.fullmatch(line, listed.stdout), listed.stdout

    again = run_cli("run", "spec.yaml", "--name", "s1", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr

    report = run_cli("report", "s1", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "completed" in report.stdout and (tmp_path / "sweep_runs" / "s1" / "report" / "report.html").exists()
    header = next(line for line in run.stdout.splitlines() if line.startswith("trial  status"))
    assert sorted(report.stdout.splitlines()[0].split()) == sorted(header.split())  # the searched ones, not `fixed`
    assert sorted(header.split()) == ["epochs", "kernel_size", "lr", "reason", "status", "trial", "val_mse"]

    export = run_cli("export", "s1", "-o", "best.yaml", "--top-k", "2", "--skip-unstable", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    second = yaml.safe_load((tmp_path / "best.2.yaml").read_text())
    assert best["config"]["precision"] == "bf16" and best["epochs"] == 2
    # the Config's fields the spec left at their defaults, as they were: the file names every value trained with
    assert best["config"]["latent_dim"] == 16 and best["config"]["output_activation"] == "sigmoid"
    assert best["metric"]["value"] <= second["metric"]["value"]
    assert {"mlflow_run_id", "seed", "precision", "git_commit", "version"} <= set(best["source"])

    assert "vae.py" in best["source"]["files"]  # the trainer's files as the sweep ran them, by digest
    # the trainer's commit in the MLflow record too, run from a folder outside the checkout (it had '' there)
    meta = json.loads((tmp_path / "sweep_runs" / "s1" / "sweep.json").read_text())
    if meta["git_commit"]:  # the project is a git checkout
        client = mlflow.MlflowClient(meta["tracking_uri"])
        parent = client.get_run(meta["parent_run_id"])
        assert parent.data.tags["mlflow.source.git.commit"] == meta["git_commit"]
        run_id = best["source"]["mlflow_run_id"]
        environment = json.loads(Path(client.download_artifacts(run_id, "environment.json", str(tmp_path))).read_text())
        assert environment["git_commit"] == meta["git_commit"]
        assert client.get_run(run_id).data.tags["mlflow.source.git.commit"] == meta["git_commit"]
    train = run_cli("train", "best.yaml", "--save", "model.pt", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "source changed" not in train.stderr  # the same code: no note
    apart = re.search(r"\(([\d.e+-]+) apart, ([\d.]+)%\)", train.stdout)
    assert apart and float(apart.group(2)) < 1.0, train.stdout
    assert (tmp_path / "model.pt").exists()

    more = run_cli("export", "s1", "-o", "top.yaml", "--top-k", "5", cwd=tmp_path)  # 3 trials: says so
    assert more.returncode == 0 and "note: --top-k 5: sweep 's1' has 3 to export" in more.stderr, more.stderr

    missing = run_cli("export", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no sweep 'nope'" in missing.stderr and "s1" in missing.stderr


def test_the_next_line_names_the_command_as_the_user_can_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After scripts/demo.sh, ``sweeps`` is .venv/bin/sweeps, not on PATH: the pasted next: line was not found."""
    from sweeps.cli import command_name

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "sweeps").write_text("#!/bin/sh\n")
    (venv_bin / "sweeps").chmod(0o755)
    monkeypatch.setattr(sys, "argv", [".venv/bin/sweeps", "run"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command_name() == ".venv/bin/sweeps"
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # an activated venv: the bare name runs it
    assert command_name() == "sweeps"
