"""Divergence detection inside a trial, one optimizer step at a time.

Each signal has a name, defaults, and a spec setting under ``divergence:``. Two kinds:

**Irrecoverable states** stop at once, because no later step can undo them:

- ``non_finite``: without a loss scaler, the loss (``loss``, ``loss/<term>``) or a gradient norm is
  NaN/inf for ``steps`` steps in a row (default 1: the optimizer has already stepped on it, so the
  weights are NaN; a non-finite gradient over last-layer weights still finite after the step was
  skipped by a scaler the loop did not send). Under a loss scaler (fp16) such a step was skipped
  instead; a loss that stays non-finite ``scaled_steps`` (2) steps in a row counts as
  ``loss_scale``: the forward pass itself overflows and no scale can fix it (bf16 can).
- ``loss_scale``: the AMP loss scale falls below ``floor`` (1), or ``consecutive`` (6) steps in a row
  overflow (are skipped), or more than ``max_share`` (50%) of the last ``window`` (50) steps
  overflow. GradScaler's calibration (the run of overflows from its initial scale down before the
  first good step, up to ``calibration`` (24) of them) and isolated overflows later do not count.
  The floor is irrecoverable; a run or share of overflows is strong evidence, not proof (a scale
  that settles lower can outlive it), so ``sweeps audit`` re-runs those stops too (:func:`may_recover`).

**Heuristic signals** judge from a pattern that a trial can recover from (a spike after a large
update, an lr restart), so each waits for evidence: a window of the last ``steps`` steps of which
at least ``share`` are over the line, the newest step included. A step under the line does not
reset the window, but no signal fires on a step that is itself under its line, so none fires
while the raw values have come back. Nothing is smoothed. The line is relative to where the trial
started, not to its best value so far:

- ``loss_explosion``: the loss magnitude (or a non-finite loss) is above ``factor`` (20) x the
  magnitude of the trial's first finite loss (the untrained model's, computed before the first
  update) on ``share`` (75%) of the last ``steps`` (8) steps: 6 of 8 at the defaults. A loss that
  has been negative (a hinge or Wasserstein GAN's, a Gaussian likelihood) has no magnitude to
  compare: from then on this signal stands down, and the others judge without the loss.
- ``grad_explosion``: a network's gradient norm is above ``factor`` (1000) x the median of its last
  ``window`` (50) norms (the spikes kept out; never less than the median of its first ``warmup``
  norms, so a gradient that vanished and comes back has not exploded), judged once ``warmup`` (20)
  norms are in, on 6 of the last ``steps`` (8) steps; and the loss is above twice its first value
  (``LOSS_UP``) on as many of those steps, the newest included (a gradient spike while the loss is
  back near where it started is not a divergence).
- ``runaway_weights``: a last-layer weight norm is above ``factor`` (50) x its first value (after
  the first update applied: a loss scaler's skipped first steps leave the initial weights, which
  would make the same run 69 x its "first value" at fp16 and 4 x at bf16) on
  ``share`` (75%) of the last ``steps`` (20) steps, with the loss above twice its first value on as
  many of them, the newest included (weight norms move slowly and stay up after the loss has come
  back, hence the longer window; and a head initialised at zero grows far beyond 50 x its first
  norm while it learns, so only a loss clearly worse than the untrained model's counts).
- ``collapse``: generated output exactly constant (``output_std`` == 0) or all zero, or exactly the
  same for every sample of the batch (``output_spread`` == 0: a generator that paints one solid
  colour whatever its input), or a loss of exactly zero, for ``steps`` (20) steps in a row (raw
  values; these are not lagging signals), and, for a collapse that began after the trial had
  trained a while, for ``relative`` (1.5) x the steps it trained before: a model that learned for
  54 steps and then gave one output for every input recovers after 69 steps (a user's VQ-VAE, its
  codebook down to one code for a while), where a collapse from the first steps stays.

The defaults were chosen on a corpus of traces from trials run to their last epoch
(``benchmarks/divergence_corpus.py``, replayed by ``benchmarks/divergence_replay.py``): a healthy
trial's loss was seen above 20 x its first value on up to 3 of any 8 steps (and on 4 in a row in a
trial a user reported), a diverging trial's on nearly every step from its onset. Windows are in
steps, not epochs: recoveries in the corpus lasted a few steps whether an epoch had 8, 32 or 50.

The detector keeps its own state, and a checkpoint keeps it too (:meth:`DivergenceDetector.state`):
a trial resumed from one judges against its own first loss, not the first loss after the resume.

Metric names are those of ``trainables.diagnostics``: ``loss``, ``<net>/loss_scale``,
``<net>/skipped``, ``<net>/grad_norm``, ``<net>/weight_norm_last``, ``output_std``, ...
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeGuard

MODES = ("stop", "observe")
SIGNALS = ("loss_scale", "non_finite", "loss_explosion", "grad_explosion", "collapse", "runaway_weights")

DEFAULTS: dict[str, dict[str, float]] = {
    "loss_scale": {"floor": 1.0, "consecutive": 6, "window": 50, "max_share": 0.5, "calibration": 24},
    "non_finite": {"steps": 1, "scaled_steps": 2},
    "loss_explosion": {"factor": 20.0, "steps": 8, "share": 0.75},
    "grad_explosion": {"factor": 1000.0, "window": 50, "warmup": 20, "steps": 8, "share": 0.75},
    "collapse": {"steps": 20, "relative": 1.5},
    "runaway_weights": {"factor": 50.0, "steps": 20, "share": 0.75},
}

HEURISTIC = ("loss_explosion", "grad_explosion", "collapse", "runaway_weights")
"""The signals that judge from a pattern and so wait for evidence (the others are irrecoverable states)."""
OVERFLOW_RUN = "consecutive overflow steps"
OVERFLOW_SHARE = "steps overflowed"
"""The words of ``loss_scale``'s reasons for a run, and for a share, of overflow steps."""


