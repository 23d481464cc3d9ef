"""A function trainer's ``run``: how ``train(config, run)`` drives the one epoch loop from inside its own loop.

The user's function keeps its loop; the epoch loop (:class:`~sweeps.trial.epoch_loop.EpochLoop`)
hands it a :class:`FunctionRun` whose calls do what the loop does around a class trainer's
``train_epoch`` and ``validate``:

- ``run.step(loss=..., optimizer=..., scaler=..., model=...)`` after each optimizer step derives
  the step contract's diagnostics (``trainables.diagnostics``) and feeds them to the same step
  hook a class trainer's ``on_step`` is: recorded, counted, watched by the divergence detector
  (which raises :class:`~sweeps.trial.stops.DivergedError`, a ``StopTrial``, out of the call);
- ``run.report(epoch, **metrics)`` after validation is the loop's end of an epoch (metrics,
  images, history, report cadence, checkpoint, the channel's report), then goes on, ends at the
  budget's last epoch, or raises ``StopTrial`` when the sweep stopped the trial; a non-finite
  metric ends it as diverged;
- ``run.checkpoint(state)`` / ``run.restore()`` put what the function names into the trial's
  checkpoints (with the RNG state) and back; without them a restarted trial starts over;
- ``run.autocast()`` / ``run.scaler(model, optimizer)`` run the trial's precision
  (``trainables.mixed_precision``).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch

from sweeps.trial.stops import ReportCallError, RunCallError, non_finite_metrics
from sweeps.trial.trainer_values import as_float, kind_of, metric_floats
from trainables.diagnostics import StepProbe, loss_metrics, output_metrics
from trainables.mixed_precision import autocast, loss_scaler
from trainables.precision import ScalerSettings, canonical_precision
from trainables.protocol import StepHook, StopTrial
from trainables.runtime import pick_device, restore_rng, rng_state

EndEpoch = Callable[[int, dict[str, float], Callable[[], Any] | None], bool]
"""The loop's end of an epoch: ``(epoch, metrics, image or None) -> whether the trial goes on``."""


