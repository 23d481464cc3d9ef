"""Function trainers ``train(config, run)``: the run's calls, the one epoch loop around them, and bad input.

No Ray: the loop runs with an in-memory channel (``tests.function_trainers.MemoryChannel``), as
``sweeps train`` runs it with its printing one. The sweep itself is in ``test_sweep_integration``.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from sweeps.cli import main
from sweeps.core.failures import ends_the_sweep, failure_reason
from sweeps.core.keys import DIVERGED_KEY, REASON_KEY, SIGNAL_KEY, STEP_KEY, STEPS_KEY
from sweeps.core.plan import TrialPlan
from sweeps.engine.searcher import rescue_precision
from sweeps.spec.sweep_spec import SpecError, load_spec
from sweeps.tracking.trial_logger import TrialLogger
from sweeps.trial.epoch_loop import EpochLoop, MetricMissingError
from sweeps.trial.function_run import FunctionRun, trial_config
from sweeps.trial.stops import (
    MetricsTypeError,
    ReportCallError,
    ReturnedEarlyError,
    RunCallError,
    TrainerExitError,
)
from tests.function_trainers import MemoryChannel
from trainables.diagnostics import StepProbe, loss_metrics
from trainables.mixed_precision import loss_scaler
from trainables.protocol import STEP_CONTRACT, Run, StopTrial, declared_precisions

EXAMPLE = "examples.plain_loop_sweepable:train"
ROOT = Path(__file__).resolve().parent.parent


def run_loop(trainer: str, params: dict[str, Any], epochs: int = 3, channel: MemoryChannel | None = None, **plan: Any):
    channel = channel or MemoryChannel()
    loop = EpochLoop(TrialPlan(trainer, plan.pop("metric", "val_loss"), epochs, **plan), params)
    with contextlib.redirect_stdout(io.StringIO()):
        loop.run(channel)
    return loop, channel


def recording_run(epochs: int = 3, answers: list[bool] | None = None) -> tuple[FunctionRun, list[Any], list[Any]]:
    steps: list[Any] = []
    ends: list[Any] = []
    answers = list(answers or [])

    def end_epoch(epoch: int, metrics: dict[str, float], image: Any) -> bool:
        ends.append((epoch, metrics, image))
        return answers.pop(0) if answers else True

    run = FunctionRun({"lr": 0.1}, epochs, lambda step, metrics: steps.append((step, metrics)), end_epoch)
    return run, steps, ends


# -- config -------------------------------------------------------------------------------------


def test_config_has_attribute_and_key_access_with_seed_and_precision() -> None:
    assert isinstance(recording_run()[0], Run)  # the run a function gets is the protocol's
    config = trial_config({"lr": 0.1, "precision": "O1"})
    assert config.lr == config["lr"] == 0.1
    assert config.seed == 0 and config.precision == "fp16"  # always there; precision canonical
    assert config.get("width", 16) == 16
    with pytest.raises(AttributeError, match="config has no 'width'.*config.get"):
        _ = config.width


# -- run.step: the step contract derived ---------------------------------------------------------


def test_step_derives_loss_terms_lr_and_norms_of_the_optimizers_parameters() -> None:
    run, steps, _ = recording_run()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    loss = model(torch.ones(5, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    run.step(loss={"a": loss, "b": 0.5}, optimizer=optimizer, output=torch.zeros(2, 3))
    step, metrics = steps[0]
    first, last = model[0].weight, model[2].weight
    grads = [p.grad for p in model.parameters()]
    assert step == 1 and metrics["loss"] == pytest.approx(loss.item() + 0.5)
    assert metrics["loss/a"] == pytest.approx(loss.item()) and metrics["loss/b"] == 0.5
    assert metrics["model/lr"] == 0.25
    assert metrics["model/grad_norm"] == pytest.approx(float(torch.nn.utils.get_total_norm(grads)))
    assert metrics["model/grad_norm_first"] == pytest.approx(float(first.grad.norm()))
    assert metrics["model/grad_norm_last"] == pytest.approx(float(last.grad.norm()))
    assert metrics["model/weight_norm_last"] == pytest.approx(float(last.detach().norm()))
    assert metrics["output_mean"] == 0.0 and metrics["output_std"] == 0.0
    names = {key.name for key in STEP_CONTRACT}
    assert {k.replace("model/", "<net>/").replace("loss/a", "loss/<term>") for k in metrics} - {"loss/b"} <= names


def test_step_reads_loss_scale_and_skipped_steps_from_a_grad_scaler() -> None:
    run, steps, _ = recording_run()
    weight = nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # a plain GradScaler, not run.scaler()
    for value in (1.0, math.inf, 1.0):
        optimizer.zero_grad()
        scaler.scale((weight * value).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        run.step(loss=float((weight * value).sum().detach()), optimizer=optimizer, scaler=scaler)
    seen = [(m["model/loss_scale"], m["model/skipped"]) for _, m in steps]
    assert seen == [(1024.0, 0.0), (512.0, 1.0), (512.0, 0.0)]
    assert math.isinf(steps[1][1]["model/grad_norm"])  # unscaled by the scaler's step: the overflow shows


def test_one_grad_scaler_for_two_networks_records_the_first_step_each_skipped() -> None:
    """A user's GAN with one GradScaler (PyTorch's multi-optimizer AMP example): G's first step overflowed and
    was skipped, D's was taken; MLflow had ``g/skipped`` 0 at step 1."""
    run, steps, _ = recording_run()
    g, d = nn.Linear(4, 1), nn.Linear(4, 1)
    opt_g, opt_d = torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.ones(2, 4)
    for blowup in (1e38, 1.0, 1.0, 1e38):  # G overflows at steps 1 and 4
        for opt in (opt_d, opt_g):
            opt.zero_grad()
        loss_d = d(x).pow(2).mean()
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        loss_g = g(x).pow(2).mean() * blowup
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        run.step(loss=loss_g, optimizer={"g": opt_g, "d": opt_d}, scaler=scaler, **{"loss/d": loss_d})
    assert [(m["g/skipped"], m["d/skipped"]) for _, m in steps] == [(1.0, 0.0), (0.0, 0.0), (0.0, 0.0), (1.0, 0.0)]
    assert [m["g/loss_scale"] for _, m in steps] == [512.0, 512.0, 512.0, 256.0]
    # fp32: a disabled scaler (scale 1, below its init_scale) skips nothing, whatever the optimizer keeps
    run, steps, _ = recording_run()
    weight = nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=0.1)  # no state: its step leaves no trace but the weights
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    scaler.scale(weight.sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    run.step(
        loss=weight.sum(),
        optimizer={"g": optimizer, "d": torch.optim.SGD([nn.Parameter(torch.ones(1))])},
        scaler=scaler,
    )
    assert (steps[0][1]["g/skipped"], steps[0][1]["g/loss_scale"]) == (0.0, 1.0)


def test_runs_scaler_records_its_own_skipped_steps_even_at_its_floor() -> None:
    weight = nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    run = FunctionRun({"precision": "fp16", "init_scale": 2.0, "min_loss_scale": 2.0}, 1, lambda s, m: None, None)  # type: ignore[arg-type]
    scaler = run.scaler()
    probe = StepProbe("model", optimizer)
    for _ in range(2):
        optimizer.zero_grad()
        scaler.scale((weight * math.inf).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        assert probe(scaler)["model/skipped"] == 1.0 and scaler.get_scale() == 2.0  # the floor holds


def test_several_networks_in_one_step() -> None:
    loop, channel = run_loop("tests.function_trainers:two_networks", {}, epochs=1)
    assert channel.reports[-1]["epoch"] == 1
    # the loop's curves keep what the step hook saw when it records; here, read the names off a run
    run, steps, _ = recording_run()
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    opt_g, opt_d = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.2)
    for _ in range(2):  # at the first call of several networks their gradients are not read (not their steps')
        (g(torch.ones(1, 2)).sum() + d(torch.ones(1, 2)).sum()).backward()
        opt_g.step()
        opt_d.step()
        run.step(loss={"g": 1.0, "d": 2.0}, optimizer={"g": opt_g, "d": opt_d}, **{"d/real_mean": 0.5})
    metrics = steps[1][1]
    assert metrics["g/lr"] == 0.1 and metrics["d/lr"] == 0.2 and metrics["d/real_mean"] == 0.5
    assert {"g/grad_norm", "d/grad_norm", "loss/g", "loss/d"} <= set(metrics) and metrics["loss"] == 3.0


def gan_iteration(g: nn.Module, d: nn.Module, opts: tuple[Any, Any], scalers: tuple[Any, Any]) -> float:
    """One fp16 GAN iteration as users write it: D's step, then G's, whose backward leaves gradients in D.

    Returns the norm of the gradients D's step applied (unscaled), as read just before it.
    """
    (opt_g, opt_d), (scaler_g, scaler_d) = opts, scalers
    real, z = torch.randn(8, 4), torch.randn(8, 2)
    opt_d.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss_d = torch.relu(1 - d(real)).mean() + torch.relu(1 + d(g(z).detach())).mean()
    scaler_d.scale(loss_d).backward()
    scaler_d.unscale_(opt_d)
    applied = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in d.parameters()])))
    scaler_d.step(opt_d)
    scaler_d.update()
    opt_g.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss_g = -d(g(z)).mean()
    scaler_g.scale(loss_g).backward()  # D's .grad now holds G's scaled gradient through D
    scaler_g.step(opt_g)
    scaler_g.update()
    return applied


