"""The overflowed-step count behind ``skipped_share`` and ``sweeps export --skip-unstable``, calibration left out.

A real fp16 loop with its own ``GradScaler`` overflows on its first steps while the scaler lowers
its initial scale to one that fits; that is not instability (the detector's ``loss_scale`` treats it
the same way), so an fp16 trial of a few dozen steps is not called unstable for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.divergence import DivergenceDetector
from sweeps.tracking.curves import CurveHistory
from sweeps.trial.epoch_loop import OverflowCount, StepWatch
from trainables.diagnostics import StepProbe

COUNTS = {"sweep/steps": 0.0, "sweep/skipped_steps": 0.0}


def test_gradscalers_start_up_calibration_is_not_counted_and_a_later_overflow_is() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**28)
    probe = StepProbe("model", optimizer)
    watch = StepWatch(DivergenceDetector(), dict(COUNTS), None, CurveHistory())
    x = torch.rand(8, 3, 16, 16)
    skipped = []
    for step in range(1, 41):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), x)
        if step == 35:
            loss = loss * 1e30  # one overflow after calibration: a corrupted batch
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        metrics = {"loss": float(loss.detach()), **probe(scaler)}
        skipped.append(metrics["model/skipped"])
        watch(step, metrics)
    calibration = skipped.index(0.0)
    assert 4 <= calibration <= 24, skipped  # real overflows while the scale came down from 2**28
    assert skipped[34] == 1.0 and sum(skipped[calibration:]) == 1.0, skipped
    assert watch.counts["sweep/steps"] == 40 and watch.counts["sweep/skipped_steps"] == 1.0


def test_each_network_calibrates_on_its_own_and_a_first_run_past_the_calibration_counts() -> None:
    count = OverflowCount()
    # g calibrates for 3 steps; d has good steps from the start, so its overflow on step 2 counts.
    steps = [{"g/skipped": 1.0, "d/skipped": 0.0}, {"g/skipped": 1.0, "d/skipped": 1.0}, {"g/skipped": 1.0}]
    steps += [{"g/skipped": 0.0, "d/skipped": 0.0}, {"g/skipped": 1.0, "d/skipped": 0.0}]
    assert [count.overflowed(s) for s in steps] == [0, 1, 0, 0, 1]
    # a first run past the calibration was none: it counts whole (30 of 30 overflowed read as 20% skipped)
    never = OverflowCount()
    calibration = OverflowCount.CALIBRATION
    counted = [never.overflowed({"skipped": 1.0}) for _ in range(calibration + 6)]
    assert counted == [0] * calibration + [calibration + 1] + [1] * 5
    assert sum(counted) == calibration + 6