class TrialConfig(dict[str, Any]):
    """A trial's parameters (sampled, fixed, the seed and the precision), by key and by attribute."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            known = ", ".join(sorted(self)) or "nothing"
            raise AttributeError(
                f"config has no {name!r} (it has: {known}); set it in the spec's fixed or params, "
                f"or read it with config.get({name!r}, default)"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def trial_config(params: dict[str, Any]) -> TrialConfig:
    """The ``config`` a function trainer gets: ``params`` with ``seed`` (0) and ``precision`` (fp32) always there."""
    config = TrialConfig({"seed": 0, "precision": "fp32", **params})
    config["precision"] = canonical_precision(str(config["precision"]))
    return config


class FunctionRun:
    """The ``run`` handed to ``train(config, run)`` (the :class:`trainables.protocol.Run` protocol)."""

    def __init__(
        self,
        params: dict[str, Any],
        epochs: int,
        hook: StepHook,
        end_epoch: EndEpoch,
        saved: dict[str, Any] | None = None,
        on_restore: Callable[[], None] | None = None,
        reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
        name: str = "train",
        mlflow_run: tuple[str, str] | None = None,
    ) -> None:
        self.config = trial_config(params)
        self.name = name
        """The trial's name in the sweep (``t003``; ``t003r`` for a rescue); ``train`` under ``sweeps train``."""
        self.tracking_uri: str | None = mlflow_run[0] if mlflow_run else None
        self.mlflow_run_id: str | None = mlflow_run[1] if mlflow_run else None
        """The trial's MLflow run (None under ``sweeps train``): ``MlflowClient(run.tracking_uri).log_artifact(
        run.mlflow_run_id, path)`` adds a file of the loop's own to it."""
        self.epochs = int(epochs)
        self.precision = str(self.config["precision"])
        self.device = pick_device(str(self.config.get("device", "auto")))
        self.steps = 0
        """Optimizer steps so far (a restored trial's count goes on from its checkpoint's)."""
        self.last_epoch = 0
        """The last epoch reported (or restored)."""
        self.reports = 0
        self._hook, self._end_epoch, self._saved, self._on_restore = hook, end_epoch, saved, on_restore
        self._reduce = reduce
        self._state: dict[str, Any] | None = None
        self._restored: int | None = None
        self._image: Any = None
        self._probes: dict[str, StepProbe] = {}
        self._done = False

    # -- after each optimizer step --------------------------------------------------------------

    def step(
        self,
        loss: Any = None,
        optimizer: Any = None,
        scaler: Any = None,
        model: Any = None,
        output: Any = None,
        net: str = "model",
        **extra: Any,
    ) -> None:
        """Record and watch one optimizer step.

        Call it after ``optimizer.step()`` (or ``scaler.step``), before the next ``zero_grad``.
        ``loss``: the step's loss (tensor or number), or a dict of its terms (``loss/<term>`` each,
        ``loss`` their sum). ``optimizer``: gives ``<net>/lr`` and the gradient and weight norms
        of the parameters it steps (``model`` gives the norms where no optimizer is passed).
        ``scaler``: a ``GradScaler`` (or ``run.scaler()``'s): ``<net>/loss_scale`` and
        ``<net>/skipped``. ``output``: the generated images (``output_mean``/``output_std``, for
        collapse). ``net``: the network's name in the keys; several networks: a dict per argument
        (``optimizer={"g": opt_g, "d": opt_d}``). ``extra``: more step metrics, recorded as they are.
        Raises ``StopTrial`` (a ``DivergedError``) when the divergence detector fires.
        """
        self.steps += 1
        metrics = _step_loss(loss) if loss is not None else {}
        networks = list(_networks(net, optimizer, model, scaler))
        for name, (opt, mod, scl) in networks:
            _check_network(name, opt, mod, scl)
            probe = self._probes.get(name)
            if probe is None or probe.optimizer is not opt or (opt is None and probe.model is not mod):
                if probe is not None:
                    probe.close()
                # one of several: its gradients now may be another's backward's (G's through D), not its step's
                probe = self._probes[name] = StepProbe(name, opt, mod, unread_first=len(networks) > 1)
            metrics.update(probe(scl))
        if output is not None:
            metrics.update(output_metrics(output))
        metrics.update(metric_floats(extra, "run.step"))
        self._hook(self.steps, metrics)

    # -- after each validation ------------------------------------------------------------------

    def report(self, epoch: int, **metrics: Any) -> bool:
        """End epoch ``epoch`` (counted from 1) with its metrics; True to go on, False after the last epoch.

        Raises ``StopTrial`` when the sweep stops the trial (ASHA; a report after the last epoch),
        a ``DivergedError`` (a ``StopTrial``) when a metric is not finite, and a ``ReportCallError``
        (which stops the sweep) when ``epoch`` does not count from 1 and rise.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= self.last_epoch:
            raise ReportCallError(
                f"run.report(epoch, ...): epoch counts the epochs finished, from 1, and rises: got {epoch!r} "
                f"after {self.last_epoch} (in `for epoch in range(n)`, report epoch + 1)"
            )
        if self._done:
            raise StopTrial(f"epoch {epoch} is past the trial's last epoch ({self.epochs})")
        if epoch > self.epochs:  # a step count, say: taken, the trial would end "completed" after one report
            raise ReportCallError(
                f"run.report(epoch, ...): epoch {epoch} is past run.epochs ({self.epochs}): epochs count the "
                f"validations from 1 to run.epochs (validating every N steps, report step // N)"
            )
        values = {name: as_float(name, value) for name, value in metrics.items()}
        if self._reduce is not None:
            values = self._reduce(values)
        diverged = non_finite_metrics(values, epoch, self.steps)
        if diverged is not None:
            raise diverged
        self.last_epoch, self.reports = epoch, self.reports + 1
        image, self._image = self._image, None
        go_on = self._end_epoch(epoch, values, (lambda: image) if image is not None else None)  # as_image'd there
        if not go_on:
            raise StopTrial(f"stopped by the sweep after epoch {epoch}")
        if epoch >= self.epochs:
            self._done = True
            return False
        return True

    def image(self, image: Any) -> None:
        """Keep an image of this epoch for its report: ``(C, H, W)`` in ``[0, 1]``, or ``(N, C, H, W)`` tiled."""
        self._image = image

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Keep ``state`` in the trial's checkpoints from now on.

        Each value with ``state_dict()`` (model, optimizer, scaler, scheduler) is saved by it, any
        other as it is, with the RNG states and the step count. Call it once with the live
        objects; :meth:`restore` loads them back.
        """
        if not isinstance(state, dict):
            raise TypeError(f"run.checkpoint(state): state must be a dict, got {type(state).__name__}")
        self._state = state

    def restore(self) -> int:
        """The epochs already done: 0 on a fresh start, else the checkpoint's, its state loaded.

        On a restarted trial the checkpoint's states are loaded into the objects given to
        :meth:`checkpoint` (plain values put back in that dict) and the RNG is restored, so the
        next epoch is the one the first process would have run.
        """
        if self._restored is not None:
            return self._restored
        saved = (self._saved or {}).get("trainer")
        if saved is None:
            self._restored = 0
            return 0
        if self._state is None:
            raise RuntimeError("run.restore(): call run.checkpoint({...}) first, with the objects to load into")
        for key, value in saved["state"].items():
            target = self._state.get(key)
            if target is not None and hasattr(target, "load_state_dict"):
                target.load_state_dict(value)
            else:
                self._state[key] = value
        restore_rng(saved["rng"])
        self.steps, self.last_epoch = int(saved["steps"]), int(saved["epoch"])
        if self._on_restore is not None:
            self._on_restore()
        self._restored = self.last_epoch
        return self.last_epoch

    def checkpoint_state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of the function (None when it asked for none)."""
        if self._state is None:
            return None
        state = {
            key: value.state_dict() if hasattr(value, "state_dict") else value for key, value in self._state.items()
        }
        return {"state": state, "rng": rng_state(), "steps": self.steps, "epoch": self.last_epoch}

    # -- precision ------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's context for the trial's precision: bf16/fp16 autocast, nothing for fp32 and fp16-o2."""
        return autocast(self.precision, self.device)

    def scaler(self, model: Any = None, optimizer: Any = None) -> Any:
        """A loss scaler with GradScaler's methods for the trial's precision.

        ``init_scale``, ``growth_interval`` and ``min_loss_scale`` come from the config; fp16-o2
        needs the model and its optimizer, which it converts (``trainables.mixed_precision``).
        """
        settings = ScalerSettings(
            float(self.config.get("init_scale", 65536.0)),
            int(self.config.get("growth_interval", 2000)),
            float(self.config.get("min_loss_scale", 0.0)),
        )
        return loss_scaler(self.precision, self.device, model, optimizer, settings)


