"""TPE that weighs what a configuration costs: its expected improvement per second of training.

TPE draws candidates from its model of the best trials and keeps the one with the highest expected
improvement (EI). It does not know that configurations differ in cost: on a CPU an fp16 epoch of
the search-quality benchmark's VAE takes about 12 times an fp32 one at kernel 3, and a search that
found a good fp16 trial early spent most of a short budget there (``benchmarks/RESULTS.md``, round
10). This sampler picks the candidate with the highest EI per predicted second of an epoch
("EI per second", Snoek, Larochelle and Adams 2012), so a slow region has to promise more to be
tried again, and a fast one is tried more often in the same time. What is slow is measured, not
assumed: on a GPU fp16 is the fast one.

EI per second alone keeps away from a slow region that is truly better; so the cost's weight
cools as the budget is used ("cost cooling", Lee et al. 2020, CArBO): EI / cost ** (1 - used),
``used`` the share of the sweep's budget spent (``budget_used``, which the engine sets: the larger
of the share of ``budget.time`` gone and of ``budget.trials`` asked). Early trials favour what is
cheap to learn from; the last ones are chosen by EI alone.

The prediction is a ridge regression of the log of each finished trial's median epoch seconds
(the study's user attribute ``epoch_s``, which the searcher tells with the trial) on its
parameters: one indicator per choice of a categorical parameter, numbers scaled to [0, 1] (on a log
scale where the parameter's is). Until :data:`MIN_TRIALS` trials have a measured cost, the
sampler is TPE unchanged. EI comes from TPE's density ratio as in Bergstra et al. (2011):
``EI ~ 1 / (gamma + (1 - gamma) g(x) / l(x))``, with ``gamma`` the share of trials TPE counts as good.

Off unless a spec sets ``search.cost_aware: true``: on 2 CPUs it ran up to twice as many trials in
the same time, and its best model was level with TPE alone's in three comparisons, ahead in one and
behind in one (``benchmarks/RESULTS.md``, "Cost-aware search"); a rule set down before round 12
(new seeds) for making it the default was missed at one of its cells ("Round 12"), and again, on
the other task, in its second and last trial ("Round 13").

It overrides two private methods of Optuna's ``TPESampler`` (``_sample``,
``_compute_acquisition_func``), checked by ``tests/test_cost_aware_sampler.py`` on the pinned Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe.sampler import default_gamma
from optuna.trial import FrozenTrial, TrialState

COST_ATTR = "epoch_s"
"""User attribute of a finished trial: the median wall seconds of its epochs."""
MIN_TRIALS = 3
"""Trials with a measured cost needed before costs weigh in."""
RIDGE = 1.0
"""The regression's ridge penalty (features in [0, 1]): with few trials, predictions stay near the mean."""


class EpochCostModel:
    """Predicted log seconds per epoch of configurations, from the finished trials' measured ones."""

    def __init__(self, search_space: dict[str, BaseDistribution], trials: list[FrozenTrial]) -> None:
        self.space = search_space
        measured = [t for t in trials if _cost(t) is not None and search_space.keys() <= t.params.keys()]
        self.fitted = len(measured) >= MIN_TRIALS
        if not self.fitted:
            return
        internal = {
            name: np.asarray([dist.to_internal_repr(t.params[name]) for t in measured], dtype=float)
            for name, dist in search_space.items()
        }
        x = self._features(internal)
        y = np.log(np.asarray([_cost(t) for t in measured], dtype=float))
        self.x_mean, self.y_mean = x.mean(axis=0), float(y.mean())
        centred = x - self.x_mean
        gram = centred.T @ centred + RIDGE * np.eye(centred.shape[1])
        self.coef = np.linalg.solve(gram, centred.T @ (y - self.y_mean))

    def log_seconds(self, samples: dict[str, np.ndarray]) -> np.ndarray:
        """Predicted log seconds per epoch of each candidate (``samples``: TPE's internal representation)."""
        size = len(next(iter(samples.values())))
        if not self.fitted:
            return np.zeros(size)
        return self.y_mean + (self._features(samples) - self.x_mean) @ self.coef

    def _features(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """One column per number, one per choice of a categorical (its indicator)."""
        columns: list[np.ndarray] = []
        for name, dist in self.space.items():
            column = np.asarray(values[name], dtype=float)
            if isinstance(dist, CategoricalDistribution):
                columns.extend((column == index).astype(float) for index in range(len(dist.choices)))
            elif isinstance(dist, (FloatDistribution, IntDistribution)):
                columns.append(_unit(column, dist))
        if not columns:
            return np.zeros((len(next(iter(values.values()), [])), 1))
        return np.stack(columns, axis=1)


def _unit(column: np.ndarray, dist: FloatDistribution | IntDistribution) -> np.ndarray:
    """``column`` scaled to [0, 1] over the distribution's range, on a log scale where it is log."""
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        column, low, high = np.log(np.maximum(column, low)), math.log(low), math.log(high)
    return (column - low) / (high - low) if high > low else np.zeros_like(column)


def _cost(trial: FrozenTrial) -> float | None:
    """A trial's measured seconds per epoch, or None."""
    value = trial.user_attrs.get(COST_ATTR)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


class CostAwareTPESampler(TPESampler):
    """TPE whose choice among its candidates is expected improvement per predicted second of an epoch."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._costs: EpochCostModel | None = None
        self._good_share = 0.1
        self.budget_used: Callable[[], float] = lambda: 0.0
        """The share of the sweep's budget spent, 0 to 1 (the engine's; 0 until it sets one)."""

    def _sample(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        finished = [t for t in finished if t.number != trial.number]
        gamma = self._gamma or default_gamma
        self._good_share = min(1.0, gamma(len(finished)) / max(1, len(finished)))
        self._costs = EpochCostModel(search_space, finished)
        try:
            return super()._sample(study, trial, search_space)
        finally:
            self._costs = None

    def _compute_acquisition_func(self, samples: dict[str, np.ndarray], mpe_below: Any, mpe_above: Any) -> np.ndarray:
        log_ratio = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        if self._costs is None or not self._costs.fitted:
            return log_ratio
        share = self._good_share
        if share >= 1:
            log_ei = np.zeros_like(log_ratio)
        else:  # log EI = -log(gamma + (1 - gamma) * g / l), computed stably from log(l / g)
            log_ei = -np.logaddexp(math.log(share), math.log1p(-share) - log_ratio)
        weight = 1.0 - min(1.0, max(0.0, float(self.budget_used())))
        return log_ei - weight * self._costs.log_seconds(samples)
