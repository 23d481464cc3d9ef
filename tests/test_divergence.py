"""Real training driven into each divergence signal, and healthy runs that must not be stopped."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from sweeps.divergence import DEFAULTS, Divergence, DivergenceDetector, DivergenceSettings, may_recover
from trainables import build_config, load_trainer

TINY = {"image_size": 16, "train_images": 64, "val_images": 32, "width": 4, "batch_size": 8, "latent_dim": 4}


class Stopped(Exception):
    pass


def train(
    settings: DivergenceSettings | None = None,
    epochs: int = 4,
    zero_last: bool = False,
    on_step: Any = None,
    **config: Any,
) -> tuple[Divergence | None, list[dict[str, float]]]:
    """Train the VAE with the detector as its step hook; return the divergence (if any) and every step's metrics."""
    cls = load_trainer("vae")
    trainer = cls(build_config(cls.Config, {**TINY, **config}))
    if zero_last:  # a zeroed, frozen output layer
        last = trainer.model.decoder[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        last.requires_grad_(False)
    detector = DivergenceDetector(settings)
    steps: list[dict[str, float]] = []

    def hook(step: int, metrics: dict[str, float]) -> None:
        steps.append(metrics)
        if on_step is not None:
            on_step(trainer, step)
        found = detector.observe(step, metrics)
        if found is not None:
            raise Stopped(found)

    trainer.on_step = hook
    try:
        for _ in range(epochs):
            trainer.train_epoch()
    except Stopped as stop:
        return stop.args[0], steps
    return None, steps


def only(signal: str, **overrides: float) -> DivergenceSettings:
    return DivergenceSettings(signals={signal: {**DEFAULTS[signal], **overrides}})


def test_fp16_with_huge_losses_collapses_the_loss_scale() -> None:
    found, steps = train(precision="fp16", kl_weight=1e8)
    assert found is not None and found.signal == "loss_scale" and "below floor" in found.reason
    assert found.step <= 20 and all(s["vae/skipped"] for s in steps)
    assert not may_recover(found.signal, found.reason)  # sweeps audit does not re-run it


def test_a_run_of_overflows_after_calibration_is_a_stop_the_audit_re_runs() -> None:
    """A user's fp16 loop, stopped after 6 overflows in a row at step 7, trained on to a finite metric."""
    detector = DivergenceDetector()
    for step, skipped in enumerate([0, 1, 1, 1, 1, 1, 1], start=1):
        found = detector.observe(step, {"loss": 1.0, "model/loss_scale": 1024.0, "model/skipped": float(skipped)})
    assert found is not None and found.signal == "loss_scale" and found.step == 7
    assert may_recover(found.signal, found.reason)
    assert may_recover("collapse", "") and not may_recover("non_finite", "loss not finite")


def test_a_minimum_loss_scale_turns_collapse_into_consecutive_overflows() -> None:
    found, _ = train(precision="fp16", kl_weight=1e8, min_loss_scale=128.0)
    assert found is not None and found.signal == "loss_scale"
    assert "overflow steps" in found.reason  # the scale sits at 128: the skips give it away


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_absurd_learning_rate_gives_non_finite_loss(precision: str) -> None:
    found, steps = train(lr=1e6, precision=precision)
    assert found is not None and found.signal == "non_finite"
    assert found.step - found.onset == DEFAULTS["non_finite"]["steps"] - 1 and found.step < 10


def test_without_a_loss_scaler_the_first_non_finite_step_already_ruined_the_weights() -> None:
    # Why non_finite stops at once without a scaler: the optimizer has stepped on the NaN gradient,
    # so stopping one step later would only waste it. (Under fp16 the scaler skips that step instead.)
    weights: list[bool] = []

    def check(trainer: Any, step: int) -> None:
        weights.append(all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()))

    found, steps = train(lr=1e6, on_step=check)
    assert found is not None and found.signal == "non_finite" and found.step == found.onset
    assert weights[-1] is False and weights[0] is True


