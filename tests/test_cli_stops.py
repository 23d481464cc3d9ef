"""The command stopped part-way: Ctrl-C in ``sweeps train``, and a disk that fills as it writes (real subprocesses)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.helpers import ROOT

TRAINER = """
import time
from pathlib import Path

import torch


def train(config, run):
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    run.checkpoint({"model": model, "optimizer": optimizer})
    for epoch in range(run.restore(), run.epochs):
        loss = model(torch.ones(4, 64)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.step(loss=loss, optimizer=optimizer)
        if config.get("hang"):
            Path("training").write_text("")
            time.sleep(120)
        run.report(epoch + 1, val_loss=loss.item())
"""


def exported(folder: Path, **config: object) -> Path:
    (folder / "tiny_train.py").write_text(TRAINER)
    path = folder / "best.yaml"
    data = {"trainer": "tiny_train:train", "epochs": 2, "metric": {"name": "val_loss", "mode": "min"}}
    path.write_text(yaml.safe_dump({**data, "config": {"lr": 0.01, **config}}))
    return path


def sweeps(folder: Path, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sweeps", *args]
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )  # type: ignore[call-overload]


def test_ctrl_c_in_sweeps_train_ends_it_in_one_line_with_130(tmp_path: Path) -> None:
    """A user's Ctrl-C 5 s into ``sweeps train``: 37 lines of traceback ending in TrainerExitError, exit 1."""
    exported(tmp_path, hang=True)
    process = sweeps(tmp_path, "train", "best.yaml")
    deadline = time.monotonic() + 120
    while not (tmp_path / "training").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == "stopped by Ctrl-C\n", (out, err)


def test_a_disk_that_fills_while_the_model_is_saved_is_one_line_and_keeps_the_earlier_file(tmp_path: Path) -> None:
    """A full disk at ``--save``: a 20-line traceback (``unexpected pos 64 vs 0``) and a 0-byte model.pt in place.

    The file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes writes past 4 KiB fail as a full disk does.
    """
    exported(tmp_path)
    earlier = tmp_path / "model.pt"
    torch.save({"earlier": 1}, earlier)  # a model saved before: a failed save must not destroy it
    before = earlier.read_bytes()

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    process = sweeps(tmp_path, "train", "best.yaml", "--save", "model.pt", preexec_fn=small_disk)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, (out, err)
    assert err.startswith("error: could not write model.pt (is the disk full?): ") and err.count("\n") == 1, err
    assert err.rstrip().endswith("nothing was written there") and "epoch 2/2" in out
    assert earlier.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no part file left


def test_a_sigint_to_the_sweeps_process_alone_stops_the_sweep_as_ctrl_c_does_and_keeps_the_best_checkpoints(
    tmp_path: Path,
) -> None:
    """A user's ``kill -INT`` of the driver: 2 of 8 trials, ``completed``, exit 0, and ``sweeps resume`` refused it.

    Tune's own SIGINT handler ended ``fit()`` as if the sweep were done. The trials that finished
    after the signal had their ends recorded but no checkpoint uploaded (Tune took no result of
    theirs): the sweep's best had none.
    """
    from mlflow import MlflowClient

    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "sig",
                "trainer": "tests.toy_trainer:ToyTrainer",
                "metric": {"name": "val_loss", "mode": "min"},
                "budget": {"trials": 6, "epochs": 3, "concurrency": 2},
                "asha": False,
                "fixed": {"epoch_seconds": 1.0, "stagger": True},
                "params": {"lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True}},
            }
        )
    )
    process = sweeps(
        tmp_path, "run", "spec.yaml", "--name", "sig", "--storage", "runs", "--cpus", "2", start_new_session=True
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # the first trial's end, then a SIGINT to this process only, not its group
        seen.append(line)
        if " completed " in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    out = "".join(seen) + out
    assert process.returncode == 130, (out, err)
    assert "stopped: by Ctrl-C" in out and " --storage runs --cpus 2 --warm-start sig\n" in out  # --cpus was left out
    meta = json.loads((tmp_path / "runs" / "sig" / "sweep.json").read_text())
    assert meta["status"] == "interrupted"
    client = MlflowClient(meta["tracking_uri"])
    assert client.get_run(meta["parent_run_id"]).info.status == "KILLED"
    trials = client.search_runs([meta["experiment_id"]], f"tags.`mlflow.parentRunId` = '{meta['parent_run_id']}'")
    done = sorted(
        (r.data.metrics["val_loss"], r.info.run_id) for r in trials if r.data.tags.get("sweep.status") == "completed"
    )
    assert done, out
    for _, run_id in done[:3]:  # record.checkpoints: the best 3 completed
        assert "checkpoint" in [a.path for a in client.list_artifacts(run_id)], (run_id, out)
    # the record says so the next morning: the summary, the report and its page (the terminal alone did)
    assert meta["stopped"].startswith("by Ctrl-C after ") and meta["stopped"].endswith(" of 6 trials")
    summary = client.download_artifacts(meta["parent_run_id"], "summary.txt", str(tmp_path))
    assert f"stopped: {meta['stopped']}" in Path(summary).read_text()
    assert (
        f"Stopped {meta['stopped']}; to go on from it"
        in (tmp_path / "runs" / "sig" / "report" / "report.html").read_text()
    )
    report = sweeps(tmp_path, "report", "sig", "--storage", "runs")
    printed, _ = report.communicate(timeout=120)
    assert report.returncode == 0 and f"stopped: {meta['stopped']}; to go on from it: " in printed, printed
    assert " --storage runs --cpus 2 --warm-start sig\n" in printed, printed
    listing = sweeps(tmp_path, "list", "--storage", "runs")
    listed, _ = listing.communicate(timeout=120)  # `sweeps list` said "interrupted" alone
    assert f"sig  interrupted ({meta['stopped']})  " in listed, listed
