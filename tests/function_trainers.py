"""Function trainers for tests, and a channel that keeps every report and checkpoint in memory.

``amp_train`` is a loop of one's own with every precision through ``run.autocast()`` and
``run.scaler()``, loss terms as a dict, an image per epoch and checkpoints; the others are the
ways a function trainer can go wrong.
"""

from __future__ import annotations

import argparse
import copy
import io
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def amp_train(config: Any, run: Any) -> None:
    """A small convolutional autoencoder in the trial's precision; ``lr`` high enough diverges."""
    torch.manual_seed(config.seed)
    images = torch.rand(32, 3, 16, 16)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)
    ).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.get("lr", 1e-3))
    scaler = run.scaler(model, optimizer)
    run.checkpoint({"model": model, "optimizer": optimizer, "scaler": scaler})
    for epoch in range(run.restore(), run.epochs):
        for start in range(0, len(images), 8):
            x = images[start : start + 8].to(run.device)
            with run.autocast():
                out = model(x + 0.1 * torch.randn_like(x))
                terms = {"mse": F.mse_loss(out.float(), x), "l1": 0.1 * F.l1_loss(out.float(), x)}
            optimizer.zero_grad()
            scaler.scale(terms["mse"] + terms["l1"]).backward()
            scaler.step(optimizer)
            scaler.update()
            run.step(loss=terms, optimizer=optimizer, scaler=scaler, model=model, output=out)
        with torch.no_grad(), run.autocast():
            val = F.mse_loss(model(images[:8].to(run.device)).float(), images[:8].to(run.device)).item()
        run.image(out[:4].detach().float().clamp(0, 1))
        run.report(epoch + 1, val_loss=val)


amp_train.precisions = ("fp32", "bf16", "fp16", "fp16-o2")  # type: ignore[attr-defined]
amp_train.metrics = ("val_loss",)  # type: ignore[attr-defined]


