"""The contract every trainer passes: finite metrics, determinism, exact resume, every precision.

Class trainers are driven here method by method; function trainers (``train(config, run)``)
through the one epoch loop, as a trial or ``sweeps train`` runs them, with an in-memory channel.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import subprocess
import sys
from typing import Any

import pytest
import torch

from sweeps.core.plan import TrialPlan
from sweeps.trial.epoch_loop import EpochLoop
from tests.function_trainers import MemoryChannel
from tests.helpers import TINY_CONFIGS, run_epochs, tiny_trainer
from trainables import load_trainer
from trainables.protocol import declared_metrics, declared_precisions

PRECISIONS = ["fp32", "bf16", "fp16", "O1", "fp16-o2", "O2"]


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
class TestTrainerContract:
    def test_metrics_are_finite_and_declared_ones_present(self, name: str) -> None:
        metrics = run_epochs(tiny_trainer(name), 1)[0]
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        assert set(getattr(load_trainer(name), "metrics", ())) <= set(metrics)

    def test_same_seed_same_losses(self, name: str) -> None:
        assert run_epochs(tiny_trainer(name, seed=3), 2) == run_epochs(tiny_trainer(name, seed=3), 2)
        assert run_epochs(tiny_trainer(name, seed=3), 1) != run_epochs(tiny_trainer(name, seed=4), 1)

    def test_checkpoint_round_trip_gives_identical_next_epoch(self, name: str) -> None:
        first = tiny_trainer(name, precision="fp16")
        run_epochs(first, 1)
        buffer = io.BytesIO()
        torch.save(copy.deepcopy(first.state_dict()), buffer)
        expected = run_epochs(first, 1)
        resumed = tiny_trainer(name, precision="fp16")
        torch.manual_seed(12345)  # global RNG elsewhere: the state must restore it
        buffer.seek(0)
        resumed.load_state_dict(torch.load(buffer, weights_only=False))
        assert run_epochs(resumed, 1) == expected

    @pytest.mark.parametrize("precision", PRECISIONS)
    def test_every_precision_runs(self, name: str, precision: str) -> None:
        metrics = run_epochs(tiny_trainer(name, precision=precision), 1)[0]
        assert all(math.isfinite(v) for v in metrics.values())


FUNCTIONS: dict[str, dict[str, Any]] = {
    "examples.plain_loop_sweepable:train": {},  # the plain loop, kept as it is
    "tests.function_trainers:amp_train": {"device": "cpu", "init_scale": 1024.0},  # every precision
}


class _StepRecordingLoop(EpochLoop):
    """The epoch loop, keeping every step's diagnostics as the step hook gets them."""

    def step_hook(self) -> Any:
        hook = super().step_hook()
        self.steps: list[dict[str, float]] = []

        def record(step: int, metrics: dict[str, float]) -> None:
            self.steps.append({"step": step, **metrics})
            hook(step, metrics)

        return record


def run_function(name: str, epochs: int, restore_from: Any = None, **overrides: Any) -> tuple[Any, MemoryChannel]:
    channel = MemoryChannel(restore_from=restore_from)
    loop = _StepRecordingLoop(TrialPlan(name, "val_loss", epochs), {**FUNCTIONS[name], **overrides})
    with contextlib.redirect_stdout(io.StringIO()):
        loop.run(channel)
    return loop, channel


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
class TestFunctionTrainerContract:
    def test_metrics_are_finite_and_declared_ones_present(self, name: str) -> None:
        loop, channel = run_function(name, 1)
        report = channel.reports[0]
        assert all(math.isfinite(v) for v in report.values() if isinstance(v, float)), report
        assert set(declared_metrics(load_trainer(name))) <= set(report) and "val_loss" in report
        assert {"loss", "model/lr", "model/grad_norm", "model/weight_norm_last"} <= set(loop.steps[0])

    def test_same_seed_same_losses(self, name: str) -> None:
        first, second, other = (
            run_function(name, 2, seed=3),
            run_function(name, 2, seed=3),
            run_function(name, 1, seed=4),
        )
        assert first[1].metric() == second[1].metric() and first[0].steps == second[0].steps
        assert first[1].metric()[:1] != other[1].metric() and first[0].steps[0] != other[0].steps[0]

    def test_checkpoint_round_trip_gives_identical_next_epoch(self, name: str) -> None:
        full, channel = run_function(name, 2)
        torch.manual_seed(12345)  # global RNG elsewhere: the checkpoint must restore it
        resumed, again = run_function(name, 2, restore_from=channel.checkpoints[1])
        assert again.metric() == channel.metric()[1:]
        assert resumed.steps == full.steps[len(full.steps) // 2 :]  # the same steps, numbered as before

    @pytest.mark.parametrize("precision", PRECISIONS)
    def test_every_precision_runs(self, name: str, precision: str) -> None:
        from trainables.precision import canonical_precision

        if canonical_precision(precision) not in (declared_precisions(load_trainer(name)) or ()):
            pytest.skip(f"{name} does not run {precision}")
        _, channel = run_function(name, 1, precision=precision)
        assert all(math.isfinite(v) for _, v in channel.metric())


def test_fp16_uses_a_loss_scale_and_fp32_does_not() -> None:
    assert run_epochs(tiny_trainer("vae", precision="fp16", init_scale=1024.0), 1)[0]["loss_scale"] == 1024.0
    assert run_epochs(tiny_trainer("vae", precision="fp32"), 1)[0]["loss_scale"] == 1.0


def test_importing_trainables_imports_neither_ray_nor_mlflow() -> None:
    code = (
        "import sys, trainables, trainables.vae, trainables.registry;"
        "bad = [m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