def test_under_a_loss_scaler_a_non_finite_loss_needs_scaled_steps_in_a_row() -> None:
    detector = DivergenceDetector()
    good = {"loss": 0.5, "vae/loss_scale": 1024.0, "vae/skipped": 0.0, "vae/grad_norm": 1.0}
    bad = {"loss": math.inf, "vae/loss_scale": 512.0, "vae/skipped": 1.0, "vae/grad_norm": math.inf}
    steps = [good] * 30 + [bad, good] * 3 + [bad] * int(DEFAULTS["non_finite"]["scaled_steps"])
    found = [detector.observe(i + 1, metrics) for i, metrics in enumerate(steps)]
    assert found[:-1] == [None] * (len(steps) - 1)  # one overflowed forward pass at a time: skipped steps
    last = found[-1]
    assert last is not None and last.signal == "loss_scale" and "under loss scaling" in last.reason
    assert last.onset == len(steps) - DEFAULTS["non_finite"]["scaled_steps"] + 1


def test_too_high_learning_rate_explodes_the_loss() -> None:
    found, steps = train(lr=0.1, output_activation="none", kl_weight=1e-4, epochs=6)
    assert found is not None and found.signal == "loss_explosion", found
    cfg = DEFAULTS["loss_explosion"]
    window = [s["loss"] for s in steps[-int(cfg["steps"]) :]]
    above = [not math.isfinite(v) or v > cfg["factor"] * steps[0]["loss"] for v in window]
    assert above[-1] and sum(above) >= cfg["share"] * cfg["steps"]  # it waited for the evidence, and no longer
    assert sum(above[:-1]) < cfg["share"] * cfg["steps"]


def test_gradient_norm_explosion_after_the_learning_rate_peaks() -> None:
    # Notebook 003: "divergence after peak lr". Calm at lr 1e-3, then the schedule jumps to 0.3.
    def peak(trainer: Any, step: int) -> None:
        if step == 30:
            for group in trainer.net.optimizer.param_groups:
                group["lr"] = 0.3

    config = {"kl_weight": 1e-4, "output_activation": "none", "epochs": 6, "on_step": peak}
    found, _ = train(only("grad_explosion"), **config)  # this signal alone, at its defaults
    assert found is not None and found.signal == "grad_explosion" and "median" in found.reason, found
    # it waits for the evidence (6 of the last 8 steps over the line, the loss up too), not longer
    cfg = DEFAULTS["grad_explosion"]
    assert 31 <= found.onset <= 33 and found.step - found.onset <= cfg["steps"] - 1
    first, _ = train(**config)  # with every signal on, the loss gives it away a step earlier
    assert first is not None and first.step <= found.step


def test_runaway_last_layer_weights() -> None:
    found, steps = train(only("runaway_weights", factor=3), lr=0.3, kl_weight=1e-4, epochs=6)
    assert found is not None and found.signal == "runaway_weights"
    assert steps[-1]["vae/weight_norm_last"] > 3 * steps[0]["vae/weight_norm_last"]


@pytest.mark.parametrize(("activation", "what"), [("none", "all-zero output"), ("sigmoid", "constant output")])
def test_a_zeroed_output_layer_is_a_collapse(activation: str, what: str) -> None:
    found, _ = train(zero_last=True, output_activation=activation)
    assert found is not None and found.signal == "collapse" and what in found.reason
    assert found.step == DEFAULTS["collapse"]["steps"]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"precision": "bf16", "lr": 3e-3},
        {"precision": "fp16", "init_scale": 2.0**30},  # GradScaler calibrates down through many overflows
        {"precision": "fp16", "init_scale": 2.0**20, "growth_interval": 3},  # isolated overflows as it grows
        {"precision": "fp16-o2", "init_scale": 2.0**28},
        {"lr": 0.02, "output_activation": "none"},
    ],
)
def test_healthy_runs_are_not_stopped(config: dict[str, Any]) -> None:
    found, steps = train(epochs=5, **config)
    assert found is None, found
    if config.get("precision", "").startswith("fp16"):
        assert sum(s["vae/skipped"] for s in steps) > 0  # the overflows really happened


def test_signals_can_be_switched_off() -> None:
    found, _ = train(DivergenceSettings(enabled=False), lr=1e6)
    assert found is None