def _networks(net: str, optimizer: Any, model: Any, scaler: Any) -> Iterator[tuple[str, tuple[Any, Any, Any]]]:
    """``(name, (optimizer, model, scaler))`` per network: one named ``net``, or one per key of dict arguments.

    A scaler that is not a dict is every network's (one ``GradScaler`` for several optimizers).
    """
    given = (optimizer, model, scaler)
    if not any(isinstance(g, dict) for g in given):
        if any(g is not None for g in given):
            yield net, given
        return
    names = dict.fromkeys(name for g in given if isinstance(g, dict) for name in g)
    for name in names:
        opt, mod = (g.get(name) if isinstance(g, dict) else None for g in (optimizer, model))
        scl = scaler.get(name) if isinstance(scaler, dict) else scaler  # one GradScaler for all: PyTorch's own pattern
        yield str(name), (opt, mod, scl)


def _step_loss(loss: Any) -> dict[str, float]:
    """``run.step``'s ``loss`` as step metrics; a RunCallError (one line) for anything but numbers and their dicts."""
    terms = loss.values() if isinstance(loss, dict) else [loss]
    for term in terms:
        if torch.is_tensor(term) and term.numel() != 1:
            raise RunCallError(
                f"run.step: loss must be one value per step, got {kind_of(term)}: reduce it first (loss.mean())"
            )
        if not torch.is_tensor(term) and (not isinstance(term, numbers.Real) or isinstance(term, bool)):
            raise RunCallError(
                f"run.step: loss must be a number, a one-element tensor or a dict of them, got {kind_of(term)}"
            )
    return loss_metrics(loss)


def _check_network(name: str, optimizer: Any, model: Any, scaler: Any) -> None:
    """A RunCallError (one line) when ``run.step``'s optimizer, model or scaler is not one."""
    shown = "" if name == "model" else f" ({name!r})"
    if optimizer is not None and not hasattr(optimizer, "param_groups"):
        hint = ": pass the model as model=..." if isinstance(optimizer, torch.nn.Module) else ""
        raise RunCallError(f"run.step: optimizer{shown} must be a torch optimizer, got {kind_of(optimizer)}{hint}")
    if model is not None and not callable(getattr(model, "parameters", None)):
        raise RunCallError(f"run.step: model{shown} must be a torch.nn.Module, got {kind_of(model)}")
    if scaler is not None and not all(hasattr(scaler, m) for m in ("get_scale", "is_enabled")):
        own = f"**{{'{name}/loss_scale': scale, '{name}/skipped': 1.0 if it skipped the step else 0.0}}"
        raise RunCallError(
            f"run.step: scaler{shown} must be a GradScaler (yours or run.scaler()'s), got {kind_of(scaler)}; "
            f"a loss scaler of another kind leaves scaler= out and passes run.step({own})"
        )