def may_recover(signal: str, reason: str) -> bool:
    """Whether a stop (``signal`` and its ``reason``) judged a pattern a trial can still recover from.

    Every heuristic signal; and ``loss_scale``'s run or share of overflows after GradScaler's
    calibration, which a scale that settles lower can outlive (a user's fp16 loop stopped after 6
    overflows in a row trained on to a finite metric). Not the scale's floor, a forward pass that
    overflows at every scale, nor non-finite weights.
    """
    return signal in HEURISTIC or (signal == "loss_scale" and (OVERFLOW_RUN in reason or OVERFLOW_SHARE in reason))


LOSS_UP = 2.0
"""``grad_explosion`` and ``runaway_weights`` fire only while the loss is above this many times its first
value: a loss back near where it started (a model that has not moved, or has fallen back to its
starting guess) is no divergence, whatever its gradients or weights do."""


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
    mode: str = "stop"
    """``stop``: a signal ends the trial; ``observe``: it is recorded (signal, step) and the trial goes on."""

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


class _Evidence:
    """Hits among the last ``steps`` steps: complete when ``share`` of them are hits, the newest included.

    A window, not a streak: one step that dips under the line does not reset the evidence, but
    the signal never fires on a step that is itself under the line.
    """

    def __init__(self, settings: dict[str, float]) -> None:
        steps = max(1, int(settings.get("steps", 1)))
        self.recent: deque[tuple[int, bool]] = deque(maxlen=steps)
        self.need = min(steps, max(1, math.ceil(settings.get("share", 1.0) * steps - 1e-9)))

    def update(self, hit: bool, step: int) -> int | None:
        """Add a step; return the onset (the window's first hit) when the evidence is complete."""
        self.recent.append((step, hit))
        if not hit or self.hits < self.need:
            return None
        return next(st for st, h in self.recent if h)

    @property
    def hits(self) -> int:
        """Hits in the window."""
        return sum(h for _, h in self.recent)


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
        if (below := self._floor(net, step, scale)) is not None:  # no later step undoes it: said first
            return below
        if run >= self.s["consecutive"]:
            return Divergence("loss_scale", f"{net}: {run} {OVERFLOW_RUN}", step, self.streak.start)
        if len(self.recent) == self.recent.maxlen:
            share = sum(s for _, s in self.recent) / len(self.recent)
            if share > self.s["max_share"]:
                onset = next(st for st, s in self.recent if s)
                reason = f"{net}: {share:.0%} of the last {len(self.recent)} {OVERFLOW_SHARE}"
                return Divergence("loss_scale", reason, step, onset)
        return None

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
        self.constant_what = "constant output"
        self.last_step = 0
        self.start_loss: float | None = None
        self.signed_loss = False
        """A negative loss was seen: the loss is no magnitude, and no line relative to its first value holds."""
        windows = [int(cfg.get("steps", 1)) for name, cfg in self.settings.signals.items() if name in HEURISTIC]
        self.loss_up: deque[bool] = deque(maxlen=max([1, *windows]))
        self.explosion: _Evidence | None = None
        self.grads: dict[str, deque[float]] = {}
        self.grad_evidence: dict[str, _Evidence] = {}
        self.grad_start: dict[str, float] = {}
        self.first_weights: dict[str, float] = {}
        self.weight_evidence: dict[str, _Evidence] = {}
        self.unpassed: set[str] = set()
        """Networks seen skipping steps under a loss scale they do not send (:meth:`_unpassed_scalers`)."""

    def state(self) -> dict[str, Any]:
        """What a trial resumed from a checkpoint carries on from (saved with the checkpoint).

        Its first loss, its networks' first last-layer weights and gradient norms (the floor of the
        median and the window of recent ones), the steps seen, which networks' loss scales have
        calibrated, and which send no scaler of theirs. A fresh detector after a resume took the
        first loss after it as the trial's first (an epoch in, 46 x smaller) and stopped two
        healthy trials of a user's at a spike the same trial run whole was never stopped for.
        """
        return {
            "steps_seen": self.steps_seen,
            "start_loss": self.start_loss,
            "signed_loss": self.signed_loss,
            "first_weights": dict(self.first_weights),
            "grad_start": dict(self.grad_start),
            "grads": {net: list(norms) for net, norms in self.grads.items()},
            "calibrated": sorted(net for net, watch in self.scales.items() if not watch.calibrating),
            "unpassed": sorted(self.unpassed),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Carry on from :meth:`state` of the same trial's detector, as its checkpoint kept it."""
        self.steps_seen = int(state.get("steps_seen", 0))
        self.start_loss = state.get("start_loss")
        self.signed_loss = bool(state.get("signed_loss", False))
        self.first_weights = dict(state.get("first_weights") or {})
        self.grad_start = dict(state.get("grad_start") or {})
        window = int((self._cfg("grad_explosion") or {"window": 50})["window"])
        self.grads = {net: deque(norms, maxlen=window) for net, norms in (state.get("grads") or {}).items()}
        if (cfg := self._cfg("loss_scale")) is not None:
            for net in state.get("calibrated") or ():
                self.scales.setdefault(net, _ScaleWatch(cfg)).calibrating = False
        self.unpassed = set(state.get("unpassed") or ())

    def observe(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        """Check one step; return the first signal that fires, else None."""
        if not self.settings.enabled:
            return None
        self.steps_seen += 1
        metrics = self._unpassed_scalers(metrics)
        self._loss_state(metrics.get("loss"))
        self._track_collapse(step, metrics)
        for check in (self._scale, self._non_finite, self._explosion, self._grad, self._collapse, self._weights):
            found = check(step, metrics)
            if found is not None:
                return found
        return None

    def _unpassed_scalers(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` with the skipped steps of a loss scaler a loop used but did not send.

        A network with no ``loss_scale`` whose last layer's gradient is not finite while that
        layer's weights still are after the step was not stepped on it: a ``GradScaler`` the loop
        did not pass to ``run.step`` (or the loop itself) skipped the step. Without a scaler the
        optimizer would have made those weights NaN. From then on the network is judged as one
        under a loss scaler of unknown scale: an overflow is a skipped step, not ``non_finite``;
        runs and shares of skipped steps count for ``loss_scale`` (not its floor).
        """
        added: dict[str, Any] = {}
        for net, norm in _per_net(metrics, "grad_norm").items():
            key = f"{net}/" if net else ""
            if f"{key}loss_scale" in metrics:
                continue
            weights, last = metrics.get(f"{key}weight_norm_last"), metrics.get(f"{key}grad_norm_last", norm)
            skipped = not _finite(norm) and not _finite(last) and _finite(weights)
            if skipped or net in self.unpassed:
                self.unpassed.add(net)
                added[f"{key}loss_scale"] = math.inf
                added[f"{key}skipped"] = float(skipped or bool(metrics.get(f"{key}skipped")))
        return {**metrics, **added} if added else metrics

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
                reason = f"{', '.join(bad)} not finite for {_steps(run)} under loss scaling"
                return Divergence("loss_scale", reason, step, self.non_finite.start)
            return None
        for net, norm in _per_net(metrics, "grad_norm").items():
            scale = metrics.get(f"{net}/loss_scale" if net else "loss_scale", 1.0)
            if not _finite(norm) and not _has_scaler(scale, False):
                bad.append(f"{net}/grad_norm" if net else "grad_norm")
        run = self.non_finite.update(bool(bad), step)
        if run >= cfg["steps"]:
            reason = f"{', '.join(bad)} not finite for {_steps(run)}"
            return Divergence("non_finite", reason, step, self.non_finite.start)
        return None

    def _loss_state(self, loss: Any) -> None:
        """Remember the first finite loss (the untrained model's) and whether this step's is ``LOSS_UP`` x above it.

        Once the loss has been negative (a hinge or Wasserstein GAN's summed losses, a Gaussian
        likelihood) it is not compared with its first value again: ``loss_explosion`` stands down
        and the signals that also ask whether the loss is up judge without it.
        """
        if _finite(loss) and float(loss) < 0:
            self.signed_loss = True
        if self.start_loss is None and _finite(loss) and loss != 0:
            self.start_loss = abs(float(loss))
        if loss is None or self.signed_loss:
            up = True  # no loss reported, or no magnitude to compare: the other signals judge alone
        else:
            up = not _finite(loss) or (self.start_loss is not None and abs(float(loss)) > LOSS_UP * self.start_loss)
        self.loss_up.append(up)

    def _loss_still_up(self, evidence: _Evidence) -> bool:
        """Whether the loss is ``LOSS_UP`` x its first value now and on as many recent steps as ``evidence`` needs."""
        window = len(evidence.recent)
        recent = list(itertools.islice(self.loss_up, max(0, len(self.loss_up) - window), None))
        return bool(recent) and recent[-1] and sum(recent) >= evidence.need

    def _loss_words(self) -> str:
        """What the loss said when a signal that also asks it fired (its reason's last words)."""
        if self.signed_loss:
            return "the loss not compared (it has been negative: no magnitude)"
        if self.start_loss is None:
            return "no loss reported"
        return f"loss over {LOSS_UP:g} x its first value"

    def _explosion(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("loss_explosion")
        loss = metrics.get("loss")
        if cfg is None or loss is None or self.start_loss is None or self.signed_loss:
            return None
        if self.explosion is None:
            self.explosion = _Evidence(cfg)
        line = cfg["factor"] * self.start_loss
        hit = not _finite(loss) or abs(float(loss)) > line
        onset = self.explosion.update(hit, step)
        if onset is not None:
            hits, window = self.explosion.hits, len(self.explosion.recent)
            over = f"{cfg['factor']:g} x its first value {self.start_loss:.4g} on {hits} of the last {window} steps"
            reason = (  # a user read "loss nan above 20 x its first value" as odd: NaN is above nothing
                f"loss {float(loss):.4g} above {over}"
                if _finite(loss)
                else f"loss {float(loss)} now; not finite or above {over}"
            )
            return Divergence("loss_explosion", reason, step, onset)
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
            evidence = self.grad_evidence.setdefault(net, _Evidence(cfg))
            if len(history) >= cfg["warmup"]:
                # Judged against the recent median, but never against less than the median of the
                # first norms: a gradient that vanished (a saturated GAN discriminator) and comes back
                # to its starting size has not exploded.
                recent = statistics.median(history)
                median = max(recent, self.grad_start.setdefault(net, recent))
                hit = not _finite(norm) or (median > 0 and norm > cfg["factor"] * median)
                onset = evidence.update(hit, step)
                if onset is not None and self._loss_still_up(evidence):
                    reason = (
                        f"{net or 'model'}: grad norm {float(norm):.3g} > {cfg['factor']:g} x median {median:.3g} "
                        f"on {evidence.hits} of the last {len(evidence.recent)} steps, {self._loss_words()}"
                    )
                    return Divergence("grad_explosion", reason, step, onset)
                if hit:
                    continue  # keep spikes out of the median
            if _finite(norm):
                history.append(norm)
        return None

    def _track_collapse(self, step: int, metrics: dict[str, Any]) -> None:
        """Every step, whatever fires before ``collapse``: how long the output (or the loss) has been stuck."""
        if self._cfg("collapse") is None:
            return
        std, mean, spread = metrics.get("output_std"), metrics.get("output_mean"), metrics.get("output_spread")
        constant = _finite(std) and std == 0.0
        same = _finite(spread) and spread == 0.0  # every sample of the batch alike: the input is ignored
        if constant:
            self.constant_what = "all-zero output" if _finite(mean) and mean == 0.0 else "constant output"
        elif same:
            self.constant_what = "the same output for every sample of the batch"
        self.constant.update(constant or same, step)
        loss = metrics.get("loss")
        self.zero_loss.update(_finite(loss) and float(loss) == 0.0, step)
        self.last_step = step

    def _collapse(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("collapse")
        if cfg is None:
            return None
        if self._lasted(self.constant.length, cfg):
            reason = f"{self.constant_what} for {self.constant.length} steps"
            return Divergence("collapse", reason, step, self.constant.start)
        if self._lasted(self.zero_loss.length, cfg):
            return Divergence(
                "collapse", f"loss exactly 0 for {self.zero_loss.length} steps", step, self.zero_loss.start
            )
        return None

    def collapsed_to_the_end(self, last_epoch_steps: int | None = None) -> Divergence | None:
        """A collapse still under way at the newest step, the trial's last: its final model's output is stuck.

        Judged as :meth:`observe` judges one, except that the window is at most the steps of the
        last epoch (``last_epoch_steps``; None: of the whole trial): a trial shorter than
        ``collapse.steps`` never met it (a user's 16-step trials, their output all zero from step 2,
        ended "completed", one the sweep's best), and no later step can undo a collapse at the end.
        ``relative`` still holds: a collapse has to outlast what the trial had learned. Also for a
        collapse that met the window and went on to the end (observe mode, an audit's re-run: the
        stop's claim still held when training ended). None when the output moved again.
        """
        cfg = self._cfg("collapse")
        if cfg is None or self.steps_seen == 0:
            return None
        window = {**cfg, "steps": max(1, min(cfg["steps"], last_epoch_steps or self.steps_seen))}
        for streak, what in ((self.constant, self.constant_what), (self.zero_loss, "loss exactly 0")):
            if self._lasted(streak.length, window):
                reason = f"{what} for its last {streak.length} steps, to the end of its training"
                return Divergence("collapse", reason, self.last_step, streak.start)
        return None

    def _lasted(self, length: int, cfg: dict[str, float]) -> bool:
        """Whether a collapse of ``length`` steps in a row lasted long enough to count.

        At least ``steps``, and ``relative`` x the steps seen before it began: a late collapse has
        to outlast what the trial had learned.
        """
        before = self.steps_seen - length
        return length > 0 and length >= max(cfg["steps"], math.ceil(cfg.get("relative", 0.0) * before))

    def _weights(self, step: int, metrics: dict[str, Any]) -> Divergence | None:
        cfg = self._cfg("runaway_weights")
        if cfg is None:
            return None
        for net, norm in _per_net(metrics, "weight_norm_last").items():
            skipped = metrics.get(f"{net}/skipped" if net else "skipped")
            if not _finite(norm) or (net not in self.first_weights and _finite(skipped) and skipped):
                continue  # the first value is the one after the first update a loss scaler let through
            first = self.first_weights.setdefault(net, float(norm))
            evidence = self.weight_evidence.setdefault(net, _Evidence(cfg))
            onset = evidence.update(first > 0 and float(norm) > cfg["factor"] * first, step)
            if onset is not None and self._loss_still_up(evidence):
                reason = (
                    f"{net or 'model'}: last-layer weight norm {float(norm):.3g} > {cfg['factor']:g} x {first:.3g} "
                    f"on {evidence.hits} of the last {len(evidence.recent)} steps, {self._loss_words()}"
                )
                return Divergence("runaway_weights", reason, step, onset)
        return None


def _per_net(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """``{net: value}`` for keys ``<net>/<name>`` (and ``""`` for a bare ``<name>``)."""
    found = {key[: -len(name) - 1]: v for key, v in metrics.items() if key.endswith("/" + name)}
    if name in metrics:
        found[""] = metrics[name]
    return found


def _steps(count: int) -> str:
    return "1 step" if count == 1 else f"{count} steps"


def _has_scaler(scale: Any, skipped: bool) -> bool:
    return skipped or (_finite(scale) and float(scale) != 1.0)


def _is_loss(key: str) -> bool:
    return key == "loss" or key.startswith("loss/")


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
