"""A loop with its own ``GradScaler`` that does not pass it to ``run.step``: an overflow is a skipped step.

A user's fp16 loop called ``run.step(loss=loss, optimizer=opt)`` and left out ``scaler=``; its
first overflow (the scaler lowering its initial scale) was stopped at once as ``non_finite``, "the
weights are NaN", though the scaler had skipped the step and the weights were untouched. The
detector now reads a non-finite gradient over weights that stayed finite as a skipped step.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sweeps.divergence import DivergenceDetector
from sweeps.tracking.curves import CurveHistory
from sweeps.trial.epoch_loop import StepWatch
from sweeps.trial.function_run import FunctionRun
from sweeps.trial.stops import DivergedError

COUNTS = {"sweep/steps": 0.0, "sweep/skipped_steps": 0.0}


def _run() -> tuple[FunctionRun, StepWatch]:
    watch = StepWatch(DivergenceDetector(), dict(COUNTS), None, CurveHistory())
    return FunctionRun({"precision": "fp16"}, 1, watch, lambda e, m, i: True), watch


def _model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


def _fp16_loop(steps: int, blow_up: range, pass_scaler: bool) -> tuple[int, DivergedError | None, StepWatch]:
    """A user's fp16 loop with its own GradScaler (initial scale 2**28: overflows while it calibrates)."""
    model, optimizer = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**28)
    run, watch = _run()
    x = torch.rand(8, 3, 16, 16)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), x)
        if step in blow_up:
            loss = loss * 1e30  # finite, but no loss scale of 2 or more keeps its gradient finite
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        try:
            run.step(loss=loss, optimizer=optimizer, **({"scaler": scaler} if pass_scaler else {}))
        except DivergedError as stop:
            return step, stop, watch
    return steps, None, watch


@pytest.mark.parametrize("pass_scaler", [True, False])
def test_calibration_overflows_of_a_scaler_not_passed_do_not_stop_the_trial(pass_scaler: bool) -> None:
    ran, stop, _ = _fp16_loop(40, range(0), pass_scaler)
    assert stop is None and ran == 40  # before: non_finite at step 1 without scaler=


@pytest.mark.parametrize("pass_scaler", [True, False])
def test_a_run_of_overflows_after_calibration_is_a_loss_scale_stop_either_way(pass_scaler: bool) -> None:
    ran, stop, _ = _fp16_loop(60, range(35, 60), pass_scaler)
    assert stop is not None and stop.divergence.signal == "loss_scale", stop
    assert "consecutive overflow steps" in stop.divergence.reason
    assert ran == 35 + 5  # six overflowed steps in a row: 35..40


def test_an_inf_gradient_applied_without_a_scaler_is_still_non_finite_at_once() -> None:
    model, optimizer = _model()
    run, _ = _run()
    x = torch.rand(8, 3, 16, 16)
    with pytest.raises(DivergedError) as info:
        for step in range(1, 6):
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), x) * (math.inf if step == 3 else 1.0)
            loss.backward()
            optimizer.step()  # steps on it: the weights are NaN
            run.step(loss=loss, optimizer=optimizer)
    assert info.value.divergence.signal == "non_finite" and info.value.divergence.step == 3
    assert not all(torch.isfinite(p).all() for p in model.parameters())
