"""The trainer protocol: what the sweep engine needs from a training loop, and the optional hooks it uses.

A trainer is any class with a ``Config`` dataclass (every field has a default, and the
field names are the parameter names a sweep spec uses), a constructor taking that config,
one epoch of training, validation, and a state dict that resumes training exactly.

Optional hooks, each declared here and looked for nowhere else:

- ``metrics`` (class attribute, :class:`DeclaresMetrics`): the names ``validate`` returns, so a
  spec naming another metric is rejected before a sweep starts.
- ``on_step`` (attribute, :class:`ObservesSteps`): the engine sets it to a :data:`StepHook`; the
  trainer calls it after every optimizer step with the step number and the step's diagnostics
  (names in ``trainables.diagnostics``). This is what lets the divergence detector stop a trial
  within steps, and what draws the per-step curves.
- ``sample_grid()`` (:class:`SamplesImages`): an image in ``[0, 1]``, ``(C, H, W)``, ``(H, W)`` or a
  batch ``(N, C, H, W)`` (``trainables.images.as_image``), logged each epoch as ``images/epoch_NNN.png``.
- ``device`` (attribute): where the trainer runs (``"cpu"``, ``"cuda:0"``), recorded with the
  trial's environment (:func:`trainer_device`).
- ``Config.problems()`` (:class:`ChecksItself`): ``[(field, message), ...]`` for values that are
  each valid but wrong together; a sweep refuses such a config before it starts.
- ``precisions`` (class attribute, :class:`DeclaresPrecisions`): the precisions the trainer runs
  (``fp32``, ``bf16``, ``fp16``, ``fp16-o2``); a spec asking for another is refused, and a
  ``divergence.rescue`` only goes to one of them (:func:`declared_precisions`).

A trainer can also be a plain function ``train(config, run)`` (:data:`FunctionTrainer`): it keeps
its own loop and talks to the sweep through ``run`` (:class:`Run`): ``run.step(...)`` after each
optimizer step, ``run.report(epoch, **metrics)`` after each validation; ``precisions`` and
``metrics`` may be set on the function as attributes. The sweep stops such a trial by raising
:class:`StopTrial` out of ``run.report`` or ``run.step``.

The step contract (:data:`STEP_CONTRACT`) is the same for both kinds: the diagnostics names the
divergence detector reads, with their types, whether a class trainer hands them to ``on_step`` or
a function's ``run.step`` derives them.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

StepHook = Callable[[int, dict[str, float]], None]
"""Called by a trainer after every optimizer step with the step number and its diagnostics."""

StepMetrics = dict[str, float]
"""One optimizer step's diagnostics: names of :data:`STEP_CONTRACT` (``<net>`` filled in) to numbers."""


class StepKey(NamedTuple):
    """One name of the step contract: the name (``<net>`` is a network's name), its value, who reads it."""

    name: str
    value: str
    read_by: str


STEP_CONTRACT: tuple[StepKey, ...] = (
    StepKey("loss", "float: the step's total loss", "non_finite, loss_explosion, collapse"),
    StepKey("loss/<term>", "float: one term of the loss", "non_finite"),
    StepKey("<net>/lr", "float: the learning rate of the network's optimizer (first group)", "(recorded)"),
    StepKey("<net>/loss_scale", "float: the loss scale after the step (1.0: no scaler)", "loss_scale"),
    StepKey("<net>/skipped", "0.0 or 1.0: the loss scaler skipped the step (overflow)", "loss_scale"),
    StepKey("<net>/grad_norm", "float: the unscaled gradient norm over all parameters", "grad_explosion, non_finite"),
    StepKey("<net>/grad_norm_first", "float: the gradient norm of the first weight", "(recorded)"),
    StepKey("<net>/grad_norm_last", "float: the gradient norm of the last weight", "(recorded)"),
    StepKey("<net>/weight_norm_last", "float: the norm of the last weight", "runaway_weights"),
    StepKey("output_mean", "float: mean of the generated output", "collapse"),
    StepKey("output_std", "float: standard deviation of the generated output", "collapse"),
    StepKey("output_spread", "float: standard deviation across the batch of each output value, averaged", "collapse"),
)
"""The step diagnostics the divergence detector reads (``sweeps.divergence``), by name.

A name without ``<net>/`` means the one model; ``<net>`` names a network (``g``, ``d`` in a GAN,
``model`` for a function trainer's one network). A signal whose names a trainer does not send is
not checked. Any other numeric name is recorded as a step metric and read by nobody.
"""