def test_a_gans_one_step_call_records_each_networks_gradients_as_its_own_step_applied_them() -> None:
    """A user's fp16 GAN, run.step once per G step: d/grad_norm was G's backward through D, times G's loss scale."""
    torch.manual_seed(0)
    g, d = nn.Linear(2, 4), nn.Linear(4, 1)
    opts = (torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3))
    scalers = (torch.amp.GradScaler("cpu", init_scale=2.0**16), torch.amp.GradScaler("cpu", init_scale=2.0**8))
    run, steps, _ = recording_run()
    for step in range(1, 4):  # the first call puts the hook on: from the second on, the norms are the applied ones
        applied = gan_iteration(g, d, opts, scalers)
        run.step(loss=1.0, optimizer={"g": opts[0], "d": opts[1]}, scaler={"g": scalers[0], "d": scalers[1]})
        if step > 1:
            assert steps[-1][1]["d/grad_norm"] == pytest.approx(applied, rel=1e-3)
    assert "d/grad_norm" not in steps[0][1]  # at the first call D's gradients are G's backward's: none recorded


def test_one_gradscaler_for_a_gans_two_optimizers_is_both_networks_and_a_skip_is_the_one_that_overflowed() -> None:
    """One GradScaler for a dict of optimizers (PyTorch's own pattern) was dropped: no loss scale recorded.

    Then, shared, its scale fell for G's overflow and D's step was counted skipped too (a user's GAN: 5 to 17 steps).
    """
    torch.manual_seed(0)
    g, d = nn.Linear(2, 4), nn.Linear(4, 1)
    opts = (torch.optim.Adam(g.parameters(), lr=1e-3), torch.optim.Adam(d.parameters(), lr=1e-3))
    shared = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    run, steps, _ = recording_run()
    gan_iteration(g, d, opts, (shared, shared))
    run.step(loss=1.0, optimizer={"g": opts[0], "d": opts[1]}, scaler=shared)
    assert steps[-1][1]["g/loss_scale"] == steps[-1][1]["d/loss_scale"] == 1024.0
    opts[1].zero_grad()  # D steps; then G's loss overflows: only G's step is skipped
    shared.scale(torch.relu(1 - d(torch.randn(8, 4))).mean()).backward()
    shared.step(opts[1])
    opts[0].zero_grad()
    shared.scale(-d(g(torch.randn(8, 2))).mean() * math.inf).backward()
    shared.step(opts[0])
    shared.update()
    run.step(loss=1.0, optimizer={"g": opts[0], "d": opts[1]}, scaler=shared)
    last = steps[-1][1]
    assert last["g/loss_scale"] == 512.0 and (last["g/skipped"], last["d/skipped"]) == (1.0, 0.0)


def test_loss_metrics_fetch_every_term_at_once() -> None:
    assert loss_metrics(torch.tensor(2.0)) == {"loss": 2.0}
    assert loss_metrics({"x": torch.tensor(1.0), "y": 2}) == {"loss": 3.0, "loss/x": 1.0, "loss/y": 2.0}


# -- run.report ----------------------------------------------------------------------------------


def test_report_goes_on_then_ends_at_the_last_epoch_then_stops() -> None:
    run, _, ends = recording_run(epochs=2)
    assert run.report(1, val_loss=torch.tensor(0.5)) is True
    assert run.report(2, val_loss=0.25) is False  # the budget's last epoch
    assert [(e, m) for e, m, _ in ends] == [(1, {"val_loss": 0.5}), (2, {"val_loss": 0.25})]
    with pytest.raises(StopTrial, match="past the trial's last epoch"):
        run.report(3, val_loss=0.1)


def test_report_raises_stop_trial_when_the_sweep_stops_the_trial() -> None:
    run, _, _ = recording_run(epochs=5, answers=[True, False])
    run.report(1, val_loss=1.0)
    with pytest.raises(StopTrial, match="stopped by the sweep after epoch 2"):
        run.report(2, val_loss=1.0)


@pytest.mark.parametrize("epoch", [0, 1, 1.5])
def test_report_epochs_count_from_one_and_rise(epoch: Any) -> None:
    run, _, _ = recording_run()
    if epoch == 1:
        run.report(1, val_loss=1.0)
    with pytest.raises(ValueError, match="report epoch \\+ 1"):
        run.report(epoch, val_loss=1.0)


def test_report_of_a_string_is_refused() -> None:
    run, _, _ = recording_run()
    with pytest.raises(TypeError, match="val_loss is a str, not a number"):
        run.report(1, val_loss="0.1")


def test_numpy_numbers_are_numbers_and_a_bad_step_value_names_run_step() -> None:
    """A user's ``np.float32`` metric was "not a number"; ``run.step(acc="high")`` failed inside float()."""
    import numpy as np

    run, steps, ends = recording_run()
    run.step(loss=np.float32(0.5), acc=np.float64(0.25))
    run.report(1, val_loss=np.float32(0.125), val_acc=np.int64(3))
    assert steps[0][1]["loss"] == 0.5 and steps[0][1]["acc"] == 0.25
    assert ends[0][1] == {"val_loss": 0.125, "val_acc": 3.0}
    with pytest.raises(TypeError, match=r"^run\.step: acc is a str, not a number$"):
        run.step(loss=0.5, acc="high")
    with pytest.raises(TypeError, match=r"^run\.step: loss must be a number, a one-element tensor or a dict"):
        run.step(loss=[0.5])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"loss": "0.5"}, r"^run\.step: loss must be a number, a one-element tensor or a dict of them, got a str$"),
        ({"loss": {"l1": 0.5, "adv": None}}, r"^run\.step: loss must be a number, .* got a NoneType$"),
        ({"loss": torch.ones(16)}, r"^run\.step: loss must be one value per step, got a tensor of 16 values "),
        ({"loss": 0.5, "scaler": 1024.0}, r"^run\.step: scaler must be a GradScaler \(yours or run\.scaler\(\)'s\), "),
        (  # a user's apex-style scaler of their own: the message names the way it is reported
            {"loss": 0.5, "scaler": Exception()},
            r"got an Exception; a loss scaler of another kind leaves scaler= out and passes "
            r"run\.step\(\*\*\{'model/loss_scale': scale, 'model/skipped': 1\.0 if it skipped the step else 0\.0\}\)$",
        ),
        (
            {"loss": 0.5, "optimizer": nn.Linear(2, 2)},
            r"^run\.step: optimizer must be a torch optimizer, got a Linear: pass",
        ),
        (
            {"loss": 0.5, "optimizer": {"g": "adam"}},
            r"^run\.step: optimizer \('g'\) must be a torch optimizer, got a str$",
        ),
        ({"loss": 0.5, "model": 3}, r"^run\.step: model must be a torch\.nn\.Module, got an int$"),
        (
            {"loss": 0.5, "acc": torch.ones(2)},
            r"^run\.step: acc is a tensor of 2 values \(shape \[2\]\), not a number$",
        ),
    ],
)
def test_run_step_refuses_what_is_not_its_kind_in_one_line_that_ends_the_sweep(
    call: dict[str, Any], message: str
) -> None:
    """A user's sweep ran every trial into ``AttributeError: 'float' object has no attribute 'is_enabled'``."""
    run, steps, _ = recording_run()
    with pytest.raises(RunCallError, match=message) as info:
        run.step(**call)
    assert ends_the_sweep(failure_reason(info.value)) and not steps  # every trial would fail so