def dead_relu_output(config: Any, run: Any) -> None:
    """A decoder whose ReLU output died at initialisation: all-zero output at every step, 4 steps an epoch.

    A sketch-to-image user's trials at batch size 64 trained 16 steps in all, fewer than ``collapse.steps``.
    """
    torch.manual_seed(config.seed)
    images = torch.rand(16, 1, 8, 8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        model[1].bias.fill_(-100.0)  # every pre-activation far below zero: no gradient ever reaches it
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(run.epochs):
        for start in range(0, len(images), 4):
            x = images[start : start + 4]
            out = model(x)
            loss = F.mse_loss(out, x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.step(loss=loss, optimizer=optimizer, output=out)
        run.report(epoch + 1, val_loss=F.mse_loss(model(images), images).item())


def no_checkpoint(config: Any, run: Any) -> None:
    """Reports each epoch, keeps no checkpoint: a restarted trial starts over."""
    torch.manual_seed(config.seed)
    weight = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=config.get("lr", 0.1))
    for epoch in range(config.get("epochs", run.epochs)):  # fewer than the trial's, if asked
        for _ in range(3):
            loss = ((weight - torch.randn(4)) ** 2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.step(loss=loss, optimizer=optimizer)
        run.report(epoch + 1, val_loss=loss)  # a tensor is fine


def nan_at_epoch_two(config: Any, run: Any) -> None:
    """A validation metric that is not finite at epoch 2."""
    for epoch in range(run.epochs):
        run.step(loss=1.0)
        run.report(epoch + 1, val_loss=math.nan if epoch == 1 else 1.0 / (epoch + 1))


def nan_steps_then_nan_metric(config: Any, run: Any) -> None:
    """NaN losses from step 3 (the detector's signal), then a NaN validation metric at epoch 2."""
    step = 0
    for epoch in range(run.epochs):
        for _ in range(2):
            step += 1
            run.step(loss=1.0 if step < 3 else math.nan)
        run.report(epoch + 1, val_loss=math.nan if epoch == 1 else 1.0)


def swallows_exceptions(config: Any, run: Any) -> None:
    """A loop that catches ``Exception`` around each step (and goes on); its loss is NaN from step 3."""
    for epoch in range(run.epochs):
        for step in range(5):
            try:
                run.step(loss=math.nan if epoch * 5 + step >= 2 else 1.0)
            except Exception:  # noqa: BLE001, S112 - as a user's loop does: a bad batch is skipped
                continue
        run.report(epoch + 1, val_loss=1.0)


def missing_data(config: Any, run: Any) -> None:
    """A loop whose data folder is not there: every trial fails the same way before its first step."""
    raise FileNotFoundError(f"data_dir {config.get('data_dir', '/no/such/dir')!r} does not exist")


def fails_above(config: Any, run: Any) -> None:
    """A loop that fails for a learning rate above 0.01 (a region of the space) and trains below it."""
    if config.lr > 0.01:
        raise RuntimeError("lr too large for this loop")
    for epoch in range(run.epochs):
        run.step(loss=1.0 / (epoch + 1))
        run.report(epoch + 1, val_loss=1.0 / (epoch + 1))


def reports_its_loss_scale(config: Any, run: Any) -> None:
    """A loop with a loss scaler of its own that reports the scale and its overflows beside its metric."""
    for epoch in range(run.epochs):
        run.step(loss=1.0, **{"model/loss_scale": 128.0, "model/skipped": 1.0})
        run.report(epoch + 1, overflows=epoch + 1, val_loss=0.5, loss_scale=128.0, val_psnr=20.0)


def diverges_at_each_precision(config: Any, run: Any) -> None:
    """fp16: a loss not finite under loss scaling (``loss_scale``, rescued at bf16); else a loss 100 x its first."""
    weight = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=config.precision == "fp16")
    for epoch in range(run.epochs):
        for step in range(10):
            late = epoch * 10 + step >= 2
            run.step(
                loss=(math.nan if config.precision == "fp16" else 100.0) if late else 1.0,
                optimizer=optimizer,
                scaler=scaler,
            )
        run.report(epoch + 1, val_loss=100.0)


diverges_at_each_precision.precisions = ("fp16", "bf16")  # type: ignore[attr-defined]


def falls_then_comes_back_up(config: Any, run: Any) -> None:
    """A loss that falls 100 x at its first step and comes back up to half its first value in epoch 3, whose first
    step a loss scaler skips: nothing to stop, and one overflow after calibration to count."""
    model = nn.Linear(1, 1)
    run.checkpoint({"model": model})
    for epoch in range(run.restore(), run.epochs):
        for i in range(10):
            loss = 1.0 if epoch == i == 0 else 0.5 if epoch == 2 else 0.01
            run.step(
                loss=loss, model=model, **{"model/loss_scale": 1024.0, "model/skipped": float(epoch == 2 and i == 0)}
            )
        run.report(epoch + 1, val_loss=loss)


def never_reports(config: Any, run: Any) -> None:
    """Trains and returns without a report."""
    run.step(loss=1.0)


def one_epoch_whatever_the_budget(config: Any, run: Any) -> None:
    """A loop that runs its own epoch count, not ``run.epochs``."""
    for epoch in range(1):
        run.step(loss=1.0)
        run.report(epoch + 1, val_loss=0.5)


def reports_from_zero(config: Any, run: Any) -> None:
    """The off-by-one a user writes: ``run.report(epoch)`` in ``for epoch in range(run.epochs)``."""
    for epoch in range(run.epochs):
        run.step(loss=1.0)
        run.report(epoch, val_loss=0.5)


def reports_steps_as_epochs(config: Any, run: Any) -> None:
    """Validates every 40 steps and reports the step count where the epoch goes (a user's first mapping)."""
    for step in range(1, 40 * run.epochs + 1):
        run.step(loss=1.0)
        if step % 40 == 0:
            run.report(step, val_loss=0.5)


def code_after_its_loop(config: Any, run: Any) -> None:
    """Writes what each report returned, then a line after its loop (a final test, a save, closing a file)."""
    with open(config["out"], "w") as out:
        for epoch in range(run.epochs):
            run.step(loss=1.0)
            out.write(f"report {epoch + 1} returned {run.report(epoch + 1, val_loss=0.5)}\n")
        out.write("after the loop\n")


def images_from_tanh(config: Any, run: Any) -> None:
    """Logs a generator's tanh output, in [-1, 1], as it is."""
    import torch

    for epoch in range(run.epochs):
        run.step(loss=1.0)
        run.image(torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8))  # a batch, tiled (and clamped) in a row
        run.report(epoch + 1, val_loss=0.5)


