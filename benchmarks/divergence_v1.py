"""The divergence detector as it was before issue 13: ``sweeps/divergence.py`` at commit 42b2e9e, frozen.

Only ``benchmarks/divergence_replay.py --old`` uses it, to replay the old defaults on the same
traces as the current detector. The code below is unchanged; its docstring was:

    Divergence detection inside a trial, one optimizer step at a time.

    Each signal has a name, defaults, and a spec setting under ``divergence:``:

    - ``loss_scale``: the AMP loss scale falls below ``floor``, or ``consecutive`` steps in a row
      overflow (are skipped), or more than ``max_share`` of the last ``window`` steps overflow.
      GradScaler's calibration (the run of overflows from 65536 down before the first good step,
      up to ``calibration`` of them) and isolated overflows later do not count.
    - ``non_finite``: the loss or, without a loss scaler, the gradient norm is NaN/inf for ``steps``
      steps in a row (default 1: without a scaler the optimizer has already stepped on it, so the
      weights are NaN and no later step recovers). Under a loss scaler (fp16) the step was skipped
      instead; a loss that stays non-finite ``scaled_steps`` steps in a row counts as ``loss_scale``:
      the forward pass overflows and no scale can fix it (bf16 can).
    - ``loss_explosion``: the smoothed loss exceeds ``factor`` x its best smoothed value, after
      ``warmup`` steps (the best is tracked from the first step; the warm-up only holds the signal
      back, so a first update that throws the loss up 20-fold is caught within a few steps).
    - ``grad_explosion``: a gradient norm exceeds ``factor`` x its running median over ``window``
      steps for ``steps`` steps in a row, after ``warmup`` steps.
    - ``collapse``: generated output constant (``output_std`` == 0) or all zero, or a loss of exactly
      zero, for ``steps`` steps in a row.
    - ``runaway_weights``: a last-layer weight norm exceeds ``factor`` x its first value.

    Metric names are those of ``trainables.diagnostics``: ``loss``, ``<net>/loss_scale``,
    ``<net>/skipped``, ``<net>/grad_norm``, ``<net>/weight_norm_last``, ``output_std``, ...
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeGuard

SIGNALS = ("loss_scale", "non_finite", "loss_explosion", "grad_explosion", "collapse", "runaway_weights")

DEFAULTS: dict[str, dict[str, float]] = {
    "loss_scale": {"floor": 1.0, "consecutive": 6, "window": 50, "max_share": 0.5, "calibration": 24},
    "non_finite": {"steps": 1, "scaled_steps": 2},
    "loss_explosion": {"factor": 20.0, "warmup": 5, "smoothing": 0.5},
    "grad_explosion": {"factor": 1000.0, "window": 50, "steps": 3, "warmup": 20},
    "collapse": {"steps": 20},
    "runaway_weights": {"factor": 50.0},
}


@dataclass
class Divergence:
    """Why and when a trial diverged: the signal, a one-line reason, the step and the onset."""

    signal: str
    reason: str
    step: int
    onset: int


@dataclass
class DivergenceSettings:
    """Which signals are on and their thresholds (see the module docstring)."""

    enabled: bool = True
    signals: dict[str, dict[str, float]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULTS.items()})
    rescue: bool = False

    def on(self, signal: str) -> bool:
        """Whether ``signal`` is checked."""
        return self.enabled and signal in self.signals


class _Streak:
    """Counts consecutive steps for which a condition held, remembering where the run began."""

    def __init__(self) -> None:
        self.length = 0
        self.start = 0

    def update(self, hit: bool, step: int) -> int:
        if hit:
            if self.length == 0:
                self.start = step
            self.length += 1
        else:
            self.length = 0
        return self.length


class _ScaleWatch:
    """Loss-scale collapse for one network."""

    def __init__(self, settings: dict[str, float]) -> None:
        self.s = settings
        self.calibrating = True
        self.streak = _Streak()
        self.recent: deque[tuple[int, bool]] = deque(maxlen=int(settings["window"]))

    def observe(self, net: str, step: int, scale: float, skipped: bool) -> Divergence | None:
        run = self.streak.update(skipped, step)
        if self.calibrating:
            if not skipped:
                self.calibrating = False
            elif run > self.s["calibration"]:
                return Divergence(
                    "loss_scale", f"{net}: {run} overflow steps before any good step", step, self.streak.start
                )
            else:
                return self._floor(net, step, scale)
        self.recent.append((step, skipped))
        if run >= self.s["consecutive"]:
            return Divergence("loss_scale", f"{net}: {run} consecutive overflow steps", step, self.streak.start)
        if len(self.recent) == self.recent.maxlen:
            share = sum(s for _, s in self.recent) / len(self.recent)
            if share > self.s["max_share"]:
                onset = next(st for st, s in self.recent if s)
                reason = f"{net}: {share:.0%} of the last {len(self.recent)} steps overflowed"
                return Divergence("loss_scale", reason, step, onset)
        return self._floor(net, step, scale)

    def _floor(self, net: str, step: int, scale: float) -> Divergence | None:
        if scale < self.s["floor"]:
            onset = self.streak.start if self.streak.length else step
            return Divergence("loss_scale", f"{net}: loss scale {scale:g} below floor {self.s['floor']:g}", step, onset)
        return None


class DivergenceDetector:
    """Feed it each step's diagnostics; it returns a :class:`Divergence` once a signal fires."""

    def __init__(self, settings: DivergenceSettings | None = None) -> None:
        self.settings = settings or DivergenceSettings()
        self.steps_seen = 0
        self.scales: dict[str, _ScaleWatch] = {}
        self.non_finite = _Streak()
        self.zero_loss = _Streak()
        self.constant = _Streak()
        self.loss_ema: float | None = None
        self.best_ema = math.inf
        self.grads: dict[str, deque[float]] = {}
        self.grad_streaks: dict[str, _Streak] = {}
        self.first_weights: dict[str, float] = {}

    def observe(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        """Check one step; return the first signal that fires, else None."""
        if not self.settings.enabled:
            return None
        self.steps_seen += 1
        for check in (self._scale, self._non_finite, self._explosion, self._grad, self._collapse, self._weights):
            found = check(step, metrics)
            if found is not None:
                return found
        return None

    def _cfg(self, signal: str) -> dict[str, float] | None:
        return self.settings.signals.get(signal) if self.settings.on(signal) else None

    def _scale(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("loss_scale")
        if cfg is None:
            return None
        for net, scale in _per_net(metrics, "loss_scale").items():
            skipped = bool(metrics.get(f"{net}/skipped", 0.0)) if net else bool(metrics.get("skipped", 0.0))
            if not _has_scaler(scale, skipped) and net not in self.scales:
                continue
            watch = self.scales.setdefault(net, _ScaleWatch(cfg))
            found = watch.observe(net or "model", step, float(scale), skipped)
            if found is not None:
                return found
        return None

    def _non_finite(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("non_finite")
        if cfg is None:
            return None
        bad = [key for key, value in metrics.items() if _is_loss(key) and not _finite(value)]
        if self.scales:
            # Under a loss scaler a non-finite gradient is only a skipped step, but a non-finite loss
            # is a forward pass that overflowed: lowering the scale cannot fix it.
            run = self.non_finite.update(bool(bad), step)
            if run >= cfg["scaled_steps"]:
                reason = f"{', '.join(bad)} not finite for {run} steps under loss scaling"
                return Divergence("loss_scale", reason, step, self.non_finite.start)
            return None
        for net, norm in _per_net(metrics, "grad_norm").items():
            scale = metrics.get(f"{net}/loss_scale" if net else "loss_scale", 1.0)
            if not _finite(norm) and not _has_scaler(scale, False):
                bad.append(f"{net}/grad_norm" if net else "grad_norm")
        run = self.non_finite.update(bool(bad), step)
        if run >= cfg["steps"]:
            return Divergence("non_finite", f"{', '.join(bad)} not finite for {run} steps", step, self.non_finite.start)
        return None

    def _explosion(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("loss_explosion")
        loss = metrics.get("loss")
        if cfg is None or not _finite(loss):
            return None
        alpha = cfg["smoothing"]
        self.loss_ema = float(loss) if self.loss_ema is None else alpha * self.loss_ema + (1 - alpha) * float(loss)
        self.best_ema = min(self.best_ema, self.loss_ema)
        if self.steps_seen <= cfg["warmup"]:
            return None
        if self.best_ema > 0 and self.loss_ema > cfg["factor"] * self.best_ema:
            reason = f"smoothed loss {self.loss_ema:.4g} > {cfg['factor']:g} x its best {self.best_ema:.4g}"
            return Divergence("loss_explosion", reason, step, step)
        return None

    def _grad(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("grad_explosion")
        if cfg is None:
            return None
        for net, norm in _per_net(metrics, "grad_norm").items():
            scaled = net in self.scales or _has_scaler(metrics.get(f"{net}/loss_scale" if net else "loss_scale"), False)
            if not _finite(norm) and scaled:
                continue  # an overflow under a loss scaler is the scaler's business
            history = self.grads.setdefault(net, deque(maxlen=int(cfg["window"])))
            streak = self.grad_streaks.setdefault(net, _Streak())
            if len(history) >= cfg["warmup"]:
                median = statistics.median(history)
                hit = not _finite(norm) or (median > 0 and norm > cfg["factor"] * median)
                if streak.update(hit, step) >= cfg["steps"]:
                    reason = f"{net or 'model'}: grad norm {float(norm):.3g} > {cfg['factor']:g} x median {median:.3g}"
                    return Divergence("grad_explosion", reason, step, streak.start)
                if hit:
                    continue  # keep spikes out of the median
            if _finite(norm):
                history.append(norm)
        return None

    def _collapse(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("collapse")
        if cfg is None:
            return None
        std, mean = metrics.get("output_std"), metrics.get("output_mean")
        constant = _finite(std) and std == 0.0
        if self.constant.update(constant, step) >= cfg["steps"]:
            what = "all-zero output" if _finite(mean) and mean == 0.0 else "constant output"
            return Divergence("collapse", f"{what} for {self.constant.length} steps", step, self.constant.start)
        loss = metrics.get("loss")
        if self.zero_loss.update(_finite(loss) and float(loss) == 0.0, step) >= cfg["steps"]:
            return Divergence(
                "collapse", f"loss exactly 0 for {self.zero_loss.length} steps", step, self.zero_loss.start
            )
        return None

    def _weights(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("runaway_weights")
        if cfg is None:
            return None
        for net, norm in _per_net(metrics, "weight_norm_last").items():
            if not _finite(norm):
                continue
            first = self.first_weights.setdefault(net, float(norm))
            if first > 0 and float(norm) > cfg["factor"] * first:
                reason = f"{net or 'model'}: last-layer weight norm {float(norm):.3g} > {cfg['factor']:g} x {first:.3g}"
                return Divergence("runaway_weights", reason, step, step)
        return None


def _per_net(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """``{net: value}`` for keys ``<net>/<name>`` (and ``""`` for a bare ``<name>``)."""
    found = {key[: -len(name) - 1]: v for key, v in metrics.items() if key.endswith("/" + name)}
    if name in metrics:
        found[""] = metrics[name]
    return found


def _has_scaler(scale: Any, skipped: bool) -> bool:
    return skipped or (_finite(scale) and float(scale) != 1.0)


def _is_loss(key: str) -> bool:
    return key == "loss" or key.startswith("loss/")


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