def test_run_step_takes_a_bool_as_a_step_metric() -> None:
    run, steps, _ = recording_run()
    run.step(loss=0.5, **{"model/skipped": True})
    assert steps[0][1]["model/skipped"] == 1.0


def test_a_loop_that_sends_no_loss_is_warned_that_the_loss_signals_watch_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sweeps.divergence import DivergenceDetector
    from sweeps.tracking.curves import CurveHistory
    from sweeps.trial.epoch_loop import NO_LOSS_STEPS, StepWatch

    counts = {STEPS_KEY: 0.0, "sweep/skipped_steps": 0.0}
    watch = StepWatch(DivergenceDetector(), counts, None, CurveHistory())
    for step in range(1, NO_LOSS_STEPS + 5):
        watch(step, {"model/grad_norm": 1.0})
    assert capsys.readouterr().err.count("warning: no step sent a loss in the first 10 steps") == 1
    watch = StepWatch(DivergenceDetector(), dict(counts), None, CurveHistory())
    for step in range(1, NO_LOSS_STEPS + 5):
        watch(step, {"loss": 1.0} if step == 2 else {})
    assert capsys.readouterr().err == ""


def test_a_class_trainers_on_step_and_validate_may_give_tensors_and_numpy_numbers() -> None:
    """A user's ``on_step(step, {"loss": loss})`` with the tensor: every trial "diverged" at step 1, non_finite.

    And a ``validate()`` value of NumPy's float32 went to Tune as it was and never reached MLflow.
    """
    _, channel = run_loop("tests.toy_trainer:ToyTrainer", {"lr": 0.01, "behavior": "tensor_step"}, epochs=2)
    last = channel.reports[-1]
    assert last["epoch"] == 2 and DIVERGED_KEY not in last and last[STEPS_KEY] == 10
    assert type(last["val_loss"]) is float and last["val_acc"] == 0.5  # MLflow's logger took plain numbers only


def test_on_step_takes_whole_numbers_of_any_kind_as_the_step_and_warns_once_when_steps_go_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A user's ``on_step(np.int64(step), ...)`` went to MLflow as bytes, refused on every retry: the sweep hung."""
    from sweeps.divergence import DivergenceDetector
    from sweeps.tracking.curves import CurveHistory
    from sweeps.trial.epoch_loop import StepWatch

    counts = {STEPS_KEY: 0.0, "sweep/skipped_steps": 0.0}
    seen: list[Any] = []
    watch = StepWatch(DivergenceDetector(), counts, None, CurveHistory())
    watch.detector.observe = lambda step, metrics: seen.append(step)  # type: ignore[method-assign]
    for step in (np.int64(1), torch.tensor(2), 3.0, np.uint8(4), 1, 2):  # then from 1 again: each epoch's own count
        watch(step, {"loss": 1.0})
    assert seen == [1, 2, 3, 4, 1, 2] and all(type(s) is int for s in seen)
    assert capsys.readouterr().err.count("warning: on_step: step 1 after step 4: step numbers should rise") == 1
    for step in (3, 3, 4, 4):  # a GAN loop sending its two losses in two calls of one step
        watch(step, {"loss": 1.0})
    assert capsys.readouterr().err.count("warning: on_step: step 3 sent twice: send each optimizer step once") == 1
    for bad in ("3", 2.5, torch.tensor([1, 2]), None):
        with pytest.raises(RunCallError, match=r"^on_step: step must be a whole number \(the optimizer steps so far\)"):
            watch(bad, {"loss": 1.0})


def test_a_class_trainers_on_step_value_that_is_no_number_ends_the_sweep_in_one_line() -> None:
    with pytest.raises(RunCallError, match=r"^on_step: loss is a str, not a number$") as info:
        run_loop("tests.toy_trainer:ToyTrainer", {"lr": 0.01, "behavior": "str_step"}, epochs=2)
    assert ends_the_sweep(failure_reason(info.value))


def test_a_non_finite_report_ends_the_trial_as_diverged_not_failed() -> None:
    loop, channel = run_loop("tests.function_trainers:nan_at_epoch_two", {}, epochs=3)
    last = channel.reports[-1]
    assert last[DIVERGED_KEY] == 1.0 and last[SIGNAL_KEY] == "non_finite" and last["epoch"] == 2
    assert last[REASON_KEY] == "val_loss not finite at epoch 2" and math.isnan(last["val_loss"])
    assert channel.metric()[:1] == [(1, 1.0)]


@pytest.mark.parametrize("behavior", ["nan_val", "inf_val"])
def test_a_class_trainer_whose_validation_is_not_finite_is_diverged_as_a_function_is(behavior: str) -> None:
    """Not ranked by epoch 1's value as if completed: a user's class trainer returned NaN or inf at its last epoch."""
    params = {"lr": 0.01, "behavior": behavior}
    _, channel = run_loop("tests.toy_trainer:ToyTrainer", params, epochs=2, report_every_s=0)
    last = channel.reports[-1]
    assert last[DIVERGED_KEY] == 1.0 and last[SIGNAL_KEY] == "non_finite" and last["epoch"] == 2
    assert last[REASON_KEY] == "val_loss not finite at epoch 2" and math.isnan(last["val_loss"])
    assert [e for e, _ in channel.metric()] == [1, 2] and math.isfinite(channel.metric()[0][1])


def test_a_class_trainer_whose_validate_returns_no_dict_fails_saying_what_it_returned_and_ends_the_sweep() -> None:
    """A user's validate() returned the bare value: the trial failed with "'float' object is not a mapping"."""
    with pytest.raises(
        MetricsTypeError, match=r"^validate\(\) must return a dict of metrics, .* it returned float [\d.]+$"
    ) as info:
        run_loop("tests.toy_trainer:ToyTrainer", {"lr": 0.01, "behavior": "bare_val"}, epochs=2)
    assert ends_the_sweep(failure_reason(info.value))  # every trial would fail so


def test_a_loop_catching_exception_does_not_swallow_the_stop() -> None:
    """A user's ``except Exception: continue`` around each step trained on after the detector fired."""
    _, channel = run_loop("tests.function_trainers:swallows_exceptions", {}, epochs=3)
    last = channel.reports[-1]
    assert last[DIVERGED_KEY] == 1.0 and last[SIGNAL_KEY] == "non_finite" and last[STEP_KEY] == 3