class StopTrial(BaseException):  # noqa: N818 - named for what it does, like Optuna's TrialPruned
    """Raised by ``run.report`` / ``run.step`` when the sweep ends the trial: let it propagate.

    A ``BaseException``, as ``KeyboardInterrupt`` is: a loop's own ``except Exception`` (a step
    that may fail, retried) does not swallow it and train on after the sweep stopped the trial.

    ASHA stopped the trial, the divergence detector fired (the subclass the engine raises says
    why), or a report came after the budget's last epoch. The engine catches it where it called
    the trainer and records the trial as it ended (pruned, diverged, completed); nothing else is
    needed in the training function. Import it as ``sweeps.StopTrial`` (``import sweeps`` stays
    light) or from ``trainables.protocol``.
    """


@runtime_checkable
class Run(Protocol):
    """What a function trainer ``train(config, run)`` gets as ``run``: its line to the sweep."""

    epochs: int
    """The epochs the trial runs (the spec's ``budget.epochs``, or ``sweeps train --epochs``)."""
    precision: str
    """The precision the trial runs, canonical (``fp32``, ``bf16``, ``fp16``, ``fp16-o2``)."""
    device: Any
    """The ``torch.device`` the config names (``device``, default ``auto``: a GPU if there is one)."""
    name: str
    """The trial's name in the sweep (``t003``): for files of its own, ``f"checkpoints/{run.name}"``; ``train``
    under ``sweeps train``."""
    tracking_uri: str | None
    """The MLflow tracking URI of the trial's run (None under ``sweeps train``)."""
    mlflow_run_id: str | None
    """The trial's MLflow run: ``MlflowClient(run.tracking_uri).log_artifact(run.mlflow_run_id, path)``."""

    def report(self, epoch: int, **metrics: float) -> bool:
        """After validation: record the epoch's metrics (``epoch`` counts from 1); True to go on.

        False after the budget's last epoch. Raises :class:`StopTrial` when the sweep stops the
        trial (ASHA, divergence, a report past the last epoch).
        """
        ...

    def step(
        self,
        loss: Any = None,
        optimizer: Any = None,
        scaler: Any = None,
        model: Any = None,
        output: Any = None,
        net: str = "model",
        **extra: float,
    ) -> None:
        """After each optimizer step: derive the step contract's diagnostics, record and watch them."""
        ...

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Keep ``state`` in the trial's checkpoints (objects with ``state_dict()`` by it, plus the RNG)."""
        ...

    def restore(self) -> int:
        """On a restarted trial: load the last checkpoint into the checkpointed objects; the epochs done."""
        ...

    def image(self, image: Any) -> None:
        """An image of this epoch (``(C, H, W)`` in ``[0, 1]``, or a batch to tile), logged at the next report."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's context for the trial's precision (bf16/fp16 autocast; nothing else)."""
        ...

    def scaler(self, model: Any = None, optimizer: Any = None) -> Any:
        """A loss scaler with ``torch.amp.GradScaler``'s methods for the trial's precision."""
        ...


FunctionTrainer = Callable[[Any, Run], Any]
"""A training function ``train(config, run)``; ``config`` has attribute and key access."""


