"""A sampler that draws a fixed share of its trials at random instead of from TPE.

TPE concentrates where its best results are; on a noisy, flat landscape a few early good trials
can pull nearly every later trial into one small region (seen in the search-quality benchmark:
34 of 37 finished sr_gan trials at one kernel size, upsampler and loss, learning rates within 2%
of each other). BOHB (``random_fraction`` 1/3) and SMAC (random design, probability 0.2) keep
drawing some configurations uniformly at random for that reason, so the search never stops
looking at the rest of the space. This sampler does the same for any Optuna sampler: trial ``n``
is a random one when a draw seeded by ``(seed, n)`` falls below ``fraction``, so the same trials
are random on a resume. A random trial's values come from Optuna's ``RandomSampler``; it is told
and used by TPE like any other.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

_SEED_OFFSET = 0x5EED
"""Keeps the random draws apart from the base sampler's own start-up draws made with the same seed."""


class RandomInterleavedSampler(BaseSampler):
    """``base`` for most trials; uniformly random values for a ``fraction`` of them (chosen per trial number)."""

    def __init__(
        self, base: BaseSampler, fraction: float, seed: int | None = None, stream_seed: int | None = None
    ) -> None:
        """``seed`` picks which trial numbers are random; ``stream_seed`` (default ``seed``) seeds their values."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        self.base, self.fraction, self.seed = base, fraction, seed
        values = seed if stream_seed is None else stream_seed
        self.random = RandomSampler(seed=None if values is None else values + _SEED_OFFSET)

    def is_random(self, number: int) -> bool:
        """Whether trial ``number`` is drawn at random (the same answer every time, for a given seed)."""
        return random.Random(f"{self.seed}:{number}").random() < self.fraction

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """The base sampler's joint space, or none for a random trial (each value is then drawn alone)."""
        if self.is_random(trial.number):
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The base sampler's joint draw (nothing for a random trial)."""
        if not search_space:
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """One value: uniformly at random for a random trial, else the base sampler's."""
        sampler = self.random if self.is_random(trial.number) else self.base
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """As the base sampler does."""
        self.base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        """As the base sampler does."""
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Reseed both samplers (Optuna does so in worker processes)."""
        self.base.reseed_rng()
        self.random.reseed_rng()