def logs_to_mlflow_itself(config: Any, run: Any) -> None:
    """A loop that already logged with MLflow's fluent API, no tracking URI of its own."""
    import mlflow

    with mlflow.start_run(run_name=f"mine-{run.name}"):
        for epoch in range(run.epochs):
            run.step(loss=1.0)
            mlflow.log_metric("mine", float(epoch), step=epoch)
            run.report(epoch + 1, val_loss=0.5)


def stops_itself_after_one_epoch(config: Any, run: Any) -> None:
    """Early stopping of its own, as the docs say: raise StopTrial."""
    from sweeps import StopTrial

    run.report(1, val_loss=0.5)
    raise StopTrial("no better for 3 epochs")


def reports_other_metric(config: Any, run: Any) -> None:
    """Reports ``val_psnr`` where the sweep asks for ``val_loss``."""
    run.report(1, val_psnr=20.0)


def two_networks(config: Any, run: Any) -> None:
    """A GAN-shaped step: two networks, two optimizers, one call."""
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    opt_g, opt_d = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.2)
    for epoch in range(run.epochs):
        loss_d = d(g(torch.ones(1, 2)).detach()).sum()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = -d(g(torch.ones(1, 2))).sum()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        run.step(loss={"g": loss_g, "d": loss_d}, optimizer={"g": opt_g, "d": opt_d}, **{"d/real_mean": 0.5})
        run.report(epoch + 1, val_loss=1.0)


def script_main(argv: Any = None, config: Any = None, run: Any = None) -> None:
    """A script's entry point, given a config and run of its own: not a function trainer's (config, run)."""
    raise AssertionError("never called: the spec is refused")


def keyword_only(*, config: Any, run: Any) -> None:
    """Takes its arguments by keyword only."""


def generator(config: Any, run: Any) -> Any:
    """Yields: calling it trains nothing."""
    yield run.report(1, val_loss=1.0)


async def coroutine(config: Any, run: Any) -> None:
    """An async def: calling it trains nothing."""
    run.report(1, val_loss=1.0)


def wrong_signature(config: Any) -> None:
    """Takes no ``run``: not a trainer."""


class MemoryChannel:
    """The loop's channel in memory: every report, and each checkpoint as ``torch.save`` would store it.

    ``stop_after``: the driver stops the trial after that epoch's report (as ASHA would);
    ``restore_from``: the checkpoint state a restarted trial gets.
    """

    def __init__(self, stop_after: int | None = None, restore_from: dict[str, Any] | None = None) -> None:
        self.stop_after, self.restore_from = stop_after, restore_from
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: dict[int, dict[str, Any]] = {}

    def restore(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.restore_from)

    def agree(self, decision: bool) -> bool:
        return decision

    def report(self, result: dict[str, Any], state: Any) -> bool:
        self.reports.append(dict(result))
        if state is None:
            return False
        buffer = io.BytesIO()
        torch.save(state(), buffer)
        buffer.seek(0)
        self.checkpoints[int(result["epoch"])] = torch.load(buffer, weights_only=False)
        return self.stop_after is None or int(result["epoch"]) < self.stop_after

    def metric(self, name: str = "val_loss") -> list[tuple[int, float]]:
        return [(int(r["epoch"]), r[name]) for r in self.reports if name in r]


def parses_its_command_line(config: Any, run: Any) -> None:
    """A script's ``main`` kept as it was: argparse reads the process's command line (Ray's worker arguments)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.parse_args(["--node-ip-address=10.0.0.1"])


def keeps_files_of_its_own(config: Any, run: Any) -> None:
    """A loop writing its own file per trial (named by ``run.name``) and adding it to the trial's MLflow run."""
    from mlflow import MlflowClient

    for epoch in range(run.epochs):
        path = f"{config.out_dir}/{run.name}.txt"
        with open(path, "a") as handle:
            handle.write(f"epoch {epoch + 1}\n")
        if run.mlflow_run_id is not None:
            MlflowClient(run.tracking_uri).log_artifact(run.mlflow_run_id, path, "mine")
        run.report(epoch + 1, val_loss=1.0 / (epoch + 1))