def test_a_trainer_calling_sys_exit_fails_the_trial_with_where_it_did() -> None:
    """Not an ended process that Ray would retry as a dead node's: a failure, its traceback naming the call."""
    with pytest.raises(TrainerExitError, match=r"the trainer called sys.exit\(1\)") as info:
        run_loop("tests.toy_trainer:ToyTrainer", {"lr": 0.01, "behavior": "sys_exit"}, epochs=3)
    assert isinstance(info.value.__cause__, SystemExit)
    assert str(info.value) == "the trainer called sys.exit(1)"


def test_an_argparse_exit_says_it_read_the_trial_processs_command_line() -> None:
    with pytest.raises(TrainerExitError) as info, contextlib.redirect_stderr(io.StringIO()):
        run_loop("tests.function_trainers:parses_its_command_line", {"lr": 0.01}, epochs=2)
    assert str(info.value) == (
        "the trainer called sys.exit(2) in argparse: parse_args() read the trial process's own command line "
        "(Ray's worker arguments); call parse_args([]) or take the values from config"
    )


@pytest.mark.parametrize("trainer", [EXAMPLE, "tests.toy_trainer:ToyTrainer"])
def test_when_the_sweeps_time_has_run_out_the_epoch_ending_is_the_trials_last(trainer: str) -> None:
    params = {"lr": 0.01, "image_size": 16, "width": 4, "train_images": 16, "val_images": 8, "batch_size": 8}
    params = params if trainer == EXAMPLE else {"lr": 0.01}
    loop, channel = run_loop(trainer, params, epochs=3, deadline=time.time() - 1.0)
    assert loop.epochs_done == 1 and [r["epoch"] for r in channel.reports] == [1]  # reported, then stopped
    loop, channel = run_loop(trainer, params, epochs=3, deadline=time.time() + 3600.0)
    assert loop.epochs_done == 3 and channel.reports[-1]["epoch"] == 3