@runtime_checkable
class Trainer(Protocol):
    """One training run, driven an epoch at a time."""

    Config: ClassVar[type]

    def __init__(self, config: Any) -> None: ...

    def train_epoch(self) -> dict[str, float]:
        """Train for one epoch and return its training metrics."""
        ...

    def validate(self) -> dict[str, float]:
        """Evaluate on the validation set and return its metrics."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: models, optimizers, scaler, RNG states, counters."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@runtime_checkable
class ObservesSteps(Protocol):
    """A trainer that calls ``on_step(step, diagnostics)`` after each optimizer step (None: no hook set)."""

    on_step: StepHook | None


@runtime_checkable
class SamplesImages(Protocol):
    """A trainer that can show what it generates."""

    def sample_grid(self) -> Any:
        """Sample outputs in ``[0, 1]``: one ``(C, H, W)`` image or a batch ``(N, C, H, W)``."""
        ...


@runtime_checkable
class DeclaresMetrics(Protocol):
    """A trainer class that names the metrics ``validate`` returns."""

    metrics: ClassVar[tuple[str, ...]]


@runtime_checkable
class DeclaresPrecisions(Protocol):
    """A trainer (class or function) that names the precisions it runs."""

    precisions: tuple[str, ...]


@runtime_checkable
class ChecksItself(Protocol):
    """A config that reports combinations of values that cannot train."""

    def problems(self) -> list[tuple[str, str]]:
        """``[(field, message), ...]``; empty when the config is fine."""
        ...


def declared_metrics(trainer_cls: type) -> tuple[str, ...]:
    """The metrics a trainer class declares (:class:`DeclaresMetrics`); empty when it declares none."""
    declared = getattr(trainer_cls, "metrics", None) or ()
    return (declared,) if isinstance(declared, str) else tuple(declared)


def config_problems(config: Any) -> list[tuple[str, str]]:
    """What a config's own ``problems()`` finds (:class:`ChecksItself`); nothing when it has no such check."""
    return list(config.problems()) if isinstance(config, ChecksItself) else []


def trainer_device(trainer: Any) -> str:
    """The device a trainer says it runs on (its ``device`` attribute); '' when it does not say."""
    device = getattr(trainer, "device", None)
    return str(device) if device is not None else ""


def is_function_trainer(trainer: Any) -> bool:
    """Whether ``trainer`` is a training function ``train(config, run)`` rather than a trainer class."""
    return callable(trainer) and not isinstance(trainer, type)


def signature_problem(function: Any) -> str | None:
    """Why ``function`` cannot be called as ``function(config, run)`` and run its loop, or None when it can.

    An ``async def`` or a generator function returns at once without training, so it cannot either.
    """
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return "it is an async function (async def): a function trainer is a plain def train(config, run)"
    if inspect.isgeneratorfunction(function):
        return "it is a generator function (it yields): a function trainer is a plain def train(config, run)"
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    shown = str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))
    try:
        signature.bind(None, None)
    except TypeError:
        return f"it takes {shown}, which two positional arguments cannot fill; a function trainer takes (config, run)"
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in signature.parameters.values() if p.kind in kinds]
    if ("config" in names and names.index("config") != 0) or ("run" in names and names.index("run") != 1):
        # a script's main(argv=None, config=None, run=None): argv would get the config, config the run
        got = ", ".join(f"{name} would get the {what}" for name, what in zip(names, ("config", "run"), strict=False))
        return f"it takes {shown}, but a trial calls it with (config, run): {got}"
    return None


def declared_precisions(trainer: Any) -> tuple[str, ...] | None:
    """The canonical precisions a trainer runs; None when it does not say (:class:`DeclaresPrecisions`).

    Declared by a ``precisions`` attribute. Without one, a function trainer runs ``fp32`` only (it
    says so when it uses ``run.autocast()`` / ``run.scaler()`` or its own mixed precision), and so
    does a class trainer whose ``Config`` has no ``precision`` field; a class with such a field and
    no declaration leaves it unknown.
    """
    from trainables.precision import canonical_precision

    declared = getattr(trainer, "precisions", None)
    if declared is not None:
        names = [declared] if isinstance(declared, str) else list(declared)
        return tuple(dict.fromkeys(canonical_precision(str(name)) for name in names))
    if is_function_trainer(trainer):
        return ("fp32",)
    config = getattr(trainer, "Config", None)
    fields = getattr(config, "__dataclass_fields__", {})
    return None if "precision" in fields else ("fp32",)
