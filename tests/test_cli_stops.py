"""The command stopped part-way: Ctrl-C in ``sweeps train``, and a disk that fills as it writes (real subprocesses)."""

from __future__ import annotations

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