def test_a_loop_names_its_own_files_by_the_trials_name_and_adds_them_to_its_mlflow_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("own", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    trainer = "tests.function_trainers:keeps_files_of_its_own"
    run_loop(trainer, {"out_dir": str(tmp_path)}, epochs=2, tracking_uri=uri, run_id=run_id, label="t007")
    assert (tmp_path / "t007.txt").read_text() == "epoch 1\nepoch 2\n"
    assert [a.path for a in client.list_artifacts(run_id, "mine")] == ["mine/t007.txt"]
    run_loop(trainer, {"out_dir": str(tmp_path)}, epochs=1)  # sweeps train: no sweep, no run of its own
    assert (tmp_path / "train.txt").read_text() == "epoch 1\n"


def test_an_image_outside_0_1_is_saved_clamped_with_one_warning_on_its_run(tmp_path: Path) -> None:
    """A GAN's tanh output passed to run.image as it is: its -1 background saved black, without a word."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("images", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    logger = TrialLogger(uri, run_id)
    loop = EpochLoop(TrialPlan("tests.function_trainers:images_from_tanh", "val_loss", 2, report_every_s=0), {}, logger)
    with contextlib.redirect_stdout(io.StringIO()):
        loop.run(MemoryChannel())
    logger.close()
    warning = client.get_run(run_id).data.tags["sweep.warning"]
    assert warning.startswith("the epoch 1 image has values in [-1.00, 1.00], outside [0, 1]: saved clamped")
    assert [a.path for a in client.list_artifacts(run_id, "images")] == ["images/epoch_001.png", "images/epoch_002.png"]


def test_a_sample_grid_that_draws_random_numbers_leaves_the_sweeps_training_as_sweeps_train_has_it(
    tmp_path: Path,
) -> None:
    """A user's VAE sampled random latents in sample_grid, which only a sweep calls: the same config trained
    from its export ended 0.8% to 8.9% apart from what the sweep recorded (epoch 1 alike, then not)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("grid", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    trainer, params = "tests.toy_trainer:RandomGridToyTrainer", {"seed": 3}
    logger, swept = TrialLogger(uri, run_id), MemoryChannel()
    with contextlib.redirect_stdout(io.StringIO()):
        EpochLoop(TrialPlan(trainer, "val_loss", 3, report_every_s=0), params, logger).run(swept)
    logger.close()
    _, trained = run_loop(trainer, params, epochs=3, report_every_s=0)  # as sweeps train: no images drawn
    assert [a.path for a in client.list_artifacts(run_id, "images")][-1] == "images/epoch_003.png"
    assert swept.metric() == trained.metric()


def test_a_trial_restarted_before_its_first_checkpoint_does_not_log_the_dead_processs_steps_twice(
    tmp_path: Path,
) -> None:
    """A user's loop whose process died at step 50, before any checkpoint: its loss history read 1, 1, 5, 9, ..."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("restart", artifact_location=(tmp_path / "artifacts").as_uri())
    ).info.run_id
    for epochs in (1, 3):  # the first process got through epoch 1 (3 steps), then died; the second starts over
        logger = TrialLogger(uri, run_id)
        loop = EpochLoop(TrialPlan("tests.function_trainers:no_checkpoint", "val_loss", 3), {"epochs": epochs}, logger)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ReturnedEarlyError):
            loop.run(MemoryChannel())
        logger.close()
    for key, steps in (("loss", list(range(1, 10))), ("val_loss", [1, 2, 3])):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == steps, key


def test_trials_in_one_process_train_alike_when_the_module_sets_threads_and_seed_at_import() -> None:
    """A user's script called set_num_threads(4) and manual_seed(0) at import: only each process's first
    trial (the one that imported it) ran with them; the next ones had 1 thread and the RNG where it was left."""
    before = torch.get_num_threads()
    try:
        runs = [run_loop("tests.threads_at_import:train", {}, epochs=1, threads=2)[1] for _ in range(2)]
    finally:
        torch.set_num_threads(before)
    assert [c.metric() for c in runs] == [[(1, 2.0)], [(1, 2.0)]]  # the trial's threads, not the import's
    assert runs[0].metric("draw") == runs[1].metric("draw")  # seeded by the trial's seed (0), each time


def test_a_metric_the_function_never_reports_fails_at_its_first_report_with_that_message() -> None:
    with pytest.raises(MetricMissingError, match=r"metric 'val_loss' not produced by .* \(it reports: val_psnr\)"):
        run_loop("tests.function_trainers:reports_other_metric", {})
    with pytest.raises(MetricMissingError, match="returned without calling run.report"):
        run_loop("tests.function_trainers:never_reports", {})


def test_a_function_that_returns_before_its_last_epoch_fails_with_why_and_one_that_stops_itself_does_not() -> None:
    channel = MemoryChannel()
    with pytest.raises(ReturnedEarlyError, match=r"returned after epoch 1 of 3: its loop must run run\.epochs"):
        run_loop("tests.function_trainers:one_epoch_whatever_the_budget", {}, channel=channel)
    assert channel.metric() == [(1, 0.5)]  # what it reported went out first
    _, channel = run_loop("tests.function_trainers:stops_itself_after_one_epoch", {})
    assert channel.metric() == [(1, 0.5)]


# -- the epoch loop around a function -------------------------------------------------------------


def test_a_diverging_learning_rate_is_stopped_within_steps() -> None:
    loop, channel = run_loop(EXAMPLE, {"lr": 1.0}, epochs=3)
    last = channel.reports[-1]
    assert last[DIVERGED_KEY] == 1.0 and last["epoch"] == 1
    assert last[STEP_KEY] <= 8 and last[STEPS_KEY] == last[STEP_KEY]  # within the first epoch's 8 steps


def test_the_function_example_gives_the_class_examples_metrics() -> None:
    params = {"lr": 2e-3, "width": 8, "noise": 0.15, "seed": 4}
    _, function = run_loop(EXAMPLE, params)
    _, cls = run_loop("examples.denoiser:DenoiserTrainer", params)
    assert function.metric() == cls.metric() and len(function.metric()) == 3
    assert [r[STEPS_KEY] for r in function.reports] == [r[STEPS_KEY] for r in cls.reports] == [8, 16, 24]


def test_only_the_cadences_epochs_report_and_the_last_one_always_does() -> None:
    # report_every_s large, no rungs: only the last epoch reports, with the others in its history
    _, channel = run_loop(EXAMPLE, {"lr": 1e-3}, epochs=3, report_every_s=3600.0)
    assert [r["epoch"] for r in channel.reports] == [3]
    assert [e for e, _ in channel.reports[0]["sweep/history"]] == [1, 2, 3]


def test_a_function_that_ends_early_still_reports_its_last_epochs() -> None:
    channel = MemoryChannel()
    with pytest.raises(ReturnedEarlyError):  # then fails the trial with why
        run_loop("tests.function_trainers:no_checkpoint", {"epochs": 2}, 3, channel, report_every_s=3600.0)
    assert [r["epoch"] for r in channel.reports] == [2]  # epochs 1 and 2 fell between reports
    assert [e for e, _ in channel.reports[0]["sweep/history"]] == [1, 2]


def test_without_a_checkpoint_a_restored_function_trial_starts_over() -> None:
    _, first = run_loop("tests.function_trainers:no_checkpoint", {}, epochs=3)
    assert first.checkpoints[2]["trainer"] is None
    _, again = run_loop(
        "tests.function_trainers:no_checkpoint", {}, epochs=3, channel=MemoryChannel(restore_from=first.checkpoints[2])
    )
    assert again.metric() == first.metric() and [r[STEPS_KEY] for r in again.reports] == [3, 6, 9]


def test_the_sweep_stopping_a_function_trial_ends_it_cleanly() -> None:
    loop, channel = run_loop(EXAMPLE, {"lr": 1e-3}, epochs=5, channel=MemoryChannel(stop_after=2))
    assert [r["epoch"] for r in channel.reports] == [1, 2] and loop.epochs_done == 2


def test_code_after_a_functions_loop_runs_when_the_sweep_stops_it_at_its_last_report(tmp_path: Path) -> None:
    """ASHA stops every trial at its last epoch: Tune ended the thread in that report, skipping what followed."""
    out = tmp_path / "out.txt"
    _, channel = run_loop("tests.function_trainers:code_after_its_loop", {"out": str(out)}, epochs=2,
                          channel=MemoryChannel(stop_after=2), report_every_s=0)  # fmt: skip
    assert out.read_text() == "report 1 returned True\nreport 2 returned False\nafter the loop\n"
    assert [r["epoch"] for r in channel.reports] == [1, 2]  # the last epoch reported once the function returned


def test_an_epoch_past_run_epochs_is_a_report_call_error_not_a_completed_trial() -> None:
    """A user reported the step count: epoch 40 of 3 ended the trial "completed" after one validation."""
    with pytest.raises(ReportCallError, match=r"epoch 40 is past run\.epochs \(3\): .* report step // N"):
        run_loop("tests.function_trainers:reports_steps_as_epochs", {}, epochs=3)


def test_fp16_o2_keeps_fp32_master_weights_and_its_checkpoint_resumes_bit_exact() -> None:
    params = {"precision": "fp16-o2", "device": "cpu", "init_scale": 1024.0, "seed": 1}
    _, full = run_loop("tests.function_trainers:amp_train", params, epochs=3)
    state = full.checkpoints[1]["trainer"]["state"]
    assert state["model"]["0.weight"].dtype == torch.float16 and state["model"]["1.weight"].dtype == torch.float32
    assert all(m.dtype == torch.float32 for m in state["scaler"]["master"])
    _, restarted = run_loop(
        "tests.function_trainers:amp_train", params, epochs=3, channel=MemoryChannel(restore_from=full.checkpoints[1])
    )
    assert restarted.metric() == full.metric()[1:]


def test_a_trial_resumed_from_a_checkpoint_is_judged_by_its_own_first_loss_and_counts_as_it_would_have() -> None:
    """A user's trial killed with its driver and resumed: the detector took the first loss after the restore (46 x
    smaller than the trial's first) as its reference and stopped a spike the same trial run whole was never
    stopped for; and the first overflow after the restore counted as the scaler's start-up calibration."""
    trainer = "tests.function_trainers:falls_then_comes_back_up"
    _, whole = run_loop(trainer, {}, epochs=4, report_every_s=0.0)
    assert [r["epoch"] for r in whole.reports] == [1, 2, 3, 4] and whole.reports[-1]["sweep/skipped_steps"] == 1.0
    for epoch in (1, 2):  # restarted after epoch 1 (then its first loss is 0.01), and after 2 (its first step skipped)
        restarted = MemoryChannel(restore_from=whole.checkpoints[epoch])
        run_loop(trainer, {}, epochs=4, channel=restarted, report_every_s=0.0)
        assert [r["epoch"] for r in restarted.reports] == list(range(epoch + 1, 5))
        assert not any(r.get("sweep/diverged") for r in restarted.reports), restarted.reports
        assert restarted.reports[-1]["sweep/skipped_steps"] == 1.0


def _o2_step(clip: str, accumulate: int = 1) -> tuple[float, list[torch.Tensor]]:
    """One fp16-o2 step of SGD on a small conv net, its gradients clipped to a tenth of their norm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = loss_scaler("fp16-o2", "cpu", model, optimizer)
    x, y = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    optimizer.zero_grad()
    for _ in range(accumulate):
        scaler.scale(torch.nn.functional.l1_loss(model(x), y) / accumulate).backward()
    scaler.unscale_(optimizer)
    masters = [p for group in optimizer.param_groups for p in group["params"]]
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in masters]))
    if clip == "model":  # as a loop written for fp32 clips: the model's parameters
        torch.nn.utils.clip_grad_norm_(model.parameters(), norm / 10)
    elif clip == "optimizer":
        torch.nn.utils.clip_grad_norm_(masters, norm / 10)
    scaler.step(optimizer)
    scaler.update()
    assert all(p.grad is None for p in model.parameters())  # the next backward starts from none
    return norm, [p.detach().clone() for p in masters]


def test_fp16_o2_clipping_the_models_parameters_clips_the_master_gradients() -> None:
    norm, unclipped = _o2_step("none")
    model_norm, by_model = _o2_step("model")
    _, by_optimizer = _o2_step("optimizer")
    assert model_norm == norm > 0
    for a, b, c in zip(by_model, by_optimizer, unclipped, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6) and not torch.equal(a, c)
    _, accumulated = _o2_step("none", accumulate=2)  # two backwards of half the loss: the same step
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(accumulated, unclipped, strict=True))


def test_o2_needs_the_model_and_its_optimizer() -> None:
    with pytest.raises(ValueError, match="run.scaler\\(model, optimizer\\)"):
        loss_scaler("fp16-o2", "cpu")


# -- bad input, before Ray ------------------------------------------------------------------------


def write_spec(tmp_path: Path, **changes: Any) -> Path:
    data = {
        "name": "fn",
        "trainer": EXAMPLE,
        "metric": {"name": "val_loss", "mode": "min"},
        "budget": {"trials": 2, "epochs": 2},
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        **changes,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_function_trainers_spec_takes_any_parameter_and_the_seed(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, fixed={"width": 8}, seed=7), overrides=["noise=0.2"])
    assert spec.function_trainer and spec.trainer_precisions == ("fp32",)
    # the precision `run` trains at is a parameter too (a user's MLflow runs lacked it: "every parameter, exactly")
    assert spec.resolve({"lr": 0.01}) == {"width": 8, "noise": 0.2, "lr": 0.01, "seed": 7, "precision": "fp32"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"trainer": "tests.function_trainers:wrong_signature"},
            "it takes (config), which two positional arguments cannot fill; a function trainer takes (config, run)",
        ),
        (
            {"trainer": "tests.function_trainers:script_main"},
            "it takes (argv=None, config=None, run=None), but a trial calls it with (config, run): argv would get "
            "the config, config would get the run",
        ),
        (
            {"trainer": "tests.function_trainers:keyword_only"},
            "it takes (*, config, run), which two positional arguments cannot fill",
        ),
        (  # a key the engine reads, misspelt: every trial would run fp32 whatever the sweep searched
            {"params": {"precison": {"choices": ["fp32"]}}},
            "params.precison: did you mean 'precision'? The engine reads 'precision', and the loop never names "
            "'precison': as written, neither would use the value",
        ),
        ({"trainer": "tests.function_trainers:generator"}, "it is a generator function (it yields)"),
        ({"trainer": "tests.function_trainers:coroutine"}, "it is an async function (async def)"),
        (
            {"fixed": {"precision": "bf16"}},
            "fixed.precision: trainer 'examples.plain_loop_sweepable:train' does not run 'bf16' (it runs: fp32",
        ),
        ({"params": {"precision": {"choices": ["fp32", "fp16"]}}}, "params.precision.choices[1]: trainer"),
        (  # a function declaring its metrics (train.metrics) is checked before the sweep too
            {"trainer": "tests.function_trainers:amp_train", "metric": "val_psnr"},
            "metric: 'val_psnr' is not produced by trainer 'tests.function_trainers:amp_train' (it reports: val_loss)",
        ),
        (
            {"params": {"precision": {"choices": ["fp32", "fp64"]}}},
            "params.precision.choices[1]: unknown precision 'fp64'",
        ),
        (  # a function that declares no precisions runs fp32 only: no trial of it can need a rescue
            {"divergence": {"rescue": True}},
            "divergence.rescue: trainer 'examples.plain_loop_sweepable:train' runs no fp16 (it runs: fp32), so no "
            "trial can need a rescue",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], message: str
) -> None:
    path = write_spec(tmp_path, **changes)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_trainer_declaring_its_precisions_gets_them_and_rescues_only_to_them(tmp_path: Path) -> None:
    spec = load_spec(
        write_spec(
            tmp_path,
            trainer="tests.function_trainers:amp_train",
            params={"precision": {"choices": ["fp16", "O2"]}},
            divergence={"rescue": True},
        )
    )
    assert spec.trainer_precisions == ("fp32", "bf16", "fp16", "fp16-o2")
    assert rescue_precision({"device": "cpu"}, ("fp32", "fp16")) == "fp32"  # bf16 is not among them
    assert rescue_precision({"device": "cpu"}, ("bf16", "fp16")) == "bf16"
    assert rescue_precision({"device": "cpu"}, ("fp16",)) is None


@dataclass
class _PrecisionConfig:
    precision: str = "fp32"
    lr: float = 0.01


class UndeclaredPrecision:
    """A class trainer with a free ``precision`` field and no ``precisions``: what it runs is unknown."""

    Config = _PrecisionConfig

    def __init__(self, config: Any) -> None: ...
    def train_epoch(self) -> dict[str, float]: ...
    def validate(self) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def test_a_rescue_of_a_trainer_that_does_not_say_what_it_runs_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, trainer="tests.test_function_trainer:UndeclaredPrecision", divergence={"rescue": True})
    with pytest.raises(SpecError, match="divergence.rescue: trainer .* does not say which precisions it runs"):
        load_spec(path)


class DeclaredPrecision(UndeclaredPrecision):
    """A class trainer with a free ``precision`` field that declares what it runs."""

    precisions = ("fp32", "fp16")


def test_a_class_declaring_its_precisions_is_refused_an_unknown_one_and_one_declaring_none_is_not(
    tmp_path: Path,
) -> None:
    """A user's class (``precision: str``) that runs the engine's precisions: ``fp8`` failed every trial."""
    path = write_spec(tmp_path, trainer="tests.test_function_trainer:DeclaredPrecision", fixed={"precision": "fp8"})
    with pytest.raises(SpecError, match=r"fixed\.precision: unknown precision 'fp8' \(accepted: fp32, bf16"):
        load_spec(path)
    path = write_spec(tmp_path, trainer="tests.test_function_trainer:UndeclaredPrecision", fixed={"precision": "amp"})
    assert load_spec(path).fixed["precision"] == "amp"  # its own name: it says nothing of what it runs


def test_declared_precisions() -> None:
    from tests.function_trainers import amp_train, no_checkpoint
    from trainables.vae import VAETrainer

    assert declared_precisions(no_checkpoint) == ("fp32",)  # a function says, or runs fp32
    assert declared_precisions(amp_train) == ("fp32", "bf16", "fp16", "fp16-o2")
    assert declared_precisions(VAETrainer) == ("fp32", "bf16", "fp16", "fp16-o2")
    assert declared_precisions(UndeclaredPrecision) is None


def test_stop_trial_imports_without_ray_mlflow_or_torch() -> None:
    code = (
        "import sys, sweeps; from sweeps import StopTrial; assert StopTrial.__name__ == 'StopTrial';"
        "bad = [m for m in ('ray', 'mlflow', 'optuna', 'torch') if m in sys.modules]; sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_docs_show_the_step_contract_and_the_examples_whole_diff() -> None:
    text = (ROOT / "docs" / "trainers.md").read_text()
    assert all(f"`{key.name}`" in text for key in STEP_CONTRACT)
    block = text.split("```diff\n", 1)[1].split("```", 1)[0]  # the first diff: the function example's
    plain = (ROOT / "examples" / "plain_loop.py").read_text().splitlines()
    sweepable = (ROOT / "examples" / "plain_loop_sweepable.py").read_text().splitlines()
    added = [line[1:] for line in block.splitlines() if line.startswith("+")]
    removed = [line[1:] for line in block.splitlines() if line.startswith("-")]
    assert set(added) <= set(sweepable) and set(removed) <= set(plain)
    # nothing else changed: every other line of the sweepable file is a line of the plain loop, re-indented
    assert {line.strip() for line in sweepable if line not in added} <= {line.strip() for line in plain}
    assert len(added) <= 15


def test_untyped_numbers_written_1e_3_reach_a_function_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"trainer: {EXAMPLE}\nmetric: val_loss\nfixed: {{noise: 1e-1, name_like: abc}}\n"
        "params:\n  lr: {choices: [1e-3, 2e-3]}\n"
    )
    spec = load_spec(path, overrides=["width=1e1"])
    assert spec.fixed == {"noise": 0.1, "name_like": "abc", "width": 10.0}
    assert spec.params["lr"].choices == [0.001, 0.002]


def test_an_exported_config_edited_by_hand_reads_1e_5_as_a_number_too(tmp_path: Path) -> None:
    """``sweeps train`` reads a function trainer's values as a spec's are: PyYAML's string ``'1e-5'`` is a number."""
    from sweeps.trial.from_file import load_run_file

    path = tmp_path / "best.yaml"
    path.write_text(
        f"trainer: {EXAMPLE}\nepochs: 1\nmetric: {{name: val_loss, mode: min}}\n"
        "config: {lr: 1e-5, noise: 2.5e-2, name_like: abc, width: 4}\n"
    )
    assert yaml.safe_load(path.read_text())["config"]["lr"] == "1e-5"  # what PyYAML gives
    config = load_run_file(path)["config"]
    assert config == {"lr": 1e-5, "noise": 0.025, "name_like": "abc", "width": 4}
    assert isinstance(config["lr"], float)


def test_a_key_the_loops_source_never_names_gets_a_note_before_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt ``fixed`` key runs every trial on the loop's default: say so before the sweep starts.

    The loop reads ``width`` itself, ``depth`` in a helper module beside it that it imports by name,
    and ``noise`` through a dataclass filled from the config; none of those gets a note, ``widht`` does.
    """
    (tmp_path / "note_helper_mod.py").write_text("def build(cfg):\n    return cfg['depth']\n")
    (tmp_path / "note_loop_mod.py").write_text(
        "import importlib\n"
        "from dataclasses import dataclass\n\n"
        "@dataclass\nclass Knobs:\n    noise: float = 0.1\n\n"
        "def train(config, run):\n"
        "    width = config.get('width', 16)\n"
        "    loader = dict(drop_last=True)\n"
        "    knobs = Knobs(**{k: v for k, v in config.items() if k == 'noise'})\n"
        "    importlib.import_module('note_helper_mod').build(config)\n"
        "    run.report(1, val_loss=float(width) + knobs.noise + config.lr)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fixed = {"widht": 4, "depth": 2, "noise": 0.3, "seed": 1, "dropout": 0.1}
    path = write_spec(tmp_path, trainer="note_loop_mod:train", fixed=fixed)
    spec = load_spec(path)
    note = "note_loop_mod.py never names 'widht' (did you mean 'width'?); the trainer gets it as config['widht']"
    dropout = "note_loop_mod.py never names 'dropout'; the trainer gets it as config['dropout']"  # not drop_last
    assert spec.unnamed_in_source == (("fixed.dropout", dropout), ("fixed.widht", note))
    assert main(["run", str(path), "--check"]) == 0
    assert "note: fixed.widht: note_loop_mod.py never names 'widht' (did you mean 'width'?)" in capsys.readouterr().err
    # apex's name for the AMP level: the note says the engine's (a user's `opt_level: [O1, O2]` ran every trial fp32)
    amp = load_spec(write_spec(tmp_path, trainer="note_loop_mod:train", fixed={"width": 8, "opt_level": "O1"}))
    assert amp.unnamed_in_source == (
        (
            "fixed.opt_level",
            "note_loop_mod.py never names 'opt_level' (the engine's AMP level is 'precision': fp32, bf16, "
            "fp16 = O1, fp16-o2 = O2); the trainer gets it as config['opt_level']",
        ),
    )
    # the example loop reads the key it is given: no note
    assert load_spec(write_spec(tmp_path, trainer=EXAMPLE, fixed={"width": 8})).unnamed_in_source == ()


def test_a_trials_recorded_source_holds_the_loops_own_modules_not_installed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``source/`` on a trial's run: the trainer's module and the user's modules it imports, so it can be rerun."""
    installed = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    installed.mkdir(parents=True)
    (installed / "src_vendor_mod.py").write_text("VALUE = 1\n")
    (tmp_path / "src_models").mkdir()
    (tmp_path / "src_models" / "__init__.py").write_text("")
    (tmp_path / "src_models" / "layers.py").write_text("def block(width):\n    return width\n")
    (tmp_path / "src_models" / "net.py").write_text(
        "from .layers import block\n\ndef make(width):\n    return block(width)\n"
    )
    (tmp_path / "src_unrelated_script.py").write_text("print('not imported by the loop')\n")
    (tmp_path / "src_loop_mod.py").write_text(
        "import src_vendor_mod\nfrom src_models.net import make\n\n"
        "def train(config, run):\n    run.report(1, val_loss=float(make(config.get('width', 4))))\n"
    )
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.syspath_prepend(str(tmp_path))
    from sweeps.tracking.provenance import trainer_sources
    from trainables.registry import load_trainer

    sources = trainer_sources(load_trainer("src_loop_mod:train"))
    # not the venv's module, not the unrelated script; the relative import of net.py, from its own package
    assert set(sources) == {"src_loop_mod.py", "src_models/net.py", "src_models/layers.py"}
    assert next(iter(sources)) == "src_loop_mod.py"
    assert sources["src_models/layers.py"].startswith("def block(width)")

    # a reused trial process reads them once; an edit to one of them is read again
    (tmp_path / "src_models" / "layers.py").write_text("def block(width):\n    return 2 * width  # edited\n")
    again = trainer_sources(load_trainer("src_loop_mod:train"))
    assert again["src_models/layers.py"].endswith("# edited\n")
    assert again["src_loop_mod.py"] == sources["src_loop_mod.py"]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ("epoch: 2\n", r"epoch: unknown key \(did you mean 'epochs'\?"),
        ("threads: x\n", r"threads: 'x' is not a number"),
        ("threads: 0\n", r"threads: must be >= 1, got 0"),
        ("metric: [val_loss]\n", r"metric: must be a mapping with the metric's name"),
        ("metric: {name: val_loss, mode: minimum}\n", r"metric\.mode: 'minimum' is not min or max"),
        ("metric: {name: val_loss, mode: min, value: abc}\n", r"metric\.value: 'abc' is not a number"),
        ("config: {lr: 1e-3, seed: abc}\n", r"config\.seed: 'abc' is not a number"),
        ("trainer: ''\n", r"trainer: missing: the trainer the sweep ran"),
        ("config: {lr: 1e-3, precision: fp8}\n", r"config\.precision: unknown precision 'fp8' \(accepted: fp32"),
        (  # a class whose Config field is a Literal said it once, and the engine's precision check again
            "trainer: vae\nmetric: {name: val_mse, mode: min}\nconfig: {lr: 1e-3, precision: fp8}\n",
            r"config\.precision: unknown precision 'fp8' \(accepted: fp32",
        ),
        (
            "config: {lr: 1e-3, precision: fp16}\n",
            r"config\.precision: trainer '.*' does not run 'fp16' \(it runs: fp32",
        ),
        (
            "trainer: tests.toy_trainer:EpochsToyTrainer\nepochs: 3\nconfig: {lr: 0.01, epochs: 5}\n",
            r"config\.epochs: 5 is not the file's epochs \(3\): the trainer's 'epochs' field is set to those",
        ),
    ],
)
def test_an_exported_config_edited_wrongly_by_hand_is_refused_in_one_line(
    tmp_path: Path, edit: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"trainer": EXAMPLE, "epochs": 1, "metric": {"name": "val_loss", "mode": "min"}, "config": {"lr": 1e-3}}
    base.update(yaml.safe_load(edit))
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(base))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(said, err), err


