"""Heuristic signals wait for evidence: real training driven into each one's recovering and diverging case.

A recovering case must not be stopped (with every signal on, at the defaults); a diverging case must
be (by that signal). The training is a small PyTorch regression written as users write their loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.divergence_corpus import CORPUS, read
from benchmarks.divergence_replay import replay
from sweeps import divergence
from sweeps.divergence import DEFAULTS, Divergence, DivergenceDetector, DivergenceSettings
from trainables.diagnostics import output_metrics

# The two stops a user reported (issue 13): per-step losses up to the stop at step 6. Both trials
# recovered; the first reached the sweep's best PSNR.
REPORTED = [
    [0.025, 3545.2, 41.35, 0.044, 0.035, 0.061],  # raw loss back to normal for 3 steps when stopped
    [0.045, 27.47, 26.33, 27.54, 26.04, 0.436],  # recovering when stopped
]


class Loop:
    """An MLP regression on fixed random data with its own optimizer loop; ``step`` returns the diagnostics."""

    def __init__(
        self,
        optimizer: str = "adam",
        lr: float = 1e-2,
        depth: int = 2,
        clip: float | None = None,
        head_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        data = torch.Generator().manual_seed(seed)
        self.x = torch.randn(512, 8, generator=data)
        self.y = torch.tanh(self.x @ torch.randn(8, 4, generator=data)) + 0.05 * torch.randn(512, 4, generator=data)
        torch.manual_seed(seed)
        width = 32 if depth else 8
        body: nn.Module = (
            nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
            if depth
            else nn.Identity()
        )
        self.body, self.head = body, nn.Linear(width, 4)
        with torch.no_grad():
            self.head.weight.mul_(head_scale)
        self.params = [*self.body.parameters(), *self.head.parameters()]
        make = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.optimizer = make(self.params, lr=lr)
        self.clip = clip
        self.batches = 0

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, input_scale: float = 1.0, skip: bool = False) -> dict[str, float]:
        """One batch of 32 (inputs multiplied by ``input_scale``: a corrupted batch).

        ``skip``: the update is not applied, as a loss scaler skips an overflowed step (``model/skipped``).
        """
        start = (self.batches * 32) % len(self.x)
        x, y = self.x[start : start + 32] * input_scale, self.y[start : start + 32]
        out = self.head(self.body(x))
        loss = F.mse_loss(out, y)
        self.optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.norm() for p in self.params if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(grads)))
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if not skip:
            self.optimizer.step()
        self.batches += 1
        return {
            **({"model/skipped": 1.0} if skip else {}),
            "loss": float(loss.detach()),
            "model/grad_norm": grad_norm,
            "model/weight_norm_last": float(self.head.weight.detach().norm()),
            "output_std": float(out.detach().std()),
            "output_mean": float(out.detach().mean()),
        }


def drive(
    loop: Loop,
    steps: int,
    settings: DivergenceSettings | None = None,
    before: Callable[[Loop, int], None] | None = None,
    input_scale: Callable[[int], float] = lambda i: 1.0,
) -> tuple[Divergence | None, list[dict[str, float]]]:
    """Train ``steps`` steps (all of them: the detector only observes); return its first stop and the steps."""
    detector = DivergenceDetector(settings)
    found: Divergence | None = None
    trace = []
    for i in range(steps):
        if before is not None:
            before(loop, i)
        metrics = loop.step(input_scale(i))
        trace.append(metrics)
        found = found or detector.observe(i + 1, metrics)
    return found, trace


def only(signal: str) -> DivergenceSettings:
    return DivergenceSettings(signals={signal: dict(DEFAULTS[signal])})


def above(trace: list[dict[str, float]], factor: float, key: str = "loss") -> list[bool]:
    first = trace[0][key]
    return [not math.isfinite(s[key]) or s[key] > factor * first for s in trace]


# The evidence window, from numbers ---------------------------------------------------------------


def feed(losses: list[float], settings: DivergenceSettings | None = None) -> Divergence | None:
    detector = DivergenceDetector(settings)
    for i, loss in enumerate(losses):
        found = detector.observe(i + 1, {"loss": loss})
        if found is not None:
            return found
    return None


def test_the_two_reported_false_stops_are_not_stopped() -> None:
    for losses in REPORTED:
        assert feed(losses) is None
        normal = [losses[0] * (1 - 0.005 * i) for i in range(60)]
        assert feed(losses + normal) is None  # nor later, when the spike is still in the window


def test_a_loss_that_stays_up_is_stopped_once_six_of_eight_steps_are_over_the_line() -> None:
    cfg = DEFAULTS["loss_explosion"]
    need = math.ceil(cfg["share"] * cfg["steps"])
    found = feed([0.5] * 10 + [0.5 * cfg["factor"] * 3] * 20)
    assert found is not None and found.signal == "loss_explosion"
    assert found.onset == 11 and found.step == 10 + need, found


def test_a_step_under_the_line_does_not_reset_the_evidence_but_is_never_stopped_on() -> None:
    up, down = 100.0, 1.0
    pattern = [up, up, down, up, up, up]  # 5 of 6 over the line, the newest over it: not yet 6 of 8
    assert feed([1.0] * 5 + pattern) is None
    found = feed([1.0] * 5 + pattern + [up])
    assert found is not None and found.onset == 6 and found.step == 12
    assert feed([1.0] * 5 + pattern + [up, up, down]) is not None  # it had fired on the step before
    assert feed([1.0] * 5 + [up, up, up, up, up, down, down]) is None


def test_the_line_is_relative_to_the_first_loss_not_the_best() -> None:
    # A loss that fell 1000-fold and comes back up 30-fold is still far under where it started.
    losses = [1.0, 0.1, 0.01] + [0.001] * 20 + [0.03] * 40
    assert feed(losses) is None


def test_a_loss_that_has_been_negative_is_not_judged_against_its_first_value() -> None:
    # A hinge GAN's summed losses (a user's loop, swept in observe mode): around zero, then swings of
    # hundreds of times the first value in the two best trials of eight. A loss that goes negative
    # has no magnitude to compare with its first value, so loss_explosion stands down for the trial.
    hinge = [-3.6, 8.3, 67.0, 26.4, 30.9, 1.4, 8.0, 26.7, 17.4, 1.7] + [1316.0, -354.0] * 20
    assert feed(hinge) is None
    assert feed([2.0] * 5 + [-5000.0] * 10) is None  # also a blow-up into the negative: the others' business
    # before the loss has been negative, the line holds as ever
    found = feed([2.0] * 5 + [5000.0] * 10 + [-1.0])
    assert found is not None and found.signal == "loss_explosion"


# Real training: each heuristic signal's recovering case and diverging case -----------------------


def test_loss_explosion_recovering_four_corrupted_batches_are_not_stopped() -> None:
    # The reported second trace in real training: four batches 20-80x the first loss, then back.
    # Adam's second moments remember the huge gradients, so it takes a while to train on.
    found, trace = drive(Loop(), 200, input_scale=lambda i: 10.0 if 20 <= i < 24 else 1.0)
    assert found is None, found
    hits = above(trace, DEFAULTS["loss_explosion"]["factor"])
    assert sum(hits) == 4 and hits[20:24] == [True] * 4  # the spike really happened
    assert sum(s["loss"] for s in trace[-10:]) / 10 < 0.5 * trace[0]["loss"]  # and the trial recovered


def test_loss_explosion_diverging_a_too_high_learning_rate_is_stopped() -> None:
    found, trace = drive(Loop(optimizer="sgd", lr=4.0, depth=0), 40)
    assert found is not None and found.signal == "loss_explosion", found
    assert found.step - found.onset == math.ceil(DEFAULTS["loss_explosion"]["share"] * 8) - 1
    assert all(math.isfinite(s["loss"]) for s in trace)  # an explosion, not a NaN (non_finite's business)
    assert trace[-1]["loss"] > 1e6 * trace[0]["loss"]  # and it never came back


def test_grad_explosion_recovering_clipped_corrupted_batches_are_not_stopped() -> None:
    # Five corrupted batches: gradient norms 10^4 x their median, clipped before the update.
    found, trace = drive(Loop(clip=1.0), 80, input_scale=lambda i: 100.0 if 30 <= i < 35 else 1.0)
    assert found is None, found
    median = sorted(s["model/grad_norm"] for s in trace[:30])[15]
    assert all(s["model/grad_norm"] > DEFAULTS["grad_explosion"]["factor"] * median for s in trace[30:35])
    assert trace[-1]["loss"] < 0.2 * trace[0]["loss"]


def test_grad_explosion_diverging_after_the_learning_rate_jumps_is_stopped() -> None:
    def jump(loop: Loop, i: int) -> None:
        if i == 25:
            loop.set_lr(4.0)

    found, trace = drive(Loop(optimizer="sgd", lr=0.1, depth=0), 60, only("grad_explosion"), jump)
    assert found is not None and found.signal == "grad_explosion" and "loss over 2 x its first value" in found.reason
    assert found.onset > 25 and found.step - found.onset <= DEFAULTS["grad_explosion"]["steps"] - 1
    assert trace[-1]["loss"] > 1e3 * trace[0]["loss"]


def test_grad_explosion_a_vanished_gradient_coming_back_is_not_an_explosion() -> None:
    # A GAN discriminator that saturates: its gradient norm falls a million-fold for 60 steps (the
    # window's median with it), then comes back to its starting size while the loss is still high.
    def norms(i: int) -> float:
        return 1e-6 if 25 <= i < 85 else 2.0

    def steps(comeback: float) -> list[dict[str, float]]:
        return [
            {"loss": 1.0 if i < 25 else 30.0, "d/grad_norm": norms(i) if i < 85 else comeback, "d/loss_scale": 1.0}
            for i in range(120)
        ]

    def run(trace: list[dict[str, float]]) -> Divergence | None:
        detector = DivergenceDetector(only("grad_explosion"))
        return next((f for i, m in enumerate(trace) if (f := detector.observe(i + 1, m)) is not None), None)

    assert run(steps(comeback=2.0)) is None
    # Far above where it started, it is one.
    found = run(steps(comeback=2.0 * DEFAULTS["grad_explosion"]["factor"] * 10))
    assert found is not None and found.signal == "grad_explosion" and found.onset == 86, found


def _zero_head(loop: Loop, unfreeze_at: int) -> Callable[[Loop, int], None]:
    def hook(loop: Loop, i: int) -> None:
        if i == 0:
            with torch.no_grad():
                loop.head.weight.zero_()
                loop.head.bias.zero_()
            loop.head.requires_grad_(False)
        if i == unfreeze_at:
            loop.head.requires_grad_(True)

    return hook


def test_collapse_recovering_a_head_frozen_at_zero_for_a_while_is_not_stopped() -> None:
    loop = Loop()
    found, trace = drive(loop, 60, before=_zero_head(loop, 12))
    assert found is None, found
    assert [s["output_std"] for s in trace[:12]] == [0.0] * 12 and trace[-1]["output_std"] > 0.1
    assert trace[-1]["loss"] < 0.5 * trace[0]["loss"]


def test_collapse_diverging_a_head_stuck_at_zero_is_stopped() -> None:
    loop = Loop()
    found, _ = drive(loop, 40, before=_zero_head(loop, 1000))
    assert found is not None and found.signal == "collapse" and "all-zero output" in found.reason
    assert found.step == DEFAULTS["collapse"]["steps"]


def test_runaway_weights_healthy_a_zero_initialised_head_growing_200_fold_is_not_stopped() -> None:
    # A head initialised at zero (as in zero-init residual branches) under an lr warm-up grows far
    # beyond 50 x its first norm while the loss falls: the old rule stopped this at step 12.
    def warm_up(loop: Loop, i: int) -> None:
        loop.set_lr(1e-2 * min(1.0, (i + 1) / 20))

    found, trace = drive(Loop(head_scale=0.0), 80, before=warm_up)
    assert found is None, found
    norms = [s["model/weight_norm_last"] for s in trace]
    assert max(norms) > 100 * norms[0] and trace[-1]["loss"] < 0.2 * trace[0]["loss"]


def test_runaway_weights_healthy_a_zero_initialised_head_while_the_loss_is_back_at_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A recorded trial of benchmarks/loops/ddpm_tiny.py, a diffusion loop written by someone who never
    # read the detector (corpus trial 5: lr 0.06, fp16). Its output layer starts at zero, grows past
    # 50 x its first norm, and the loss (noise-prediction MSE, 1.0 for the untrained model) falls,
    # comes back to about 1.0 for 40 steps as the model falls back to predicting zero noise, then
    # recovers: the trial ends 15th of 30 at 0.34 (untrained 0.99). A loss hovering at its first value
    # is not a divergence; the gate used to be "above its first value" and stopped it at step 35.
    trial = read(CORPUS / "ddpm_tiny.parquet")[5]
    assert trial["final"] < 0.5 * trial["untrained"]

    assert replay(trial, DivergenceDetector)[1] is None
    monkeypatch.setattr(divergence, "LOSS_UP", 1.0)
    found = replay(trial, DivergenceDetector)[1]
    assert found is not None and found.signal == "runaway_weights"


def test_runaway_weights_diverging_with_the_loss_is_stopped() -> None:
    found, trace = drive(Loop(optimizer="sgd", lr=4.0, depth=0), 60, only("runaway_weights"))
    assert found is not None and found.signal == "runaway_weights", found
    first = trace[0]["model/weight_norm_last"]
    window = trace[found.step - int(DEFAULTS["runaway_weights"]["steps"]) : found.step]
    share = DEFAULTS["runaway_weights"]["share"]
    assert (
        sum(s["model/weight_norm_last"] > DEFAULTS["runaway_weights"]["factor"] * first for s in window) >= share * 20
    )
    assert all(s["loss"] > trace[0]["loss"] for s in window)


@pytest.mark.parametrize("scaler_skips_the_first_update", [False, True])
def test_runaway_weights_healthy_judged_from_the_first_update_whatever_the_precision(
    scaler_skips_the_first_update: bool,
) -> None:
    # A user's GAN (hinge loss, so no loss guard): at fp16 the GradScaler skipped the first update
    # and the weight norm's first value was the initial one, 0.58, against 7-14 after the first Adam
    # step at fp32/bf16; the same run was 69 x "its first value" at fp16 and 4 x at bf16, and its fp16
    # trials were stopped, one of them the sweep's best. Here: a small head, Adam at lr 0.05, no loss
    # reported (the signal judges alone, as under a signed loss).
    loop = Loop(head_scale=0.01, lr=0.05)
    detector = DivergenceDetector()
    found, norms = None, []
    for i in range(80):
        metrics = loop.step(skip=scaler_skips_the_first_update and i == 0)
        metrics.pop("loss")
        norms.append(metrics["model/weight_norm_last"])
        found = found or detector.observe(i + 1, metrics)
    assert found is None, found
    assert max(norms) > 50 * loop_initial_head_norm()  # the old reference, at fp16, would have stopped it


def loop_initial_head_norm() -> float:
    return float(Loop(head_scale=0.01, lr=0.05).head.weight.detach().norm())


def test_runaway_weights_diverging_after_a_skipped_first_update_is_still_stopped() -> None:
    loop = Loop(optimizer="sgd", lr=4.0, depth=0)
    detector = DivergenceDetector(only("runaway_weights"))
    found = None
    for i in range(60):
        found = found or detector.observe(i + 1, loop.step(skip=i == 0))
    assert found is not None and found.signal == "runaway_weights", found


def test_without_a_loss_the_other_signals_judge_alone() -> None:
    detector = DivergenceDetector(only("runaway_weights"))
    steps: list[dict[str, Any]] = [{"model/weight_norm_last": 1.0}] + [{"model/weight_norm_last": 100.0}] * 30
    found = [detector.observe(i + 1, m) for i, m in enumerate(steps)]
    first = next(f for f in found if f is not None)
    assert first.signal == "runaway_weights" and first.step == 1 + math.ceil(0.75 * 20)
    assert first.reason.endswith("on 15 of the last 16 steps, no loss reported")
    signed = DivergenceDetector(only("runaway_weights"))  # a hinge loss: no magnitude to compare
    found = [signed.observe(i + 1, {**m, "loss": -1.0}) for i, m in enumerate(steps)]
    reason = next(f for f in found if f is not None).reason
    assert reason.endswith("the loss not compared (it has been negative: no magnitude)"), reason


def _colorizer_steps(
    lr: float,
    steps: int,
    frozen_head_for: int = 0,
    dead_head: tuple[int, int] = (0, 0),
    detector: DivergenceDetector | None = None,
) -> tuple[Divergence | None, list[dict[str, float]]]:
    """Train a gray-to-RGB conv net (ReLU body, tanh output) with Adam; the diagnostics as ``run.step`` derives them.

    ``frozen_head_for``: the output conv starts with zero weights (its bias only) and learns from
    that step on, so until then every image comes out as the same solid colour. ``dead_head``
    ``(a, b)``: the same after the net has learned, from step ``a`` (its weights zeroed) to step
    ``b`` (they learn again; never when ``b`` is past the end): a VQ model whose codebook is down to
    one code for a while.
    """
    torch.manual_seed(0)
    head = nn.Conv2d(16, 3, 3, padding=1)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), head, nn.Tanh()
    )
    if frozen_head_for:
        with torch.no_grad():
            head.weight.zero_()
        head.weight.requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    gray = torch.rand(256, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    color = torch.cat([gray, gray.flip(-1), 1 - gray], 1) * 2 - 1
    detector, found, trace = detector or DivergenceDetector(), None, []
    for i in range(steps):
        if i == frozen_head_for:
            head.weight.requires_grad_(True)
        if dead_head[0] and i == dead_head[0]:
            with torch.no_grad():
                head.weight.zero_()
            head.weight.requires_grad_(False)
        if dead_head[0] and i == dead_head[1]:
            head.weight.requires_grad_(True)
        x, y = gray[(i * 32) % 256 :][:32], color[(i * 32) % 256 :][:32]
        out = net(x)
        loss = F.l1_loss(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metrics = {"loss": float(loss.detach()), **output_metrics(out)}
        trace.append(metrics)
        found = found or detector.observe(i + 1, metrics)
    return found, trace


def test_collapse_diverging_one_solid_colour_for_every_input_is_stopped() -> None:
    # lr 1 kills the ReLUs: the output is tanh of the head's bias, one colour for every image, which
    # varies over its channels (output_std ~0.94), so only the batch's spread shows the collapse.
    found, trace = _colorizer_steps(1.0, 60)
    assert found is not None and found.signal == "collapse", found
    assert "the same output for every sample" in found.reason
    assert trace[found.step - 1]["output_std"] > 0.5 and trace[found.step - 1]["output_spread"] == 0.0
    assert trace[-1]["loss"] > 1.5 * trace[0]["loss"]  # and it never learns again


def test_collapse_recovering_a_head_that_paints_one_colour_for_a_while_is_not_stopped() -> None:
    found, trace = _colorizer_steps(1e-3, 120, frozen_head_for=12)
    assert found is None, found
    assert [s["output_spread"] for s in trace[:12]] == [0.0] * 12 and trace[-1]["output_spread"] > 0.1
    healthy, _ = _colorizer_steps(1e-3, 120)
    assert healthy is None, healthy


def test_collapse_a_late_one_output_for_every_input_that_recovers_is_not_stopped() -> None:
    """After 54 steps of learning, one output for every input for 69 steps, then learning again.

    What a user's VQ-VAE did (its codebook down to one code): the trial ended 17% better than the
    mean image, and the 20-step collapse window flagged it. Only a collapse lasting 1.5 x the steps
    the trial trained before it counts now; the old rule (``relative: 0``) still fires.
    """
    found, trace = _colorizer_steps(1e-3, 160, dead_head=(54, 123))
    assert found is None, found
    spread = [s["output_spread"] for s in trace]
    assert spread[53] > 0 and spread[54:123] == [0.0] * 69 and spread[-1] > 0.1
    assert trace[-1]["loss"] < trace[100]["loss"]  # learning again
    settings = DivergenceSettings()
    settings.signals["collapse"]["relative"] = 0.0
    old = DivergenceDetector(settings)
    flagged, _ = _colorizer_steps(1e-3, 160, dead_head=(54, 123), detector=old)
    assert flagged is not None and flagged.signal == "collapse" and flagged.step == 74


def test_collapse_a_late_one_output_for_every_input_that_stays_is_stopped() -> None:
    found, trace = _colorizer_steps(1e-3, 200, dead_head=(54, 10_000))
    assert found is not None and found.signal == "collapse", found
    # 54 steps of learning before: it must last ceil(1.5 x 54) = 81 steps, from step 55
    assert found.step == 54 + 81 and found.onset == 55
    assert "the same output for every sample" in found.reason


def test_the_batch_spread_is_sent_only_for_a_batch_of_images() -> None:
    gray = torch.rand(1, 16, 16).expand(3, 16, 16)  # one image, the same in its three channels
    assert "output_spread" not in output_metrics(gray) and "output_spread" not in output_metrics(gray[None])
    assert output_metrics(torch.stack([gray, gray]))["output_spread"] == 0.0
    assert output_metrics(torch.rand(2, 3, 16, 16))["output_spread"] > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_the_output_statistics_are_torch_s_unbiased_ones_and_exactly_0_for_a_collapsed_output(
    dtype: torch.dtype,
) -> None:
    generator = torch.Generator().manual_seed(3)
    for shape in [(16, 3, 32, 32), (5, 1, 7, 7), (2, 4), (3, 8, 8), (7,)]:
        x = (torch.rand(shape, generator=generator) * 3 - 1).to(dtype).requires_grad_()
        kept = x.detach().clone()
        found, wide = output_metrics(x), x.detach().float().double()  # its float32 values, on any device
        assert torch.equal(x.detach(), kept)  # worked on a copy, even of a float64 output
        assert found["output_mean"] == pytest.approx(float(wide.mean()), rel=1e-9)
        assert found["output_std"] == pytest.approx(float(wide.std()), rel=1e-9)
        assert ("output_spread" in found) == (len(shape) == 4)
        if len(shape) == 4:
            assert found["output_spread"] == pytest.approx(float(wide.std(dim=0).mean()), rel=1e-9)
    # the collapse signal compares with 0 exactly: a float32 mean of 3, 5 or 7 equal values need not be that value
    for batch in (2, 3, 5, 7, 12, 31):
        for value in (0.1, -3.7e-5, 123.456, 1e30 if dtype in (torch.float32, torch.float64) else 6e4):
            constant = torch.full((batch, 3, 5, 5), value, dtype=dtype)
            alike = (torch.rand(1, 3, 5, 5, generator=generator) * value).to(dtype).expand(batch, 3, 5, 5)
            assert output_metrics(constant)["output_std"] == 0.0 and output_metrics(constant)["output_spread"] == 0.0
            assert output_metrics(alike)["output_spread"] == 0.0 and output_metrics(alike)["output_std"] > 0
    assert math.isnan(output_metrics(torch.ones(1))["output_std"])  # as torch.std: one value has no deviation
    channels_last = torch.rand(4, 3, 8, 8, generator=generator).to(dtype).to(memory_format=torch.channels_last)
    permuted = torch.rand(4, 8, 8, 3, generator=generator).to(dtype).permute(0, 3, 1, 2)  # a user's NHWC output
    for x in (channels_last, permuted):
        found, wide = output_metrics(x), x.float().double()
        assert found["output_spread"] == pytest.approx(float(wide.std(dim=0).mean()), rel=1e-9)
        assert found["output_std"] == pytest.approx(float(wide.std()), rel=1e-9)


def _to_the_end(
    loop: Loop, steps: int, before: Callable[[Loop, int], None], last_epoch_steps: int | None = None
) -> tuple[Divergence | None, Divergence | None]:
    """Train ``steps`` steps, observing; return the first stop and the collapse still under way at the end."""
    detector = DivergenceDetector()
    found: Divergence | None = None
    for i in range(steps):
        before(loop, i)
        fired = detector.observe(i + 1, loop.step())  # observed to the end, as observe mode does
        found = found or fired
    return found, detector.collapsed_to_the_end(last_epoch_steps)


def test_collapse_a_trial_shorter_than_the_window_stuck_at_every_step_ended_collapsed() -> None:
    loop = Loop()
    found, at_end = _to_the_end(loop, 16, _zero_head(loop, 1000))
    assert found is None  # 16 steps: the window (20) was never met
    assert at_end is not None and at_end.signal == "collapse" and at_end.step == 16 and at_end.onset == 1
    assert "all-zero output for its last 16 steps" in at_end.reason


def test_collapse_a_short_trial_whose_output_moved_again_did_not_end_collapsed() -> None:
    loop = Loop()
    assert _to_the_end(loop, 16, _zero_head(loop, 6)) == (None, None)


def test_collapse_a_stuck_head_observed_past_its_stop_is_still_collapsed_at_the_end() -> None:
    loop = Loop()
    found, at_end = _to_the_end(loop, 40, _zero_head(loop, 1000))
    assert found is not None and found.signal == "collapse" and found.step == DEFAULTS["collapse"]["steps"]
    assert at_end is not None and at_end.step == 40 and "for its last 40 steps" in at_end.reason


def test_collapse_a_late_collapse_shorter_than_what_the_trial_had_learned_is_not_collapsed_at_the_end() -> None:
    # 30 steps of learning, then a head frozen at zero for the last 25: the relative rule asks for 45
    loop = Loop()

    def late(loop: Loop, i: int) -> None:
        if i == 30:
            _zero_head(loop, 1000)(loop, 0)

    found, at_end = _to_the_end(loop, 55, late)
    assert found is None and at_end is None


def test_collapse_a_short_trial_stuck_after_its_first_step_ended_collapsed() -> None:
    # the user's case: the untrained model's output at step 1, all zero from step 2 (lr 1.09), 4 epochs of 4 steps
    loop = Loop()

    def dies(loop: Loop, i: int) -> None:
        if i == 1:
            _zero_head(loop, 1000)(loop, 0)

    found, at_end = _to_the_end(loop, 16, dies, last_epoch_steps=4)
    assert found is None
    assert at_end is not None and at_end.onset == 2 and "all-zero output for its last 15 steps" in at_end.reason
    assert _to_the_end(Loop(), 16, lambda loop, i: None, last_epoch_steps=4) == (None, None)  # a healthy one


def test_a_loss_explosion_ending_on_a_nan_says_not_finite_not_above() -> None:
    """A user's fp16 trial read ``loss nan above 20 x its first value``: NaN is above nothing."""
    detector = DivergenceDetector()
    found = None
    for step in range(1, 12):
        loss = 1.0 if step == 1 else (30.0 if step < 7 else math.nan)  # under a loss scale: no non_finite stop
        found = found or detector.observe(step, {"loss": loss, "model/loss_scale": 65536.0, "model/skipped": 0.0})
    assert found is not None and found.signal == "loss_explosion" and found.step == 7
    assert found.reason == "loss nan now; not finite or above 20 x its first value 1 on 6 of the last 7 steps"