def test_an_exported_metric_given_by_name_alone_reads_as_the_spec_short_form(tmp_path: Path) -> None:
    from sweeps.trial.from_file import load_run_file

    path = tmp_path / "best.yaml"
    path.write_text(f"trainer: {EXAMPLE}\nepochs: 1\nmetric: val_loss\nconfig: {{lr: 1e-3}}\n")
    assert load_run_file(path)["metric"] == {"name": "val_loss"}


@pytest.mark.parametrize("trainer", ["vae", EXAMPLE])
def test_an_exported_metric_renamed_by_hand_is_one_line(
    tmp_path: Path, trainer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A class trainer declares its metrics: refused before training. A function reports them: after its epoch.
    config = {"lr": 1e-3, "image_size": 16, "width": 4} if trainer == "vae" else {"lr": 1e-3}
    data = {"trainer": trainer, "epochs": 1, "metric": {"name": "val_los", "mode": "min"}, "config": config}
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metric.name: " in err and "val_los" in err and "val_loss" in err, err


def test_train_notes_an_exported_key_the_function_trainer_never_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``sweeps run`` notes a misspelt ``fixed`` key, ``sweeps train`` notes one edited into an export."""
    data = {"trainer": EXAMPLE, "epochs": 1, "metric": {"name": "val_loss", "mode": "min"}}
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({**data, "config": {"lrr": 1e-3, "width": 8, "seed": 1}}))
    assert main(["train", str(path)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: config.lrr: plain_loop_sweepable.py never names 'lrr' (did you mean 'lr'?); "
        "the trainer gets it as config['lrr']"
    ]


def test_a_budget_key_set_as_a_function_trainers_parameter_is_noted_with_the_budgets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(write_spec(tmp_path)), "--set", "epochs=3", "--check"]) == 0
    note = "note: --set epochs: not in the spec's fixed or params; the trainer gets it as config['epochs']"
    assert f"{note} (did you mean --set budget.epochs?)" in capsys.readouterr().err
    assert main(["run", str(write_spec(tmp_path)), "--set", "lrr=0.01", "--check"]) == 0  # a typo of a spec key
    note = "note: --set lrr: not in the spec's fixed or params; the trainer gets it as config['lrr']"
    assert f"{note} (did you mean --set lr?)" in capsys.readouterr().err


def test_a_class_trainer_with_an_epochs_field_is_told_the_epochs_it_runs() -> None:
    """The epochs of this run (``sweeps train --epochs 3``), not the exported config's 2 nor the field's default."""
    _, channel = run_loop("tests.toy_trainer:EpochsToyTrainer", {"lr": 0.01, "epochs": 2}, epochs=3, report_every_s=0)
    assert channel.metric("planned_epochs") == [(1, 3.0), (2, 3.0), (3, 3.0)]


def test_fp16_o2_a_float32_copy_of_the_model_runs_in_float32() -> None:
    """A user's EMA, ``copy.deepcopy(model).float()`` after ``run.scaler``, got half inputs from the copied hooks."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_scaler("fp16-o2", "cpu", model, optimizer)
    ema = copy.deepcopy(model).float()
    x = torch.rand(2, 3, 8, 8)
    out, averaged = model(x), ema(x)
    assert out.dtype == averaged.dtype == torch.float32  # the fp16 model's output cast back; the copy's its own
    assert model[1].weight.dtype == torch.float16 and model[0].weight.dtype == torch.float32  # batchnorm kept
    assert torch.allclose(out, averaged, atol=2e-2)  # the same weights, one in float16


def test_sweeps_train_of_a_config_whose_metric_goes_nan_says_where_it_stopped_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's re-run of a stopped trial printed ``epoch 2/5 val_mse=nan``, then nothing, and exited 0."""
    path = tmp_path / "stopped.yaml"
    data = {"trainer": "tests.function_trainers:nan_at_epoch_two", "epochs": 4, "metric": {"name": "val_loss"}}
    path.write_text(yaml.safe_dump({**data, "config": {"lr": 0.1}}))
    assert main(["train", str(path), "--save", str(tmp_path / "model.pt")]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("epoch 2/4  val_loss=nan")
    assert err == "error: stopped at epoch 2 of 4: val_loss not finite at epoch 2; nothing saved\n"
    assert not (tmp_path / "model.pt").exists()


def test_sweeps_train_prints_every_value_the_loop_reported_metric_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user training a loss-scale stop to its end reported ``loss_scale`` and ``overflows``; only ``val_*`` showed."""
    path = tmp_path / "scaled.yaml"
    data = {"trainer": "tests.function_trainers:reports_its_loss_scale", "epochs": 2, "metric": {"name": "val_loss"}}
    path.write_text(yaml.safe_dump({**data, "config": {"lr": 0.1}}))
    assert main(["train", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "epoch 1/2  val_loss=0.5  val_psnr=20  overflows=1  loss_scale=128",
        "epoch 2/2  val_loss=0.5  val_psnr=20  overflows=2  loss_scale=128",
    ]


def test_a_trial_too_short_for_the_collapse_window_that_ended_all_zero_is_diverged_not_completed() -> None:
    """A user's 16-step trials (4 epochs of 4 steps) gave an all-zero output throughout, never met ``collapse.steps``
    (20), ended ``completed``, and one was the sweep's best."""
    from sweeps.core.keys import COLLAPSED_AT_END_KEY, DIVERGED_KEY, SIGNAL_KEY

    _, channel = run_loop("tests.function_trainers:dead_relu_output", {}, epochs=4, report_every_s=0.0)
    last = channel.reports[-1]
    assert last[DIVERGED_KEY] and last[SIGNAL_KEY] == "collapse" and last["epoch"] == 4
    assert "all-zero output for its last 16 steps, to the end of its training" in last["sweep/reason"]
    assert channel.metric()[:3] and math.isnan(last["val_loss"])  # epochs 1-3 as reported; never ranked

    # observe mode stops nothing: the trial completes, its last report says the output was stuck at the end
    _, observed = run_loop(
        "tests.function_trainers:dead_relu_output",
        {},
        epochs=4,
        report_every_s=0.0,
        divergence={"mode": "observe"},
    )
    last = observed.reports[-1]
    assert not last.get(DIVERGED_KEY) and math.isfinite(last["val_loss"]) and last["epoch"] == 4
    assert "all-zero output for its last 16 steps" in last[COLLAPSED_AT_END_KEY]
    assert (last["sweep/observed_signal"], last["sweep/observed_step"]) == ("collapse", 16)  # its would-be stop


def test_sweeps_train_save_of_a_loop_that_keeps_no_state_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's ``sweeps train best.yaml --save model.pt`` trained 54 s, printed "not saved" and exited 0."""
    (tmp_path / "nostate_loop.py").write_text(
        "def train(config, run):\n"
        "    for epoch in range(run.epochs):\n"
        "        run.step(loss=1.0 / (epoch + 1))\n"
        "        run.report(epoch + 1, val_loss=1.0 / (epoch + 1))\n"
    )
    (tmp_path / "maybe_loop.py").write_text(  # names checkpoint (a string), never calls it
        "NOTE = 'checkpoint'\n\n"
        "def train(config, run):\n"
        "    for epoch in range(run.epochs):\n"
        "        run.report(epoch + 1, val_loss=0.5)\n"
    )
    (tmp_path / "other_script.py").write_text("run.checkpoint({})\n")  # beside it, not imported: not its own
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"epochs": 2, "metric": {"name": "val_loss"}, "config": {}}
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({**config, "trainer": "nostate_loop:train"}))
    assert main(["train", str(path), "--save", str(tmp_path / "model.pt")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1  # refused before any epoch
    assert err.startswith("error: --save: nostate_loop:train keeps no state to save: its source never calls")

    path.write_text(yaml.safe_dump({**config, "trainer": "maybe_loop:train"}))
    assert main(["train", str(path), "--save", str(tmp_path / "model.pt")]) == 1  # trained, then not saved: an error
    out, err = capsys.readouterr()
    assert (
        "epoch 2/2" in out
        and err == "error: not saved: maybe_loop:train keeps no state to save (it never calls run.checkpoint)\n"
    )
    assert not (tmp_path / "model.pt").exists()


def test_sweeps_train_says_when_the_trainers_source_changed_since_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user edited the trainer's data seed after the sweep: sweeps train read 0.28% off, with no word of why."""
    from sweeps.tracking.provenance import source_digests
    from sweeps.trial.from_file import source_changed_note

    module = tmp_path / "edited_loop_mod.py"
    module.write_text("def train(config, run):\n    seed = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"trainer": "edited_loop_mod:train", "source": {"files": source_digests("edited_loop_mod:train")}}
    assert data["source"]["files"] and source_changed_note(data) is None
    module.write_text("def train(config, run):\n    seed = 22\n")  # another size: the cache reads it again
    note = source_changed_note({**data, "source": {**data["source"], "mlflow_run_id": "abc"}})
    assert note == (
        "the trainer's source changed since the sweep ran it (edited_loop_mod.py): the metric may differ from the "
        "sweep's; the files it ran are the source/ artifacts of MLflow run abc"
    )
    assert source_changed_note({"trainer": "edited_loop_mod:train", "source": {}}) is None  # an older export
